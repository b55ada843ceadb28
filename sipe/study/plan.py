"""Every unit of the study, of every kind, and the one runner over them.

A unit is a (variant, seed) (`sipe.study.pipeline.Unit`). Its kind (`kind_of`) says how it is identified,
which code of its own its numbers depend on beyond the stage sources of `sipe.infra.provenance`, how it
runs, and which work folders its results came from:

- a classification unit (SIPE, the CAM baseline, the Table 5 options): `sipe.study.pipeline.run_unit`;
- an SC-CAM unit: its rounds (`sipe.study.units`), then maps and evaluations as the CAM's;
- a segmentation unit (Table 2): IRN refinement and the segmentation network (`sipe.study.segstudy`).

A new kind is one `UnitKind` entry in `KINDS` (docs/architecture.md shows one).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..infra import distributed
from ..infra import provenance as prov
from ..infra.config import SCCAM, ExperimentConfig
from ..infra.locks import folder_lock
from ..infra.runtime import read_json
from ..stages.train import run_dir_for
from . import pipeline, segstudy, units
from .pipeline import Unit
from .records import has_record, unit_paths

Identity = Callable[[ExperimentConfig, Unit], dict[str, str]]
Runner = Callable[[ExperimentConfig, "str | Path", Unit, "str | Path | None", bool], Path]
Folders = Callable[[ExperimentConfig, Path, Unit, dict[str, Any]], list[Path]]


def _training_run(cfg: ExperimentConfig, work: Path, unit: Unit, record: dict[str, Any]) -> list[Path]:
    return [run_dir_for(pipeline.unit_config(cfg, unit), work, unit.variant)]


def _segmentation_stages(cfg: ExperimentConfig, work: Path, unit: Unit, record: dict[str, Any]) -> list[Path]:
    return [work / f for f in record.get("stages", {}).values() if str(f).startswith("segmentation/")]


def _stage_code_hashes() -> dict[str, str]:
    return prov.stage_code_hashes()


def _segmentation_identity(cfg: ExperimentConfig, unit: Unit) -> dict[str, str]:
    return segstudy.unit_identity(cfg, unit.seed)


@dataclass(frozen=True)
class UnitKind:
    """How the units of one kind are identified, traced to their code, run and set aside.

    identity(cfg, unit): what the unit's record must match to be reused or published (config hash, data
    fingerprints); run(cfg, work_dir, unit, results_dir, progress): compute it (reusing finished stages) and
    write its results files, returning the CSV; sources: its own source files beyond the stage sources;
    code_hashes(): the hashes its record keeps of the code it ran; folders(cfg, work, unit, record): the work
    folders its results came from (renamed by `set_aside`); last: run after every other kind, its
    single-process stages on rank 0 under torchrun once `prepare(cfg, work_dir, units, progress)` has run on
    every rank."""

    name: str
    identity: Identity
    run: Runner
    folders: Folders
    sources: tuple[str, ...] = ()
    code_hashes: Callable[[], dict[str, str]] = _stage_code_hashes
    last: bool = False
    prepare: Callable[[ExperimentConfig, "str | Path", Sequence[Unit], bool], None] | None = None


CLASSIFICATION = UnitKind("classification", units.unit_identity, units.run_unit, _training_run)
KINDS: dict[str, UnitKind] = {
    SCCAM: UnitKind("sccam", units.unit_identity, units.run_unit, _training_run, sources=units.SCCAM_SOURCES),
    segstudy.UNIT_VARIANT: UnitKind("segmentation", _segmentation_identity, segstudy.run_unit, _segmentation_stages,
                                    sources=segstudy.CODE_SOURCES, code_hashes=segstudy.code_hashes, last=True,
                                    prepare=segstudy.prepare_maps),
}
"""The unit kinds by variant name; every other variant is a classification unit (`CLASSIFICATION`)."""


def kind_of(unit: Unit) -> UnitKind:
    """The kind of `unit`, by its variant."""
    return KINDS.get(unit.variant, CLASSIFICATION)


def plan(cfg: ExperimentConfig) -> list[Unit]:
    """Every unit of the study in run order: the classification units (`pipeline.plan`), then the
    segmentation units (`segstudy.plan`)."""
    return [*pipeline.plan(cfg), *segstudy.plan(cfg)]


def unit_identity(cfg: ExperimentConfig, unit: Unit) -> dict[str, str]:
    """What `unit`'s results must match under `cfg` to be reused or published."""
    return kind_of(unit).identity(cfg, unit)


def has_results(cfg: ExperimentConfig, results_dir: str | Path, unit: Unit) -> bool:
    """True when the unit's results files are in `results_dir` and their record matches its identity."""
    return has_record(results_dir, unit.name, unit_identity(cfg, unit))


def run_unit(cfg: ExperimentConfig, work_dir: str | Path, unit: Unit, results_dir: str | Path | None = None,
             progress: bool = True) -> Path:
    """Compute one unit of any kind (reusing every finished stage) and write its results files; the CSV."""
    return kind_of(unit).run(cfg, work_dir, unit, results_dir, progress)


def run_plan(cfg: ExperimentConfig, work_dir: str | Path, results_dir: str | Path | None = None,
             units: Sequence[Unit] | None = None, progress: bool = True) -> list[Path]:
    """Run `units` (default: `plan(cfg)`) in turn, one line per unit; their results CSVs.

    Under torchrun every rank runs the units of every kind but the `last` ones, then every rank runs their
    kind's `prepare` (the segmentation units' maps), and rank 0 alone runs their single-process stages."""
    todo = list(units) if units is not None else plan(cfg)
    if distributed.world_size() > 1:
        todo = [u for u in todo if not kind_of(u).last] + [u for u in todo if kind_of(u).last]
    done, prepared = [], set()
    for i, unit in enumerate(todo, 1):
        kind = kind_of(unit)
        if kind.last and kind.prepare is not None and distributed.world_size() > 1 and kind.name not in prepared:
            prepared.add(kind.name)
            kind.prepare(cfg, work_dir, [u for u in todo[i - 1:] if kind_of(u) is kind], progress)
            if not distributed.is_main():
                break
        t0 = time.perf_counter()
        print(f"[{i}/{len(todo)}] {unit.name} ...", flush=True)
        done.append(kind.run(cfg, work_dir, unit, results_dir, progress))
        print(f"[{i}/{len(todo)}] {unit.name} done in {time.perf_counter() - t0:.0f}s", flush=True)
    return done


def set_aside(cfg: ExperimentConfig, work_dir: str | Path, results_dir: str | Path, unit: Unit) -> list[Path]:
    """Make `unit` be computed again from its training on, deleting nothing: its results record
    (`runs/<unit>.json`) is removed and the work folders its results came from (`UnitKind.folders`: a
    classification unit's training run, an SC-CAM unit's rounds with its round 0 kept, a segmentation unit's
    own stage folders as its record lists them) are renamed `<folder>.replaced-<UTC time>`. Maps are keyed by
    their checkpoint's digest, so a retrained model gets new ones. Returns the renamed folders;
    FolderBusyError when the unit or one of its folders is being computed."""
    work = Path(work_dir)
    paths = unit_paths(results_dir, unit.name)
    record = read_json(paths["json"]) if paths["json"].exists() else {}
    folders = kind_of(unit).folders(cfg, work, unit, record)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    moved = []
    with folder_lock(work / "evals" / unit.name, wait=False):
        for folder in (f for f in folders if f.is_dir()):
            with folder_lock(folder, wait=False):
                pass
            target = folder.with_name(f"{folder.name}.replaced-{stamp}")
            n = 1
            while target.exists():
                n += 1
                target = folder.with_name(f"{folder.name}.replaced-{stamp}-{n}")
            folder.rename(target)
            moved.append(target)
        paths["json"].unlink(missing_ok=True)
    return moved

