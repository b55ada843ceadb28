"""The study's results as read from the results folder: the units of a configuration, their rows and records,
and whether the code a unit was computed with has changed since (`code_changes`)."""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..data import voc
from ..infra import provenance
from ..infra.config import SELECTION_SPLIT, ExperimentConfig
from . import pipeline
from .pipeline import Unit
from .plan import kind_of
from .records import RESULT_COLUMNS, unit_paths


@dataclass
class StudyResults:
    """The published units' rows (RESULT_COLUMNS of sipe.study.pipeline + unit, code_changed) and provenance."""

    rows: pd.DataFrame
    units: dict[str, dict[str, Any]]
    results_dir: Path
    eval_split: str
    stale: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    _confusions: dict[tuple[str, int, str], np.ndarray] = field(default_factory=dict, init=False, repr=False,
                                                                 compare=False)

    def select(self, variant: str, reading: str, background: str, split: str | None = None,
               quantity: str = "miou", threshold: float | None = None) -> pd.DataFrame:
        r = self.rows
        m = (r["variant"] == variant) & (r["reading"] == reading) & (r["background"] == background) & \
            (r["split"] == (split or self.eval_split)) & (r["quantity"] == quantity)
        if threshold is not None:
            m &= np.isclose(r["threshold"].astype(float), threshold)
        return r[m]

    def by_seed(self, variant: str, reading: str, background: str = "estimated", split: str | None = None,
                threshold: float | None = None) -> pd.Series:
        """mIoU per seed of one reading (index: seed)."""
        sel = self.select(variant, reading, background, split, threshold=threshold)
        return sel.set_index("seed")["value"].sort_index().astype(float)

    def chosen_threshold(self, variant: str, key: str) -> pd.Series:
        """Per seed, the background threshold of `key` that is best on the selection split."""
        sel = self.select(variant, key, "threshold", SELECTION_SPLIT)
        if sel.empty:
            return pd.Series(dtype=float)
        best = sel.loc[sel.groupby("seed")["value"].idxmax()]
        return best.set_index("seed")["threshold"].astype(float).sort_index()

    def at_chosen(self, variant: str, key: str, split: str | None = None) -> pd.Series:
        """Per seed, the mIoU of `key` with the background threshold chosen on the selection split."""
        chosen = self.chosen_threshold(variant, key)
        out = {s: float(self.by_seed(variant, key, "threshold", split, threshold=t).get(s, np.nan))
               for s, t in chosen.items()}
        return pd.Series(out, dtype=float).sort_index()

    def confusions(self, variant: str, seed: int, key: str) -> np.ndarray:
        """Per-image confusions of a unit's reading `<split>/<map key>/<background>`: int (N,P,C,C), read-only,
        read from its file once."""
        if (variant, seed, key) not in self._confusions:
            with np.load(self.results_dir / "confusions" / f"{variant}-s{seed}.npz") as data:
                array = data[key]
            array.flags.writeable = False
            self._confusions[(variant, seed, key)] = array
        return self._confusions[(variant, seed, key)]

    def code_changed(self, variants: Sequence[str]) -> list[str]:
        """Units of `variants` whose stage code has changed since they were computed."""
        return [u for u, p in self.units.items() if p["variant"] in variants and p["code_changed"]]


def load(cfg: ExperimentConfig, results_dir: str | Path, units: Sequence[Unit] | None = None) -> StudyResults:
    """The results of `cfg`'s classification units (or `units`) found in `results_dir`: a unit counts only
    when its record matches its identity under `cfg` (its kind's: configuration hash and data fingerprints,
    each split's computed once; else it is listed as stale). Each record gets `code_changed` (the stages, or
    the unit kind, whose code differs from the code it was computed with or certified equal to) and
    `code_changed_files`."""
    results_dir = Path(results_dir)
    frames, meta, stale, missing = [], {}, [], []
    code_hashes: dict[str, dict[str, str]] = {}
    with voc.fingerprints_memoized():
        for unit in units if units is not None else pipeline.plan(cfg):
            paths = unit_paths(results_dir, unit.name)
            if not (paths["csv"].exists() and paths["json"].exists()):
                missing.append(unit.name)
                continue
            record = json.loads(paths["json"].read_text())
            kind = kind_of(unit)
            if any(record.get(k) != v for k, v in kind.identity(cfg, unit).items()):
                stale.append(unit.name)
                continue
            if kind.name not in code_hashes:
                code_hashes[kind.name] = kind.code_hashes()
            record["code_changed"], record["code_changed_files"] = code_changes(record, unit, code_hashes[kind.name],
                                                                                kind.sources)
            meta[unit.name] = record
            frame = pd.read_csv(paths["csv"])
            frame["unit"] = unit.name
            frames.append(frame)
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*RESULT_COLUMNS, "unit"])
    return StudyResults(rows, meta, results_dir, cfg.infer.split, stale, missing)


def code_revision(record: dict[str, Any], part: str = "") -> str:
    """The revision whose code a record's hash of `part` (a stage, or the unit kind's own code) describes: the
    one that part was last re-stamped at (`code_revisions`, by a certification or a re-evaluation), else the
    one the record was certified at, else the one it was computed at."""
    stamped = record.get("code_revisions", {}).get(part) if part else None
    return str(stamped or record.get("certified", {}).get("revision") or record.get("git_revision", ""))


def code_changes(record: dict[str, Any], unit: Unit, now: dict[str, str],
                 sources: Sequence[str]) -> tuple[list[str], list[str] | None]:
    """(stages or unit kind whose code changed since `record`, the files that did): a stage counts when its
    hash differs from the record's and its code (not docstrings or layout) differs from its `code_revision`;
    the unit's own `sources` count as `_own_code_changes` says. Files are None when git cannot tell."""
    changed = [s for s, h in record.get("code", {}).items() if now.get(s) != h]
    staged: list[str] = []
    files: list[str] | None = []
    for stage in (s for s in provenance.STAGES if s in changed):
        differ = provenance.code_changes(code_revision(record, stage), [stage])
        if differ is None:
            staged.append(stage)
            files = None
        elif stage in provenance.stages_using(differ):
            staged.append(stage)
            files = None if files is None else sorted({*files, *differ})
    changed = staged + [s for s in changed if s not in provenance.STAGES]
    own, moved = _own_code_changes(unit, record, now, sources, code_revision(record, unit.variant))
    if own and unit.variant not in changed:
        changed.append(unit.variant)
    if moved:
        files = [*(files or []), *moved]
    return changed, files


def _own_code_changes(unit: Unit, record: dict[str, Any], now: dict[str, str],
                      sources: Sequence[str], revision: str) -> tuple[bool, list[str]]:
    """Whether the code of a unit's own `sources` (its kind's) has changed since its record, and the files
    that did. The record's hash of them, where it keeps one (the segmentation units), decides; else (the
    SC-CAM units) a difference in code from `revision` does. The files come from that difference (none when
    git or the revision is unavailable)."""
    if not sources:
        return False, []
    recorded = record.get("code", {}).get(unit.variant)
    if recorded is not None and recorded == now.get(unit.variant):
        return False, []
    files = provenance.source_code_changes(revision, sources) or []
    return (recorded is not None or bool(files)), files
