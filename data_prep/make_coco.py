"""Build the COCO 2014 layout `sipe` reads from the official instance annotations (pycocotools).

    python -m data_prep.make_coco --coco-dir DATA/coco2014 --out DATA/coco_sipe [--link symlink|hardlink|copy]

Reads `<coco-dir>/annotations/instances_{train,val}2014.json` and the images in `<coco-dir>/train2014/`
and `<coco-dir>/val2014/`; writes under `--out` (see sipe/data/coco.py):

    JPEGImages/<id>.jpg               a link to (or copy of) the image; id = the file stem
    SegmentationClassAug/<id>.png     class-index mask: 0 background, 1..80 (sipe.data.coco.CATEGORY_IDS order)
    ImageSets/Segmentation/train.txt  train2014 ids; val.txt: val2014 ids
    cls_labels_coco.npy               {id: float32[80]}: the classes with at least one annotation

Masks: every annotation of the image (crowd ones included) is rasterised (polygons and RLE through
pycocotools) and painted with its class, largest area first, so that smaller objects stay visible on top
of larger ones. Images without any annotation are left out of the lists (as SIPE's 82,081 / 40,137
image lists); an id requested with `--ids` that has no annotation is an error. Rerunning resumes: masks
already written are kept. Every problem names the file it comes from.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from sipe.data.coco import CATEGORY_IDS, CLASS_INDEX, LABELS_FILE, NUM_CLASSES, download_instructions
from sipe.stages.labelled import save_label_atomic
from sipe.data.voc import IMAGE_DIR, MASK_DIR, SPLIT_DIR, DataError

SPLITS = {"train": "train2014", "val": "val2014"}


def annotation_file(coco_dir: str | os.PathLike, image_set: str) -> Path:
    """`<coco_dir>/annotations/instances_<image_set>.json`."""
    return Path(coco_dir) / "annotations" / f"instances_{image_set}.json"


def load_annotations(path: str | os.PathLike) -> dict:
    """The parsed instance-annotation file; DataError naming the file when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"annotation file {path} not found; unzip annotations_trainval2014.zip into "
                        f"{path.parent.parent}\n{download_instructions(path.parent.parent)}")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read annotation file {path} ({e}); download annotations_trainval2014.zip again") from e
    missing = {"images", "annotations", "categories"} - set(data)
    if missing:
        raise DataError(f"annotation file {path} lacks {sorted(missing)}: not a COCO instance-annotation file")
    unknown = sorted({c["id"] for c in data["categories"]} - set(CATEGORY_IDS))
    if unknown:
        raise DataError(f"annotation file {path} has category ids {unknown} outside COCO 2014's 80 categories")
    return data


def rasterize(ann: Mapping, height: int, width: int, ann_file: Path, file_name: str) -> np.ndarray:
    """bool (H,W) mask of one annotation (polygons, or RLE compressed / uncompressed)."""
    import pycocotools.mask as mask_utils

    seg = ann.get("segmentation")
    if isinstance(seg, list):
        if not seg:
            return np.zeros((height, width), dtype=bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    elif isinstance(seg, dict) and "counts" in seg and "size" in seg:
        if list(seg["size"]) != [height, width]:
            raise DataError(
                f"annotation {ann.get('id')} in {ann_file} has a {seg['size'][0]}x{seg['size'][1]} mask but its image "
                f"{file_name} is {height}x{width} (HxW); the annotation file does not match the images")
        rle = mask_utils.frPyObjects(seg, height, width) if isinstance(seg["counts"], list) else seg
    else:
        raise DataError(f"annotation {ann.get('id')} in {ann_file} has no polygon or RLE segmentation")
    with warnings.catch_warnings():  # pycocotools 2.0.11 + numpy 2: a DeprecationWarning about copy=False
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)


def image_mask(info: Mapping, anns: Sequence[Mapping], ann_file: Path) -> np.ndarray:
    """uint8 (H,W) class-index mask of an image: annotations painted largest first with their class 1..80."""
    h, w = int(info["height"]), int(info["width"])
    mask = np.zeros((h, w), dtype=np.uint8)
    for ann in sorted(anns, key=lambda a: (-float(a.get("area", 0.0)), a.get("id", 0))):
        mask[rasterize(ann, h, w, ann_file, info["file_name"])] = CLASS_INDEX[ann["category_id"]]
    return mask


def image_label(anns: Iterable[Mapping]) -> np.ndarray:
    """float32 (80,) multi-hot of the annotated classes."""
    label = np.zeros(NUM_CLASSES, dtype=np.float32)
    for ann in anns:
        label[CLASS_INDEX[ann["category_id"]] - 1] = 1.0
    return label


def _place_image(src: Path, dst: Path, link: str) -> None:
    if dst.exists() or dst.is_symlink():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    if link == "symlink":
        dst.symlink_to(src.resolve())
    elif link == "hardlink":
        os.link(src, dst)
    else:
        shutil.copyfile(src, dst)


def build_split(
    coco_dir: str | os.PathLike, out_dir: str | os.PathLike, split: str, image_set: str, link: str = "symlink",
    ids: Sequence[str] | None = None, max_images: int | None = None, progress: bool = True,
) -> dict[str, np.ndarray]:
    """Masks, image links and the id list of one split; returns the split's image-level labels."""
    coco_dir, out_dir = Path(coco_dir), Path(out_dir)
    ann_file = annotation_file(coco_dir, image_set)
    data = load_annotations(ann_file)
    images = {Path(im["file_name"]).stem: im for im in data["images"]}
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    if ids is None:
        chosen = sorted(i for i, im in images.items() if by_image.get(im["id"]))
    else:
        chosen = list(ids)
        for image_id in chosen:
            if image_id not in images:
                raise DataError(f"image id {image_id!r} is not listed in {ann_file}")
            if not by_image.get(images[image_id]["id"]):
                raise DataError(f"image id {image_id!r} has no annotation in {ann_file}; it has no image-level "
                                "label: remove it from the id list")
    chosen = chosen[:max_images]
    labels: dict[str, np.ndarray] = {}
    for image_id in tqdm(chosen, disable=not progress, desc=f"COCO {image_set}", unit="img"):
        info = images[image_id]
        anns = by_image[info["id"]]
        src = coco_dir / image_set / info["file_name"]
        if not src.is_file():
            raise DataError(f"image {src} (listed in {ann_file}) not found; unzip {image_set}.zip into {coco_dir}")
        with Image.open(src) as im:
            size = (im.height, im.width)
        if size != (int(info["height"]), int(info["width"])):
            raise DataError(f"image {src} is {size[0]}x{size[1]} but {ann_file} says {info['height']}x{info['width']} "
                            "(HxW): the image and the annotation file do not belong together")
        mask_file = out_dir / MASK_DIR / f"{image_id}.png"
        if not mask_file.exists():
            save_label_atomic(mask_file, image_mask(info, anns, ann_file))
        _place_image(src, out_dir / IMAGE_DIR / f"{image_id}.jpg", link)
        labels[image_id] = image_label(anns)
    (out_dir / SPLIT_DIR).mkdir(parents=True, exist_ok=True)
    (out_dir / SPLIT_DIR / f"{split}.txt").write_text("".join(f"{i}\n" for i in chosen))
    return labels


def build(
    coco_dir: str | os.PathLike, out_dir: str | os.PathLike, splits: Mapping[str, str] = SPLITS,
    link: str = "symlink", ids: Mapping[str, Sequence[str]] | None = None, max_images: int | None = None,
    progress: bool = True,
) -> Path:
    """Build every split of `splits` ({split name: COCO image set}) and cls_labels_coco.npy; returns out_dir."""
    out_dir = Path(out_dir)
    labels: dict[str, np.ndarray] = {}
    for split, image_set in splits.items():
        labels.update(build_split(coco_dir, out_dir, split, image_set, link, (ids or {}).get(split), max_images,
                                  progress))
    np.save(out_dir / LABELS_FILE, labels, allow_pickle=True)
    return out_dir


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--coco-dir", required=True, type=Path, help="holds train2014/, val2014/, annotations/")
    parser.add_argument("--out", required=True, type=Path, help="the layout sipe reads (SIPE_COCO_ROOT)")
    parser.add_argument("--link", choices=("symlink", "hardlink", "copy"), default="symlink")
    parser.add_argument("--max-images", type=int, default=None, help="first n annotated images per split")
    args = parser.parse_args(argv)
    try:
        out = build(args.coco_dir, args.out, link=args.link, max_images=args.max_images)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote the COCO layout to {out}; export SIPE_COCO_ROOT={out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
