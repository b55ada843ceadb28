"""Torch datasets over a VOC-layout root: augmented training crops and multi-scale + flip inference inputs.

Both validate cheaply at construction (split list, label file, a label and an image file for every id)
so that a broken dataset fails before training starts; unreadable files raise DataError in __getitem__.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from . import transforms as T
from .voc import (FIX_IMAGES, FIX_LABELS, DataError, image_path, label_of, labels_path, load_cls_labels, load_image,
    read_split)


def _checked_ids(
    root: Path, split: str, max_images: int | None, labels: dict[str, np.ndarray], labels_file: Path | None = None
) -> list[str]:
    if max_images is not None and max_images <= 0:
        raise ValueError(f"max_images must be positive or None, got {max_images}")
    ids = read_split(root, split)[:max_images]
    unlabeled = [i for i in ids if i not in labels]
    if unlabeled:
        raise DataError(
            f"{len(unlabeled)} id(s) of split {split!r} have no image-level label in {labels_file or labels_path(root)} "
            f"(first: {unlabeled[:5]}); {FIX_LABELS}"
        )
    missing = [image_path(root, i) for i in ids if not image_path(root, i).is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} image file(s) of split {split!r} are missing (first: "
            f"{', '.join(str(p) for p in missing[:5])}); {FIX_IMAGES}"
        )
    return ids


def load_dataset_labels(root: Path, dataset: str | None = None) -> tuple[str, dict[str, np.ndarray], Path]:
    """(dataset, labels {id: float32 (K,)}, label file) of a root: 'voc' (K=20) or 'coco' (K=80); None detects it."""
    from . import coco

    dataset = dataset or coco.detect_dataset(root)
    if dataset == "voc":
        return dataset, load_cls_labels(root), labels_path(root)
    if dataset == "coco":
        return dataset, coco.load_cls_labels(root), coco.labels_path(root)
    raise ValueError(f"unknown dataset {dataset!r}; use 'voc' or 'coco'")


class _VOCDataset(Dataset):
    def __init__(self, root: str | os.PathLike, split: str, max_images: int | None, dataset: str | None = None) -> None:
        self.root = Path(root).expanduser()
        self.split = split
        self.dataset, self.labels, self.labels_file = load_dataset_labels(self.root, dataset)
        self.ids = _checked_ids(self.root, split, max_images, self.labels, self.labels_file)

    def __len__(self) -> int:
        return len(self.ids)

    def label(self, index: int) -> np.ndarray:
        """float32 (K,) image-level label of item `index` (K = 20 for VOC, 80 for COCO)."""
        return label_of(self.labels, self.ids[index], self.labels_file)


class TrainDataset(_VOCDataset):
    """Augmented training crops with image-level labels.

    Item: dict(id=str, img=float32 (3,S,S), label=float32 (20,), valid_mask=float32 (S,S)).
    The augmentation of item i in epoch e is drawn from np.random.default_rng((seed, e, i)): call
    `set_epoch(e)` before each epoch (DataLoader workers get the updated copy when not persistent).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        resize_long: tuple[int, int],
        crop_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        max_images: int | None = None,
        seed: int = 0,
        dataset: str | None = None,
    ) -> None:
        super().__init__(root, split, max_images, dataset)
        self.resize_long = (int(resize_long[0]), int(resize_long[1]))
        self.crop_size = int(crop_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def rng(self, index: int) -> np.random.Generator:
        """The generator of item `index` in the current epoch."""
        return np.random.default_rng((self.seed, self.epoch, index))

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id = self.ids[index]
        img, valid = T.train_transform(
            load_image(self.root, image_id), self.rng(index), self.resize_long, self.crop_size, self.mean, self.std
        )
        return {
            "id": image_id,
            "img": torch.from_numpy(img),
            "label": torch.from_numpy(self.label(index).copy()),
            "valid_mask": torch.from_numpy(valid),
        }


def scale_views(img: np.ndarray, scale: float, mean: Sequence[float], std: Sequence[float], flip: bool = True) -> torch.Tensor:
    """Inference input of one scale: uint8 (H,W,3) -> float32 (2,3,h,w) image + horizontal flip (or (1,3,h,w)),
    rescaled bicubically (IRN's pil_rescale) and normalised with the backbone's mean/std."""
    x = T.hwc_to_chw(T.normalize(T.rescale(img, scale, "bicubic"), mean, std))
    views = [x, np.ascontiguousarray(x[:, :, ::-1])] if flip else [x]
    return torch.from_numpy(np.stack(views))


class InferenceDataset(_VOCDataset):
    """Whole images at several scales, each with its horizontal flip.

    Item: dict(id=str, label=float32 (20,), size=(H, W), images=list over scales of float32
    (2,3,h_s,w_s) tensors (image, flipped image; only the image when flip=False)) where
    (h_s, w_s) = (round(H*s), round(W*s)), resized bicubically as IRN's pil_rescale.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        scales: Sequence[float],
        mean: Sequence[float],
        std: Sequence[float],
        flip: bool = True,
        max_images: int | None = None,
        dataset: str | None = None,
    ) -> None:
        super().__init__(root, split, max_images, dataset)
        if not scales or any(s <= 0 for s in scales):
            raise ValueError(f"scales must be a non-empty list of positive numbers, got {scales}")
        self.scales = tuple(float(s) for s in scales)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.flip = bool(flip)

    def scale_inputs(self, img: np.ndarray) -> list[torch.Tensor]:
        """uint8 (H,W,3) -> list over scales of float32 (2 or 1,3,h_s,w_s)."""
        return [scale_views(img, scale, self.mean, self.std, self.flip) for scale in self.scales]

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id = self.ids[index]
        img = load_image(self.root, image_id)
        return {
            "id": image_id,
            "label": torch.from_numpy(self.label(index).copy()),
            "size": (int(img.shape[0]), int(img.shape[1])),
            "images": self.scale_inputs(img),
        }


def collate_train(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack TrainDataset items: id -> list[str], img (N,3,S,S), label (N,20), valid_mask (N,S,S)."""
    return default_collate(batch)


def collate_single(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Unwrap a batch of one InferenceDataset item (images differ in size, so inference uses batch size 1)."""
    if len(batch) != 1:
        raise ValueError(f"InferenceDataset items cannot be stacked: use batch_size=1, got {len(batch)}")
    return batch[0]
