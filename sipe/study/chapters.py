"""The notebooks' entry point: one `Study` per profile over the cached stages and the results files.

A notebook calls `study = setup(profile, data_root, work_dir, seed, device, nproc=nproc)`, then
`study.results()` (the published units, computed first where missing; with nproc > 1 by
`python -m sipe stages` in nproc processes through torchrun) and `study.table("table1")` (a tidy table, also written
as `<results_dir>/table1.csv`). Relative paths are taken from the repository root, so a published
notebook names no machine's absolute path.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..infra import distributed
from . import claims, figinputs, pipeline, tables as tidy_tables
from ..infra.config import SCCAM, SELECTION_SPLIT, ExperimentConfig, default_work_dir, get_profile, variant_config
from ..data import voc
from ..infra.errors import UnitNotComputedError
from ..method.backbones import check_model
from ..stages.maps import STRUCTURE
from .paper import FULL_VOC_SIZES, PAPER_BACKBONE, PAPER_BG_SCALE, PAPER_SCALES
from ..infra.provenance import REPO_ROOT
from ..stages.train import TrainResult, run_dir_for
from .plan import has_results, run_plan
from .loading import StudyResults, load
from .records import TIDY_COLUMNS, results_dir_for, training_log_path, unit_paths, write_table
from .rendering import configure_display, note_markdown
from .units import trained_sccam


def _repo_path(path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (REPO_ROOT / p).resolve()


@dataclass
class Study:
    """One reproduction: a profile's config, a data root, a work folder of cached stages, a results folder."""

    cfg: ExperimentConfig
    work_dir: Path
    results_dir: Path
    progress: bool = False
    compute: bool = True
    nproc: int = 1

    @property
    def root(self) -> Path:
        return self.cfg.data.resolved_root()

    def config(self, variant: str = "sipe") -> ExperimentConfig:
        return variant_config(self.cfg, variant)

    def units(self, variants: Sequence[str] | None = None) -> list[pipeline.Unit]:
        """The profile's plan (run order), optionally only some variants."""
        return [u for u in pipeline.plan(self.cfg) if variants is None or u.variant in variants]

    def unit_config(self, unit: pipeline.Unit) -> ExperimentConfig:
        return pipeline.unit_config(self.cfg, unit)

    def run(self, variants: Sequence[str] | None = None) -> list[Path]:
        """Train, map and evaluate every unit of the plan (reusing finished ones); their results files.
        With compute=False (publishing what has finished) nothing is run."""
        if not self.compute:
            return []
        return self.run_units(self.units(variants))

    def run_units(self, units: Sequence[pipeline.Unit]) -> list[Path]:
        """`plan.run_plan` over `units`: in this process, or with nproc > 1 as `python -m sipe stages` under
        torchrun (the same configuration, work and results folders)."""
        if self.nproc <= 1:
            return run_plan(self.cfg, self.work_dir, self.results_dir, units, self.progress)
        args = ["-m", "sipe", "stages", "--profile", self.cfg.profile, "--work-dir", str(self.work_dir),
                "--results-dir", str(self.results_dir), *distributed.cli_args(self.cfg, get_profile(self.cfg.profile)),
                *([] if self.progress else ["--no-progress"]), "--units", *(u.name for u in units)]
        distributed.launch(args, self.nproc)
        return [unit_paths(self.results_dir, u.name)["csv"] for u in units]

    def _compute_unit(self, variant: str, seed: int) -> None:
        """With nproc > 1, run a planned unit not yet computed through `run_units` (its training and maps then
        are reused here); anything else is computed in this process."""
        unit = pipeline.Unit(variant, seed)
        if self.compute and self.nproc > 1 and unit in self.units() \
                and not unit_paths(self.results_dir, unit.name)["csv"].exists():
            self.run_units([unit])

    def results(self, compute: bool | None = None) -> StudyResults:
        """The published units' results; with `compute` (default: the study's), missing units are run first."""
        if self.compute if compute is None else compute:
            loaded = load(self.cfg, self.results_dir)
            todo = [u for u in self.units() if u.name in loaded.missing or u.name in loaded.stale]
            if todo:
                self.run_units(todo)
        return load(self.cfg, self.results_dir)

    def table(self, name: str, r: StudyResults | None = None) -> pd.DataFrame:
        """Tidy table `name` (table1, table4, table5, fig8, bg_weight), written to `<results_dir>/<name>.csv`."""
        table = tidy_tables.tidy(name, r if r is not None else self.results(), self.cfg)
        write_table(self.results_dir, name, table)
        return table

    def claims(self, r: StudyResults | None = None) -> pd.DataFrame:
        """The paper's claims checked on the tables the notebooks wrote (`<results_dir>/<table>.csv`),
        written to `<results_dir>/claims.csv`."""
        tables = {}
        for name in claims.CLAIM_TABLES:
            path = self.results_dir / f"{name}.csv"
            tables[name] = pd.read_csv(path) if path.exists() else pd.DataFrame(columns=TIDY_COLUMNS)
        table = claims.study_claims(r if r is not None else self.results(compute=False), self.cfg, tables)
        write_table(self.results_dir, "claims", table)
        return table

    def chapter_claims(self, evidence: str, tables: dict[str, pd.DataFrame],
                       r: StudyResults | None = None) -> pd.DataFrame:
        """The claims chapter `evidence` (its notebook's name) checks, on the tidy tables it made, as the book
        shows them (`sipe.study.claims.claims_display`)."""
        chapter = [c for c in claims.CLAIMS if c.evidence == evidence]
        if not chapter:
            raise ValueError(f"no claim names {evidence!r} as its evidence; see sipe.study.claims.CLAIMS")
        frame = claims.study_claims(r if r is not None else self.results(compute=False), self.cfg, tables, chapter)
        return claims.claims_display(frame)

    def figure_inputs(self, name: str, **parameters: Any) -> Any:
        """The inputs of figure `name` ('fig1', 'fig3', 'fig5': see `figinputs`): those kept under
        `<results_dir>/figures/` when current, else computed from the work folder."""
        return figinputs.load(self, name, **parameters)

    def trained(self, variant: str = "sipe", seed: int | None = None) -> TrainResult:
        """The finished training run of a variant (seed: the plan's first seed by default)."""
        cfg = self.cfg.override(**{"train.seed": seed if seed is not None else self.cfg.study.seeds[0]})
        if not self.compute:
            self._require(pipeline.run_dir_for(variant_config(cfg, variant), self.work_dir, variant) / "final.pt", variant, cfg)
        elif variant == SCCAM:
            return trained_sccam(cfg, self.work_dir, progress=self.progress)[0]
        self._compute_unit(variant, cfg.train.seed)
        return pipeline.trained(cfg, self.work_dir, variant, progress=self.progress)

    def maps(self, variant: str = "sipe", seed_methods: Sequence[str] | None = None, seed: int | None = None) -> Path:
        """The maps folder of a unit on the evaluated split (the readings its unit carries by default)."""
        cfg = self.cfg.override(**{"train.seed": seed if seed is not None else self.cfg.study.seeds[0]})
        methods = tuple(seed_methods) if seed_methods is not None else pipeline.unit_seed_methods(self.cfg, variant)
        if not self.compute:
            run = self.trained(variant, cfg.train.seed)
            vcfg = variant_config(cfg, variant)
            self._require(pipeline.maps_dir_for(vcfg, self.work_dir, variant, pipeline.checkpoint_digest(run.checkpoint),
                                                methods) / "DONE", variant, cfg)
        elif variant == SCCAM:
            self.trained(variant, cfg.train.seed)
        self._compute_unit(variant, cfg.train.seed)
        return pipeline.maps(cfg, self.work_dir, variant, methods, progress=self.progress)

    def _require(self, path: Path, variant: str, cfg: ExperimentConfig) -> None:
        if not path.exists():
            raise UnitNotComputedError(
                f"{variant}-s{cfg.train.seed} is not computed yet in {self.work_dir} ({path.name} missing) and this "
                "study reads finished units only (compute=False); run `make stages` first")

    def metrics(self, variant: str = "sipe", seed: int | None = None) -> pd.DataFrame:
        """The per-step training log of a unit: its run folder's, else the log kept beside its published
        results (`units.keep_training_log`), else from training it (compute=True)."""
        unit = pipeline.Unit(variant, seed if seed is not None else self.cfg.study.seeds[0])
        run = run_dir_for(pipeline.unit_config(self.cfg, unit), self.work_dir, variant) / "metrics.csv"
        kept = training_log_path(self.results_dir, unit.name)
        if not run.exists() and kept.exists() and has_results(self.cfg, self.results_dir, unit):
            return pd.read_csv(kept)
        return pd.read_csv(self.trained(variant, unit.seed).metrics)

    def training_logs(self, units: Sequence[pipeline.Unit]) -> dict[str, pd.DataFrame]:
        """{unit name: per-step training log} of `units` (see `metrics`); with compute=False, units whose log
        is neither in a run folder here nor kept beside the results are left out."""
        logs = {}
        for unit in units:
            try:
                logs[unit.name] = self.metrics(unit.variant, unit.seed)
            except UnitNotComputedError:
                if self.compute:
                    raise
        return logs

    def eval_ids(self) -> list[str]:
        """The ids the maps are made and evaluated on (infer.split, limited by infer.max_images)."""
        return voc.read_split(self.root, self.cfg.infer.split)[: self.cfg.infer.max_images]

    def selection_ids(self) -> list[str]:
        return voc.read_split(self.root, SELECTION_SPLIT)[: self.cfg.study.selection_images]

    def stage_times(self, r: StudyResults | None = None) -> pd.DataFrame:
        """Wall time (s) of each stage of each published unit: columns unit, stage, seconds."""
        r = r if r is not None else self.results()
        rows = [{"unit": u, "stage": stage, "seconds": s} for u, p in r.units.items()
                for stage, s in p.get("wall_seconds", {}).items()]
        return pd.DataFrame(rows, columns=["unit", "stage", "seconds"])

    def core_study_note(self, times: pd.DataFrame) -> str:
        """One sentence: the stage time of the core study (`core_plan`) as its units ran, from
        `stage_times`, naming its units not computed yet."""
        core = [u.name for u in core_plan(self.cfg)]
        minutes = times.groupby("unit")["seconds"].sum().reindex(core) / 60
        missing = minutes.index[minutes.isna()].tolist()
        return (f"The core study ({len(core)} units: SIPE and the CAM baseline with {len(self.cfg.study.seeds)} "
                f"seeds, every other variant but SC-CAM with one) took {minutes.sum():.0f} min = "
                f"{minutes.sum() / 60:.2f} h of stage time as its units ran"
                + (f"; not computed yet: {', '.join(missing)}" if missing else "") + ".")

    def setting(self, variant: str = "sipe") -> str:
        """Where our setting differs from the paper, in one line to print beside a number."""
        c = self.config(variant)
        n_eval = len(self.eval_ids())
        full = FULL_VOC_SIZES.get(c.infer.split)
        parts = [f"profile {c.profile}", f"backbone {c.model.backbone}"
                 + ("" if c.model.backbone == PAPER_BACKBONE else " (paper: ResNet-50)")]
        parts.append(f"{n_eval} VOC12 {c.infer.split} images" + (f" of {full:,}" if full else ""))
        if c.eval.present_classes_only:
            parts.append(self._classes_counted())
        n_train = len(voc.read_split(self.root, c.data.train_split)[: c.data.max_images])
        parts.append(f"{n_train} training images" + (f" of {FULL_VOC_SIZES[c.data.train_split]:,}"
                                                     if c.data.train_split in FULL_VOC_SIZES else ""))
        parts.append(f"crop {c.data.crop_size}, {c.train.epochs} epochs")
        if tuple(c.infer.scales) != PAPER_SCALES:
            parts.append(f"map scales {', '.join(f'{x:g}' for x in c.infer.scales)} "
                         f"(paper: {', '.join(f'{x:g}' for x in PAPER_SCALES)})")
        parts.append(f"maps in {c.infer.precision}" + ("" if c.infer.precision == "float32" else " (paper: float32)"))
        if c.model.bg_scale != PAPER_BG_SCALE:
            parts.append(f"background weight {c.model.bg_scale:g} (paper: {PAPER_BG_SCALE:g})")
        parts.append(f"thresholds chosen on {len(self.selection_ids())} selection-split images")
        return "; ".join(parts)

    def _classes_counted(self) -> str:
        """Which classes an mIoU of the evaluated split averages: background and the object classes its images'
        labels hold (no '; ': the setting line is split there), and those it lacks."""
        labels = voc.load_cls_labels(self.root)
        held = [labels[i] for i in self.eval_ids() if i in labels]
        present = np.flatnonzero(np.sum(held, axis=0) > 0) if held else np.array([], int)
        absent = [name for k, name in enumerate(voc.CLASS_NAMES[1:]) if k not in set(present.tolist())]
        return (f"mIoU over {len(present) + 1} of the {len(voc.CLASS_NAMES)} classes"
                + (f" (absent from its labels: {', '.join(absent)})" if absent else ""))

    def foreground_share(self, split: str | None = None) -> float:
        """The share of the valid (non-void) ground-truth pixels of `split`'s images (default: the training
        split) that are foreground; images without a mask are skipped."""
        fg = valid = 0
        for image_id in voc.read_split(self.root, split or self.cfg.data.train_split)[: self.cfg.data.max_images]:
            if not voc.mask_path(self.root, image_id).is_file():
                continue
            mask = voc.load_mask(self.root, image_id)
            ok = mask != voc.IGNORE_INDEX
            fg, valid = fg + int(((mask > 0) & ok).sum()), valid + int(ok.sum())
        return fg / valid if valid else float("nan")

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

    def _repr_markdown_(self) -> str:
        """The setting as a bulleted list (a notebook cell ending with the study shows it)."""
        return note_markdown(str(self), "Setting:")

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """The setting's lines as the notebook's plain text (no machine's paths)."""
        printer.text(str(self))


def core_plan(cfg: ExperimentConfig) -> list[pipeline.Unit]:
    """The units of the study the 3-hour budget covers: the plan without SC-CAM (SIPE and the CAM baseline with
    every seed, every other variant with the first)."""
    return [u for u in pipeline.plan(cfg) if u.variant != SCCAM]


def setup(
    profile: str = "smoke",
    data_root: str = "",
    work_dir: str = "",
    seed: int | None = None,
    device: str = "auto",
    progress: bool = False,
    results_dir: str = "",
    compute: bool = True,
    nproc: int = 1,
    **overrides: Any,
) -> Study:
    """A Study for a notebook's parameters. Relative paths are relative to the repository; `seed` >= 0
    runs the study with that one training seed; compute=False reads only finished units (never trains);
    nproc > 1 computes units in that many processes (torchrun); `overrides` are section.field=value. Sets the
    book's table display (`rendering.configure_display`: nothing truncated)."""
    configure_display()
    sets: dict[str, Any] = dict(overrides)
    if data_root:
        sets["data.root"] = str(_repo_path(data_root))
    if seed is not None and int(seed) >= 0:
        sets["study.seeds"] = (int(seed),)
    if device:
        sets["device"] = device
    cfg = get_profile(profile, **sets)
    check_model(cfg.model)
    wd = _repo_path(work_dir) if work_dir else default_work_dir(profile).resolve()
    cfg.data.resolved_root()
    rd = _repo_path(results_dir) if results_dir else results_dir_for(profile, wd)
    if int(nproc) < 1:
        raise distributed.DistributedError(f"nproc={nproc}: the number of processes must be at least 1")
    if int(nproc) > 1:
        distributed.local_batch(cfg.train.batch_size, int(nproc))
    return Study(cfg, wd, rd, progress, bool(compute), int(nproc))


__all__ = ["STRUCTURE", "Study", "setup"]
