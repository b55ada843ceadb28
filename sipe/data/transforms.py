"""Image transforms on numpy arrays (IRN's imutils): resize, normalise, flip, padded random crop.

Images are HWC; random choices come from a passed `np.random.Generator` so that a sample is reproducible.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

Resample = Literal["bicubic", "bilinear", "nearest"]
_PIL_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize(img: np.ndarray, size: tuple[int, int], resample: Resample = "bicubic") -> np.ndarray:
    """uint8 (H,W[,C]) -> uint8 (h,w[,C]) with PIL; returned unchanged when already of `size` (h, w)."""
    h, w = size
    if (h, w) == img.shape[:2]:
        return img
    if h <= 0 or w <= 0:
        raise ValueError(f"cannot resize to {size}: sizes must be positive")
    return np.asarray(Image.fromarray(img).resize((w, h), _PIL_RESAMPLE[resample]))


def scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """(round(H*scale), round(W*scale)), as IRN's pil_rescale."""
    return int(np.round(size[0] * scale)), int(np.round(size[1] * scale))


def rescale(img: np.ndarray, scale: float, resample: Resample = "bicubic") -> np.ndarray:
    """Resize (H,W[,C]) by `scale` to `scaled_size`."""
    return resize(img, scaled_size(img.shape[:2], scale), resample)


def random_resize_long(img: np.ndarray, lo: int, hi: int, rng: np.random.Generator) -> np.ndarray:
    """Rescale (bicubic) so the long side is a random integer in [lo, hi]."""
    if not 0 < lo <= hi:
        raise ValueError(f"resize range ({lo}, {hi}): need 0 < lo <= hi")
    target = int(rng.integers(lo, hi + 1))
    return rescale(img, target / max(img.shape[:2]), "bicubic")


def normalize(img: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 (H,W,3) -> float32 (H,W,3) = (img/255 - mean) / std per channel."""
    mean_arr = np.asarray(mean, dtype=np.float32)
    std_arr = np.asarray(std, dtype=np.float32)
    return ((img.astype(np.float32) / 255.0 - mean_arr) / std_arr).astype(np.float32)


def hflip(img: np.ndarray) -> np.ndarray:
    """Mirror (H,W[,C]) left-right."""
    return np.ascontiguousarray(img[:, ::-1])


def random_hflip(img: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
    """Mirror left-right with probability p."""
    return hflip(img) if rng.random() < p else img


@dataclass(frozen=True)
class CropBox:
    """Where an image window lands in an SxS canvas: canvas[c_top:c_top+h, c_left:c_left+w] = img[i_top.., i_left..]."""

    c_top: int
    c_left: int
    i_top: int
    i_left: int
    h: int
    w: int


def random_crop_box(size: tuple[int, int], crop: int, rng: np.random.Generator) -> CropBox:
    """IRN's box: along each axis, a larger image is cut at a random offset, a smaller one placed at one."""
    offsets = []
    for extent in size:
        space = extent - crop
        if space > 0:
            offsets.append((0, int(rng.integers(0, space + 1))))
        else:
            offsets.append((int(rng.integers(0, -space + 1)), 0))
    (c_top, i_top), (c_left, i_left) = offsets
    return CropBox(c_top, c_left, i_top, i_left, min(crop, size[0]), min(crop, size[1]))


def crop_with_box(img: np.ndarray, box: CropBox, crop: int, fill: float = 0.0) -> np.ndarray:
    """Paste the box's window of img (H,W[,C]) into a (crop,crop[,C]) canvas filled with `fill`."""
    canvas = np.full((crop, crop, *img.shape[2:]), fill, dtype=img.dtype)
    canvas[box.c_top:box.c_top + box.h, box.c_left:box.c_left + box.w] = (
        img[box.i_top:box.i_top + box.h, box.i_left:box.i_left + box.w]
    )
    return canvas


def random_crop(
    img: np.ndarray, crop: int, rng: np.random.Generator, fill: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """(crop,crop[,C]) window of img padded with `fill`, and float32 (crop,crop) validity: 1 on image pixels."""
    if crop <= 0:
        raise ValueError(f"crop size must be positive, got {crop}")
    box = random_crop_box(img.shape[:2], crop, rng)
    valid = np.zeros((crop, crop), dtype=np.float32)
    valid[box.c_top:box.c_top + box.h, box.c_left:box.c_left + box.w] = 1.0
    return crop_with_box(img, box, crop, fill), valid


def hwc_to_chw(img: np.ndarray) -> np.ndarray:
    """(H,W,C) -> contiguous float32 (C,H,W)."""
    return np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32)


def train_transform(
    img: np.ndarray,
    rng: np.random.Generator,
    resize_long: tuple[int, int],
    crop_size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> tuple[np.ndarray, np.ndarray]:
    """SIPE/IRN training augmentation of uint8 (H,W,3).

    Random long-side resize (bicubic), random flip, normalisation, random crop padded with 0 (after
    normalisation). Returns float32 (3,S,S) and the float32 (S,S) validity mask.
    """
    img = random_resize_long(img, resize_long[0], resize_long[1], rng)
    img = random_hflip(img, rng)
    cropped, valid = random_crop(normalize(img, mean, std), crop_size, rng, fill=0.0)
    return hwc_to_chw(cropped), valid
