"""denseCRF post-processing of localization maps, as in IRN's IR-label step (SIPE's `cam2ir`).

Two CRF runs on label maps: foreground-confident (argmax of the maps) and background-confident
(argmax with the background channel scaled by `bg_scale`, so foreground grows). The combined label is
the foreground-confident run's class, void (255) where that run says background but the other does not,
and background where both say background.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_labels

from ..data import voc
from .evaluation import VOID, MIoUResult, PresentClasses, Scoring, load_map, miou_result


IRN_BACKGROUNDS = (0.30, 0.05)
"""IRN's constant backgrounds of the foreground- and background-confident CRF runs for a CAM."""


@dataclass(frozen=True)
class CRFResult:
    """mIoU of CRF labels with void counted as background (the paper's convention) and with void ignored.

    void_fraction: share of the evaluated (non-ignored ground-truth) pixels labelled void.
    """

    void_as_background: MIoUResult
    void_ignored: MIoUResult
    void_fraction: float
    per_image_confusion: np.ndarray | None = None


def crf_inference_label(
    img: np.ndarray, labels: np.ndarray, n_labels: int, t: int = 10, gt_prob: float = 0.7
) -> np.ndarray:
    """int64 (H,W) labels after denseCRF on a label map (H,W) in 0..n_labels-1 over image uint8 (H,W,3).

    Unary from labels (gt_prob), Gaussian (sxy 3, compat 3) and bilateral (sxy 50, srgb 5, compat 10)
    kernels, `t` mean-field iterations.
    """
    img = np.asarray(img)
    labels = np.asarray(labels)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (H,W,3), got {img.dtype} {img.shape}")
    if labels.shape != img.shape[:2]:
        raise ValueError(f"label map shape {labels.shape} differs from image size {img.shape[:2]}")
    if labels.size and (labels.min() < 0 or labels.max() >= n_labels):
        raise ValueError(f"labels span {labels.min()}..{labels.max()}, expected 0..{n_labels - 1}")
    h, w = labels.shape
    if n_labels == 1:
        return np.zeros((h, w), dtype=np.int64)
    d = dcrf.DenseCRF2D(w, h, n_labels)
    d.setUnaryEnergy(unary_from_labels(labels.astype(np.int64), n_labels, gt_prob=gt_prob, zero_unsure=False))
    d.addPairwiseGaussian(sxy=3, compat=3)
    d.addPairwiseBilateral(sxy=50, srgb=5, rgbim=np.ascontiguousarray(np.copy(img)), compat=10)
    q = d.inference(t)
    return np.argmax(np.array(q).reshape((n_labels, h, w)), axis=0).astype(np.int64)


def combine_confident(fg_conf: np.ndarray, bg_conf: np.ndarray, strict: bool = False) -> np.ndarray:
    """uint8 (H,W) from the class maps of the foreground- and background-confident runs.

    fg_conf's class where it is foreground, 255 where fg_conf is background and bg_conf is not, 0 where
    both are background (IRN/SIPE rule). strict: 255 wherever the two differ.
    """
    fg_conf = np.asarray(fg_conf)
    bg_conf = np.asarray(bg_conf)
    if fg_conf.shape != bg_conf.shape:
        raise ValueError(f"label maps differ in shape: {fg_conf.shape} vs {bg_conf.shape}")
    if strict:
        return np.where(fg_conf == bg_conf, fg_conf, VOID).astype(np.uint8)
    out = np.where(fg_conf == 0, VOID, fg_conf)
    out[(fg_conf == 0) & (bg_conf == 0)] = 0
    return out.astype(np.uint8)


def crf_labels(
    img: np.ndarray,
    maps: np.ndarray,
    keys: np.ndarray,
    bg_scale: float = 0.5,
    t: int = 10,
    gt_prob: float = 0.7,
    strict: bool = False,
    backgrounds: tuple[float, float] | None = None,
) -> np.ndarray:
    """uint8 (H,W) class indices with 255 void from maps (M,H,W), channel classes keys (M,) (keys[0] = 0).

    Foreground-confident run: CRF on argmax of the maps; background-confident run: CRF on argmax with
    the background channel times `bg_scale`; combined by `combine_confident`. With `backgrounds`
    (t_fg, t_bg), IRN's protocol for a CAM: the runs use constant backgrounds t_fg (0.30) and t_bg (0.05).
    """
    maps = np.asarray(maps, dtype=np.float32)
    keys = np.asarray(keys)
    if maps.ndim != 3 or keys.shape != (maps.shape[0],) or keys[0] != 0:
        raise ValueError(f"need maps (M,H,W) and keys (M,) with keys[0] = 0, got {maps.shape} and {keys.shape}")
    n = maps.shape[0]
    scaled = maps.copy()
    if backgrounds is not None:
        maps = maps.copy()
        maps[0], scaled[0] = backgrounds
    else:
        scaled[0] *= bg_scale
    fg_conf = keys[crf_inference_label(img, maps.argmax(axis=0), n, t, gt_prob)]
    bg_conf = keys[crf_inference_label(img, scaled.argmax(axis=0), n, t, gt_prob)]
    return combine_confident(fg_conf, bg_conf, strict)


@dataclass(frozen=True)
class CRFLabeler:
    """Labeler `(id) -> uint8 (2,H,W)`: CRF labels with void set to background, and with void kept (255).

    threshold: replace the maps' background channel by this constant (the IRN protocol for CAM).
    """

    maps_dir: str
    root: str
    which: str = "is_cam"
    bg_scale: float = 0.5
    t: int = 10
    gt_prob: float = 0.7
    strict: bool = False
    threshold: float | None = None
    backgrounds: tuple[float, float] | None = None

    def __call__(self, image_id: str) -> np.ndarray:
        maps, keys = load_map(self.maps_dir, image_id, self.which)
        if self.threshold is not None:
            maps[0] = self.threshold
        img = voc.load_image(self.root, image_id)
        if img.shape[:2] != maps.shape[1:]:
            raise ValueError(
                f"image {voc.image_path(self.root, image_id)} is {img.shape[0]}x{img.shape[1]} but its maps are "
                f"{maps.shape[1]}x{maps.shape[2]} (HxW); the maps must be made at full image resolution"
            )
        labels = crf_labels(img, maps, keys, self.bg_scale, self.t, self.gt_prob, self.strict, self.backgrounds)
        return np.stack([np.where(labels == VOID, 0, labels).astype(np.uint8), labels])


def evaluate_crf(
    maps_dir: str | os.PathLike,
    root: str | os.PathLike,
    ids: Sequence[str],
    which: str = "is_cam",
    bg_scale: float = 0.5,
    t: int = 10,
    gt_prob: float = 0.7,
    strict: bool = False,
    threshold: float | None = None,
    backgrounds: tuple[float, float] | None = None,
    scoring: Scoring = Scoring(),
    per_image: bool = False,
) -> CRFResult:
    """mIoU of the CRF labels of `<maps_dir>/<id>.npz` (void as background, and void ignored).

    per_image: also keep the per-image confusions (N,2,C,C) in `per_image_confusion`."""
    labeler = CRFLabeler(str(maps_dir), str(root), which, bg_scale, t, gt_prob, strict, threshold, backgrounds)
    stack = scoring.confusions(ids, labeler, root, f"denseCRF ({which})", per_image=True)
    bg = "" if threshold is None else f", constant background {threshold:g}"
    if backgrounds is not None:
        bg = f", IRN backgrounds {backgrounds[0]:g} / {backgrounds[1]:g}"
    setting = f"denseCRF ({t} iterations, gt_prob {gt_prob}, background x {bg_scale}{bg}{', strict' if strict else ''})"
    res = score_crf(stack.sum(0), scoring.class_names, scoring.present_classes, scoring.split, len(ids), setting)
    return replace(res, per_image_confusion=stack) if per_image else res


def score_crf(
    confs: np.ndarray,
    class_names: Sequence[str] | None = None,
    present_classes: PresentClasses = "gt",
    split: str | None = None,
    n_images: int | None = None,
    setting: str = "denseCRF",
) -> CRFResult:
    """CRFResult of the two confusions (2,C,C) of CRF labels: [0] void counted as background, [1] void ignored.

    Both readings average over the same classes, those present in the ground truth of the evaluated images
    (the rows of [0] count every labelled pixel): a class whose pixels are all void scores 0 when void is
    ignored, rather than dropping out of the mean."""
    confs = np.asarray(confs)
    if confs.ndim != 3 or confs.shape[0] != 2:
        raise ValueError(f"need the confusions (2,C,C) of void as background and void ignored, got {confs.shape}")
    gt_pixels = confs[0].sum(axis=1)
    as_bg = miou_result(confs[0], class_names, present_classes, split, n_images)
    ignored = miou_result(confs[1], class_names, present_classes, split, n_images, gt_pixels=gt_pixels)
    total = confs[0].sum()
    void_fraction = float((total - confs[1].sum()) / total) if total else float("nan")
    return CRFResult(
        void_as_background=MIoUResult(
            as_bg.miou, as_bg.per_class, as_bg.classes, f"{as_bg.note}; {setting}, void counted as background",
            as_bg.confusion,
        ),
        void_ignored=MIoUResult(
            ignored.miou, ignored.per_class, ignored.classes,
            f"{ignored.note}; {setting}, void pixels ({100 * void_fraction:.1f}%) ignored", ignored.confusion,
        ),
        void_fraction=void_fraction,
    )
