"""Evaluation of localization maps: confusion matrices, IoU tables, estimated and threshold background.

Every evaluation runs through `accumulate_confusion`: a per-image labeler returns P label maps (one per
setting, e.g. per threshold), each image's ground truth is loaded once, and P confusion matrices are
summed in one pass over the ids.
"""
from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from tqdm import tqdm

from ..data import voc
from ..infra.errors import SipeError

VOID = 255
MAP_KINDS = ("is_cam", "cam", "cam_irn")
"""The map keys of a maps file; IS-CAM made other ways is stored as a label map 'labels@<method>' (sipe.stages.maps)."""
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))
FIX_MAPS = "re-create the maps with sipe.stages.maps.make_maps (or the maps notebook) into this folder"

Labeler = Callable[[str], np.ndarray]
PresentClasses = Literal["gt"] | Sequence[str] | None


class MapFileError(SipeError):
    """A map file is missing or unreadable; the message names the file and how to fix it."""


@dataclass(frozen=True)
class MIoUResult:
    """mIoU (percent) with its per-class table, the classes averaged over and a note saying which."""

    miou: float
    per_class: pd.DataFrame
    classes: list[str]
    note: str
    confusion: np.ndarray | None = None

    def __str__(self) -> str:
        return f"mIoU {self.miou:.2f} ({self.note})"


@dataclass(frozen=True)
class SweepResult:
    """Threshold sweep: `sweep` has columns threshold, miou; `best` is the result at `best_threshold`."""

    sweep: pd.DataFrame
    best_threshold: float
    best: MIoUResult


def _stacked_confusion(
    preds: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int, void_as: int | None
) -> np.ndarray:
    """int64 (P,C,C) confusion matrices (rows gt, cols prediction) of P predictions (P,*S) against gt (*S)."""
    preds = np.asarray(preds)
    gt = np.asarray(gt)
    if preds.shape[1:] != gt.shape:
        raise ValueError(f"prediction shape {preds.shape[1:]} differs from ground-truth shape {gt.shape}")
    n_pred, n_cells = preds.shape[0], num_classes * num_classes
    gt = gt.reshape(-1)
    preds = preds.reshape(n_pred, -1)
    if void_as is not None:
        if not 0 <= void_as < num_classes:
            raise ValueError(f"void_as={void_as} is not a class index in 0..{num_classes - 1}")
        preds = np.where(preds == ignore_index, void_as, preds)
    gt_ok = gt != ignore_index
    bad_gt = gt_ok & ((gt < 0) | (gt >= num_classes))
    if bad_gt.any():
        raise ValueError(
            f"ground truth holds values {np.unique(gt[bad_gt]).tolist()} outside 0..{num_classes - 1} "
            f"and {ignore_index}"
        )
    valid = preds != ignore_index
    valid &= gt_ok[None, :]
    bad_pred = ((preds < 0) | (preds >= num_classes)) & valid
    if bad_pred.any():
        raise ValueError(
            f"prediction holds values {np.unique(preds[bad_pred]).tolist()} outside 0..{num_classes - 1} "
            f"and {ignore_index} (void)"
        )
    dtype = np.int32 if n_pred * n_cells < 2**31 else np.int64
    flat = preds.astype(dtype)
    flat += (gt.astype(dtype) * num_classes)[None, :]
    flat += (np.arange(n_pred, dtype=dtype) * n_cells)[:, None]
    counts = np.bincount(flat[valid], minlength=n_pred * n_cells)
    return counts.astype(np.int64).reshape(n_pred, num_classes, num_classes)


def confusion_matrix(
    pred: np.ndarray,
    gt: np.ndarray,
    num_classes: int = 21,
    ignore_index: int = 255,
    void_as: int | None = None,
) -> np.ndarray:
    """int64 (C,C) confusion matrix, rows = ground truth, cols = prediction.

    Pixels whose ground truth is `ignore_index` are skipped. Predictions equal to `ignore_index` (void)
    are skipped when `void_as` is None, else counted as class `void_as` (0 = background).
    """
    return _stacked_confusion(np.asarray(pred)[None], gt, num_classes, ignore_index, void_as)[0]


def iou_from_confusion(conf: np.ndarray) -> np.ndarray:
    """Per-class IoU = TP / (GT + Pred - TP) over the last two axes of (..., C, C); nan where both are 0."""
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diagonal(conf, axis1=-2, axis2=-1)
    denom = conf.sum(axis=-1) + conf.sum(axis=-2) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, tp / np.where(denom > 0, denom, 1.0), np.nan)


def default_class_names(num_classes: int) -> list[str]:
    """VOC class names for 21 classes, else `class0..class{C-1}`."""
    if num_classes == len(voc.CLASS_NAMES):
        return list(voc.CLASS_NAMES)
    return [f"class{i}" for i in range(num_classes)]


def iou_table(
    conf: np.ndarray, class_names: Sequence[str] | None = None, present_classes: PresentClasses = None,
    gt_pixels: np.ndarray | None = None,
) -> pd.DataFrame:
    """Per-class table indexed by class name: iou (percent), gt_pixels, pred_pixels.

    present_classes: None keeps every class (iou nan where a class has neither ground truth nor
    prediction); 'gt' keeps the classes with ground-truth pixels; a list of names keeps those classes.
    gt_pixels (C,): the ground truth's pixels per class when `conf` scores only part of them (void
    predictions ignored): they decide which classes are present, and a present class none of whose
    pixels is scored has iou 0. Default: the rows of `conf`.
    """
    conf = np.asarray(conf)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"confusion matrix must be square (C,C), got shape {conf.shape}")
    names = list(class_names) if class_names is not None else default_class_names(conf.shape[0])
    if len(names) != conf.shape[0]:
        raise ValueError(f"{len(names)} class names for a {conf.shape[0]}-class confusion matrix")
    iou = 100.0 * iou_from_confusion(conf)
    if gt_pixels is not None:
        gt_pixels = np.asarray(gt_pixels)
        if gt_pixels.shape != (conf.shape[0],):
            raise ValueError(f"gt_pixels has shape {gt_pixels.shape}, expected ({conf.shape[0]},)")
        if (gt_pixels < conf.sum(axis=1)).any():
            raise ValueError("gt_pixels counts fewer pixels of a class than the confusion matrix scores")
        iou = np.where((gt_pixels > 0) & np.isnan(iou), 0.0, iou)
    table = pd.DataFrame(
        {
            "iou": iou,
            "gt_pixels": conf.sum(axis=1).astype(np.int64),
            "pred_pixels": conf.sum(axis=0).astype(np.int64),
        },
        index=pd.Index(names, name="class"),
    )
    if present_classes is None:
        return table
    if isinstance(present_classes, str):
        if present_classes != "gt":
            raise ValueError(f"present_classes={present_classes!r}: use None, 'gt' or a list of class names")
        return table[(gt_pixels if gt_pixels is not None else table["gt_pixels"].to_numpy()) > 0]
    unknown = [c for c in present_classes if c not in table.index]
    if unknown:
        raise KeyError(f"unknown class names {unknown}; valid names: {names}")
    return table.loc[list(present_classes)]


def miou(table: pd.DataFrame) -> float:
    """Mean of the table's iou column (percent), nan classes skipped."""
    return float(table["iou"].mean())


def _where(split: str | None, n_images: int | None) -> str:
    images = f"{n_images} images" if n_images is not None else ""
    if split and images:
        return f"{split} ({images})"
    return split or images or "the evaluated images"


def miou_result(
    conf: np.ndarray,
    class_names: Sequence[str] | None = None,
    present_classes: PresentClasses = "gt",
    split: str | None = None,
    n_images: int | None = None,
    gt_pixels: np.ndarray | None = None,
) -> MIoUResult:
    """MIoUResult of a (C,C) confusion matrix; the note states which classes the mean is over (gt_pixels:
    as in `iou_table`)."""
    table = iou_table(conf, class_names, present_classes, gt_pixels)
    all_names = list(class_names) if class_names is not None else default_class_names(np.shape(conf)[0])
    where = _where(split, n_images)
    if present_classes is None:
        counted = table.index[table["iou"].notna()].tolist()
        note = f"mean over the {len(counted)} of {len(all_names)} classes with ground truth or predictions in {where}"
    elif isinstance(present_classes, str):
        counted = table.index.tolist()
        absent = [c for c in all_names if c not in counted]
        note = f"mean over the {len(counted)} classes present in the ground truth of {where}"
        if absent:
            note += f" (absent: {', '.join(absent)})"
    else:
        counted = table.index[table["iou"].notna()].tolist()
        note = f"mean over {len(counted)} chosen classes ({', '.join(counted)}) on {where}"
    return MIoUResult(miou=miou(table), per_class=table, classes=counted, note=note, confusion=np.asarray(conf))


def _check_maps(maps: np.ndarray, keys: np.ndarray) -> None:
    if maps.ndim != 3:
        raise ValueError(f"maps must be (M,H,W), got shape {maps.shape}")
    if keys.shape != (maps.shape[0],):
        raise ValueError(f"keys has shape {keys.shape} but maps have {maps.shape[0]} channels")
    if keys[0] != 0:
        raise ValueError(f"keys[0] must be 0 (background), got {keys[0]}")


def threshold_labels(maps: np.ndarray, keys: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """uint8 (T,H,W): per threshold t, keys[argmax over [t, foreground channels]] (maps[0] is unused)."""
    maps = np.asarray(maps)
    keys = np.asarray(keys)
    _check_maps(maps, keys)
    t = np.asarray(thresholds, dtype=np.float32).reshape(-1, 1, 1)
    if maps.shape[0] == 1:
        return np.zeros((t.shape[0], *maps.shape[1:]), dtype=np.uint8)
    fg = maps[1:].astype(np.float32)
    fg_label = keys[1:][fg.argmax(axis=0)].astype(np.uint8)
    return np.where(fg.max(axis=0)[None] > t, fg_label[None], np.uint8(0)).astype(np.uint8)


def labels_from_maps(
    maps: np.ndarray,
    keys: np.ndarray,
    mode: Literal["estimated", "threshold"] = "estimated",
    threshold: float | None = None,
) -> np.ndarray:
    """uint8 (H,W) class indices from maps (M,H,W) with channel classes `keys` (M,), keys[0] = 0.

    estimated: keys[argmax over all M channels]; threshold: keys[argmax over [threshold, maps[1:]]].
    """
    maps = np.asarray(maps)
    keys = np.asarray(keys)
    _check_maps(maps, keys)
    if mode == "estimated":
        return keys[maps.argmax(axis=0)].astype(np.uint8)
    if mode == "threshold":
        if threshold is None:
            raise ValueError("mode='threshold' needs a threshold value")
        return threshold_labels(maps, keys, [threshold])[0]
    raise ValueError(f"mode={mode!r}: use 'estimated' or 'threshold'")


def map_ids(maps_dir: str | os.PathLike) -> list[str]:
    """Sorted ids of the map files in a maps folder."""
    return sorted(p.stem for p in Path(maps_dir).glob("*.npz"))


def map_path(maps_dir: str | os.PathLike, image_id: str) -> Path:
    """Path of `<maps_dir>/<id>.npz`."""
    return Path(maps_dir) / f"{image_id}.npz"


def _check_which(which: str) -> None:
    if which not in MAP_KINDS and not which.startswith("labels@"):
        raise ValueError(f"which={which!r}: use one of {MAP_KINDS} or 'labels@<seed method>'")


def load_maps(
    maps_dir: str | os.PathLike, image_id: str, which: Sequence[str]
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({key: maps}, keys int64 (M,)) of several map keys of `<maps_dir>/<id>.npz`, the file read once.

    Maps are float32 (M,H,W), or uint8 (H,W) for 'labels@<method>' keys; MapFileError if missing/corrupt."""
    for w in which:
        _check_which(w)
    path = map_path(maps_dir, image_id)
    if not path.is_file():
        raise MapFileError(f"map file {path} not found; {FIX_MAPS}")
    try:
        with np.load(path) as data:
            missing = [w for w in (*which, "keys") if w not in data.files]
            if missing:
                hint = " (maps made with infer.save_cam=False hold no 'cam')" if "cam" in missing else ""
                raise MapFileError(f"map file {path} has arrays {data.files}, needs {missing}{hint}; {FIX_MAPS}")
            keys = data["keys"].astype(np.int64)
            out = {w: data[w].astype(np.uint8 if w.startswith("labels@") else np.float32) for w in which}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise MapFileError(f"map file {path} cannot be read ({e}): truncated or corrupt; {FIX_MAPS}") from e
    for w, maps in out.items():
        if maps.ndim == 2:
            continue
        try:
            _check_maps(maps, keys)
        except ValueError as e:
            raise MapFileError(f"map file {path} is malformed ({w}): {e}; {FIX_MAPS}") from e
    return out, keys


def load_map(
    maps_dir: str | os.PathLike, image_id: str, which: str = "is_cam"
) -> tuple[np.ndarray, np.ndarray]:
    """(maps float32 (M,H,W), keys int64 (M,)) from `<maps_dir>/<id>.npz`; MapFileError if missing/corrupt.

    which: 'is_cam', 'cam', 'cam_irn', or 'labels@<method>' (then maps is the uint8 (H,W) label map)."""
    maps, keys = load_maps(maps_dir, image_id, (which,))
    return maps[which], keys


@dataclass(frozen=True)
class Reading:
    """One way to turn a map key into label maps: estimated background (thresholds None, one label map)
    or a constant background threshold per value of `thresholds` (one label map each)."""

    key: str
    thresholds: tuple[float, ...] | None = None

    @property
    def background(self) -> str:
        return "estimated" if self.thresholds is None else "threshold"

    def labels(self, maps: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """uint8 (P,H,W) label maps of this reading."""
        if maps.ndim == 2:
            if self.thresholds is not None:
                raise ValueError(f"{self.key} is a label map: it has only the estimated-background reading")
            return maps[None]
        if self.thresholds is None:
            return labels_from_maps(maps, keys, "estimated")[None]
        return threshold_labels(maps, keys, self.thresholds)


@dataclass(frozen=True)
class ReadingsLabeler:
    """Labeler over a maps folder: `(id) -> uint8 (P,H,W)`, every reading's label maps stacked in order,
    each file read once."""

    maps_dir: str
    readings: tuple[Reading, ...]

    def __call__(self, image_id: str) -> np.ndarray:
        maps, keys = load_maps(self.maps_dir, image_id, tuple(dict.fromkeys(r.key for r in self.readings)))
        return np.concatenate([r.labels(maps[r.key], keys) for r in self.readings])


def evaluate_readings(
    maps_dir: str | os.PathLike,
    root: str | os.PathLike,
    ids: Sequence[str],
    readings: Sequence[Reading],
    num_classes: int = 21,
    workers: int = 1,
    progress: bool = True,
) -> list[np.ndarray]:
    """Per reading, the per-image confusions int64 (N,P,C,C) (P = 1 or the number of thresholds), all
    readings computed in one pass over the maps folder."""
    readings = tuple(readings)
    stack = accumulate_confusion(ids, ReadingsLabeler(str(maps_dir), readings), root, num_classes,
                                 workers=workers, progress=progress, desc=f"evaluating {len(readings)} readings",
                                 per_image=True)
    sizes = [1 if r.thresholds is None else len(r.thresholds) for r in readings]
    return np.split(stack, np.cumsum(sizes)[:-1], axis=1)


@dataclass(frozen=True)
class MapLabeler:
    """Labeler over a maps folder: `(id) -> uint8 (P,H,W)`; thresholds None = estimated background (P=1)."""

    maps_dir: str
    which: str = "is_cam"
    thresholds: tuple[float, ...] | None = None

    def __call__(self, image_id: str) -> np.ndarray:
        maps, keys = load_map(self.maps_dir, image_id, self.which)
        return Reading(self.which, self.thresholds).labels(maps, keys)


def image_confusion(
    image_id: str, labeler: Labeler, root: str | os.PathLike, num_classes: int, ignore_index: int,
    void_as: int | None,
) -> np.ndarray:
    """int64 (P,C,C) confusion of `labeler(image_id)` (P,H,W) or (H,W) against the image's ground truth."""
    pred = np.asarray(labeler(image_id))
    if pred.ndim == 2:
        pred = pred[None]
    gt = voc.load_mask(root, image_id)
    if pred.shape[1:] != gt.shape:
        raise ValueError(
            f"image {image_id}: prediction is {pred.shape[1]}x{pred.shape[2]} but the mask "
            f"{voc.mask_path(root, image_id)} is {gt.shape[0]}x{gt.shape[1]} (HxW); maps must be made at "
            f"full image resolution ({FIX_MAPS})"
        )
    return _stacked_confusion(pred, gt, num_classes, ignore_index, void_as)


def accumulate_confusion(
    ids: Iterable[str],
    labeler: Labeler,
    root: str | os.PathLike,
    num_classes: int = 21,
    ignore_index: int = 255,
    void_as: int | None = None,
    workers: int = 1,
    progress: bool = True,
    desc: str = "evaluating",
    per_image: bool = False,
) -> np.ndarray:
    """int64 (P,C,C): confusion matrices summed over `ids`, each image and mask read once; with
    `per_image`, the unsummed (N,P,C,C) stack in the order of `ids` (for bootstrap intervals).

    `labeler(id)` returns P label maps (P,H,W) (or one (H,W)); with workers > 1 images are labelled in
    a process pool (the labeler must then be picklable, e.g. a module-level dataclass).
    """
    ids = list(ids)
    if not ids:
        raise ValueError("no image ids to evaluate")
    one = partial(
        image_confusion, labeler=labeler, root=root, num_classes=num_classes, ignore_index=ignore_index,
        void_as=void_as,
    )
    total: np.ndarray | None = None
    stack: list[np.ndarray] = []
    with tqdm(total=len(ids), desc=desc, disable=not progress) as bar:
        if workers <= 1:
            results: Iterable[np.ndarray] = map(one, ids)
            executor = None
        else:
            executor = ProcessPoolExecutor(max_workers=workers)
            results = executor.map(one, ids, chunksize=max(1, len(ids) // (8 * workers)))
        try:
            for image_id, conf in zip(ids, results):
                if total is None:
                    total = conf.copy()
                elif conf.shape != total.shape:
                    raise ValueError(f"image {image_id}: labeler gave {conf.shape[0]} maps, earlier images {total.shape[0]}")
                else:
                    total += conf
                if per_image:
                    stack.append(conf)
                bar.update()
        finally:
            if executor is not None:
                executor.shutdown(cancel_futures=True)
    assert total is not None
    return np.stack(stack) if per_image else total


@dataclass(frozen=True)
class Scoring:
    """How label maps are scored against the masks: `num_classes` C (background included) and their names,
    the classes the mean runs over (`present_classes`, as in `iou_table`), the split named in the notes, the
    processes labelling images (`workers`) and the progress bar."""

    num_classes: int = 21
    class_names: Sequence[str] | None = None
    present_classes: PresentClasses = "gt"
    split: str | None = None
    workers: int = 1
    progress: bool = True

    def confusions(self, ids: Sequence[str], labeler: Labeler, root: str | os.PathLike, desc: str,
                   per_image: bool = False) -> np.ndarray:
        """`accumulate_confusion` of `labeler` over `ids` with these settings: (P,C,C), or (N,P,C,C) per image."""
        return accumulate_confusion(ids, labeler, root, self.num_classes, workers=self.workers,
                                    progress=self.progress, desc=desc, per_image=per_image)


def sweep_from_confusions(
    confs: np.ndarray,
    thresholds: Sequence[float],
    class_names: Sequence[str] | None = None,
    present_classes: PresentClasses = "gt",
    split: str | None = None,
    n_images: int | None = None,
) -> SweepResult:
    """SweepResult from confusion matrices (T,C,C), one per threshold; best = first maximum of mIoU."""
    if len(thresholds) != len(confs):
        raise ValueError(f"{len(thresholds)} thresholds for {len(confs)} confusion matrices")
    results = [miou_result(c, class_names, present_classes, split, n_images) for c in confs]
    sweep = pd.DataFrame({"threshold": [float(t) for t in thresholds], "miou": [r.miou for r in results]})
    best = int(np.nanargmax(sweep["miou"].to_numpy()))
    chosen = results[best]
    note = f"{chosen.note}; background threshold {sweep['threshold'][best]:g}, best of {len(thresholds)}"
    chosen = MIoUResult(chosen.miou, chosen.per_class, chosen.classes, note, chosen.confusion)
    return SweepResult(sweep=sweep, best_threshold=float(sweep["threshold"][best]), best=chosen)


def evaluate_maps(
    maps_dir: str | os.PathLike,
    root: str | os.PathLike,
    ids: Sequence[str],
    which: str = "is_cam",
    mode: Literal["estimated", "threshold"] = "estimated",
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    scoring: Scoring = Scoring(),
) -> MIoUResult | SweepResult:
    """Evaluate `<maps_dir>/<id>.npz` against the masks under `root`, each image read once.

    estimated: MIoUResult of keys[argmax over all channels]; threshold: SweepResult of threshold background
    (argmax over [t, foreground maps]) for every t of `thresholds`.
    """
    if mode == "threshold":
        thresholds = tuple(float(t) for t in thresholds)
        if not thresholds:
            raise ValueError("no thresholds to sweep")
        confs = scoring.confusions(ids, MapLabeler(str(maps_dir), which, thresholds), root,
                                   f"threshold sweep ({which})")
        return sweep_from_confusions(confs, thresholds, scoring.class_names, scoring.present_classes, scoring.split,
                                     len(ids))
    if mode != "estimated":
        raise ValueError(f"mode={mode!r}: use 'estimated' or 'threshold'")
    confs = scoring.confusions(ids, MapLabeler(str(maps_dir), which), root, f"estimated background ({which})")
    result = miou_result(confs[0], scoring.class_names, scoring.present_classes, scoring.split, len(ids))
    note = f"{result.note}; estimated background (argmax over background + present-class channels)"
    return MIoUResult(result.miou, result.per_class, result.classes, note, result.confusion)
