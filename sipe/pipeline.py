"""Cached stages for notebooks and the command line: train a variant, make its maps; reuse finished work.

Training runs live in `<work_dir>/runs/<variant>-<train hash>` and maps in
`<work_dir>/maps/<variant>-<maps hash>`, so every notebook that asks for the same configuration gets the
same files, and an interrupted stage resumes where it stopped.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .config import ExperimentConfig, variant_config
from .maps import STRUCTURE, MapsResult, make_maps, maps_dir_for
from .runtime import atomic_write_json
from .train import TrainResult, run_dir_for, train


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
    """The folder of finished maps of `variant` (trains the variant first if needed)."""
    vcfg = variant_config(cfg, variant)
    out = maps_dir_for(vcfg, work_dir, variant, seed_methods)
    if (out / "DONE").exists():
        return out
    run = trained(cfg, work_dir, variant, progress)
    result: MapsResult = make_maps(vcfg, run.checkpoint, out, seed_methods, progress=progress)
    return result.maps_dir


def record(work_dir: str | Path, name: str, payload: dict) -> Path:
    """Write a notebook's numeric results to <work_dir>/results/<name>.json (read by the claims page)."""
    return atomic_write_json(Path(work_dir) / "results" / f"{name}.json", payload)
