"""The study's units of every kind: SC-CAM's units are run here, every other one by `sipe.study.pipeline.run_unit`.

An SC-CAM unit (`sccam`, seed) is made exactly as the CAM unit of the same seed, but for its model:

- round 0 is the CAM unit's training run (`pipeline.trained(..., "cam")`: reused, or trained first);
- `sipe.baselines.sccam.train_sccam` runs the profile's `sccam` settings (k, rounds, sub_weight) in
  `<unit run folder>/sccam-<settings key>/`, the unit run folder being the one `sipe.stages.train.train` keeps for
  the unit (`run_dir_for(cfg, work_dir, "sccam")`);
- the final parent-head model is installed in the unit run folder (`final.pt`, `config.json`, the last
  round's `metrics.csv`, `sccam.json`), so `pipeline.run_unit` reuses it as the unit's trained model and
  makes and evaluates its maps as the CAM unit's (same readings; denseCRF with IRN's 0.30 / 0.05);
- the unit's record then gets its SC-CAM settings, a config hash that covers them, and the wall time of
  each round (`train_round0` is the CAM's training, `train_round<r>` features + k-means + training).

Run SC-CAM's units through `run_unit` here: `pipeline.run_unit` alone, on an empty unit run folder, would
train a plain CAM there (whose results stay unpublished: their config hash lacks the SC-CAM settings).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from ..infra import distributed
from . import pipeline
from ..infra.config import SCCAM, ExperimentConfig
from ..infra.locks import folder_lock
from ..stages.maps import checkpoint_digest
from .pipeline import Unit
from ..baselines.sccam import train_sccam
from ..infra.runtime import atomic_write_bytes, atomic_write_json, read_json
from ..stages.train import TrainResult, run_dir_for
from .records import has_record, results_dir_for, training_log_path, unit_paths

INSTALLED = "sccam.json"
SCCAM_SOURCES = ("sipe/baselines/sccam.py",)
"""The source of SC-CAM's rounds (features, k-means, training), beyond the stage sources of
`sipe.infra.provenance` that its CAM round 0, maps and evaluation share with every unit; this module only
orders and installs them."""


def sccam_config_hash(eval_hash: str, cfg: ExperimentConfig) -> str:
    """An SC-CAM unit's config hash: its eval-stage hash together with its SC-CAM settings."""
    return hashlib.sha256(f"{eval_hash}:{cfg.sccam.key()}".encode()).hexdigest()[:12]


def unit_identity(cfg: ExperimentConfig, unit: Unit) -> dict[str, str]:
    """`pipeline.unit_identity`; an SC-CAM unit's config hash also covers its SC-CAM settings."""
    identity = pipeline.unit_identity(cfg, unit)
    if unit.variant == SCCAM:
        identity["config_hash"] = sccam_config_hash(identity["config_hash"], pipeline.unit_config(cfg, unit))
    return identity


def trained_sccam(cfg: ExperimentConfig, work_dir: str | Path, seed: int | None = None,
                  progress: bool = True) -> tuple[TrainResult, dict[str, float]]:
    """The SC-CAM unit's model of `seed` (default: train.seed), trained now, resumed or reused, and installed
    in the unit run folder; and the wall time (s) of each round (train_round0 = the CAM baseline's)."""
    unit = Unit(SCCAM, cfg.train.seed if seed is None else seed)
    ucfg = pipeline.unit_config(cfg, unit)
    wall: dict[str, float] = {}
    cam = None
    if ucfg.sccam.round0 == "cam":
        cam = pipeline.trained(ucfg, work_dir, "cam", progress).checkpoint
        wall["train_round0"] = float(torch.load(cam, map_location="cpu", weights_only=True).get("wall_seconds", 0.0))
    unit_dir = run_dir_for(ucfg, work_dir, SCCAM)
    run_dir = unit_dir / f"sccam-{ucfg.sccam.key()}"
    with folder_lock(run_dir):
        result = train_sccam(ucfg, run_dir, ucfg.sccam, cam, progress)
    for r, phases in result.round_seconds().items():
        wall[f"train_round{r}"] = float(sum(phases.values()))
    digest = checkpoint_digest(result.checkpoint)
    with folder_lock(unit_dir):
        marker = unit_dir / INSTALLED
        if not (unit_dir / "final.pt").exists() or not marker.exists() or read_json(marker).get("checkpoint_digest") != digest:
            atomic_write_json(unit_dir / "config.json", ucfg.to_dict())
            atomic_write_bytes(unit_dir / "metrics.csv", (result.round_dirs[-1] / "metrics.csv").read_bytes())
            atomic_write_bytes(unit_dir / "final.pt", result.checkpoint.read_bytes())
            atomic_write_json(marker, {"run": run_dir.name, "checkpoint_digest": digest, "sccam": ucfg.sccam.to_dict()})
    return TrainResult(unit_dir, unit_dir / "final.pt", unit_dir / "metrics.csv", result.reused), wall


def run_unit(cfg: ExperimentConfig, work_dir: str | Path, unit: Unit, results_dir: str | Path | None = None,
             progress: bool = True) -> Path:
    """Train, map and evaluate one unit of any kind and write its results files (and its training log,
    `keep_training_log`); returns the CSV path. Reuses every finished stage, and returns at once when the
    unit's results match its identity."""
    results_dir = Path(results_dir) if results_dir is not None else results_dir_for(cfg.profile, work_dir)
    csv = _run_unit(cfg, work_dir, unit, results_dir, progress)
    if distributed.is_main():
        keep_training_log(cfg, work_dir, results_dir, unit)
    return csv


def _run_unit(cfg: ExperimentConfig, work_dir: str | Path, unit: Unit, results_dir: Path, progress: bool) -> Path:
    if unit.variant != SCCAM:
        return pipeline.run_unit(cfg, work_dir, unit, results_dir, progress)
    paths = unit_paths(results_dir, unit.name)
    identity = unit_identity(cfg, unit)
    with folder_lock(Path(work_dir) / "evals" / f"{unit.name}.sccam"):
        if has_record(results_dir, unit.name, identity):
            return paths["csv"]
        run, wall = trained_sccam(cfg, work_dir, unit.seed, progress)
        digest = checkpoint_digest(run.checkpoint)
        if paths["json"].exists() and read_json(paths["json"]).get("checkpoint_digest") != digest:
            paths["json"].unlink()
        csv = pipeline.run_unit(cfg, work_dir, unit, results_dir, progress)
        record = read_json(paths["json"])
        stages = {k: v for k, v in record["wall_seconds"].items() if k != "train"}
        ucfg = pipeline.unit_config(cfg, unit)
        record.update(identity, sccam=ucfg.sccam.to_dict(), sccam_run=read_json(run.run_dir / INSTALLED)["run"],
                      wall_seconds={**{k: round(v, 1) for k, v in wall.items()}, **stages})
        atomic_write_json(paths["json"], record)
    return csv


def keep_training_log(cfg: ExperimentConfig, work_dir: str | Path, results_dir: str | Path, unit: Unit) -> Path | None:
    """Copy a finished unit's training log (`metrics.csv` of the run its results record as `train_key`) to
    `training_log_path`, so its training curves are drawn from committed files once the run folder is
    gone; the kept log's path, or None when neither the run folder nor a kept log is here."""
    kept = training_log_path(results_dir, unit.name)
    record_path = unit_paths(results_dir, unit.name)["json"]
    run_dir = run_dir_for(pipeline.unit_config(cfg, unit), work_dir, unit.variant)
    source = run_dir / "metrics.csv"
    if record_path.exists() and source.exists() and read_json(record_path).get("train_key") == run_dir.name:
        data = source.read_bytes()
        if not kept.exists() or kept.read_bytes() != data:
            atomic_write_bytes(kept, data)
    return kept if kept.exists() else None
