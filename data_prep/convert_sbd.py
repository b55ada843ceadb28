"""Build SegmentationClassAug/ and ImageSets/Segmentation/train_aug.txt from VOC 2012 + SBD.

    python -m data_prep.convert_sbd --voc-root DATA/VOCdevkit/VOC2012 --sbd-root DATA/benchmark_RELEASE/dataset

Masks: the official VOC SegmentationClass PNG (with its 255 borders) where it exists, otherwise the SBD
`cls/<id>.mat` (GTcls.Segmentation). train_aug = SBD train + SBD val + VOC train, minus VOC val.
Every file is written atomically (a temporary file renamed into place), so an interrupted run leaves no
half-written mask; running it again rewrites them all.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image
from tqdm import tqdm

from sipe.data.voc import MASK_DIR, NUM_CLASSES, SPLIT_DIR, VALID_MASK_VALUES, DataError, save_mask
from sipe.infra.errors import cli_entry
from sipe.infra.runtime import atomic_write_text

VOC_MASK_DIR = "SegmentationClass"


def read_ids(path: str | os.PathLike) -> list[str]:
    """Ids listed one per line in a text file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"id list {path} not found; extract the archive with python -m data_prep.download_voc")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def train_aug_ids(sbd_train: Iterable[str], sbd_val: Iterable[str], voc_train: Iterable[str],
                  voc_val: Iterable[str]) -> list[str]:
    """Sorted (SBD train | SBD val | VOC train) - VOC val."""
    return sorted((set(sbd_train) | set(sbd_val) | set(voc_train)) - set(voc_val))


def load_sbd_mask(path: str | os.PathLike) -> np.ndarray:
    """uint8 (H,W) class indices of an SBD `cls/<id>.mat` (field GTcls.Segmentation)."""
    try:
        mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
        seg = np.asarray(mat["GTcls"].Segmentation)
    except (OSError, ValueError, KeyError, AttributeError) as e:
        raise DataError(f"cannot read GTcls.Segmentation from {path} ({e}); re-extract benchmark.tgz") from e
    if seg.ndim != 2 or seg.size == 0 or seg.min() < 0 or seg.max() > NUM_CLASSES:
        raise DataError(f"{path}: GTcls.Segmentation is not an (H,W) map of 0..{NUM_CLASSES}; re-extract benchmark.tgz")
    return seg.astype(np.uint8)


def load_voc_mask(path: str | os.PathLike) -> np.ndarray:
    """uint8 (H,W) class indices of an official VOC SegmentationClass palette PNG (255 borders kept)."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L"):
                raise DataError(f"{path} has mode {img.mode}, expected a palette PNG; re-extract the VOC tar")
            mask = np.asarray(img, dtype=np.uint8)
    except OSError as e:
        raise DataError(f"cannot read {path} ({e}); re-extract VOCtrainval_11-May-2012.tar") from e
    bad = sorted(set(np.unique(mask).tolist()) - VALID_MASK_VALUES)
    if bad:
        raise DataError(f"{path} holds values {bad} outside 0..20/255; re-extract VOCtrainval_11-May-2012.tar")
    return mask


def mask_for(image_id: str, voc_root: Path, sbd_root: Path) -> np.ndarray:
    """The id's mask: the VOC PNG when present, else the SBD .mat."""
    png = voc_root / VOC_MASK_DIR / f"{image_id}.png"
    if png.is_file():
        return load_voc_mask(png)
    mat = sbd_root / "cls" / f"{image_id}.mat"
    if mat.is_file():
        return load_sbd_mask(mat)
    raise DataError(f"no mask for {image_id!r}: neither {png} nor {mat} exists; check --voc-root and --sbd-root")


@dataclass(frozen=True)
class ConvertResult:
    """What `convert` wrote: the train_aug ids and how many masks came from VOC / SBD."""

    train_aug: list[str]
    n_from_voc: int
    n_from_sbd: int


def convert(voc_root: str | os.PathLike, sbd_root: str | os.PathLike, progress: bool = False) -> ConvertResult:
    """Write SegmentationClassAug/<id>.png for train_aug + VOC train + VOC val, and train_aug.txt."""
    voc_root, sbd_root = Path(voc_root), Path(sbd_root)
    voc_train = read_ids(voc_root / SPLIT_DIR / "train.txt")
    voc_val = read_ids(voc_root / SPLIT_DIR / "val.txt")
    train_aug = train_aug_ids(read_ids(sbd_root / "train.txt"), read_ids(sbd_root / "val.txt"), voc_train, voc_val)
    ids = sorted(set(train_aug) | set(voc_train) | set(voc_val))
    n_voc = 0
    for image_id in tqdm(ids, desc="masks", disable=not progress, file=sys.stderr):
        n_voc += (voc_root / VOC_MASK_DIR / f"{image_id}.png").is_file()
        save_mask(voc_root / MASK_DIR / f"{image_id}.png", mask_for(image_id, voc_root, sbd_root))
    atomic_write_text(voc_root / SPLIT_DIR / "train_aug.txt", "".join(f"{i}\n" for i in train_aug))
    return ConvertResult(train_aug=train_aug, n_from_voc=n_voc, n_from_sbd=len(ids) - n_voc)


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voc-root", required=True, type=Path, help="VOCdevkit/VOC2012")
    parser.add_argument("--sbd-root", required=True, type=Path, help="benchmark_RELEASE/dataset")
    args = parser.parse_args(argv)
    result = convert(args.voc_root, args.sbd_root, progress=True)
    print(
        f"wrote {result.n_from_voc + result.n_from_sbd} masks to {args.voc_root / MASK_DIR} "
        f"({result.n_from_voc} from VOC, {result.n_from_sbd} from SBD) and "
        f"{len(result.train_aug)} ids to {args.voc_root / SPLIT_DIR / 'train_aug.txt'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
