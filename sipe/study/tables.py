"""The tables: which reading of which unit produces each cell, the tidy tables read from the units, and their
summaries beside the paper.

A `Cell` is one (row, quantity) of a table with the variant and reading that produce it, how its per-seed
values are read from the results (`get`) and, where a bootstrap interval can be drawn, the reading's
per-image confusions (`conf`). `table_cells(name, cfg)` lists a table's cells: Tables 1, 4 and 5, Fig. 8
and the background-weight selection from the classification units, 'table2' and 'pseudo_labels' from the
segmentation units (`segmentation_cells`). `tidy` reads a table's cells from the units (one row per cell and
seed) and `summary` shows it beside the paper's numbers as mean +/- std over seeds.

Settings are chosen on the selection split only: a "threshold" reading uses, per unit, the background
threshold that is best on the selection split (`chosen_threshold`), never the best on the evaluated split.
The one exception is the paper's own baseline of Fig. 8, "the best threshold of the sweep" (FIG8_BEST), read
on the evaluated split as the paper does (an optimistic baseline; the chapter says so).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..infra.config import SELECTION_SPLIT, ExperimentConfig
from ..segmentation import irn, network as segmentation
from . import paper
from .loading import StudyResults
from .records import TIDY_COLUMNS
from .segstudy import GT_LABELS, MODE_NAMES, PAPER_ROW, REFINED, UNIT_VARIANT, VAL_SPLIT

SEGMENTATION_TABLES = ("table2", "pseudo_labels")
"""Tables of the segmentation units (`segmentation_cells`)."""
FIG8_BEST = "CAM threshold (best over sweep)"
FIG8_ARGMAX = "CAM argmax"
PROFILE_WEIGHT = "profile's background weight"
AUTHORS_WEIGHT = "authors' background weight (0.5)"
SCCAM_ROW = "SCE (SC-CAM) CVPR20"
"""Table 1's SC-CAM row: the paper's name for it, so that ours stands beside the paper's number."""
RATIO_ROW = "Pseudo-label model / fully supervised model"
PSEUDO_STAGES = {"maps": "maps before refinement", "ir_labels": "IR labels (denseCRF confident regions, void ignored)",
                 "random_walk": "random-walk pseudo labels"}
PAPER_ONLY_QUANTITIES: dict[str, tuple[str, ...]] = {"table2": ("test_miou",)}
"""Quantities of a table that no profile can measure (VOC test labels are held by the evaluation server):
their summaries show the paper's column alone."""


FIG1_CENTROID = "class centroid (other images)"
"""Fig. 1's row of the class's mean feature over the other images' pixels of the class (our check, not the paper's)."""
FIG1_PAIRS = "fig1_pairs"
"""Per (image, class) cosine statistics of Fig. 1 (`analysis.prototype_vs_centre` + seed), for its interval."""


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
    raise KeyError(f"no segmentation table {name!r}; choose one of {SEGMENTATION_TABLES}")


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


def tidy(name: str, r: StudyResults, cfg: ExperimentConfig) -> pd.DataFrame:
    """One row per (table row, quantity, seed) of table `name`: TIDY_COLUMNS. Fig. 8 also gets the rows
    the paper plots: the best CAM threshold of each seed's curve and the CAM argmax at the first alpha (which
    replaces its alpha row when the study has one alpha)."""
    records = []
    for c in table_cells(name, cfg):
        for seed, value in c.get(r).items():
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                records.append({"row": c.row, "quantity": c.quantity, "variant": c.variant, "seed": int(seed),
                                "split": c.split or r.eval_split, "reading": c.reading, "value": float(value)})
    table = pd.DataFrame(records, columns=TIDY_COLUMNS)
    if name == "fig8" and not table.empty:
        curve = table[table["row"].str.startswith("CAM threshold t = ")]
        best = curve.loc[curve.groupby("seed")["value"].idxmax()].copy()
        best["reading"] = "IS-CAM from CAM-threshold seeds, best t of the sweep on " + r.eval_split + " (the paper's reading)"
        best["row"] = FIG8_BEST
        first_alpha = table["row"] == f"CAM argmax (alpha = {cfg.study.fig8_alphas[0]:g})"
        argmax = table[first_alpha].copy()
        argmax["row"] = FIG8_ARGMAX
        argmax["reading"] = argmax["reading"] + f" (alpha = {cfg.study.fig8_alphas[0]:g})"
        if len(cfg.study.fig8_alphas) == 1:
            table = table[~first_alpha]
        table = pd.concat([table, best, argmax], ignore_index=True)
    return table


def _paper_table(table: str) -> tuple[dict[tuple[str, str], float], dict[str, str]]:
    """A paper table's {(row, metric): value} and {row: 'I+S'} for its rows noted as trained with saliency
    maps besides image-level labels; both empty when the paper has no such table."""
    try:
        rows = paper.paper_rows(table)
    except KeyError:
        return {}, {}
    values = {(r, m): float(v) for r, m, v in zip(rows["row"], rows["metric"], rows["value"])}
    noted = rows[rows["note"].fillna("").str.startswith("Sup. I+S")]
    return values, {r: "I+S" for r in noted["row"]}


def fmt_mean_std(values: Sequence[float]) -> str:
    """'58.3 ± 1.2 (n=3)', '58.3 (n=1)', or '–' without values."""
    v = [float(x) for x in values if not math.isnan(float(x))]
    if not v:
        return "–"
    if len(v) == 1:
        return f"{v[0]:.1f} (n=1)"
    return f"{np.mean(v):.1f} ± {np.std(v, ddof=1):.1f} (n={len(v)})"


def summary(name: str, table: pd.DataFrame, paper_table: str | None = None, show_paper_only: bool = True) -> pd.DataFrame:
    """Paper vs ours for reading: one row per table row; per quantity the paper's number and ours as
    mean ± std over seeds (n). Rows without a measured number show '–' (show_paper_only: the paper's
    rows we do not measure are listed too); quantities of PAPER_ONLY_QUANTITIES have no 'ours' column. A
    table with rows trained on saliency maps gets a first column 'supervision' (I: image-level labels,
    I+S: and saliency maps; '–' for rows of ours only)."""
    paper_values, supervision = _paper_table(paper_table or name)
    rows = list(dict.fromkeys(table["row"]))
    rows += list(dict.fromkeys(r for (r, _q) in paper_values if r not in rows and show_paper_only))
    quantities = list(dict.fromkeys([*table["quantity"], *(q for (_r, q) in paper_values)]))
    out = pd.DataFrame(index=pd.Index(rows, name=None))
    for q in quantities:
        if any((r, q) in paper_values for r in rows):
            out[(q, "paper")] = [f"{paper_values[(r, q)]:.1f}" if (r, q) in paper_values else "–" for r in rows]
        if q in PAPER_ONLY_QUANTITIES.get(name, ()):
            continue
        out[(q, "ours")] = [fmt_mean_std(table[(table["row"] == r) & (table["quantity"] == q)]["value"]) for r in rows]
    if supervision:
        out[("supervision", "paper")] = [supervision.get(r, "I") if any((r, q) in paper_values for q in quantities)
                                         else "–" for r in rows]
        out = out[[("supervision", "paper"), *[c for c in out.columns if c != ("supervision", "paper")]]]
    out.columns = pd.MultiIndex.from_tuples(out.columns) if len(out.columns) else pd.MultiIndex.from_arrays([[], []])
    return out


def describe_readings(name: str, cfg: ExperimentConfig) -> str:
    """One line per cell of table `name`: which variant and reading produce it (printed beside the table)."""
    return "\n".join(f"{c.row} / {c.quantity}: {c.variant} - {c.reading}" for c in table_cells(name, cfg))


def per_class(r: StudyResults, cells: Sequence[tuple[str, str, str, str]]) -> pd.DataFrame:
    """Per-class IoU, mean over seeds: columns = labels of `cells` (label, variant, map key, background)."""
    cols = {}
    for label, variant, key, background in cells:
        sel = r.select(variant, key, background, quantity="iou")
        cols[label] = sel.groupby("class", sort=False)["value"].mean()
    return pd.DataFrame(cols).round(1)


def fig1_table(per_image: dict[int, pd.DataFrame], split: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fig. 1's check from `analysis.prototype_vs_centre` frames per seed: (tidy table of the mean cosine of the
    pixels to their class centre, their prototype and the class centroid of other images, and the pixel-weighted
    share of pixels closer to the prototype, per seed; the (image, class) pairs of every seed)."""
    rows = []
    for seed, frame in per_image.items():
        for row, col in (("class centre", "centre_mean"), ("prototype", "prototype_mean"), (FIG1_CENTROID, "centroid_mean")):
            rows.append({"row": row, "quantity": "mean_cosine", "variant": "cam", "seed": seed, "split": split,
                         "reading": f"mean over {frame[col].notna().sum()} (image, class) pairs of the pixels' cosine",
                         "value": frame[col].mean(skipna=True)})
        weights = frame["n_pixels"] / max(1, frame["n_pixels"].sum())
        rows.append({"row": "share of pixels closer to the prototype", "quantity": "share", "variant": "cam", "seed": seed,
                     "split": split, "reading": "pixel-weighted", "value": (frame["share_closer_to_prototype"] * weights).sum()})
    pairs = pd.concat([f.assign(seed=s) for s, f in per_image.items()], ignore_index=True) if per_image else pd.DataFrame()
    return pd.DataFrame(rows, columns=TIDY_COLUMNS), pairs


def training_summary(logs: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per unit of its per-step training log ({unit: metrics.csv frame}): steps, the loss and the share
    of training seeds called foreground over the last 10% of steps, and the median images/s."""
    def tail(m: pd.DataFrame, column: str) -> float:
        values = pd.to_numeric(m[column], errors="coerce") if column in m else pd.Series(dtype=float)
        return float(values.tail(max(1, len(m) // 10)).mean())
    return pd.DataFrame([{"unit": name, "steps": int(m["step"].max()), "final loss": tail(m, "loss"),
                          "training seeds called foreground": tail(m, "seed_fg_share"),
                          "images/s (median)": float(m["images_per_s"].median())} for name, m in logs.items()],
                        columns=["unit", "steps", "final loss", "training seeds called foreground", "images/s (median)"])
