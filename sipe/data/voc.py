"""PASCAL VOC 2012 (+ SBD "train_aug") in the VOCdevkit layout: ids, labels, images, masks, integrity scan.

Layout under a data root:
    JPEGImages/<id>.jpg                 RGB photographs
    SegmentationClassAug/<id>.png       index masks: 0 background, 1..20 classes, 255 void
    ImageSets/Segmentation/<split>.txt  one id per line
    cls_labels_voc.npy                  pickled dict {id: float32[20]} of image-level labels
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..infra.errors import SipeError
from ..infra.runtime import atomic_write_bytes

CLASS_NAMES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
NUM_CLASSES = 20
IGNORE_INDEX = 255
VALID_MASK_VALUES = frozenset(range(NUM_CLASSES + 1)) | {IGNORE_INDEX}

IMAGE_DIR = "JPEGImages"
MASK_DIR = "SegmentationClassAug"
SPLIT_DIR = Path("ImageSets") / "Segmentation"
LABELS_FILE = "cls_labels_voc.npy"

FIX_ROOT = "check SIPE_DATA_ROOT / data.root, or build the dataset as described in data_prep/README.md"
FIX_IMAGES = "re-extract JPEGImages from VOCtrainval_11-May-2012.tar (python -m data_prep.download_voc)"
FIX_MASKS = "rebuild SegmentationClassAug with python -m data_prep.convert_sbd"
FIX_LABELS = "rebuild the labels with python -m data_prep.make_cls_labels"


class DataError(SipeError):
    """The dataset on disk is missing or broken; the message names the file and how to fix it."""


def _root(root: str | os.PathLike) -> Path:
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"data root {path} does not exist or is not a folder; {FIX_ROOT}")
    return path


def split_path(root: str | os.PathLike, split: str) -> Path:
    """Path of the id list `ImageSets/Segmentation/<split>.txt`."""
    return Path(root) / SPLIT_DIR / f"{split}.txt"


def image_path(root: str | os.PathLike, image_id: str) -> Path:
    """Path of `JPEGImages/<id>.jpg`."""
    return Path(root) / IMAGE_DIR / f"{image_id}.jpg"


def mask_path(root: str | os.PathLike, image_id: str) -> Path:
    """Path of `SegmentationClassAug/<id>.png`."""
    return Path(root) / MASK_DIR / f"{image_id}.png"


def labels_path(root: str | os.PathLike) -> Path:
    """Path of `cls_labels_voc.npy`."""
    return Path(root) / LABELS_FILE


def read_split(root: str | os.PathLike, split: str) -> list[str]:
    """Ids listed in `ImageSets/Segmentation/<split>.txt`, in file order.

    A line's first token is the id; `/JPEGImages/<id>.jpg ...` style lines are reduced to `<id>`.
    A difference of lists, e.g. `train_aug-train-val`, gives the first list's ids that are in none of the
    others (a selection split that needs no file of its own).
    """
    if "-" in split:
        first, *others = split.split("-")
        excluded = {i for other in others for i in read_split(root, other)}
        ids = [i for i in read_split(root, first) if i not in excluded]
        if not ids:
            raise DataError(f"split {split!r} is empty: every id of {first!r} is in {others}")
        return ids
    path = split_path(_root(root), split)
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.txt")) if path.parent.is_dir() else []
        raise DataError(
            f"split list {path} not found (available splits: {available or 'none'}); "
            f"write it with python -m data_prep.convert_sbd, or {FIX_ROOT}"
        )
    ids = []
    for line in path.read_text().splitlines():
        token = line.split()[0] if line.strip() else ""
        if token:
            ids.append(Path(token).stem if "/" in token else token)
    if not ids:
        raise DataError(f"split list {path} is empty; rebuild it with python -m data_prep.convert_sbd")
    return ids


_FINGERPRINTS: list[dict[tuple[str, str, int | None], str]] = []
"""The memo of the outermost open `fingerprints_memoized` block (empty outside one)."""


@contextmanager
def fingerprints_memoized() -> Iterator[None]:
    """Within the block, `fingerprint` computes each (root, split, max_images) once: for a reader that checks many
    units against data that does not change meanwhile (`sipe.study.loading.load`). A block inside another shares
    the outer one's memo; outside every block, every call reads the data."""
    outermost = not _FINGERPRINTS
    if outermost:
        _FINGERPRINTS.append({})
    try:
        yield
    finally:
        if outermost:
            _FINGERPRINTS.pop()


def fingerprint(root: str | os.PathLike, split: str, max_images: int | None = None) -> str:
    """16-hex digest of what a stage reads from a data root: the split's ids (in order, up to
    `max_images`), each image's and mask's file size, and the label file's bytes. The root's path is not
    part of it, so the same data under another folder gives the same fingerprint."""
    root = _root(root)
    key = (str(root.resolve()), split, max_images)
    if _FINGERPRINTS and key in _FINGERPRINTS[-1]:
        return _FINGERPRINTS[-1][key]
    h = hashlib.sha256()
    for image_id in read_split(root, split)[:max_images]:
        sizes = [p.stat().st_size if p.is_file() else -1 for p in (image_path(root, image_id), mask_path(root, image_id))]
        h.update(f"{image_id} {sizes[0]} {sizes[1]}\n".encode())
    labels = labels_path(root)
    h.update(hashlib.sha256(labels.read_bytes()).digest() if labels.is_file() else b"no labels")
    digest = h.hexdigest()[:16]
    if _FINGERPRINTS:
        _FINGERPRINTS[-1][key] = digest
    return digest


def read_label_file(path: str | os.PathLike, num_classes: int, fix: str) -> dict[str, np.ndarray]:
    """Image-level labels {id: float32 (num_classes,) multi-hot} from a pickled dict file (`cls_labels_*.npy`);
    DataError naming `path` and `fix` when the file is missing, unreadable, not a dict, or holds a label of
    another shape or with values other than 0 and 1."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"label file {path} not found; {fix}")
    try:
        raw = np.load(path, allow_pickle=True).item()
    except (OSError, ValueError, EOFError, pickle.UnpicklingError) as e:
        raise DataError(f"cannot read label file {path} ({e}); {fix}") from e
    if not isinstance(raw, dict):
        raise DataError(f"label file {path} holds a {type(raw).__name__}, expected a dict {{id: [{num_classes}]}}; {fix}")
    labels = {}
    for key, value in raw.items():
        arr = np.asarray(value, dtype=np.float32)
        if arr.shape != (num_classes,):
            raise DataError(f"label of {key!r} in {path} has shape {arr.shape}, expected ({num_classes},); {fix}")
        labels[str(key)] = arr
    if labels:
        values = np.stack(list(labels.values()))
        bad = [key for key, ok in zip(labels, np.isin(values, (0.0, 1.0)).all(axis=1)) if not ok]
        if bad:
            raise DataError(
                f"label file {path}: labels must be 0 or 1, but {len(bad)} id(s) hold other values "
                f"(e.g. {bad[0]!r}: {labels[bad[0]].tolist()}); {fix}"
            )
    return labels


def load_cls_labels(root: str | os.PathLike) -> dict[str, np.ndarray]:
    """Image-level labels {id: float32 (20,) multi-hot} from `cls_labels_voc.npy` (`read_label_file`)."""
    return read_label_file(labels_path(_root(root)), NUM_CLASSES, FIX_LABELS)


def check_root(root: str | os.PathLike, splits: Sequence[str]) -> dict[str, list[str]]:
    """A cheap check of a data root (no image is decoded): the image and mask folders exist, every split list
    in `splits` is present and non-empty, the label file is readable with labels in {0, 1}, and every id of
    the splits has a label. Returns {split: ids}; raises DataError naming the file and the fix."""
    path = _root(root)
    for folder, fix in ((IMAGE_DIR, FIX_IMAGES), (MASK_DIR, FIX_MASKS)):
        if not (path / folder).is_dir():
            raise DataError(f"folder {path / folder} not found; {fix}")
    ids = {split: read_split(path, split) for split in dict.fromkeys(splits)}
    labels = load_cls_labels(path)
    for split, split_ids in ids.items():
        unlabelled = [i for i in split_ids if i not in labels]
        if unlabelled:
            raise DataError(
                f"{len(unlabelled)} id(s) of split {split!r} (e.g. {unlabelled[0]!r}) have no label in "
                f"{labels_path(path)}; {FIX_LABELS} for that split"
            )
    return ids


def label_of(labels: dict[str, np.ndarray], image_id: str, path: str | os.PathLike = LABELS_FILE) -> np.ndarray:
    """The (20,) label of `image_id`; DataError naming the label file when the id has none."""
    try:
        return labels[image_id]
    except KeyError:
        raise DataError(
            f"image id {image_id!r} has no image-level label in {path}; {FIX_LABELS} "
            "for the splits you use, or remove the id from the split list"
        ) from None


def _open_fully(path: Path, what: str, fix: str) -> Image.Image:
    if not path.is_file():
        raise DataError(f"{what} {path} not found; {fix}")
    try:
        img = Image.open(path)
        img.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{what} {path} cannot be decoded ({e}): truncated or corrupt; {fix}") from e
    return img


def load_image(root: str | os.PathLike, image_id: str) -> np.ndarray:
    """uint8 (H,W,3) RGB pixels of `JPEGImages/<id>.jpg`, fully decoded (truncated files raise)."""
    img = _open_fully(image_path(root, image_id), "image", FIX_IMAGES)
    return np.array(img.convert("RGB"), dtype=np.uint8)


def load_mask(root: str | os.PathLike, image_id: str) -> np.ndarray:
    """uint8 (H,W) class indices of `SegmentationClassAug/<id>.png` (0..20, 255 void)."""
    path = mask_path(root, image_id)
    img = _open_fully(path, "mask", FIX_MASKS)
    if img.mode not in ("L", "P"):
        raise DataError(f"mask {path} has mode {img.mode}, expected an index PNG (mode L or P); {FIX_MASKS}")
    return np.array(img, dtype=np.uint8)


def voc_palette() -> list[int]:
    """The 256-entry VOC colour map as a flat [r, g, b, ...] list (index 255 is (224, 224, 192))."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette += [r, g, b]
    return palette


def save_mask(path: str | os.PathLike, mask: np.ndarray) -> None:
    """Write uint8 (H,W) class indices as a VOC-palette index PNG (atomically: no half-written file)."""
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"mask must be uint8 (H,W), got {mask.dtype} {mask.shape}")
    img = Image.fromarray(mask)
    img.putpalette(voc_palette())
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


@dataclass(frozen=True)
class Problem:
    """One bad file found by `scan_dataset`."""

    kind: str
    image_id: str
    path: Path
    detail: str

    def __str__(self) -> str:
        return f"[{self.kind}] {self.image_id}: {self.detail}"


@dataclass
class ScanReport:
    """Result of `scan_dataset`: how many ids were checked and every problem found."""

    root: Path
    split: str
    n_checked: int
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        head = f"{self.root} split {self.split!r}: {self.n_checked} ids checked, {len(self.problems)} problem(s)"
        return "\n".join([head, *(f"  {p}" for p in self.problems)])


def _check_image(root: Path, image_id: str) -> tuple[tuple[int, int] | None, list[Problem]]:
    path = image_path(root, image_id)
    if not path.is_file():
        return None, [Problem("missing image", image_id, path, f"image {path} not found; {FIX_IMAGES}")]
    try:
        with Image.open(path) as img:
            img.load()
            return (img.height, img.width), []
    except (OSError, SyntaxError, ValueError) as e:
        detail = f"image {path} cannot be decoded ({e}): truncated or corrupt; {FIX_IMAGES}"
        return None, [Problem("unreadable image", image_id, path, detail)]


def _check_mask(root: Path, image_id: str, image_size: tuple[int, int] | None) -> list[Problem]:
    path = mask_path(root, image_id)
    try:
        mask = load_mask(root, image_id)
    except DataError as e:
        return [Problem("unreadable mask" if path.is_file() else "missing mask", image_id, path, str(e))]
    problems = []
    if image_size is not None and mask.shape != image_size:
        problems.append(Problem(
            "mask size", image_id, path,
            f"mask {path} is {mask.shape[0]}x{mask.shape[1]} but its image is {image_size[0]}x{image_size[1]} (HxW); "
            f"{FIX_MASKS}",
        ))
    bad = sorted(set(np.unique(mask).tolist()) - VALID_MASK_VALUES)
    if bad:
        detail = f"mask {path} holds values {bad} outside 0..20 and 255; {FIX_MASKS}"
        problems.append(Problem("mask values", image_id, path, detail))
    return problems


def scan_dataset(
    root: str | os.PathLike, split: str, check_masks: bool = True, max_images: int | None = None
) -> ScanReport:
    """Decode every image (and mask) of a split and report each bad file.

    Checks: image present and fully decodable, id has a label, and with `check_masks` the mask is present,
    decodable, the image's size and holds only 0..20 / 255. A missing root, list or label file raises
    DataError at once. `max_images` limits the scan to the first n ids.
    """
    root = _root(root)
    ids = read_split(root, split)[:max_images]
    labels = load_cls_labels(root)
    report = ScanReport(root=root, split=split, n_checked=len(ids))
    for image_id in ids:
        if image_id not in labels:
            report.problems.append(Problem(
                "no label", image_id, labels_path(root),
                f"id {image_id!r} has no image-level label in {labels_path(root)}; {FIX_LABELS}",
            ))
        size, problems = _check_image(root, image_id)
        report.problems.extend(problems)
        if check_masks:
            report.problems.extend(_check_mask(root, image_id, size))
    return report
