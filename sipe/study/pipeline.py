"""The study's cached stages: train a (variant, seed), make its maps, evaluate them into results files.

- Training runs live in `<work_dir>/runs/<variant>-s<seed>-<train key>`, maps in
  `<work_dir>/maps/<variant>-s<seed>-<split>-<maps key>`; the keys hold the settings, the data
  fingerprint and (for maps) the checkpoint digest, so every caller asking for the same thing gets the
  same files, and an interrupted stage resumes where it stopped. Each folder is locked while written.
- A finished unit (variant, seed) writes its evaluation at once into the results folder:
  `runs/<variant>-s<seed>.csv` (tidy rows), `runs/<variant>-s<seed>.json` (provenance) and
  `confusions/<variant>-s<seed>.npz` (per-image confusions, for bootstrap intervals). A rerun skips a
  unit whose results exist for the same configuration and data.

`python -m sipe stages --profile subset` runs every unit of the profile's plan in turn (a queue).
"""
from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from ..infra import distributed
from ..infra import provenance as prov
from ..infra.config import SELECTION_SPLIT, ExperimentConfig, variant_config
from ..data import voc
from ..stages.evaluation import Reading, Scoring, evaluate_readings, miou_result
from ..stages.maps import STRUCTURE, checkpoint_digest, make_maps, maps_dir_for, seed_method_key
from ..infra.runtime import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json, resolve_device
from ..stages.train import TrainResult, run_dir_for, train
from .records import RESULT_COLUMNS, has_record, results_dir_for, unit_paths

@dataclass(frozen=True)
class Unit:
    """One trained model of the study: a named variant with one training seed."""

    variant: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.variant}-s{self.seed}"


def plan(cfg: ExperimentConfig) -> list[Unit]:
    """The profile's units in run order: every variant with the first seed, then the other seeds of the
    multi-seed variants (so a partial run covers every chapter first)."""
    st = cfg.study
    first = [Unit(v, st.seeds[0]) for v in st.variants]
    return first + [Unit(v, s) for s in st.seeds[1:] for v in st.variants if v in st.multi_seed]


def unit_config(cfg: ExperimentConfig, unit: Unit) -> ExperimentConfig:
    """`cfg` with the unit's variant overrides and training seed."""
    return variant_config(cfg, unit.variant).override(**{"train.seed": unit.seed})


def on_split(cfg: ExperimentConfig, split: str, max_images: int | None) -> ExperimentConfig:
    return cfg.override(**{"infer.split": split, "infer.max_images": max_images})


def selection_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """The config whose maps are made on the selection split (where settings are chosen)."""
    return on_split(cfg, SELECTION_SPLIT, cfg.study.selection_images)


def trained(cfg: ExperimentConfig, work_dir: str | Path, variant: str = "sipe", progress: bool = True) -> TrainResult:
    """The finished training run of `variant` under `cfg` (trained now, resumed, or reused)."""
    vcfg = variant_config(cfg, variant)
    return train(vcfg, run_dir_for(vcfg, work_dir, variant), progress=progress)


def maps(
    cfg: ExperimentConfig,
    work_dir: str | Path,
    variant: str = "sipe",
    seed_methods: Sequence[str] = (STRUCTURE,),
    progress: bool = True,
) -> Path:
    """The folder of finished maps of `variant` under `cfg` (trains the variant first if needed)."""
    vcfg = variant_config(cfg, variant)
    run = trained(cfg, work_dir, variant, progress)
    out = maps_dir_for(vcfg, work_dir, variant, checkpoint_digest(run.checkpoint), seed_methods)
    if not (out / "DONE").exists():
        make_maps(vcfg, run.checkpoint, out, seed_methods, progress=progress)
    return out


def fig8_methods(cfg: ExperimentConfig) -> tuple[str, ...]:
    """Fig. 8's seed methods: structure-aware seeds, CAM argmax (per alpha) and CAM thresholds."""
    st = cfg.study
    return (STRUCTURE, *(f"argmax:{a:g}" for a in st.fig8_alphas), *(f"threshold:{t:g}" for t in st.fig8_thresholds))


def unit_seed_methods(cfg: ExperimentConfig, variant: str) -> tuple[str, ...]:
    """The readings a unit's maps carry: SIPE's carry Fig. 8's seed methods; every other variant's carry
    IS-CAM with prototypes on the semantic feature (Table 4's reading for the CAM baseline)."""
    if variant == "sipe":
        return fig8_methods(cfg)
    return (STRUCTURE, "structure/semantic")


def _readings(cfg: ExperimentConfig, seed_methods: Sequence[str], split_kind: str) -> list[Reading]:
    t = tuple(cfg.eval.thresholds)
    base = [Reading("is_cam"), Reading("cam"), Reading("cam_irn"),
            Reading("is_cam", t), Reading("cam", t), Reading("cam_irn", t)]
    if split_kind == "eval":
        base += [Reading(seed_method_key(m)) for m in seed_methods if m != STRUCTURE]
    return base


def _present(cfg: ExperimentConfig) -> str | None:
    """eval.present_classes_only: mean over the classes present in the ground truth, else over every class
    with ground truth or predictions."""
    return "gt" if cfg.eval.present_classes_only else None


def _rows(readings: Sequence[Reading], confs: Sequence[np.ndarray], unit: Unit, cfg: ExperimentConfig,
          per_class: Sequence[str] = ("is_cam",)) -> list[dict[str, Any]]:
    rows = []
    split = cfg.infer.split
    for r, c in zip(readings, confs):
        total = c.sum(0)
        thresholds = (None,) if r.thresholds is None else r.thresholds
        for t, conf in zip(thresholds, total):
            res = miou_result(conf, present_classes=_present(cfg), split=split, n_images=c.shape[0])
            common = {"reading": r.key, "background": r.background, "threshold": t, "variant": unit.variant,
                      "seed": unit.seed, "split": split, "n_images": c.shape[0]}
            rows.append({**common, "quantity": "miou", "class": "", "value": res.miou})
            if r.key in per_class and r.thresholds is None:
                rows += [{**common, "quantity": "iou", "class": name, "value": float(v)}
                         for name, v in res.per_class["iou"].items()]
    return rows


def _crf_rows(cfg: ExperimentConfig, maps_dir: Path, unit: Unit, ids: list[str], progress: bool,
              store: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """The denseCRF reading of a unit's headline map: for a model trained with GSC its IS-CAM with the
    estimated background (background x bg_scale in the second run), for the CAM baseline the CAM under
    IRN's protocol (constant backgrounds 0.30 / 0.05)."""
    from ..stages.crf import IRN_BACKGROUNDS, evaluate_crf

    e = cfg.eval
    root = cfg.data.resolved_root()
    rows = []
    reading = ("is_cam", {"bg_scale": e.crf_bg_scale}) if cfg.model.gsc else ("cam_irn", {"backgrounds": IRN_BACKGROUNDS})
    for key, kwargs in (reading,):
        res = evaluate_crf(maps_dir, root, ids, which=key, t=e.crf_iterations, gt_prob=e.crf_gt_prob,
                           scoring=Scoring(present_classes=_present(cfg), split=cfg.infer.split, workers=2,
                                           progress=progress), per_image=True, **kwargs)
        store[f"{cfg.infer.split}/{key}/crf"] = res.per_image_confusion.astype(np.int32)
        for background, r in (("crf_void_bg", res.void_as_background), ("crf_void_ignored", res.void_ignored)):
            common = {"reading": key, "background": background, "threshold": None, "variant": unit.variant,
                      "seed": unit.seed, "split": cfg.infer.split, "n_images": len(ids)}
            rows.append({**common, "quantity": "miou", "class": "", "value": r.miou})
            rows += [{**common, "quantity": "iou", "class": n, "value": float(v)} for n, v in r.per_class["iou"].items()]
        rows.append({"reading": key, "background": "crf", "threshold": None, "variant": unit.variant, "seed": unit.seed,
                     "split": cfg.infer.split, "n_images": len(ids), "quantity": "void_fraction", "class": "",
                     "value": res.void_fraction})
    return rows


def unit_identity(cfg: ExperimentConfig, unit: Unit) -> dict[str, str]:
    """What a unit's results must match to be reused or published: its eval-stage config hash and the
    fingerprints of the data splits it read."""
    ucfg = unit_config(cfg, unit)
    root = ucfg.data.resolved_root()
    return {
        "config_hash": ucfg.stage_hash("eval"),
        "data_train": voc.fingerprint(root, ucfg.data.train_split, ucfg.data.max_images),
        "data_eval": voc.fingerprint(root, ucfg.infer.split, ucfg.infer.max_images),
        "data_selection": voc.fingerprint(root, SELECTION_SPLIT, ucfg.study.selection_images),
    }


def run_unit(cfg: ExperimentConfig, work_dir: str | Path, unit: Unit, results_dir: str | Path | None = None,
             progress: bool = True) -> Path:
    """Train, map and evaluate one unit; write its results files (atomically) and return the CSV path.

    Reuses every finished stage; when the unit's results already exist for the same configuration and
    data, returns at once. Under torchrun every rank trains and makes maps; rank 0 alone evaluates and
    writes the results files."""
    results_dir = Path(results_dir) if results_dir is not None else results_dir_for(cfg.profile, work_dir)
    paths = unit_paths(results_dir, unit.name)
    identity = unit_identity(cfg, unit)
    with distributed.folder_lock(Path(work_dir) / "evals" / unit.name):
        if has_record(results_dir, unit.name, identity):
            return paths["csv"]
        ucfg = unit_config(cfg, unit)
        wall: dict[str, float] = {}
        t0 = time.perf_counter()
        run = train(ucfg, run_dir_for(ucfg, work_dir, unit.variant), progress=progress)
        final = torch.load(run.checkpoint, map_location="cpu", weights_only=True)
        wall["train"] = float(final.get("wall_seconds", time.perf_counter() - t0))
        digest = checkpoint_digest(run.checkpoint)
        rows: list[dict[str, Any]] = []
        store: dict[str, np.ndarray] = {}
        maps_keys = {}
        for kind, scfg, methods in (("eval", ucfg, unit_seed_methods(cfg, unit.variant)),
                                    ("selection", selection_config(ucfg), (STRUCTURE,))):
            out = maps_dir_for(scfg, work_dir, unit.variant, digest, methods)
            t1 = time.perf_counter()
            made = make_maps(scfg, run.checkpoint, out, methods, progress=progress)
            if not distributed.is_main():
                continue
            done = read_json(out / "DONE")
            wall[f"maps_{kind}"] = float(done.get("seconds", time.perf_counter() - t1)) if made.n_computed == 0 \
                else made.seconds
            maps_keys[kind] = out.name
            ids = voc.read_split(scfg.data.resolved_root(), scfg.infer.split)[: scfg.infer.max_images]
            readings = _readings(scfg, methods, kind)
            t2 = time.perf_counter()
            confs = evaluate_readings(out, scfg.data.resolved_root(), ids, readings, workers=2, progress=progress)
            rows += _rows(readings, confs, unit, scfg)
            for r, c in zip(readings, confs):
                store[f"{scfg.infer.split}/{r.key}/{r.background}"] = c.astype(np.int32)
            store[f"{scfg.infer.split}/ids"] = np.asarray(ids)
            if kind == "eval" and cfg.eval.crf and unit.variant in cfg.study.crf_variants:
                rows += _crf_rows(scfg, out, unit, ids, progress, store)
            wall[f"eval_{kind}"] = time.perf_counter() - t2
        if not distributed.is_main():
            return paths["csv"]
        metrics = pd.read_csv(run.metrics)
        tail = metrics.tail(max(1, len(metrics) // 10))
        for quantity in ("loss", "loss_cls", "loss_gsc", "seed_fg_share"):
            if quantity in tail and tail[quantity].notna().any():
                rows.append({"quantity": f"train_{quantity}_last10pct", "reading": "", "background": "", "threshold": None,
                             "class": "", "variant": unit.variant, "seed": unit.seed, "split": ucfg.data.train_split,
                             "value": float(tail[quantity].mean()), "n_images": None})
        table = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
        buf = io.BytesIO()
        np.savez_compressed(buf, **store)
        atomic_write_bytes(paths["npz"], buf.getvalue())
        atomic_write_json(paths["json"], {
            **identity, "unit": unit.name, "variant": unit.variant, "seed": unit.seed, "profile": cfg.profile,
            "git_revision": prov.git_revision(), "code": prov.stage_code_hashes(),
            "train_key": run.run_dir.name, "maps": maps_keys, "checkpoint_digest": digest,
            "device": str(resolve_device(ucfg.device)), "machine": prov.machine(),
            "packages": prov.package_versions(),
            "wall_seconds": {k: round(v, 1) for k, v in wall.items()}, "config": ucfg.to_dict(),
            "finished": prov.utc_now(),
        })
        atomic_write_text(paths["csv"], table.to_csv(index=False))
    return paths["csv"]

