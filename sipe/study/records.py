"""The study's results files: where a profile's results go, each unit's files and the tidy tables' columns.

A finished unit writes `runs/<unit>.csv` (rows of `RESULT_COLUMNS`), `runs/<unit>.json` (its record:
identity, provenance, wall time) and `confusions/<unit>.npz` (per-image confusions) into the results folder;
tables are tidy CSVs of `TIDY_COLUMNS` beside them.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ..infra import provenance as prov
from ..infra.runtime import atomic_write_text, read_json

PUBLISHED_PROFILES = ("subset", "paper")
RESULTS_ENV = "SIPE_RESULTS_DIR"
RESULT_COLUMNS = ("quantity", "reading", "background", "threshold", "class", "variant", "seed", "split",
                  "value", "n_images")
TIDY_COLUMNS = ["row", "quantity", "variant", "seed", "split", "reading", "value"]


def results_dir_for(profile: str, work_dir: str | Path) -> Path:
    """Where a profile's results files go: `$SIPE_RESULTS_DIR`, else `results/<profile>` in the repository
    for the published profiles (subset, paper), else `<work_dir>/results` (smoke never touches the repo)."""
    env = os.environ.get(RESULTS_ENV, "")
    if env:
        return Path(env).expanduser()
    if profile in PUBLISHED_PROFILES:
        return prov.REPO_ROOT / "results" / profile
    return Path(work_dir) / "results"


def unit_paths(results_dir: str | Path, name: str) -> dict[str, Path]:
    """The results files of the unit called `name`: its rows ('csv'), record ('json'), confusions ('npz')."""
    r = Path(results_dir)
    return {"csv": r / "runs" / f"{name}.csv", "json": r / "runs" / f"{name}.json",
            "npz": r / "confusions" / f"{name}.npz"}


def has_record(results_dir: str | Path, name: str, identity: dict[str, str]) -> bool:
    """True when the unit `name` has its rows and record in `results_dir` and the record matches `identity`."""
    paths = unit_paths(results_dir, name)
    if not (paths["json"].exists() and paths["csv"].exists()):
        return False
    record = read_json(paths["json"])
    return all(record.get(k) == v for k, v in identity.items())


def training_log_path(results_dir: str | Path, name: str) -> Path:
    """Where a unit's per-step training log is kept beside its results: `<results>/logs/<unit>.csv`."""
    return Path(results_dir) / "logs" / f"{name}.csv"


def certificates(record: dict) -> list[dict]:
    """The certifications of a unit's record, oldest first: its `certified_before` list, then `certified`."""
    return [*record.get("certified_before", []), *([record["certified"]] if record.get("certified") else [])]


def write_table(results_dir: str | Path, name: str, table: pd.DataFrame) -> Path:
    """Save a tidy table as `<results_dir>/<name>.csv` (atomically)."""
    return atomic_write_text(Path(results_dir) / f"{name}.csv", table.to_csv(index=False))
