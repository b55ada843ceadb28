"""The segmentation chapter's reading of the segmentation units (`sipe.study.segstudy`): their results, the tidy
tables 'table2' and 'pseudo_labels' (`table_cells`, read by `sipe.study.tables.tidy`), the chapter's claims and
notes, the setting line, the CPU budget and Fig. 6.

Kept apart from `sipe.study.segstudy`, whose code (with `sipe.segmentation.irn`, `sipe.segmentation.network` and
`sipe.stages.labelled`) is what a unit's 'segmentation' code hash covers: a change here changes how the
numbers are shown, never the numbers, and flags no unit.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..segmentation import irn, network as segmentation
from .claims import CLAIMS, claims, seed_values, study_claims
from ..infra.config import ConfigError, ExperimentConfig
from ..data import voc
from .paper import FULL_VOC_SIZES, paper_value
from .segstudy import (GT_LABELS, MODE_NAMES, PAPER_ROW, UNIT_VARIANT, VAL_SPLIT, plan, pseudo_images,
    refined_variants, reuses_unit_maps)
from ..infra.errors import UnitNotComputedError
from .loading import StudyResults, load
from .records import TIDY_COLUMNS
from .tables import RATIO_ROW, fmt_mean_std, ratio_per_seed

FULL_VAL = {"voc": 1449, "coco": 40137}
NOTEBOOK = "10_table2_table3_segmentation"


def results(study: Any, compute: bool | None = None) -> StudyResults:
    """The segmentation units' results of a `sipe.study.chapters.Study`, run first where missing when `compute`
    (default: the study's). UnitNotComputedError when none is computed and the study reads finished units only."""
    units = plan(study.cfg)
    if not units:
        raise ConfigError(f"no segmentation unit: study.variants={study.cfg.study.variants} must include 'sipe'")
    loaded = load(study.cfg, study.results_dir, units)
    todo = [u for u in units if u.name in loaded.missing or u.name in loaded.stale]
    if todo and (study.compute if compute is None else compute):
        study.run_units(todo)
        loaded = load(study.cfg, study.results_dir, units)
    if not loaded.units:
        names = " ".join(u.name for u in todo)
        raise UnitNotComputedError(
            f"the segmentation unit ({names}) is not computed yet for this configuration in {study.results_dir} "
            f"(runs/<unit>.csv|json missing or of other settings) and this study reads finished units only "
            f"(compute=False); run `python -m sipe stages --profile {study.cfg.profile} --units {names}` first")
    return loaded


def empty_table() -> pd.DataFrame:
    return pd.DataFrame(columns=TIDY_COLUMNS)


def chapter_claims(r: StudyResults | None, cfg: ExperimentConfig, tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The claims of the segmentation chapter on its tidy tables, with bootstrap intervals over images and seeds
    from the units' confusions (`r`; None: no unit computed, every claim 'not yet run')."""
    chapter = [c for c in CLAIMS if c.evidence == NOTEBOOK]
    if r is None:
        return claims(tables, None, chapter)
    return study_claims(r, cfg, tables, chapter)


def ratio_note(table2: pd.DataFrame) -> str:
    """Our ratio pseudo-label model / fully supervised model beside the paper's (which it does not report):
    the headline reading (multi-scale + flip + denseCRF, the paper's protocol) and the other two readings."""
    sel = table2[(table2["row"] == RATIO_ROW)]["value"].astype(float)
    if len(sel):
        ours = f"{fmt_mean_std(sel)} %"
    elif len(table2):
        ours = "– (no seed has both models' val mIoU, the fully supervised one above 0)"
    else:
        ours = "not computed yet"
    others = []
    for mode in ("ss", "ms"):
        pseudo, full = (_by_seed(table2, f"{title}, {MODE_NAMES[mode]}") for title in ("SIPE pseudo labels", "Fully supervised"))
        ratio = ratio_per_seed(pseudo, full.reindex(pseudo.index))
        if len(ratio):
            others.append(f"{MODE_NAMES[mode]} {fmt_mean_std(ratio)} %")
    return (f"{RATIO_ROW} (val, multi-scale + flip + denseCRF, the paper's protocol): ours {ours}"
            + (f"; read {' and '.join(others)}" if others else "")
            + f". Paper: not reported (the paper gives SIPE's {paper_value('table2', PAPER_ROW, 'val_miou'):.1f} val "
            "mIoU and no fully supervised model trained with the same recipe, so its ratio cannot be formed from the paper).")


def refinement_note(pseudo_labels: pd.DataFrame) -> str:
    """How much the random walk moves each method's pseudo labels (mIoU after - before, and both means, over
    the seeds that have both)."""
    parts = []
    for row in dict.fromkeys(pseudo_labels["row"]):
        before, after = _by_seed(pseudo_labels, row, "maps_miou"), _by_seed(pseudo_labels, row, "random_walk_miou")
        delta = (after - before.reindex(after.index)).dropna()
        if len(delta):
            seeds = delta.index
            parts.append(f"{row} {fmt_mean_std(delta)} ({before[seeds].mean():.1f} -> {after[seeds].mean():.1f})")
    return ("The random walk moves the pseudo labels' mIoU by: " + "; ".join(parts) + "." if parts
            else "The random walk has not run yet.")


def _by_seed(table: pd.DataFrame, row: str, quantity: str = "val_miou") -> pd.Series:
    """The values of (row, quantity) of a tidy table, indexed by seed (`sipe.study.claims.seed_values`)."""
    return seed_values({"table": table}, ("table", row, quantity))


def setting(cfg: ExperimentConfig) -> str:
    """Where the segmentation path's setting differs from the paper, in one line to print beside a number."""
    i, s = cfg.irn, cfg.seg
    root, (split, cap) = cfg.data.resolved_root(), pseudo_images(cfg)
    n_train = len(voc.read_split(root, split)[:cap])
    n_val = len(voc.read_split(root, VAL_SPLIT)[: s.max_eval_images])
    voc_data = cfg.data.dataset == "voc"
    full_train = FULL_VOC_SIZES.get(split) if voc_data else None
    full_val = FULL_VAL.get(cfg.data.dataset)
    paper_train = "" if not voc_data or split == "train_aug" else \
        f" (paper: the {FULL_VOC_SIZES['train_aug']:,} train_aug images)"
    reused = ", refining the classification units' maps of them" if reuses_unit_maps(cfg) else ""
    net = "DeepLab-v2 ResNet-101 (ImageNet init; paper: COCO-pretrained)" if s.backbone == segmentation.DEEPLAB_R101 \
        else f"ASPP on {s.backbone} (paper: DeepLab-v2 ResNet-101)"
    def length(c: irn.IRNConfig | segmentation.SegConfig) -> str:
        return f"at most {c.max_steps} steps" if c.max_steps else f"{c.epochs} epoch{'s' * (c.epochs > 1)}"

    return "; ".join([
        f"profile {cfg.profile}, classification backbone {cfg.model.backbone}",
        f"pseudo labels for {n_train:,} {split} images" + (f" of {full_train:,}" if full_train else "") + paper_train
        + reused + "; IRN and both segmentation nets (on SIPE's pseudo labels, on ground truth) train on these images",
        f"IRN boundary branch on {i.backbone}, crop {i.crop_size}, {length(i)}; random walk ({i.rw_method}) "
        f"radius {i.infer_radius}, beta {i.beta:g}, 2^{i.exp_times} steps at image scale {i.infer_scale:g}",
        f"segmentation net: {net}, crop {s.crop_size}, {length(s)}",
        f"val {n_val:,} images" + (f" of {full_val:,}" if full_val else ""),
    ])


def cpu_budget(cfg: ExperimentConfig) -> pd.DataFrame:
    """One segmentation unit's estimated CPU time per stage (both refined variants, both segmentation nets):
    images x passes x the measured CPU seconds per image of `irn.SUBSET_CPU_SECONDS` and
    `segmentation.SUBSET_CPU_SECONDS`; columns stage, images, passes, cpu_s_per_img, cpu_min. Measured for the
    subset profile on VOC, refining the classification units' maps (no maps of its own); empty otherwise."""
    columns = ["stage", "images", "passes", "cpu_s_per_img", "cpu_min"]
    if cfg.profile != "subset" or cfg.data.dataset != "voc" or not reuses_unit_maps(cfg):
        return pd.DataFrame(columns=columns)
    i, s = cfg.irn, cfg.seg
    ic, sc, root = irn.SUBSET_CPU_SECONDS, segmentation.SUBSET_CPU_SECONDS, cfg.data.resolved_root()
    split, cap = pseudo_images(cfg)
    n_train, n_val = len(voc.read_split(root, split)[:cap]), len(voc.read_split(root, VAL_SPLIT)[: s.max_eval_images])
    variants = len(refined_variants(cfg))
    rows = [("IR labels (2 denseCRF runs)", n_train, variants, ic["ir_labels"]),
            (f"IRN training ({i.epochs} epochs)", n_train, variants * i.epochs, ic["irn_epoch"]),
            (f"random walk (image scale {i.infer_scale:g})", n_train, variants, ic["random_walk"]),
            (f"segmentation training (2 nets x {s.epochs} epochs)", n_train, 2 * s.epochs, sc["train_epoch"]),
            ("val prediction (2 nets x every mode)", n_val, 2, sc["ss"] + sc["ms_crf"])]
    return pd.DataFrame([(name, n, k, c, round(n * k * c / 60.0, 1)) for name, n, k, c in rows], columns=columns)


def budget_note(cfg: ExperimentConfig) -> str:
    """`cpu_budget` in one line: per stage and in total, with the wall time it implies on 2 cores."""
    b = cpu_budget(cfg)
    if b.empty:
        return f"CPU budget of the segmentation unit: not measured for profile {cfg.profile} on {cfg.data.dataset}"
    hours = b["cpu_min"].sum() / 60.0
    stages = "; ".join(f"{r.stage} {r.cpu_min:.0f}" for r in b.itertuples())
    return (f"CPU budget of one segmentation unit (estimated, CPU-min, SIPE and the CAM baseline refined): {stages}; "
            f"total {hours:.1f} CPU-hours, "
            f"{hours / 2:.1f}-{hours:.1f} h of wall time on 2 cores (per-image CPU seconds measured by "
            "benchmarks/bench_table2.py with one thread on a machine shared with another job, so upper bounds; "
            "scoring the labels and maps is not included)")


def figure6(study: Any, r: StudyResults, n: int = 4):
    """Fig. 6 of the first computed seed: image, ground truth, the net on SIPE's pseudo labels and the same net on
    ground truth (multi-scale + denseCRF), on `pick_figure_images` of the unit's val images."""
    from . import figures
    name = min(r.units, key=lambda u: r.units[u]["seed"])
    record = r.units[name]
    folders = {k: study.work_dir / record["stages"][f"predict_{k}"] / "ms_crf" for k in ("sipe", GT_LABELS)}
    missing = [str(f) for f in folders.values() if not (f / "DONE").exists()]
    if missing:
        raise UnitNotComputedError(f"Fig. 6 reads the val predictions of {name} in the work folder it ran in; "
                                   f"{', '.join(missing)} missing: pass that work_dir or rerun the unit there")
    ids = [str(i) for i in r.confusions(UNIT_VARIANT, int(record["seed"]), f"{VAL_SPLIT}/ids")]
    return figures.segmentation_grid(study.root, pick_figure_images(study.root, ids, n), [
        ("ours: SIPE pseudo labels", folders["sipe"]), ("same net, ground truth", folders[GT_LABELS])])


def pick_figure_images(root: str | Path, ids: Sequence[str], n: int = 4) -> list[str]:
    """Up to n ids chosen deterministically for a qualitative figure: in id order, each image that shows a
    class not shown yet, preferring images with two or more classes; then the first remaining ids."""
    masks = {i: set(int(c) for c in np.unique(voc.load_mask(root, i)) if 0 < c < voc.IGNORE_INDEX) for i in ids}
    chosen: list[str] = []
    seen: set[int] = set()
    for min_classes in (2, 1):
        for i in sorted(ids):
            if len(chosen) < n and i not in chosen and len(masks[i]) >= min_classes and masks[i] - seen:
                chosen.append(i)
                seen |= masks[i]
    chosen += [i for i in sorted(ids) if i not in chosen][: n - len(chosen)]
    return chosen
