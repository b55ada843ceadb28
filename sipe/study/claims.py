"""The paper's claims checked on our tables: the claims (`CLAIMS`), their verdict and magnitude rules, and the
claims frame (`claims`, `study_claims`, `unit_claims`) with its display.

A claim compares two cells (table, row, quantity) of the tidy tables seed by seed; its 95% interval is drawn
over seeds and images (`sipe.study.intervals`) from the units' per-image confusions.
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
from .intervals import Evidence, bootstrap_claim, confusion_evidence, paired_evidence
from .loading import StudyResults, load
from .tables import (AUTHORS_WEIGHT, FIG1_CENTROID, FIG1_PAIRS, FIG8_ARGMAX, FIG8_BEST, PROFILE_WEIGHT, SCCAM_ROW,
                     SEGMENTATION_TABLES, argmax_threshold, table_cells, tidy)

CLAIM_COLUMNS = ["claim", "source", "paper_delta", "ours_mean", "ours_std", "n_seeds", "ci_low", "ci_high",
                 "share", "share_low", "share_high", "verdict", "magnitude", "evidence"]
UNCHANGED_TOLERANCE = 1.0
"""mIoU points within which a difference counts as 'basically unchanged' (Table 5, (1) -> (2))."""
MAGNITUDE_SHARE = 0.5
"""The share of the paper's effect a claim's interval must clear to 'reproduce >= 50%' of it (`magnitude`)."""
IN_FULL, AT_LEAST_HALF, SMALLER, UNDECIDED = ("reproduces it in full", "reproduces >= 50%", "smaller (< 50%)",
                                              "undecided")
CLAIM_TABLES = ("table1", "table4", "table5", "fig8", "fig1", "bg_weight", "table2", "pseudo_labels")
"""The tidy tables whose cells the claims compare."""


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
        better, base = seed_values(tables, c.better), seed_values(tables, c.baseline)
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


def seed_values(tables: dict[str, pd.DataFrame], cell: tuple[str, str, str]) -> pd.Series:
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


UNIT_TABLES = ("table1", "table4", "table5", "fig8", "bg_weight")
"""The claim tables made from the classification units' records alone (no notebook, no segmentation)."""


def unit_claims(cfg: ExperimentConfig, results_dir: str | Path, units: Sequence[Any] | None = None) -> pd.DataFrame:
    """The claims (CLAIM_COLUMNS) that the units of `cfg` found in `results_dir` decide, from `UNIT_TABLES`
    built afresh; the other claims are left out. Compares two configurations' studies claim by claim."""
    r = load(cfg, results_dir, units)
    tables = {name: tidy(name, r, cfg) for name in UNIT_TABLES}
    decided = [c for c in CLAIMS if c.better[0] in UNIT_TABLES and c.baseline[0] in UNIT_TABLES]
    return study_claims(r, cfg, tables, decided)
