"""Data layer: VOC-layout files (`voc`), augmentation (`transforms`), torch datasets (`datasets`), synthetic data.

`datasets` needs torch and is imported on first use, so the data-preparation scripts stay light.
"""
from __future__ import annotations

from typing import Any

from .synthetic import make_synthetic_voc
from .voc import (CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, DataError, Problem, ScanReport, check_root, image_path,
    label_of, load_cls_labels, load_image, load_mask, mask_path, read_split, save_mask, scan_dataset)

_LAZY = {"TrainDataset", "InferenceDataset", "collate_train", "collate_single"}

__all__ = [
    "CLASS_NAMES", "IGNORE_INDEX", "NUM_CLASSES", "DataError", "Problem", "ScanReport", "check_root", "image_path",
    "label_of", "load_cls_labels", "load_image", "load_mask", "mask_path", "read_split", "save_mask", "scan_dataset",
    "make_synthetic_voc", *sorted(_LAZY),
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import datasets

        return getattr(datasets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
