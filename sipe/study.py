"""The notebooks' entry point: one `Study` per profile that trains, maps and evaluates through caches.

A notebook calls `study = setup(profile, data_root, work_dir, seed, device)` and then asks for what it
shows (`study.evaluate("sipe")`, `study.maps("cam")`, ...). Runs, maps and evaluations are cached under
`work_dir`, so the notebooks of one reproduction share every expensive stage.
"""
from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from . import pipeline
from .config import SELECTION_SPLIT, ExperimentConfig, default_work_dir, get_profile, variant_config
from .data import voc
from .maps import STRUCTURE
from .runtime import atomic_write_bytes
from .train import TrainResult

FULL_VOC_SIZES = {"train": 1464, "val": 1449, "train_aug": 10582}
PAPER_BACKBONE = "resnet50"
PAPER_BG_SCALE = 0.5


@dataclass
class Study:
    """One reproduction: a profile's config, a data root and a work folder holding every cached stage."""

    cfg: ExperimentConfig
    work_dir: Path
    progress: bool = False

    @property
    def root(self) -> Path:
        return self.cfg.data.resolved_root()

    def config(self, variant: str = "sipe") -> ExperimentConfig:
        return variant_config(self.cfg, variant)

    def trained(self, variant: str = "sipe") -> TrainResult:
        return pipeline.trained(self.cfg, self.work_dir, variant, progress=self.progress)

    def metrics(self, variant: str = "sipe") -> pd.DataFrame:
        """The per-step training log of a variant (trains it if needed)."""
        return pd.read_csv(self.trained(variant).metrics)

    def maps(self, variant: str = "sipe", seed_methods: Sequence[str] = (STRUCTURE,)) -> Path:
        return pipeline.maps(self.cfg, self.work_dir, variant, seed_methods, progress=self.progress)

    def eval_ids(self) -> list[str]:
        """The ids the maps are made and evaluated on (infer.split, limited by infer.max_images)."""
        return voc.read_split(self.root, self.cfg.infer.split)[: self.cfg.infer.max_images]

    def _cached(self, maps_dir: Path, key: str, compute: Callable[[], Any]) -> Any:
        path = self.work_dir / "evals" / maps_dir.name / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.pkl"
        if path.exists():
            return pickle.loads(path.read_bytes())
        value = compute()
        atomic_write_bytes(path, pickle.dumps(value))
        return value

    def evaluate(
        self,
        variant: str = "sipe",
        which: str = "is_cam",
        mode: str = "estimated",
        seed_methods: Sequence[str] = (STRUCTURE,),
    ):
        """mIoU of a variant's maps: MIoUResult ('estimated' background) or SweepResult ('threshold')."""
        from . import evaluation

        maps_dir = self.maps(variant, seed_methods)
        thresholds = self.cfg.eval.thresholds
        key = json.dumps([which, mode, list(thresholds)])
        return self._cached(maps_dir, key, lambda: evaluation.evaluate_maps(
            maps_dir, self.root, self.eval_ids(), which=which, mode=mode, thresholds=thresholds,
            split=self.cfg.infer.split, progress=self.progress))

    def evaluate_crf(self, variant: str = "sipe", which: str = "is_cam", threshold: float | None = None):
        """denseCRF mIoU of a variant's maps (CRFResult); `threshold` replaces the background by a constant."""
        from .crf import evaluate_crf

        maps_dir = self.maps(variant)
        e = self.cfg.eval
        key = json.dumps(["crf", which, threshold, e.crf_iterations, e.crf_gt_prob, e.crf_bg_scale])
        return self._cached(maps_dir, key, lambda: evaluate_crf(
            maps_dir, self.root, self.eval_ids(), which=which, bg_scale=e.crf_bg_scale, t=e.crf_iterations,
            gt_prob=e.crf_gt_prob, threshold=threshold, split=self.cfg.infer.split, progress=self.progress))

    def on_split(self, split: str, max_images: int | None = None) -> "Study":
        """The same study with maps made and evaluated on another split (e.g. SELECTION_SPLIT)."""
        cfg = self.cfg.override(**{"infer.split": split, "infer.max_images": max_images})
        return Study(cfg, self.work_dir, self.progress)

    def setting(self, variant: str = "sipe") -> str:
        """Where our setting differs from the paper, in one line to print beside a number."""
        c = self.config(variant)
        n_eval = len(self.eval_ids())
        full = FULL_VOC_SIZES.get(c.infer.split)
        parts = [f"profile {c.profile}", f"backbone {c.model.backbone}"
                 + ("" if c.model.backbone == PAPER_BACKBONE else " (paper: ResNet-50)")]
        if c.infer.split == SELECTION_SPLIT:
            parts.append(f"{n_eval} selection-split images (train_aug outside VOC train and val)")
        else:
            parts.append(f"{n_eval} VOC12 {c.infer.split} images" + (f" of {full:,}" if full else ""))
        n_train = len(voc.read_split(self.root, c.data.train_split)[: c.data.max_images])
        parts.append(f"{n_train} training images" + (f" of {FULL_VOC_SIZES[c.data.train_split]:,}"
                                                     if c.data.train_split in FULL_VOC_SIZES else ""))
        parts.append(f"crop {c.data.crop_size}, {c.train.epochs} epochs")
        if c.model.bg_scale != PAPER_BG_SCALE:
            parts.append(f"background weight {c.model.bg_scale:g} (paper: {PAPER_BG_SCALE:g})")
        return "; ".join(parts)

    def splits(self, names: Sequence[str] = ("train_aug", "train", "val")) -> pd.DataFrame:
        """Split sizes of the data root beside full VOC 2012's: columns split, images, full_voc."""
        rows = [{"split": n, "images": len(voc.read_split(self.root, n)), "full_voc": FULL_VOC_SIZES.get(n)}
                for n in names if voc.split_path(self.root, n).is_file()]
        return pd.DataFrame(rows)

    def class_counts(self, names: Sequence[str] = ("train_aug", "train", "val")) -> pd.DataFrame:
        """Images per class and split from the image-level labels: columns split, class, images."""
        labels = voc.load_cls_labels(self.root)
        rows = []
        for n in names:
            if not voc.split_path(self.root, n).is_file():
                continue
            ids = voc.read_split(self.root, n)
            counts = sum(labels[i] for i in ids if i in labels)
            rows += [{"split": n, "class": c, "images": int(counts[k])} for k, c in enumerate(voc.CLASS_NAMES[1:])]
        return pd.DataFrame(rows)

    def __str__(self) -> str:
        return "\n".join(self.setting().split("; "))

    def record(self, name: str, ours: dict[str, dict[str, dict[str, float]]]) -> Path:
        """Save a notebook's numbers ({table: {row: {metric: value}}}) for the claims page."""
        return pipeline.record(self.work_dir, name, ours)


def setup(
    profile: str = "smoke",
    data_root: str = "",
    work_dir: str = "",
    seed: int | None = None,
    device: str = "auto",
    progress: bool = False,
    **overrides: Any,
) -> Study:
    """A Study for a notebook's parameters; `seed` overrides train.seed, `overrides` are section.field=value."""
    sets: dict[str, Any] = dict(overrides)
    if data_root:
        sets["data.root"] = data_root
    if seed is not None and int(seed) >= 0:
        sets["train.seed"] = int(seed)
    if device:
        sets["device"] = device
    cfg = get_profile(profile, **sets)
    wd = (Path(work_dir).expanduser() if work_dir else default_work_dir(profile)).resolve()
    cfg.data.resolved_root()
    return Study(cfg, wd, progress)
