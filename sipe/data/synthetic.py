"""A tiny, learnable VOC-layout dataset: coloured shapes of distinct classes on a textured background.

Each class has its own saturated colour; the background is a low-saturation texture. Masks mark object
pixels with their class and a 255 band along every boundary, like VOC; labels list the classes visible
in the mask. Everything is deterministic given the seed.
"""
from __future__ import annotations

import colorsys
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..infra.runtime import atomic_save_npy, atomic_write_bytes, atomic_write_text
from .voc import IGNORE_INDEX, IMAGE_DIR, LABELS_FILE, MASK_DIR, NUM_CLASSES, SPLIT_DIR, save_mask


def class_colours(n: int = NUM_CLASSES) -> np.ndarray:
    """uint8 (n,3) distinct saturated colours, class c+1 at row c (hues spread, alternating brightness)."""
    rows = []
    for c in range(n):
        hue = (c * 7 % n) / n
        value = 1.0 if c % 2 == 0 else 0.65
        rows.append([round(255 * v) for v in colorsys.hsv_to_rgb(hue, 0.9, value)])
    return np.asarray(rows, dtype=np.uint8)


def _background(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(90, 160)
    tint = rng.uniform(-12, 12, size=3)
    fy, fx, phase = rng.uniform(0.05, 0.3), rng.uniform(0.05, 0.3), rng.uniform(0, 2 * np.pi)
    stripes = 18 * np.sin(fy * yy + fx * xx + phase)
    noise = rng.normal(0, 8, size=(h, w, 3))
    img = base + tint + stripes[..., None] + noise
    return np.clip(img, 0, 255).astype(np.uint8)


def _shape_mask(rng: np.random.Generator, size: tuple[int, int], scale: float = 1.0) -> np.ndarray:
    """bool (H,W): an ellipse or a rectangle of height 0.3-0.6 H and width 0.25-0.5 W, times `scale`."""
    h, w = size
    sh = int(rng.integers(max(8, int(0.3 * scale * h)), max(9, int(0.6 * scale * h)) + 1))
    sw = int(rng.integers(max(8, int(0.25 * scale * w)), max(9, int(0.5 * scale * w)) + 1))
    top = int(rng.integers(2, max(3, h - sh - 2)))
    left = int(rng.integers(2, max(3, w - sw - 2)))
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    box = (left, top, left + sw - 1, top + sh - 1)
    if rng.random() < 0.5:
        draw.ellipse(box, fill=1)
    else:
        draw.rectangle(box, fill=1)
    return np.asarray(canvas, dtype=bool)


def _boundary(label_map: np.ndarray) -> np.ndarray:
    """Pixels whose 3x3 neighbourhood holds more than one label (a 2-pixel band along each boundary)."""
    img = Image.fromarray(label_map)
    hi = np.asarray(img.filter(ImageFilter.MaxFilter(3)))
    lo = np.asarray(img.filter(ImageFilter.MinFilter(3)))
    return hi != lo


def synthetic_sample(
    rng: np.random.Generator, size: tuple[int, int], classes: Sequence[int], palette: np.ndarray,
    object_scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """One image uint8 (H,W,3) and its mask uint8 (H,W) with objects of `classes` (1-based), last on top,
    their sizes scaled by `object_scale`."""
    img = _background(rng, size)
    objects = np.zeros(size, dtype=np.uint8)
    for c in classes:
        region = _shape_mask(rng, size, object_scale)
        colour = palette[c - 1].astype(np.float32) + rng.normal(0, 6, size=(int(region.sum()), 3))
        img[region] = np.clip(colour, 0, 255).astype(np.uint8)
        objects[region] = c
    mask = objects.copy()
    mask[_boundary(objects)] = IGNORE_INDEX
    return img, mask


def _class_schedule(rng: np.random.Generator, n_images: int, classes: Sequence[int],
                    objects: tuple[int, int] = (1, 3)) -> list[list[int]]:
    """Per image `objects` (low, high) distinct classes, cycling through shuffled `classes` so each appears
    when possible."""
    pool: list[int] = []
    schedule = []
    for _ in range(n_images):
        k = min(int(rng.integers(objects[0], objects[1] + 1)), len(classes))
        chosen: list[int] = []
        while len(chosen) < k:
            if not pool:
                pool = [int(c) for c in rng.permutation(np.asarray(classes))]
            c = pool.pop()
            if c not in chosen:
                chosen.append(c)
        schedule.append(chosen)
    return schedule


def make_synthetic_voc(
    root: str | os.PathLike,
    n_images: int = 12,
    size: tuple[int, int] = (96, 128),
    seed: int = 0,
    splits: Mapping[str, Sequence[int] | slice] | None = None,
    classes: Sequence[int] | None = None,
    objects: tuple[int, int] = (1, 3),
    object_scale: float = 1.0,
) -> Path:
    """Write a synthetic dataset in the VOC layout under `root` and return `root`.

    n_images images of `size` (H, W) with ids `synth_0000`...; `splits` maps a split name to image indices
    (default below); `classes` are the 1-based class indices to draw from (default all 20); each image holds
    `objects` (low, high) objects of distinct classes, each 0.3-0.6 H high and 0.25-0.5 W wide times
    `object_scale`. Default splits, as in VOC: train = the first third, val = the second third, train_aug =
    every image outside val (so train_aug - train - val, the selection split, is the last third). Writes
    JPEGImages/*.jpg (quality 95), SegmentationClassAug/*.png, ImageSets/Segmentation/<split>.txt and
    cls_labels_voc.npy (classes present in each mask), each file written atomically.
    """
    if n_images < 2:
        raise ValueError(f"n_images must be at least 2 (train and val), got {n_images}")
    h, w = size
    if h < 32 or w < 32:
        raise ValueError(f"size must be at least 32x32, got {size}")
    classes = list(range(1, NUM_CLASSES + 1)) if classes is None else [int(c) for c in classes]
    if not classes or any(not 1 <= c <= NUM_CLASSES for c in classes):
        raise ValueError(f"classes must be non-empty values in 1..{NUM_CLASSES}, got {classes}")
    if not 1 <= objects[0] <= objects[1]:
        raise ValueError(f"objects must be (low, high) with 1 <= low <= high, got {objects}")
    if not 0.0 < object_scale <= 1.0:
        raise ValueError(f"object_scale must be in (0, 1], got {object_scale}")
    third = max(1, n_images // 3)
    splits = splits if splits is not None else {
        "train_aug": [i for i in range(n_images) if not third <= i < 2 * third],
        "train": slice(0, third), "val": slice(third, 2 * third),
    }
    root = Path(root)
    for sub in (IMAGE_DIR, MASK_DIR, str(SPLIT_DIR)):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    palette = class_colours()
    ids = [f"synth_{i:04d}" for i in range(n_images)]
    labels: dict[str, np.ndarray] = {}
    for image_id, chosen in zip(ids, _class_schedule(rng, n_images, classes, objects), strict=True):
        img, mask = synthetic_sample(rng, (h, w), chosen, palette, object_scale)
        jpeg = io.BytesIO()
        Image.fromarray(img).save(jpeg, format="JPEG", quality=95)
        atomic_write_bytes(root / IMAGE_DIR / f"{image_id}.jpg", jpeg.getvalue())
        save_mask(root / MASK_DIR / f"{image_id}.png", mask)
        label = np.zeros(NUM_CLASSES, dtype=np.float32)
        present = [v for v in np.unique(mask).tolist() if 1 <= v <= NUM_CLASSES]
        label[np.asarray(present, dtype=int) - 1] = 1.0
        labels[image_id] = label
    for name, selection in splits.items():
        chosen_ids = ids[selection] if isinstance(selection, slice) else [ids[i] for i in selection]
        atomic_write_text(root / SPLIT_DIR / f"{name}.txt", "".join(f"{i}\n" for i in chosen_ids))
    atomic_save_npy(root / LABELS_FILE, labels, allow_pickle=True)
    return root
