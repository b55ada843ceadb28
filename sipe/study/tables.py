"""Which reading of which unit produces each cell of each table: the tables' definitions.

A `Cell` is one (row, quantity) of a table with the variant and reading that produce it, how its per-seed
values are read from the results (`get`) and, where a bootstrap interval can be drawn, the reading's
per-image confusions (`conf`). `table_cells(name, cfg)` lists a table's cells: Tables 1, 4 and 5, Fig. 8
and the background-weight selection from the classification units, 'table2' and 'pseudo_labels' from the
segmentation units (`segmentation_cells`).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..infra.config import SELECTION_SPLIT, ExperimentConfig
from ..segmentation import irn, network as segmentation
from .loading import StudyResults
from .segstudy import GT_LABELS, MODE_NAMES, PAPER_ROW, REFINED, UNIT_VARIANT, VAL_SPLIT

SEGMENTATION_TABLES = ("table2", "pseudo_labels")
"""Tables of the segmentation units (`sipe.study.segresults.table_cells`)."""
FIG8_BEST = "CAM threshold (best over sweep)"
FIG8_ARGMAX = "CAM argmax"
PROFILE_WEIGHT = "profile's background weight"
AUTHORS_WEIGHT = "authors' background weight (0.5)"
SCCAM_ROW = "SCE (SC-CAM) CVPR20"
"""Table 1's SC-CAM row: the paper's name for it, so that ours stands beside the paper's number."""
TABLES = ("table2", "pseudo_labels")
RATIO_ROW = "Pseudo-label model / fully supervised model"
PSEUDO_STAGES = {"maps": "maps before refinement", "ir_labels": "IR labels (denseCRF confident regions, void ignored)",
                 "random_walk": "random-walk pseudo labels"}


def argmax_threshold(alpha: float) -> float:
    """The t solving t = (1 - t)^alpha: with background 1 - max CAM, argmax over [background^alpha, CAM] calls
    a pixel foreground exactly when its largest CAM exceeds t (0.5 for alpha = 1)."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mid < (1 - mid) ** alpha else (lo, mid)
    return (lo + hi) / 2


Getter = Callable[[StudyResults], pd.Series]
ConfusionGetter = Callable[[StudyResults, int], np.ndarray]


@dataclass(frozen=True)
class Cell:
    """One (row, quantity) of a table: which variant and reading produce it, how (`get`: mIoU per seed)
    and, where a bootstrap interval can be drawn, the reading's per-image confusions (`conf`: (N,C,C))."""

    row: str
    quantity: str
    variant: str
    reading: str
    get: Getter
    conf: ConfusionGetter | None = None
    split: str = ""


def _est(variant: str, key: str = "is_cam", background: str = "estimated", split: str | None = None) -> dict:
    def conf(r: StudyResults, seed: int) -> np.ndarray:
        bg = "crf" if background.startswith("crf") else background
        c = r.confusions(variant, seed, f"{split or r.eval_split}/{key}/{bg}")
        return c[:, 1 if background == "crf_void_ignored" else 0]
    return {"get": lambda r: r.by_seed(variant, key, background, split), "conf": conf}


def _chosen(variant: str, key: str) -> dict:
    def conf(r: StudyResults, seed: int) -> np.ndarray:
        t = r.chosen_threshold(variant, key)[seed]
        thresholds = sorted(r.select(variant, key, "threshold")["threshold"].astype(float).unique())
        return r.confusions(variant, seed, f"{r.eval_split}/{key}/threshold")[:, int(np.argmin(np.abs(np.asarray(thresholds) - t)))]
    return {"get": lambda r: r.at_chosen(variant, key), "conf": conf}


def _fixed(variant: str, key: str, t: float) -> dict:
    return {"get": lambda r: r.by_seed(variant, key, "threshold", threshold=t)}


def table_cells(name: str, cfg: ExperimentConfig) -> list[Cell]:
    """The cells of a paper table or figure, each with the reading that produces it (see module doc)."""
    irn_t = cfg.study.irn_threshold
    sel = "background threshold chosen on the selection split"
    if name in SEGMENTATION_TABLES:
        return segmentation_cells(name, cfg)
    if name == "table1":
        return [
            Cell("SIPE", "loc_maps_miou", "sipe", "IS-CAM, estimated background", **_est("sipe")),
            Cell("SIPE", "loc_maps_crf_miou", "sipe", "IS-CAM + denseCRF, void as background", **_est("sipe", background="crf_void_bg")),
            Cell("SIPE", "loc_maps_crf_void_ignored_miou", "sipe", "IS-CAM + denseCRF, void ignored", **_est("sipe", background="crf_void_ignored")),
            Cell("Baseline (CAM)", "loc_maps_miou", "cam", f"CAM, IRN protocol, {sel}", **_chosen("cam", "cam_irn")),
            Cell("Baseline (CAM)", "loc_maps_crf_miou", "cam", "CAM, IRN protocol + denseCRF (0.30/0.05), void as background", **_est("cam", "cam_irn", "crf_void_bg")),
            Cell("Baseline (CAM)", "loc_maps_crf_void_ignored_miou", "cam", "CAM, IRN protocol + denseCRF (0.30/0.05), void ignored", **_est("cam", "cam_irn", "crf_void_ignored")),
            Cell(f"Baseline (CAM), IRN's t = {irn_t:g}", "loc_maps_miou", "cam", f"CAM, IRN protocol, t = {irn_t:g}", **_fixed("cam", "cam_irn", irn_t)),
            Cell("Baseline (CAM), SIPE's background rule", "loc_maps_miou", "cam", "CAM, background 1 - max CAM", **_est("cam", "cam")),
            Cell(SCCAM_ROW, "loc_maps_miou", "sccam", f"SC-CAM's parent-head CAM, IRN protocol, {sel}", **_chosen("sccam", "cam_irn")),
            Cell(SCCAM_ROW, "loc_maps_crf_miou", "sccam", "SC-CAM's CAM, IRN protocol + denseCRF (0.30/0.05), void as background", **_est("sccam", "cam_irn", "crf_void_bg")),
            Cell(SCCAM_ROW, "loc_maps_crf_void_ignored_miou", "sccam", "SC-CAM's CAM, IRN protocol + denseCRF (0.30/0.05), void ignored", **_est("sccam", "cam_irn", "crf_void_ignored")),
            Cell(f"SC-CAM, IRN's t = {irn_t:g}", "loc_maps_miou", "sccam", f"SC-CAM's CAM, IRN protocol, t = {irn_t:g}", **_fixed("sccam", "cam_irn", irn_t)),
            Cell("SC-CAM, SIPE's background rule", "loc_maps_miou", "sccam", "SC-CAM's CAM, background 1 - max CAM", **_est("sccam", "cam")),
        ]
    if name == "table4":
        return [
            Cell("CAM", "loc_maps_miou", "cam", f"CAM, IRN protocol, {sel}", **_chosen("cam", "cam_irn")),
            Cell("CAM + IPE", "loc_maps_miou", "cam", "IS-CAM of the CAM baseline (hierarchical feature: untrained side convolutions)", **_est("cam")),
            Cell("CAM + IPE (semantic feature)", "loc_maps_miou", "cam", "IS-CAM of the CAM baseline, prototypes on the trained semantic feature", **_est("cam", "labels@structure/semantic")),
            Cell("CAM + IPE + GSC", "loc_maps_miou", "sipe", "IS-CAM of SIPE, estimated background", **_est("sipe")),
        ]
    if name == "table5":
        options = {"Semantic w/o BPM": "semantic_nobpm", "Semantic w/ BPM": "semantic_bpm",
                   "Hierarchical w/o BPM": "hierarchical_nobpm", "Hierarchical w/ BPM": "sipe"}
        cells = []
        for row, v in options.items():
            cells += [Cell(row, "threshold_miou", v, f"IS-CAM, {sel}", **_chosen(v, "is_cam")),
                      Cell(row, "estimated_miou", v, "IS-CAM, estimated background", **_est(v))]
        return cells
    if name == "fig8":
        t_rows = [Cell(f"CAM threshold t = {t:g}", "loc_maps_miou", "sipe", f"IS-CAM from CAM-threshold seeds (t = {t:g})",
                       **_est("sipe", f"labels@threshold:{t:g}")) for t in cfg.study.fig8_thresholds]
        a_rows = [Cell(f"CAM argmax (alpha = {a:g})", "loc_maps_miou", "sipe",
                       f"IS-CAM from CAM-argmax seeds, background (1 - max CAM)^{a:g}",
                       **_est("sipe", f"labels@argmax:{a:g}")) for a in cfg.study.fig8_alphas]
        return t_rows + a_rows + [Cell("Structure-aware seeds", "loc_maps_miou", "sipe",
                                       "IS-CAM of SIPE, estimated background", **_est("sipe"))]
    if name == "bg_weight":
        cells = []
        for v, row in (("sipe", PROFILE_WEIGHT), ("sipe_bg05", AUTHORS_WEIGHT)):
            best = (lambda r, v=v: r.select(v, "is_cam", "threshold", SELECTION_SPLIT).groupby("seed")["value"].max())
            cells += [Cell(row, "selection_estimated_miou", v, "IS-CAM, estimated background",
                           **_est(v, split=SELECTION_SPLIT), split=SELECTION_SPLIT),
                      Cell(row, "selection_best_threshold_miou", v, "IS-CAM, best threshold on the selection split",
                           get=best, split=SELECTION_SPLIT),
                      Cell(row, "estimated_miou", v, "IS-CAM, estimated background", **_est(v))]
        return cells
    raise KeyError(f"no table {name!r}; choose table1, table4, table5, fig8, bg_weight, table2 or pseudo_labels")


def _getter(variant: str, reading: str, split: str, quantity: str = "miou") -> Callable[[StudyResults], pd.Series]:
    def get(r: StudyResults) -> pd.Series:
        rows = r.rows
        sel = rows[(rows["variant"] == variant) & (rows["reading"] == reading) & (rows["split"] == split)
                   & (rows["quantity"] == quantity)]
        return sel.set_index("seed")["value"].astype(float).sort_index()
    return get


def _cell(row: str, quantity: str, variant: str, reading: str, text: str, split: str,
          measured: str = "miou") -> Cell:
    def conf(r: StudyResults, seed: int) -> np.ndarray:
        return r.confusions(UNIT_VARIANT, seed, f"{split}/{variant}/{reading}")
    return Cell(row, quantity, variant, text, _getter(variant, reading, split, measured),
                    conf if measured == "miou" else None, split)


def segmentation_cells(name: str, cfg: ExperimentConfig) -> list[Cell]:
    """The cells of 'table2' (val mIoU of the segmentation nets, their ratio) and 'pseudo_labels' (mIoU of
    the labels on the evaluated training images before and after the random walk)."""
    net = cfg.seg
    arch = "DeepLab-v2 ResNet-101" if net.backbone == segmentation.DEEPLAB_R101 else f"ASPP on {net.backbone}"
    if name == "table2":
        cells = [_cell(PAPER_ROW, "val_miou", "sipe", "segnet/ms_crf",
                       f"{arch} trained on SIPE's pseudo labels, multi-scale + flip + denseCRF", VAL_SPLIT)]
        for labels, title, trained_on in (("sipe", "SIPE pseudo labels", "SIPE's pseudo labels"),
                                          (GT_LABELS, "Fully supervised", "the ground truth of the same images")):
            for mode, mode_name in MODE_NAMES.items():
                if labels != "sipe" or mode != "ms_crf":
                    cells.append(_cell(f"{title}, {mode_name}", "val_miou", labels, f"segnet/{mode}",
                                       f"{arch} trained on {trained_on}, {mode_name}", VAL_SPLIT))
        ours, full = _getter("sipe", "segnet/ms_crf", VAL_SPLIT), _getter(GT_LABELS, "segnet/ms_crf", VAL_SPLIT)
        cells.append(Cell(RATIO_ROW, "val_miou_ratio_pct", "sipe",
                              "val mIoU of the net on SIPE's pseudo labels / the same net on ground truth, "
                              "multi-scale + flip + denseCRF (%)", lambda r: ratio_per_seed(ours(r), full(r)), split=VAL_SPLIT))
        return cells
    if name == "pseudo_labels":
        split = cfg.infer.split
        cells = []
        for variant, row in (("sipe", "SIPE"), ("cam", "Baseline (CAM)")):
            if variant in cfg.study.variants:
                cells += [_cell(row, f"{stage}_miou", variant, f"pseudo/{stage}",
                                f"{text} ({pseudo_reading(variant, stage)})", split)
                          for stage, text in PSEUDO_STAGES.items()]
                cells.append(_cell(row, "ir_void_pct", variant, "pseudo/ir_labels", "void pixels of the IR labels (%)",
                                   split, measured="void_pct"))
        return cells
    raise KeyError(f"no segmentation table {name!r}; choose one of {TABLES}")


def pseudo_reading(variant: str, stage: str) -> str:
    """How a refined variant's labels are read at one stage of PSEUDO_STAGES, from its label protocol."""
    p = irn.PROTOCOLS[REFINED[variant]]
    if p.background == "maps":
        return {"maps": "IS-CAM, estimated background",
                "ir_labels": f"IS-CAM's own background, x{p.ir_bg_scale:g} in the background-confident run",
                "random_walk": f"IS-CAM raised to {p.power:g}, background propagated with the classes"}[stage]
    return {"maps": f"CAM, IRN protocol, background {p.eval_threshold:g}",
            "ir_labels": f"CAM, IRN protocol, background {p.conf_fg_threshold:g} / {p.conf_bg_threshold:g}",
            "random_walk": f"CAM, IRN protocol, background {p.rw_bg_threshold:g} after the walk"}[stage]


def ratio_per_seed(ours: pd.Series, full: pd.Series) -> pd.Series:
    """100 x ours / full per seed; nan where the fully supervised model scores 0."""
    return (100.0 * ours / full.where(full > 0)).dropna()
