"""Images with dense label maps for IRN and segmentation training: pseudo labels, IR labels or ground truth.

A label source is either "gt" (the root's `SegmentationClassAug/<id>.png`) or a folder of `<id>.png`
class-index maps (0 background, 1..K classes, 255 void) written by an earlier stage. Every label map must
have its image's size; a missing or wrongly sized file raises DataError naming it.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..data import transforms as T
from ..data import voc
from ..data.voc import IGNORE_INDEX, DataError

GROUND_TRUTH = "gt"
FIX_STAGE = "re-run the stage that writes this folder (it resumes and fills in missing files)"


def label_path(root: str | os.PathLike, source: str | os.PathLike, image_id: str) -> Path:
    """Where the label map of `image_id` lives for a source ('gt' or a folder)."""
    return voc.mask_path(root, image_id) if str(source) == GROUND_TRUTH else Path(source) / f"{image_id}.png"


def load_label(root: str | os.PathLike, source: str | os.PathLike, image_id: str) -> np.ndarray:
    """uint8 (H,W) label map of `image_id` from a source ('gt' = the root's masks, else a folder of PNGs)."""
    if str(source) == GROUND_TRUTH:
        return voc.load_mask(root, image_id)
    path = label_path(root, source, image_id)
    if not path.is_file():
        raise DataError(f"label map {path} not found; {FIX_STAGE}")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in ("L", "P"):
                raise DataError(f"label map {path} has mode {img.mode}, expected an index PNG (L or P); {FIX_STAGE}")
            return np.array(img, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"label map {path} cannot be decoded ({e}): truncated or corrupt; {FIX_STAGE}") from e


def check_same_size(label: np.ndarray, image: np.ndarray, label_file: Path, image_file: Path) -> None:
    """DataError naming both files when a label map is not the size of its image."""
    if label.shape != image.shape[:2]:
        raise DataError(
            f"label map {label_file} is {label.shape[0]}x{label.shape[1]} but its image {image_file} is "
            f"{image.shape[0]}x{image.shape[1]} (HxW); label maps must be made at full image resolution"
        )


def save_label_atomic(path: str | os.PathLike, label: np.ndarray) -> Path:
    """Write a uint8 (H,W) class-index PNG (VOC palette) through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    try:
        voc.save_mask(tmp, np.ascontiguousarray(label, dtype=np.uint8))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@dataclass(frozen=True)
class LabelDirLabeler:
    """Labeler for `sipe.stages.evaluation.accumulate_confusion`: `(id) -> uint8 (H,W)` read from a label source."""

    root: str
    source: str

    def __call__(self, image_id: str) -> np.ndarray:
        return load_label(self.root, self.source, image_id)


def evaluate_label_dir(
    source: str | os.PathLike,
    root: str | os.PathLike,
    ids: Sequence[str],
    num_classes: int = 21,
    class_names: Sequence[str] | None = None,
    void_as_background: bool = False,
    split: str | None = None,
    progress: bool = False,
):
    """MIoUResult of the label maps of `source` on `ids` against the root's ground truth.

    Void (255) predictions are ignored (the pixel is not counted) unless `void_as_background`.
    """
    from .evaluation import MIoUResult, accumulate_confusion, miou_result

    conf = accumulate_confusion(ids, LabelDirLabeler(str(root), str(source)), root, num_classes,
                                void_as=0 if void_as_background else None, progress=progress,
                                desc=f"evaluating {Path(source).name}")[0]
    r = miou_result(conf, class_names, "gt", split, len(ids))
    how = "void counted as background" if void_as_background else "void pixels ignored"
    return MIoUResult(r.miou, r.per_class, r.classes, f"{r.note}; {how}", r.confusion)


def missing_labels(root: str | os.PathLike, source: str | os.PathLike, ids: Sequence[str]) -> list[Path]:
    """Label files of `ids` that do not exist."""
    return [p for p in (label_path(root, source, i) for i in ids) if not p.is_file()]


class LabelledCropDataset(Dataset):
    """Augmented crops of images with their label maps (IRN's VOC12SegmentationDataset augmentation).

    Item: dict(id=str, img=float32 (3,S,S) normalised, label=int64 (S,S) with 255 on void and padding).
    Augmentation: scale by a factor drawn uniformly from `scale_range` (image bicubic, labels nearest),
    horizontal flip, normalisation, random SxS crop (image padded with 0, labels with 255). Item i of epoch
    e draws from np.random.default_rng((seed, e, i)); call `set_epoch(e)` before each epoch.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        ids: Sequence[str],
        labels: str | os.PathLike,
        crop_size: int,
        scale_range: tuple[float, float],
        mean: Sequence[float],
        std: Sequence[float],
        seed: int = 0,
        flip: bool = True,
    ) -> None:
        self.root = Path(root).expanduser()
        self.ids = list(ids)
        self.labels = str(labels)
        if not self.ids:
            raise ValueError("LabelledCropDataset needs at least one image id")
        lo, hi = (float(s) for s in scale_range)
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range={scale_range}: need 0 < low <= high")
        if crop_size <= 0:
            raise ValueError(f"crop size must be positive, got {crop_size}")
        missing_img = [voc.image_path(self.root, i) for i in self.ids if not voc.image_path(self.root, i).is_file()]
        if missing_img:
            raise DataError(f"{len(missing_img)} image file(s) are missing (first: "
                            f"{', '.join(str(p) for p in missing_img[:5])}); {voc.FIX_IMAGES}")
        missing = missing_labels(self.root, self.labels, self.ids)
        if missing:
            fix = voc.FIX_MASKS if self.labels == GROUND_TRUTH else FIX_STAGE
            raise DataError(f"{len(missing)} label map(s) are missing (first: {', '.join(str(p) for p in missing[:5])}); {fix}")
        self.crop_size = int(crop_size)
        self.scale_range = (lo, hi)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.seed = int(seed)
        self.flip = bool(flip)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.ids)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng((self.seed, self.epoch, index))

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The item's uint8 image (H,W,3) and uint8 label map (H,W), size-checked."""
        image_id = self.ids[index]
        img = voc.load_image(self.root, image_id)
        label = load_label(self.root, self.labels, image_id)
        check_same_size(label, img, label_path(self.root, self.labels, image_id), voc.image_path(self.root, image_id))
        return img, label

    def __getitem__(self, index: int) -> dict[str, Any]:
        img, label = self.load(index)
        rng = self.rng(index)
        scale = float(rng.uniform(*self.scale_range))
        size = T.scaled_size(img.shape[:2], scale)
        size = (max(1, size[0]), max(1, size[1]))
        img, label = T.resize(img, size, "bicubic"), T.resize(label, size, "nearest")
        if self.flip and rng.random() < 0.5:
            img, label = T.hflip(img), T.hflip(label)
        box = T.random_crop_box(img.shape[:2], self.crop_size, rng)
        img = T.crop_with_box(T.normalize(img, self.mean, self.std), box, self.crop_size, 0.0)
        label = T.crop_with_box(label, box, self.crop_size, IGNORE_INDEX)
        return {
            "id": self.ids[index],
            "img": torch.from_numpy(T.hwc_to_chw(img)),
            "label": torch.from_numpy(label.astype(np.int64)),
        }
