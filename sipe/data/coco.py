"""MS COCO 2014 in the layout the rest of `sipe` reads (built by `python -m data_prep.make_coco`).

`data_prep.make_coco` turns the 2014 instance annotations into the same folder layout as VOC, so that
training, maps, evaluation and denseCRF run unchanged with 80 classes:

    JPEGImages/<id>.jpg                 links to (or copies of) train2014/ and val2014/ images
    SegmentationClassAug/<id>.png       class-index masks: 0 background, 1..80 (CATEGORY_IDS order), 255 void
    ImageSets/Segmentation/train.txt    train2014 ids with at least one annotation; val.txt: val2014's
    cls_labels_coco.npy                 pickled dict {id: float32[80]} of image-level labels

Ids are the file stems (`COCO_train2014_000000000009`). Class k (1..80) is the k-th id of CATEGORY_IDS:
COCO's category ids run 1..90 with gaps, in the order of the official annotation files.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .voc import LABELS_FILE as VOC_LABELS_FILE
from .voc import read_label_file

COCO_ROOT_ENV = "SIPE_COCO_ROOT"
LABELS_FILE = "cls_labels_coco.npy"
NUM_CLASSES = 80

CATEGORY_IDS: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33,
    34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61,
    62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)
CLASS_NAMES: tuple[str, ...] = (
    "background", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse",
    "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie",
    "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
    "skateboard", "surfboard", "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl",
    "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)
CLASS_INDEX = {cat_id: k + 1 for k, cat_id in enumerate(CATEGORY_IDS)}
"""COCO category id -> class index 1..80 (0 is background)."""

FIX_LABELS = "rebuild the COCO layout with python -m data_prep.make_coco"

# The files of MS COCO 2014 (cocodataset.org), and where data_prep.make_coco expects them.
COCO_FILES: tuple[tuple[str, str, str], ...] = (
    ("train2014.zip", "http://images.cocodataset.org/zips/train2014.zip", "train2014/ (82,783 images, 13 GB)"),
    ("val2014.zip", "http://images.cocodataset.org/zips/val2014.zip", "val2014/ (40,504 images, 6 GB)"),
    ("annotations_trainval2014.zip", "http://images.cocodataset.org/annotations/annotations_trainval2014.zip",
     "annotations/instances_{train,val}2014.json (241 MB)"),
)


def labels_path(root: str | os.PathLike) -> Path:
    """Path of `cls_labels_coco.npy`."""
    return Path(root) / LABELS_FILE


def load_cls_labels(root: str | os.PathLike) -> dict[str, np.ndarray]:
    """Image-level labels {id: float32 (80,) multi-hot} from `<root>/cls_labels_coco.npy` (`voc.read_label_file`)."""
    return read_label_file(labels_path(root), NUM_CLASSES, FIX_LABELS)


def detect_dataset(root: str | os.PathLike) -> str:
    """'coco' when `root` holds cls_labels_coco.npy and no cls_labels_voc.npy, else 'voc'."""
    root = Path(root)
    if labels_path(root).is_file() and not (root / VOC_LABELS_FILE).is_file():
        return "coco"
    return "voc"


def dataset_info(dataset: str) -> tuple[int, tuple[str, ...]]:
    """(foreground classes K, class names incl. background) of 'voc' or 'coco'."""
    from . import voc

    if dataset == "voc":
        return voc.NUM_CLASSES, voc.CLASS_NAMES
    if dataset == "coco":
        return NUM_CLASSES, CLASS_NAMES
    raise ValueError(f"unknown dataset {dataset!r}; use 'voc' or 'coco'")


def config_overrides(root: str | os.PathLike) -> dict[str, object]:
    """`section.field` overrides that point an experiment at a COCO root made by data_prep.make_coco."""
    return {"data.root": str(root), "data.dataset": "coco", "data.num_classes": NUM_CLASSES,
            "data.train_split": "train", "infer.split": "train"}


def coco_root(root: str | os.PathLike = "") -> Path | None:
    """The COCO layout root: `root`, else $SIPE_COCO_ROOT; None when unset or not built yet."""
    value = str(root) or os.environ.get(COCO_ROOT_ENV, "")
    if not value:
        return None
    path = Path(value).expanduser()
    return path if labels_path(path).is_file() else None


def download_instructions(raw_dir: str | os.PathLike = "DATA/coco2014", out_dir: str | os.PathLike = "DATA/coco_sipe") -> str:
    """What to download for COCO 2014, where to put it, and how to build the layout `sipe` reads."""
    raw = Path(raw_dir)
    lines = [f"MS COCO 2014 is not available. Fetch these files (on a machine with internet) into {raw}/ and unzip "
             "them there (relative paths are taken from the repository root):"]
    for name, url, contents in COCO_FILES:
        lines.append(f"  - {name}  from {url}  ->  {raw}/{contents}")
    lines += [
        "then build the layout sipe reads (image-level labels, class-index PNG masks, train/val lists), from the "
        "repository root:",
        f"  python -m data_prep.make_coco --coco-dir {raw} --out {out_dir}",
        f"and point the study at it: export {COCO_ROOT_ENV}={out_dir} (or the notebook parameter coco_root).",
        "(python -m data_prep.download_coco --out DIR downloads and unzips them when the machine has internet.)",
    ]
    return "\n".join(lines)
