"""The Findings page: the claims at a glance, from `<results_dir>/claims.csv` (`sipe.study.claims.CLAIM_COLUMNS`).

`forest_figure(claims)` draws each claim's difference with its 95% interval (or the seeds' spread), the paper's
difference and the verdict; `findings_markdown(claims)` says in a few sentences what the table holds. Both read
the CSV's columns only, so the page changes whenever `claims.csv` does.
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from IPython.display import Markdown
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from . import claims as claim_rules

CLAIMS_FILE = "claims.csv"
VERDICT_COLOURS: dict[str, str] = {"holds": "tab:green", "mixed": "tab:orange", "fails": "tab:red",
                                   claim_rules.NOT_TESTABLE: "tab:grey"}
OTHER_COLOUR = "lightgrey"
HEADLINE: dict[str, str] = {
    "SIPE beats the CAM baseline (localization maps)": "SIPE over the CAM baseline (Table 1)",
    "SIPE beats the CAM baseline with denseCRF (void as background)":
        "SIPE over the CAM baseline with denseCRF, void as background (Table 1)",
    "GSC improves over CAM + IPE": "GSC over CAM + IPE (Table 4)",
    "IPE improves over the CAM baseline": "IPE over the CAM baseline (Table 4)",
}
"""The claims the summary quotes with their numbers: claim -> how the sentence names it."""
COSINE_SOURCE = "Fig. 1"
"""Claims whose source names it are differences of mean cosine similarities, not mIoU points."""
WRAP = 52


def read_claims(results_dir: str | Path) -> pd.DataFrame:
    """`<results_dir>/claims.csv`, as `sipe.reproduce` wrote it."""
    path = Path(results_dir) / CLAIMS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: `python -m sipe.reproduce` writes it after the chapters run")
    return pd.read_csv(path)


def _nan(v: object) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _label(row: pd.Series) -> str:
    unit = " [cosine]" if COSINE_SOURCE in str(row["source"]) else ""
    return textwrap.fill(f"{row['claim']}{unit}", WRAP)


def forest_figure(claims: pd.DataFrame) -> Figure:
    """One row per claim, top to bottom in the table's order: our mean difference (a dot coloured by verdict) with
    its 95% interval over images and seeds (a solid bar; without one, mean ± std over seeds as a dashed bar), the
    paper's difference (an open diamond), zero as a thin line. Claim names are wrapped, never cut."""
    n = len(claims)
    fig = Figure(figsize=(9.5, 1.3 + 0.42 * n), layout="constrained")
    ax = fig.subplots()
    y = np.arange(n)
    for i, row in enumerate(claims.itertuples(index=False)):
        colour = VERDICT_COLOURS.get(str(row.verdict), OTHER_COLOUR)
        if not _nan(row.ci_low):
            ax.plot([row.ci_low, row.ci_high], [i, i], "-", color=colour, lw=2.5, solid_capstyle="butt")
        elif not _nan(row.ours_std):
            ax.plot([row.ours_mean - row.ours_std, row.ours_mean + row.ours_std], [i, i], "--", color=colour, lw=1.5)
        if not _nan(row.ours_mean):
            ax.plot(row.ours_mean, i, "o", color=colour, ms=6)
        if not _nan(row.paper_delta):
            ax.plot(row.paper_delta, i, "D", mfc="none", mec="black", ms=6)
    ax.axvline(0.0, color="grey", lw=0.8)
    ax.set_yticks(y, [_label(r) for _, r in claims.iterrows()], fontsize=8)
    ax.set_ylim(n - 0.5, -0.5)
    for i in np.flatnonzero(claims["evidence"].ne(claims["evidence"].shift()).to_numpy())[1:]:
        ax.axhline(i - 0.5, color="lightgrey", lw=0.6)
    ax.grid(axis="x", color="0.92")
    ax.set_xlabel("better - baseline (mIoU points; [cosine]: mean cosine similarity)")
    shown = [v for v in VERDICT_COLOURS if v in set(claims["verdict"])]
    others = sorted(set(claims["verdict"].astype(str)) - set(VERDICT_COLOURS))
    handles = [Line2D([], [], marker="o", ls="-", lw=2.5, color=VERDICT_COLOURS[v], label=v) for v in shown]
    handles += [Line2D([], [], marker="o", ls="-", lw=2.5, color=OTHER_COLOUR, label=v) for v in others]
    handles += [Line2D([], [], marker="D", ls="none", mfc="none", mec="black", label="the paper's difference"),
                Line2D([], [], ls="-", lw=2.5, color="black", label="95% interval (images and seeds)"),
                Line2D([], [], ls="--", lw=1.5, color="black", label="mean ± std over seeds (no interval)")]
    fig.legend(handles=handles, loc="outside upper center", ncols=4, fontsize=8, frameon=False)
    return fig


def _delta(row: pd.Series) -> str:
    parts = []
    if not _nan(row["ci_low"]):
        parts.append(f"95% interval {row['ci_low']:+.1f} to {row['ci_high']:+.1f}")
    elif not _nan(row["ours_std"]):
        parts.append(f"± {row['ours_std']:.1f} over {int(row['n_seeds'])} seeds")
    if not _nan(row["paper_delta"]):
        parts.append(f"paper {row['paper_delta']:+.1f}")
    return f"{row['ours_mean']:+.1f} (" + "; ".join([*parts, str(row["verdict"])]) + ")"


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def findings_sentences(claims: pd.DataFrame) -> list[str]:
    """Three to five sentences on a claims.csv frame: the verdicts counted, the `HEADLINE` claims with their
    numbers, how much of the paper's effect the claims reproduce (the magnitude column, the median share), and
    the claims that fail."""
    counts = claims["verdict"].value_counts()
    words = {"holds": ("holds", "hold"), "mixed": ("is mixed", "are mixed"), "fails": ("fails", "fail"),
             claim_rules.NOT_TESTABLE: ("is not testable here", "are not testable here"),
             claim_rules.NO_INTERVAL: ("has no interval to decide it", "have no interval to decide them")}
    parts = [_count(int(counts[v]), *w) for v, w in words.items() if counts.get(v, 0)]
    parts += [f"{int(counts[v])} {v}" for v in counts.index if v not in words]
    sentences = [f"Of the {len(claims)} claims the study checks, " + (", ".join(parts) or "none is decided") + "."]
    quoted = claims.set_index("claim").reindex([c for c in HEADLINE if c in set(claims["claim"])])
    quoted = quoted[quoted["ours_mean"].notna()]
    if len(quoted):
        sentences.append("In mIoU points, " + "; ".join(f"{HEADLINE[c]}: {_delta(row)}" for c, row in quoted.iterrows())
                         + ".")
    sized = claims[claims["magnitude"].notna()]
    if len(sized):
        m = sized["magnitude"].value_counts()
        phrases = ((claim_rules.IN_FULL, "the paper's full effect"), (claim_rules.AT_LEAST_HALF, "at least half of it"),
                   (claim_rules.SMALLER, "less than half"))
        shown = [f"{text} for {_count(int(m[w]), 'claim', 'claims')}" for w, text in phrases if m.get(w, 0)]
        undecided = int(m.get(claim_rules.UNDECIDED, 0))
        sentences.append(
            f"Of the {len(sized)} claims with an interval and a paper difference, the interval shows "
            + (", ".join(shown) or "no decided share")
            + (f", and is undecided for {undecided}" if undecided else "")
            + f"; the median claim reproduces {sized['share'].median():.0%} of the paper's effect.")
    failing = claims.loc[claims["verdict"] == "fails", "claim"].tolist()
    if failing:
        sentences.append("Failing: " + "; ".join(failing) + ".")
    return sentences


def findings_markdown(claims: pd.DataFrame) -> str:
    """`findings_sentences` as Markdown, one paragraph each."""
    return "\n\n".join(findings_sentences(claims))


def summary(claims: pd.DataFrame) -> Markdown:
    """`findings_markdown` as a displayable Markdown object."""
    return Markdown(findings_markdown(claims))


__all__ = ["CLAIMS_FILE", "HEADLINE", "VERDICT_COLOURS", "findings_markdown", "findings_sentences", "forest_figure",
           "read_claims", "summary"]
