"""Our results: the units' files, the tables and figures assembled from them, the claims, paper vs ours.

The stages (`sipe.study.pipeline`) write one set of files per unit (variant, seed) into a results folder.
`load` reads the units of the configuration being published (others are reported as stale and left
out); the table functions turn them into tidy frames (one row per quantity, variant, seed, split) that
`write_table` saves as `<results_dir>/<name>.csv`; `summary` shows mean +/- std over seeds beside the
paper's number, and `claims` checks the paper's claims with a verdict per claim.

Settings are chosen on the selection split only: a "threshold" reading uses, per unit, the background
threshold that is best on the selection split (`chosen_threshold`), never the best on the evaluated split.
The one exception is the paper's own baseline of Fig. 8, "the best threshold of the sweep" (FIG8_BEST), read
on the evaluated split as the paper does (an optimistic baseline; the chapter says so).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import paper
from ..infra.config import ExperimentConfig
from .loading import StudyResults, load
from .records import TIDY_COLUMNS
from .tables import (AUTHORS_WEIGHT, FIG8_ARGMAX, FIG8_BEST, PROFILE_WEIGHT, SCCAM_ROW, SEGMENTATION_TABLES,
                     argmax_threshold, table_cells)

CLAIM_COLUMNS = ["claim", "source", "paper_delta", "ours_mean", "ours_std", "n_seeds", "ci_low", "ci_high",
                 "share", "share_low", "share_high", "verdict", "magnitude", "evidence"]
UNCHANGED_TOLERANCE = 1.0
"""mIoU points within which a difference counts as 'basically unchanged' (Table 5, (1) -> (2))."""
MAGNITUDE_SHARE = 0.5
"""The share of the paper's effect a claim's interval must clear to 'reproduce >= 50%' of it (`magnitude`)."""
IN_FULL, AT_LEAST_HALF, SMALLER, UNDECIDED = ("reproduces it in full", "reproduces >= 50%", "smaller (< 50%)",
                                              "undecided")
BOOTSTRAP_SAMPLES = 2000
CLAIM_TABLES = ("table1", "table4", "table5", "fig8", "fig1", "bg_weight", "table2", "pseudo_labels")
PAPER_ONLY_QUANTITIES: dict[str, tuple[str, ...]] = {"table2": ("test_miou",)}
"""Quantities of a table that no profile can measure (VOC test labels are held by the evaluation server):
their summaries show the paper's column alone."""



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


def crf_void_share(r: StudyResults, variant: str, key: str) -> pd.Series:
    """Per seed, the share (%) of the evaluated pixels that a reading's denseCRF labels leave void: what the
    "void ignored" reading drops, from its per-image confusions (N,2,C,C: void as background, void ignored)."""
    out = {}
    for seed in r.by_seed(variant, key, "crf_void_bg").index:
        try:
            c = r.confusions(variant, int(seed), f"{r.eval_split}/{key}/crf")
        except (FileNotFoundError, KeyError):
            continue
        total = c[:, 0].sum()
        if total:
            out[int(seed)] = 100.0 * (1.0 - c[:, 1].sum() / total)
    return pd.Series(out, dtype=float).sort_index()


def crf_void_note(r: StudyResults, readings: dict[str, tuple[str, str]]) -> str:
    """One sentence on how much of each denseCRF reading ("label": (variant, map key)) is void, mean over
    seeds; '' when no reading has per-image confusions."""
    shares = {label: crf_void_share(r, v, key) for label, (v, key) in readings.items()}
    parts = [f"{label} {s.mean():.0f}%" + (f" ({s.min():.0f}-{s.max():.0f}% by seed)" if len(s) > 1 else "")
             for label, s in shares.items() if len(s)]
    if not parts:
        return ""
    return ("Share of the evaluated pixels that the denseCRF labels leave void (the pixels \"void ignored\" drops): "
            + "; ".join(parts) + ". Void ignored scores each method on its own confident pixels, so that column "
            "compares the methods on different pixel sets; void as background scores them all on the same pixels.")


FIG8_T_PREFIX = "CAM threshold t = "


def seed_locating_note(fig8: pd.DataFrame) -> str:
    """Where structure-aware seeds fall on each seed's threshold curve (a tidy `fig8` table): their mIoU, how
    many thresholds of the sweep they beat, and their gap to the best threshold, which the sweep picks on the
    evaluated split itself. '' when the table has no structure-aware row or no curve."""
    curve = fig8[fig8["row"].str.startswith(FIG8_T_PREFIX)].assign(
        t=lambda d: d["row"].str.slice(len(FIG8_T_PREFIX)).astype(float))
    ours = fig8[fig8["row"] == "Structure-aware seeds"].set_index("seed")["value"]
    seeds = sorted(set(ours.index) & set(curve["seed"]))
    if not seeds:
        return ""
    beaten, gaps, best_t = [], [], []
    for s in seeds:
        c = curve[curve["seed"] == s]
        beaten.append(int((c["value"] < ours[s]).sum()))
        best = c.loc[c["value"].idxmax()]
        gaps.append(float(ours[s] - best["value"]))
        best_t.append(float(best["t"]))
    n_t = curve.groupby("seed").size().max()
    spread = lambda xs, f: f(xs[0]) if min(xs) == max(xs) else f"{f(min(xs))}-{f(max(xs))}"
    gap = float(np.mean(gaps))
    text = (f"Structure-aware seeds reach {ours[seeds].mean():.1f} mIoU (n={len(seeds)}), above "
            f"{spread(beaten, str)} of the {n_t} thresholds of the sweep, and {abs(gap):.1f} "
            f"{'above' if gap >= 0 else 'below'} the best threshold (t = {spread(best_t, lambda t: f'{t:g}')} by seed), "
            "which the sweep picks on the evaluated split itself.")
    if all(g < 0 for g in gaps):
        d = paper.paper_value("fig8", "Structure-aware seeds", "loc_maps_miou") - paper.paper_value(
            "fig8", FIG8_BEST, "loc_maps_miou")
        text += (" So a threshold tuned on the evaluated images beats them here, for every seed, where the paper's "
                 f"structure-aware seeds beat its best threshold by {d:.1f}.")
    return text


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


def readings(name: str, cfg: ExperimentConfig) -> pd.DataFrame:
    """Which variant and reading produce each cell of table `name` (for the chapter's notes)."""
    return pd.DataFrame([{"row": c.row, "quantity": c.quantity, "variant": c.variant, "reading": c.reading}
                         for c in table_cells(name, cfg)])


def per_class(r: StudyResults, cells: Sequence[tuple[str, str, str, str]]) -> pd.DataFrame:
    """Per-class IoU, mean over seeds: columns = labels of `cells` (label, variant, map key, background)."""
    cols = {}
    for label, variant, key, background in cells:
        sel = r.select(variant, key, background, quantity="iou")
        cols[label] = sel.groupby("class", sort=False)["value"].mean()
    return pd.DataFrame(cols).round(1)


# --- intervals and claims ------------------------------------------------------------------------------

def miou_of_confusions(conf: np.ndarray) -> np.ndarray:
    """mIoU (percent) over the classes present in the ground truth of each confusion (...,C,C)."""
    conf = np.asarray(conf, dtype=np.float64)
    return _miou_of_counts(np.diagonal(conf, axis1=-2, axis2=-1), conf.sum(-1), conf.sum(-2))


def _miou_of_counts(tp: np.ndarray, gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(gt > 0, tp / (gt + pred - tp), np.nan)
    return 100.0 * np.nanmean(iou, axis=-1)


@dataclass(frozen=True)
class Evidence:
    """One seed's per-item evidence of a claim's delta: `size` items (images, or (image, class) pairs) and
    `delta(weights)`, the delta (S,) with the items weighted by weights (S, size): the counts of S resamples,
    or ones for the seed's own delta."""

    size: int
    delta: Callable[[np.ndarray], np.ndarray]


def confusion_evidence(a: np.ndarray, b: np.ndarray) -> Evidence:
    """Evidence of mIoU(a) - mIoU(b) from the per-image confusions (N,C,C) of two readings of the same N images."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"confusions differ in shape: {a.shape} vs {b.shape}")

    def counts(c: np.ndarray) -> np.ndarray:
        c = c.astype(np.float64)
        return np.stack([np.diagonal(c, axis1=-2, axis2=-1), c.sum(-1), c.sum(-2)])

    ca, cb = counts(a), counts(b)
    return Evidence(a.shape[0], lambda w: _miou_of_counts(*(w @ ca)) - _miou_of_counts(*(w @ cb)))


def paired_evidence(a: np.ndarray, b: np.ndarray) -> Evidence:
    """Evidence of mean(a - b) over paired items (N,)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape or len(a) == 0:
        raise ValueError(f"need two equal-length 1-d samples, got shapes {a.shape} and {b.shape}")
    d = a - b
    return Evidence(len(d), lambda w: (w @ d) / w.sum(-1))


def _resample_counts(rng: np.random.Generator, n: int, samples: int) -> np.ndarray:
    """float64 (samples, n): how often each of n items is drawn in each of `samples` resamples of n with replacement."""
    return np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(samples)]).astype(np.float64)


def bootstrap_claim(evidence: Sequence[Evidence], samples: int = BOOTSTRAP_SAMPLES, seed: int = 0,
                    level: float = 0.95) -> tuple[float, float, float]:
    """(delta, low, high): the mean over seeds of each seed's delta, and its percentile interval under a
    bootstrap over seeds and items: each draw picks as many seeds as there are, with replacement, resamples
    each picked seed's items with replacement and averages the picked seeds' deltas. So the interval is wide
    when the seeds disagree and when a few items carry the effect. One seed: the bootstrap over its items."""
    if not evidence:
        raise ValueError("no seed's evidence to bootstrap")
    rng = np.random.default_rng(seed)
    k = len(evidence)
    picks = np.zeros((samples, k), dtype=np.int64) if k == 1 else rng.integers(0, k, (samples, k))
    draws = np.empty((samples, k))
    for s, ev in enumerate(evidence):
        where = picks == s
        if where.any():
            draws[where] = ev.delta(_resample_counts(rng, ev.size, int(where.sum())))
    delta = float(np.mean([ev.delta(np.ones((1, ev.size)))[0] for ev in evidence]))
    lo, hi = np.percentile(draws.mean(1), [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return delta, float(lo), float(hi)


def bootstrap_delta(a: np.ndarray, b: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0,
                    level: float = 0.95) -> tuple[float, float, float]:
    """(delta, low, high): mIoU(a) - mIoU(b) over the same images, and its percentile bootstrap interval
    over images. a, b: per-image confusions (N,C,C) of two readings of the same N images."""
    return bootstrap_claim([confusion_evidence(a, b)], samples, seed, level)


def bootstrap_mean_delta(a: np.ndarray, b: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0,
                         level: float = 0.95) -> tuple[float, float, float]:
    """(delta, low, high): mean(a - b) over paired items (N,) and its percentile bootstrap interval."""
    return bootstrap_claim([paired_evidence(a, b)], samples, seed, level)


FIG1_CENTROID = "class centroid (other images)"
"""Fig. 1's row of the class's mean feature over the other images' pixels of the class (our check, not the paper's)."""
FIG1_PAIRS = "fig1_pairs"
"""Per (image, class) cosine statistics of Fig. 1 (`analysis.prototype_vs_centre` + seed), for its interval."""


def verdict(deltas: Sequence[float], paper_sign: float, ci: tuple[float, float] | None = None,
            unchanged: bool = False) -> str:
    """'holds' | 'mixed' | 'fails' | NO_INTERVAL | 'not yet run' ('not testable' is set by `study_claims`).

    The 95% interval `ci` (over seeds and images, `bootstrap_claim`) decides whenever there is one, for any
    number of seeds: holds when it lies entirely on the paper's side of zero, fails when entirely on the other
    side, else mixed. unchanged=True (a claim of no change, tolerance t = UNCHANGED_TOLERANCE): holds when the
    interval lies inside [-t, t], fails when entirely outside, else mixed. Without an interval, one seed gives
    NO_INTERVAL and several seeds are judged on their deltas alone: holds when every seed's delta has the
    paper's sign and ``|mean| > std``, fails when every seed has the opposite sign and ``|mean| > std``, else
    mixed (unchanged: holds when every ``|delta| <= t``, fails when every seed is beyond t on the same side and
    ``|mean| > std``)."""
    d = np.asarray([x for x in deltas if not math.isnan(x)], dtype=float)
    if d.size == 0:
        return "not yet run"
    mean, t = float(d.mean()), UNCHANGED_TOLERANCE
    if ci is not None:
        if unchanged:
            return "holds" if -t <= ci[0] and ci[1] <= t else "fails" if ci[0] > t or ci[1] < -t else "mixed"
        lo, hi = (ci[0], ci[1]) if paper_sign > 0 else (-ci[1], -ci[0])
        return "holds" if lo > 0 else "fails" if hi < 0 else "mixed"
    if d.size == 1:
        return NO_INTERVAL
    std = float(d.std(ddof=1))
    if unchanged:
        if (np.abs(d) <= t).all():
            return "holds"
        if ((d > t).all() or (d < -t).all()) and abs(mean) > std:
            return "fails"
        return "mixed"
    signs = np.sign(d) * np.sign(paper_sign)
    if (signs > 0).all() and abs(mean) > std:
        return "holds"
    if (signs < 0).all() and abs(mean) > std:
        return "fails"
    return "mixed"


@dataclass(frozen=True)
class Claim:
    """A claim 'better beats baseline' between two cells (table, row, quantity) of the tidy tables.

    unchanged=True claims a difference of about zero; evidence: the chapter (notebook) that checks it. paper:
    the (better, baseline) cells of the paper's delta when they are not the measured ones; a cell the paper
    lacks gives a nan delta."""

    claim: str
    source: str
    better: tuple[str, str, str]
    baseline: tuple[str, str, str]
    unchanged: bool = False
    evidence: str = ""
    paper: tuple[tuple[str, str, str], tuple[str, str, str]] | None = None


ARGMAX_CLAIM = "CAM argmax beats the best CAM threshold"
NO_INTERVAL = "no interval"
"""The verdict of a one-seed claim whose readings have no per-item evidence to draw its interval from."""
NOT_TESTABLE = "not testable"
"""The verdict of a claim that the study's rules decide by construction (the argmax claim when its rule is a
threshold of the sweep)."""


def _crf_claims(name: str, better: str, baseline: str) -> tuple[Claim, Claim]:
    """'better beats baseline with denseCRF' in Table 1's two readings, void as background and void ignored,
    both against the paper's one +denseCRF delta."""
    paper_cells = (("table1", better, "loc_maps_crf_miou"), ("table1", baseline, "loc_maps_crf_miou"))
    return tuple(Claim(f"{name} with denseCRF ({how})", "Table 1", ("table1", better, q), ("table1", baseline, q),
                       evidence="03_table1_localization", paper=paper_cells)
                 for how, q in (("void as background", "loc_maps_crf_miou"), ("void ignored", "loc_maps_crf_void_ignored_miou")))


CLAIMS: tuple[Claim, ...] = (
    Claim("SIPE beats the CAM baseline (localization maps)", "Table 1",
          ("table1", "SIPE", "loc_maps_miou"), ("table1", "Baseline (CAM)", "loc_maps_miou"), evidence="03_table1_localization"),
    *_crf_claims("SIPE beats the CAM baseline", "SIPE", "Baseline (CAM)"),
    Claim("SIPE beats SC-CAM (localization maps)", "Table 1",
          ("table1", "SIPE", "loc_maps_miou"), ("table1", SCCAM_ROW, "loc_maps_miou"), evidence="03_table1_localization"),
    *_crf_claims("SIPE beats SC-CAM", "SIPE", SCCAM_ROW),
    Claim("SC-CAM beats the CAM baseline (localization maps)", "Table 1",
          ("table1", SCCAM_ROW, "loc_maps_miou"), ("table1", "Baseline (CAM)", "loc_maps_miou"), evidence="03_table1_localization"),
    *_crf_claims("SC-CAM beats the CAM baseline", SCCAM_ROW, "Baseline (CAM)"),
    Claim("denseCRF improves SIPE's localization maps", "Table 1",
          ("table1", "SIPE", "loc_maps_crf_miou"), ("table1", "SIPE", "loc_maps_miou"), evidence="03_table1_localization"),
    Claim("IPE improves over the CAM baseline", "Table 4",
          ("table4", "CAM + IPE", "loc_maps_miou"), ("table4", "CAM", "loc_maps_miou"), evidence="04_table4_components"),
    Claim("GSC improves over CAM + IPE", "Table 4",
          ("table4", "CAM + IPE + GSC", "loc_maps_miou"), ("table4", "CAM + IPE", "loc_maps_miou"), evidence="04_table4_components"),
    *(Claim(f"Option (4) beats option ({i}), {col} background", "Table 5",
            ("table5", "Hierarchical w/ BPM", q), ("table5", row, q), evidence="05_table5_bpm")
      for col, q in (("threshold", "threshold_miou"), ("estimated", "estimated_miou"))
      for i, row in ((1, "Semantic w/o BPM"), (2, "Semantic w/ BPM"), (3, "Hierarchical w/o BPM"))),
    *(Claim(f"(1) -> (2) is basically unchanged, {col} background", "Table 5",
            ("table5", "Semantic w/ BPM", q), ("table5", "Semantic w/o BPM", q), unchanged=True, evidence="05_table5_bpm")
      for col, q in (("threshold", "threshold_miou"), ("estimated", "estimated_miou"))),
    *(Claim(f"Option (1) beats option (3) (the paper: (1) -> (3) drops), {col} background", "Table 5",
            ("table5", "Semantic w/o BPM", q), ("table5", "Hierarchical w/o BPM", q), evidence="05_table5_bpm")
      for col, q in (("threshold", "threshold_miou"), ("estimated", "estimated_miou"))),
    Claim("Estimated background beats the threshold for option (4)", "Table 5",
          ("table5", "Hierarchical w/ BPM", "estimated_miou"), ("table5", "Hierarchical w/ BPM", "threshold_miou"), evidence="05_table5_bpm"),
    *(Claim(f"The threshold beats the estimated background for option ({i})", "Table 5",
            ("table5", row, "threshold_miou"), ("table5", row, "estimated_miou"), evidence="05_table5_bpm")
      for i, row in ((1, "Semantic w/o BPM"), (2, "Semantic w/ BPM"), (3, "Hierarchical w/o BPM"))),
    Claim("Structure-aware seeds beat the best CAM threshold", "Fig. 8",
          ("fig8", "Structure-aware seeds", "loc_maps_miou"), ("fig8", FIG8_BEST, "loc_maps_miou"), evidence="06_fig8_seed_locating"),
    Claim(ARGMAX_CLAIM, "Fig. 8",
          ("fig8", FIG8_ARGMAX, "loc_maps_miou"), ("fig8", FIG8_BEST, "loc_maps_miou"), evidence="06_fig8_seed_locating"),
    Claim("The image-specific prototype is closer to its image's pixels than the class centre", "Fig. 1",
          ("fig1", "prototype", "mean_cosine"), ("fig1", "class centre", "mean_cosine"), evidence="07_fig1_tsne"),
    Claim("The image-specific prototype is closer to its image's pixels than the class's centroid over other images",
          "ours (Fig. 1 check)", ("fig1", "prototype", "mean_cosine"), ("fig1", FIG1_CENTROID, "mean_cosine"),
          evidence="07_fig1_tsne"),
    Claim("Background weight: the profile's value beats the authors' 0.5 on the selection split", "ours (ablation)",
          ("bg_weight", PROFILE_WEIGHT, "selection_estimated_miou"), ("bg_weight", AUTHORS_WEIGHT, "selection_estimated_miou"),
          evidence="11_bg_weight_selection"),
    *(Claim(f"The random walk improves {who} pseudo labels", "IRN step (the paper reports no pseudo-label mIoU)",
            ("pseudo_labels", row, "random_walk_miou"), ("pseudo_labels", row, "maps_miou"),
            evidence="10_table2_table3_segmentation")
      for who, row in (("SIPE's", "SIPE"), ("the CAM baseline's", "Baseline (CAM)"))),
    Claim("SIPE's pseudo labels beat the CAM baseline's after refinement",
          "Table 2 (paper: val mIoU of SIPE (ResNet101) - IRN (ResNet50), CAM + IRN refinement)",
          ("pseudo_labels", "SIPE", "random_walk_miou"), ("pseudo_labels", "Baseline (CAM)", "random_walk_miou"),
          evidence="10_table2_table3_segmentation",
          paper=(("table2", "SIPE (ResNet101)", "val_miou"), ("table2", "IRN CVPR19 (ResNet50)", "val_miou"))),
)

def _paper_number(cell: tuple[str, str, str]) -> float:
    table, row, q = cell
    try:
        return paper.paper_value(table, row, q)
    except KeyError:
        return float("nan")


def magnitude(paper_delta: float, ci: tuple[float, float] | None, unchanged: bool = False) -> tuple[float, float, str] | None:
    """(low, high, word): a claim's 95% interval as shares of the paper's delta, and how much of the paper's
    effect it shows: IN_FULL when low >= 1, AT_LEAST_HALF when low >= MAGNITUDE_SHARE, SMALLER when high <
    MAGNITUDE_SHARE (an effect of the opposite sign included), else UNDECIDED. None without an interval, without
    a paper delta (or a zero one), and for a claim of no change."""
    if ci is None or unchanged or math.isnan(paper_delta) or paper_delta == 0:
        return None
    lo, hi = sorted((ci[0] / paper_delta, ci[1] / paper_delta))
    word = IN_FULL if lo >= 1 else AT_LEAST_HALF if lo >= MAGNITUDE_SHARE else SMALLER if hi < MAGNITUDE_SHARE else UNDECIDED
    return lo, hi, word


def claims(tables: dict[str, pd.DataFrame], evidence: Callable[[Claim, int], Evidence | None] | None = None,
           claim_list: Sequence[Claim] = CLAIMS) -> pd.DataFrame:
    """Check every claim on tidy tables {name: frame with row, quantity, seed, value}: CLAIM_COLUMNS.

    Deltas are paired by seed value (a seed only one of the two cells has is left out). `evidence(claim, seed)`
    gives a seed's per-item evidence (None: none); when every seed of a claim has some, its 95% interval is
    `bootstrap_claim`'s, over seeds and items, and its verdict (`verdict`) and magnitude (`magnitude`) follow."""
    records = []
    for c in claim_list:
        better, base = _by_seed(tables, c.better), _by_seed(tables, c.baseline)
        seeds = better.index.intersection(base.index).sort_values()
        deltas = (better[seeds] - base[seeds]).tolist()
        n = len(deltas)
        paper_better, paper_baseline = c.paper or (c.better, c.baseline)
        paper_delta = _paper_number(paper_better) - _paper_number(paper_baseline)
        sign = 1.0 if math.isnan(paper_delta) or paper_delta >= 0 or c.unchanged else -1.0
        found = [evidence(c, int(s)) for s in seeds] if evidence is not None else []
        ci = bootstrap_claim(found)[1:] if found and all(e is not None for e in found) else None
        mean = float(np.mean(deltas)) if deltas else np.nan
        share = magnitude(paper_delta, ci, c.unchanged)
        records.append({
            "claim": c.claim, "source": c.source,
            "paper_delta": round(paper_delta, 3) if not math.isnan(paper_delta) else np.nan,
            "ours_mean": mean, "ours_std": float(np.std(deltas, ddof=1)) if len(deltas) > 1 else np.nan,
            "n_seeds": n, "ci_low": ci[0] if ci else np.nan, "ci_high": ci[1] if ci else np.nan,
            "share": mean / paper_delta if share else np.nan, "share_low": share[0] if share else np.nan,
            "share_high": share[1] if share else np.nan, "verdict": verdict(deltas, sign, ci, c.unchanged),
            "magnitude": share[2] if share else np.nan, "evidence": c.evidence,
        })
    return pd.DataFrame.from_records(records, columns=CLAIM_COLUMNS)


def _by_seed(tables: dict[str, pd.DataFrame], cell: tuple[str, str, str]) -> pd.Series:
    """The values of a (table, row, quantity) cell indexed by seed (empty when the table lacks it)."""
    t = tables.get(cell[0])
    if t is None or t.empty:
        return pd.Series(dtype=float)
    sel = t[(t["row"] == cell[1]) & (t["quantity"] == cell[2])]
    if sel["seed"].duplicated().any():
        raise ValueError(f"{cell[0]}: row {cell[1]!r}, {cell[2]} has several values for one seed "
                         f"({sorted(sel.loc[sel['seed'].duplicated(), 'seed'])}); a claim pairs one value per seed")
    return sel.set_index("seed")["value"].astype(float)


def study_claims(r: StudyResults, cfg: ExperimentConfig, tables: dict[str, pd.DataFrame],
                 claim_list: Sequence[Claim] = CLAIMS) -> pd.DataFrame:
    """`claims` over the study's tidy tables, their intervals drawn from the units' per-image confusions (Fig. 1's
    from its (image, class) pairs, `FIG1_PAIRS`)."""
    cells = {}
    for name in ("table1", "table4", "table5", "fig8", "bg_weight", *SEGMENTATION_TABLES):
        cells.update({(name, c.row, c.quantity): c for c in table_cells(name, cfg)})

    def underlying(cell: tuple[str, str, str], seed: int) -> tuple[str, str, str]:
        """The measured cell behind a derived Fig. 8 row (the sweep's best t of `seed`; argmax at the first alpha)."""
        name, row, q = cell
        t = tables.get(name)
        if name != "fig8" or t is None or row not in (FIG8_BEST, FIG8_ARGMAX):
            return cell
        if row == FIG8_ARGMAX:
            return name, f"CAM argmax (alpha = {cfg.study.fig8_alphas[0]:g})", q
        curve = t[t["row"].str.startswith("CAM threshold t = ") & (t["quantity"] == q) & (t["seed"] == seed)]
        return (name, str(curve.loc[curve["value"].idxmax(), "row"]), q) if not curve.empty else cell

    fig1_path = r.results_dir / f"{FIG1_PAIRS}.csv"
    fig1_pairs = pd.read_csv(fig1_path) if fig1_path.exists() else None
    fig1_columns = {"prototype": "prototype_mean", "class centre": "centre_mean", FIG1_CENTROID: "centroid_mean"}

    def evidence(c: Claim, seed: int) -> Evidence | None:
        """A seed's per-item evidence: the two readings' per-image confusions, or Fig. 1's (image, class) pairs."""
        if c.better[0] == "fig1":
            if fig1_pairs is None or c.better[1] not in fig1_columns or c.baseline[1] not in fig1_columns:
                return None
            both = fig1_pairs[fig1_pairs["seed"] == seed].reindex(
                columns=[fig1_columns[c.better[1]], fig1_columns[c.baseline[1]]]).dropna()
            return paired_evidence(both.iloc[:, 0].to_numpy(), both.iloc[:, 1].to_numpy()) if len(both) else None
        a, b = cells.get(underlying(c.better, seed)), cells.get(underlying(c.baseline, seed))
        if a is None or b is None or a.conf is None or b.conf is None:
            return None
        try:
            return confusion_evidence(a.conf(r, seed), b.conf(r, seed))
        except (KeyError, FileNotFoundError):
            return None

    frame = claims(tables, evidence, claim_list)
    t_argmax = argmax_threshold(cfg.study.fig8_alphas[0])
    if any(math.isclose(t_argmax, t, abs_tol=1e-6) for t in cfg.study.fig8_thresholds):
        decided = (frame["claim"] == ARGMAX_CLAIM) & (frame["n_seeds"] > 0)
        frame.loc[decided, "verdict"] = NOT_TESTABLE
        frame.loc[decided, "magnitude"] = np.nan
    return frame


INTERVAL_COLUMN = "95% interval (images and seeds)"
SHARE_COLUMN = "share of the paper's effect"


def claims_display(frame: pd.DataFrame) -> pd.DataFrame:
    """A claims frame (CLAIM_COLUMNS) as shown in the book: claim, source, the paper's delta, ours as
    mean ± std (n), its 95% interval over images and seeds, our delta as a share of the paper's with the
    interval's, verdict, magnitude and evidence, all strings."""
    def fmt(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "–"
        return f"{v:+.1f}" if isinstance(v, float) else str(v)

    shown = frame.copy()
    shown["ours (mean ± std, n)"] = [
        "–" if math.isnan(m) else f"{m:+.1f}" + ("" if math.isnan(sd) else f" ± {sd:.1f}") + f" (n={n})"
        for m, sd, n in zip(shown["ours_mean"], shown["ours_std"], shown["n_seeds"])]
    shown[INTERVAL_COLUMN] = [
        "–" if math.isnan(lo) else f"[{lo:+.1f}, {hi:+.1f}]" for lo, hi in zip(shown["ci_low"], shown["ci_high"])]
    shown[SHARE_COLUMN] = [
        "–" if math.isnan(lo) else f"{share:.0%} [{lo:.0%}, {hi:.0%}]"
        for share, lo, hi in zip(shown["share"], shown["share_low"], shown["share_high"])]
    shown = shown[["claim", "source", "paper_delta", "ours (mean ± std, n)", INTERVAL_COLUMN, SHARE_COLUMN,
                   "verdict", "magnitude", "evidence"]].rename(columns={"paper_delta": "paper: better - baseline"})
    return shown.astype(object).map(fmt)


def verdict_note(frame: pd.DataFrame, scope: str = "this chapter checks", name_claims: bool = True) -> str:
    """One sentence counting the verdicts of a claims frame ("Of the N claims <scope>, ..."), one counting its
    magnitudes where it has them and, with `name_claims`, naming the claims that fail or are mixed."""
    counts = frame["verdict"].value_counts()
    words = {"holds": ("holds", "hold"), "mixed": ("is mixed", "are mixed"), "fails": ("fails", "fail"),
             NOT_TESTABLE: ("is not testable here", "are not testable here"),
             NO_INTERVAL: ("has no interval to decide it", "have no interval to decide them"),
             "not yet run": ("is not yet run", "are not yet run")}
    parts = [f"{counts[v]} {one if counts[v] == 1 else many}" for v, (one, many) in words.items() if counts.get(v, 0)]
    text = f"Of the {len(frame)} claims {scope}, " + (", ".join(parts) if parts else "none is decided") + "."
    sizes = frame["magnitude"].value_counts() if "magnitude" in frame else pd.Series(dtype=int)
    shown = [f"{label} {sizes[w]}" for w, label in ((IN_FULL, "in full"), (AT_LEAST_HALF, ">= 50%"),
                                                     (SMALLER, "< 50%"), (UNDECIDED, "undecided")) if sizes.get(w, 0)]
    if shown:
        text += " Share of the paper's effect reproduced (claims with an interval and a paper difference): " + \
            ", ".join(shown) + "."
    for v, word in (("fails", "Failing"), ("mixed", "Mixed")) if name_claims else ():
        names = frame.loc[frame["verdict"] == v, "claim"].tolist()
        if names:
            text += f" {word}: " + "; ".join(names) + "."
    return text


UNIT_TABLES = ("table1", "table4", "table5", "fig8", "bg_weight")
"""The claim tables made from the classification units' records alone (no notebook, no segmentation)."""


def unit_claims(cfg: ExperimentConfig, results_dir: str | Path, units: Sequence[Any] | None = None) -> pd.DataFrame:
    """The claims (CLAIM_COLUMNS) that the units of `cfg` found in `results_dir` decide, from `UNIT_TABLES`
    built afresh; the other claims are left out. Compares two configurations' studies claim by claim."""
    r = load(cfg, results_dir, units)
    tables = {name: tidy(name, r, cfg) for name in UNIT_TABLES}
    decided = [c for c in CLAIMS if c.better[0] in UNIT_TABLES and c.baseline[0] in UNIT_TABLES]
    return study_claims(r, cfg, tables, decided)


def units_table(r: StudyResults, variants: Sequence[str] | None = None) -> pd.DataFrame:
    """Provenance of the published units: revision, whether stage code changed since, config hash, data
    fingerprints, checkpoint, device, wall time per stage (minutes)."""
    rows = []
    for name, p in r.units.items():
        if variants is not None and p["variant"] not in variants:
            continue
        rows.append({
            "unit": name, "git revision": str(p.get("git_revision", ""))[:12],
            "stage code changed since": ", ".join(p.get("code_changed", [])) or "no",
            "config hash": p.get("config_hash"), "training data": p.get("data_train"),
            "evaluated data": p.get("data_eval"), "checkpoint": p.get("checkpoint_digest"), "device": p.get("device"),
            "wall time (min)": round(sum(p.get("wall_seconds", {}).values()) / 60.0, 1), "finished": p.get("finished"),
        })
    return pd.DataFrame(rows)


def stage_minutes(r: StudyResults, variants: Sequence[str]) -> pd.DataFrame:
    """Wall time (min) of each published unit of `variants`, from its record: train (an SC-CAM unit: its round 0,
    the CAM baseline's training, plus its rounds of features, k-means and training), of which round 0, maps
    (evaluated and selection splits), evaluation (every reading, denseCRF included)."""
    rows = []
    for name, p in r.units.items():
        if p["variant"] not in variants:
            continue
        w = p.get("wall_seconds", {})
        total = {s: sum(v for k, v in w.items() if k.startswith(s)) / 60.0 for s in ("train", "maps_", "eval_")}
        rows.append({"unit": name, "variant": p["variant"], "device": p.get("device"), "train": total["train"],
                     "of which round 0": w["train_round0"] / 60.0 if "train_round0" in w else np.nan,
                     "maps": total["maps_"], "evaluation": total["eval_"]})
    return pd.DataFrame(rows, columns=["unit", "variant", "device", "train", "of which round 0", "maps", "evaluation"])


def _duration(minutes: float) -> str:
    """'42 min', '3.5 min' or '12 s'."""
    return f"{minutes * 60:.0f} s" if minutes < 1 else f"{minutes:.1f} min" if minutes < 10 else f"{minutes:.0f} min"


def cost_note(r: StudyResults, labels: dict[str, str]) -> str:
    """One sentence per variant of `labels` ({variant: name}): what its units took to train and to map (mean
    over the published seeds), read from their records; or, plainly, that it is not computed yet."""
    minutes = stage_minutes(r, list(labels))
    lines = []
    for variant, label in labels.items():
        absent = [u for u in r.missing + r.stale if u.rsplit("-s", 1)[0] == variant]
        m = minutes[minutes["variant"] == variant]
        if m.empty:
            lines.append(f"{label} is not computed yet for this configuration ({', '.join(absent) or 'no unit planned'}): "
                         "its rows show '–' and its claims 'not yet run'.")
            continue
        train = f"{_duration(m['train'].mean())} to train"
        if m["of which round 0"].notna().all():
            r0 = m["of which round 0"].mean()
            train += (f" ({_duration(r0)} of it the CAM baseline's training, its round 0, and "
                      f"{_duration(m['train'].mean() - r0)} its own rounds)")
        devices = ", ".join(sorted(set(m["device"].astype(str))))
        line = (f"{label} took {train}, {_duration(m['maps'].mean())} to make its maps and "
                f"{_duration(m['evaluation'].mean())} to evaluate them (mean over {len(m)} seed{'s' if len(m) != 1 else ''}, "
                f"on {devices}).")
        if absent:
            line += f" Not computed yet: {', '.join(absent)}."
        lines.append(line)
    return "\n".join(lines)


def code_note(r: StudyResults, variants: Sequence[str]) -> str:
    """One line to print beside a table: the revisions its units come from, whether their stage code has
    changed since, and which planned units are missing or stale (left out)."""
    revs = sorted({str(p.get("git_revision", ""))[:12] for p in r.units.values() if p["variant"] in variants})
    changed = r.code_changed(variants)
    parts = [f"computed at revision {', '.join(revs) or '–'}"]
    if changed:
        groups: dict[tuple[str, tuple[str, ...], tuple[str, ...]], list[str]] = {}
        for unit in changed:
            p = r.units[unit]
            key = (str(p["git_revision"])[:12], tuple(p["code_changed"]), tuple(p.get("code_changed_files") or ()))
            groups.setdefault(key, []).append(unit)
        detail = [f"{', '.join(units)}: {', '.join(stages)} stage" + (f", `git diff {rev} -- {' '.join(files)}`" if files else "")
                  for (rev, stages, files), units in groups.items()]
        parts.append(f"stage code has changed since ({'; '.join(detail)}); a change need not move a number, and "
                     f"computing the units again shows whether it does: `python -m sipe stages --profile "
                     f"{r.units[changed[0]]['profile']} --recompute --units {' '.join(changed)}`")
    else:
        parts.append("stage code unchanged since")
    absent = [u for u in r.missing + r.stale if u.rsplit("-s", 1)[0] in variants]
    if absent:
        parts.append(f"not yet computed for this configuration: {', '.join(absent)}")
    return "; ".join(parts) + "."


def describe_readings(name: str, cfg: ExperimentConfig) -> str:
    """One line per cell of table `name`: which variant and reading produce it (printed beside the table)."""
    return "\n".join(f"{c.row} / {c.quantity}: {c.variant} - {c.reading}" for c in table_cells(name, cfg))
