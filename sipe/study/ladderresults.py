"""The ladder chapter's numbers: each rung's results read as the study's (`sipe.study.loading.load`, the tidy
tables and claims of `sipe.study.tables` and `sipe.study.claims`), the claims a rung's units decide with their deltas and verdicts side
by side, SIPE's and the CAM baseline's mIoU against the samples seen, and whether a claim's delta moves toward
the paper's along an axis of the ladder (`axis_slopes`). A rung without results shows NOT_COMPUTED.
"""
from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter
from scipy import stats

from ..data import voc
from ..infra.config import ExperimentConfig, get_profile
from ..infra.provenance import REPO_ROOT, machine_text
from ..stages.train import plan_steps
from . import certify, paper, pipeline
from .ladder import (BACKBONE_COSTS, LADDER_VARIANTS, RUNGS, Rung, get_rung, rung_command, rung_config,
    rung_results_dir)
from .loading import StudyResults, load
from .claims import CLAIMS, UNIT_TABLES, Claim, claims, study_claims
from .tables import fmt_mean_std, table_cells, tidy

NOT_COMPUTED = "not yet computed"
BASE_AXIS = "base"
HEADLINE: dict[str, str] = {
    "SIPE beats the CAM baseline (localization maps)": "SIPE - CAM",
    "SIPE beats the CAM baseline with denseCRF (void as background)": "SIPE - CAM, denseCRF (void as background)",
    "SIPE beats the CAM baseline with denseCRF (void ignored)": "SIPE - CAM, denseCRF (void ignored)",
    "IPE improves over the CAM baseline": "CAM + IPE - CAM (Table 4)",
    "GSC improves over CAM + IPE": "CAM + IPE + GSC - CAM + IPE (Table 4)",
    "Structure-aware seeds beat the best CAM threshold": "structure-aware seeds - best threshold (Fig. 8)",
    "Estimated background beats the threshold for option (4)": "estimated - threshold background, option (4) (Table 5)",
}
"""The headline deltas of the ladder: claim -> a short label of its delta."""
AXIS_UNITS = {"data": "doubling of the training images", "length": "doubling of the samples seen",
              "backbone": "doubling of the backbone's training FLOPs", "crop": "doubling of the crop side",
              "scales": "doubling of the map pixels (sum of squared scales)", "combined": "the combined rung over the base"}
"""What one unit of each axis's position is (`axis_position`)."""
PAPER_TRAIN_IMAGES = paper.FULL_VOC_SIZES["train_aug"]
SLOPE_COLUMNS = ["claim", "axis", "per", "rungs", "points", "base_delta", "paper_delta", "slope", "ci_low", "ci_high",
                 "direction"]


@dataclass
class RungResults:
    """One rung's (or the base study's) configuration, results folder, published units, tidy tables and
    planned units (names, in run order)."""

    name: str
    axis: str
    cfg: ExperimentConfig
    results_dir: Path
    results: StudyResults
    tables: dict[str, pd.DataFrame]
    planned: tuple[str, ...]

    @property
    def computed(self) -> bool:
        return bool(self.results.units)


def _read(name: str, axis: str, cfg: ExperimentConfig, results_dir: Path, units: Sequence[pipeline.Unit]) -> RungResults:
    r = load(cfg, results_dir, units)
    return RungResults(name, axis, cfg, results_dir, r, {t: tidy(t, r, cfg) for t in UNIT_TABLES},
                       tuple(u.name for u in units))


def load_ladder(base: ExperimentConfig, work_dir: str | Path, base_results_dir: str | Path,
                rungs: Sequence[Rung] = RUNGS) -> list[RungResults]:
    """The base study's SIPE and CAM-baseline units (from `base_results_dir`) and every rung's units (from
    `rung_results_dir`), in ladder order; a rung's units count only when their records match its configuration."""
    units = [u for u in pipeline.plan(base) if u.variant in LADDER_VARIANTS]
    with voc.fingerprints_memoized():
        out = [_read(base.profile, BASE_AXIS, base, Path(base_results_dir), units)]
        for rung in rungs:
            cfg = rung_config(rung, base)
            out.append(_read(rung.name, rung.axis, cfg, rung_results_dir(base.profile, work_dir, rung.name), rung.units))
    return out


COMBINED = "combined"
NOT_IN_LADDER = "not in the ladder"
COMBINED_COLUMN = "verdict at the combined rung"


def combined_verdicts(base: ExperimentConfig, work_dir: str | Path) -> pd.Series:
    """Per claim the ladder decides (`decided_claims`), its verdict at the combined rung (NOT_COMPUTED until
    the rung's units are published); index claim."""
    rung = get_rung(COMBINED)
    cfg = rung_config(rung, base)
    rr = _read(rung.name, rung.axis, cfg, rung_results_dir(base.profile, work_dir, rung.name), rung.units)
    return rung_claims(rr, decided_claims(base)).set_index("claim")["verdict"]


def with_combined_verdicts(table: pd.DataFrame, base: ExperimentConfig, work_dir: str | Path) -> pd.DataFrame:
    """A claims frame with COMBINED_COLUMN: the combined rung's verdict of each claim, NOT_IN_LADDER for the
    claims its units (SIPE and the CAM baseline) do not decide."""
    verdicts = combined_verdicts(base, work_dir)
    return table.assign(**{COMBINED_COLUMN: table["claim"].map(verdicts).fillna(NOT_IN_LADDER)})


def rung_status(ladder: Sequence[RungResults]) -> pd.DataFrame:
    """Per rung: its units, how many of them are planned and published for its configuration, its results folder
    (relative to the repository when inside it) and the command that computes it (columns rung, axis, units,
    planned, published, results, command)."""
    rows = []
    for rr in ladder:
        folder = rr.results_dir.resolve()
        shown = folder.relative_to(REPO_ROOT) if folder.is_relative_to(REPO_ROOT) else folder
        command = "" if rr.axis == BASE_AXIS else rung_command(get_rung(rr.name), rr.cfg.profile)
        rows.append({"rung": rr.name, "axis": rr.axis, "units": " ".join(rr.planned),
                     "planned": len(rr.planned), "published": len(rr.results.units), "results": str(shown),
                     "command": command})
    return pd.DataFrame(rows)


def decided_claims(cfg: ExperimentConfig, variants: Sequence[str] = LADDER_VARIANTS) -> list[Claim]:
    """The claims of `sipe.study.claims.CLAIMS` whose two cells come from the classification tables
    (`UNIT_TABLES`) and from units of `variants` only (a row a table derives from its cells, such as Fig. 8's
    best threshold, counts by the variants of that table's cells)."""
    cells, by_table = {}, {}
    for name in UNIT_TABLES:
        for c in table_cells(name, cfg):
            cells[(name, c.row, c.quantity)] = {c.variant}
            by_table.setdefault(name, set()).add(c.variant)
    allowed = set(variants)

    def inside(cell: tuple[str, str, str]) -> bool:
        return cell[0] in by_table and cells.get(cell, by_table[cell[0]]) <= allowed

    return [c for c in CLAIMS if inside(c.better) and inside(c.baseline)]


def rung_claims(rr: RungResults, claim_list: Sequence[Claim]) -> pd.DataFrame:
    """`study_claims` of one rung over its tidy tables (one-seed intervals from its confusions), with columns
    rung and axis first; when the rung has no results, the paper's deltas with the verdict NOT_COMPUTED."""
    if rr.computed:
        frame = study_claims(rr.results, rr.cfg, rr.tables, claim_list)
    else:
        frame = claims({}, claim_list=claim_list).assign(verdict=NOT_COMPUTED)
    frame = frame.drop(columns=["source", "evidence"])
    frame.insert(0, "axis", rr.axis)
    frame.insert(0, "rung", rr.name)
    return frame


def ladder_claims(ladder: Sequence[RungResults], claim_list: Sequence[Claim]) -> pd.DataFrame:
    """`rung_claims` of every rung, one frame (rung, axis, claim, paper_delta, ours_mean, ours_std, n_seeds,
    ci_low, ci_high, verdict)."""
    return pd.concat([rung_claims(rr, claim_list) for rr in ladder], ignore_index=True)


def _by_rung(frame: pd.DataFrame, values: str) -> pd.DataFrame:
    rungs, names = list(dict.fromkeys(frame["rung"])), list(dict.fromkeys(frame["claim"]))
    table = frame.pivot(index="claim", columns="rung", values=values).reindex(index=names, columns=rungs)
    table.columns.name = None
    paper_delta = frame.drop_duplicates("claim").set_index("claim")["paper_delta"].astype(float)
    table.insert(0, "paper", [("–" if math.isnan(v) else f"{v:+.1f}") for v in paper_delta.reindex(table.index)])
    return table


def verdict_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Claim x rung verdicts of a `ladder_claims` frame (rungs and claims in the frame's order), after the
    paper's delta."""
    return _by_rung(frame, "verdict")


def _delta_text(mean: float, std: float, n: int, lo: float, hi: float, verdict: str) -> str:
    if verdict == NOT_COMPUTED:
        return NOT_COMPUTED
    if n == 0 or math.isnan(mean):
        return "–"
    if n == 1:
        return f"{mean:+.1f}" + ("" if math.isnan(lo) else f" [{lo:+.1f}, {hi:+.1f}]")
    return f"{mean:+.1f} ± {std:.1f} (n={n})"


def delta_table(frame: pd.DataFrame, labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The deltas of a `ladder_claims` frame as the book shows them: one row per claim (its label in `labels`,
    default the claim), the paper's delta, then per rung ours as mean ± std (n) over seeds, or one seed's delta
    with its 95% interval over images, or NOT_COMPUTED."""
    shown = frame.assign(text=[_delta_text(*row) for row in frame[
        ["ours_mean", "ours_std", "n_seeds", "ci_low", "ci_high", "verdict"]].itertuples(index=False)])
    table = _by_rung(shown, "text")
    if labels:
        table.index = [labels.get(c, c) for c in table.index]
    table.index.name = "delta"
    return table


def seed_deltas(tables: Mapping[str, pd.DataFrame], claim_list: Sequence[Claim]) -> pd.DataFrame:
    """Per claim and seed, better - baseline of its two cells in tidy `tables` (seeds both cells have):
    columns claim, seed, delta."""
    rows = []
    for c in claim_list:
        values = []
        for table, row, quantity in (c.better, c.baseline):
            t = tables.get(table)
            if t is None or t.empty:
                values.append(pd.Series(dtype=float))
                continue
            sel = t[(t["row"] == row) & (t["quantity"] == quantity)]
            values.append(sel.groupby("seed")["value"].mean().astype(float))
        delta = (values[0] - values[1]).dropna()
        rows += [{"claim": c.claim, "seed": int(s), "delta": float(d)} for s, d in delta.items()]
    return pd.DataFrame(rows, columns=["claim", "seed", "delta"])


def training_images(cfg: ExperimentConfig) -> int:
    """The number of training images a configuration reads (its split, capped by data.max_images)."""
    return len(voc.read_split(cfg.data.resolved_root(), cfg.data.train_split)[: cfg.data.max_images])


def samples_seen(cfg: ExperimentConfig, n_images: int) -> int:
    """Training samples seen: the steps `plan_steps` plans for `n_images` images x the batch size."""
    return plan_steps(n_images, cfg)[1] * cfg.train.batch_size


def paper_samples_seen() -> int:
    """Samples seen by the paper's training (the `paper` profile on the full train_aug set)."""
    return samples_seen(get_profile("paper"), PAPER_TRAIN_IMAGES)


def axis_position(cfg: ExperimentConfig, axis: str, n_images: int) -> float:
    """Where a configuration stands on an axis (every axis grows toward the paper's setting): log2 of the
    training images (data), of the samples seen (length), of the backbone's training FLOPs (backbone), of the
    crop side (crop), of the map pixels, the sum of squared scales (scales)."""
    if axis == "data":
        return math.log2(n_images)
    if axis == "length":
        return math.log2(samples_seen(cfg, n_images))
    if axis == "backbone":
        return math.log2(BACKBONE_COSTS[cfg.model.backbone].train_gflops)
    if axis == "crop":
        return math.log2(cfg.data.crop_size)
    if axis == "scales":
        return math.log2(sum(s * s for s in cfg.infer.scales))
    raise ValueError(f"no position on axis {axis!r}; axes with positions: {sorted(AXIS_UNITS)}")


def positions(ladder: Sequence[RungResults]) -> pd.DataFrame:
    """Each rung's position on its axis and the base's on every axis (`axis_position`; the combined rung at 1,
    the base at 0 on its axis): columns rung, axis, position."""
    base = ladder[0]
    n_base = training_images(base.cfg)
    rows = []
    for rr in ladder[1:]:
        if rr.axis == "combined":
            rows += [{"rung": base.name, "axis": rr.axis, "position": 0.0}, {"rung": rr.name, "axis": rr.axis, "position": 1.0}]
            continue
        rows += [{"rung": base.name, "axis": rr.axis, "position": axis_position(base.cfg, rr.axis, n_base)},
                 {"rung": rr.name, "axis": rr.axis, "position": axis_position(rr.cfg, rr.axis, training_images(rr.cfg))}]
    return pd.DataFrame(rows, columns=["rung", "axis", "position"]).drop_duplicates(ignore_index=True)


def ladder_seed_deltas(ladder: Sequence[RungResults], claim_list: Sequence[Claim]) -> pd.DataFrame:
    """`seed_deltas` of every computed rung: columns rung, claim, seed, delta."""
    frames = [seed_deltas(rr.tables, claim_list).assign(rung=rr.name) for rr in ladder if rr.computed]
    if not frames:
        return pd.DataFrame(columns=["rung", "claim", "seed", "delta"])
    return pd.concat(frames, ignore_index=True)[["rung", "claim", "seed", "delta"]]


def slope(x: Sequence[float], y: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(slope, low, high): the least-squares slope of y on x and its t interval; the interval is nan with fewer
    than three points, and everything is nan without two distinct x."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or np.ptp(x) == 0:
        return math.nan, math.nan, math.nan
    xc = x - x.mean()
    b = float((xc * (y - y.mean())).sum() / (xc ** 2).sum())
    dof = len(x) - 2
    if dof < 1:
        return b, math.nan, math.nan
    residual = y - y.mean() - b * xc
    se = math.sqrt(float((residual ** 2).sum()) / dof / float((xc ** 2).sum()))
    half = float(stats.t.ppf((1 + level) / 2, dof)) * se
    return b, b - half, b + half


def direction(base_delta: float, paper_delta: float, lo: float, hi: float) -> str:
    """Whether a slope's interval [lo, hi] moves a delta from `base_delta` toward `paper_delta`: 'toward the
    paper' or 'away from the paper' when the interval excludes 0 on that side, else 'no clear move'; 'no
    interval' without one, 'no paper delta' when the paper has none."""
    if math.isnan(paper_delta):
        return "no paper delta"
    if math.isnan(lo) or math.isnan(hi):
        return "no interval"
    target = 1.0 if paper_delta >= base_delta else -1.0
    if lo > 0 or hi < 0:
        return "toward the paper" if (lo > 0) == (target > 0) else "away from the paper"
    return "no clear move"


def axis_slopes(deltas: pd.DataFrame, where: pd.DataFrame, paper_deltas: Mapping[str, float],
                base: str) -> pd.DataFrame:
    """Per claim of `paper_deltas` and axis of `where`, the slope of the per-seed deltas (`ladder_seed_deltas`:
    rung, claim, seed, delta) over the positions of the base (`base`) and the computed rungs of that axis
    (`positions`), its 95% interval and its `direction` from the base's mean delta toward the paper's:
    SLOPE_COLUMNS. An axis with no computed rung shows NOT_COMPUTED."""
    rows = []
    for claim, paper_delta in paper_deltas.items():
        mine = deltas[deltas["claim"] == claim]
        base_delta = float(mine.loc[mine["rung"] == base, "delta"].mean()) if (mine["rung"] == base).any() else math.nan
        for axis, on_axis in where.groupby("axis", sort=False):
            points = mine.merge(on_axis[["rung", "position"]], on="rung")
            rungs = [r for r in dict.fromkeys(points["rung"]) if r != base]
            row = {"claim": claim, "axis": axis, "per": AXIS_UNITS.get(axis, axis), "rungs": ", ".join(rungs),
                   "points": len(points), "base_delta": base_delta, "paper_delta": paper_delta}
            if not rungs or math.isnan(base_delta):
                rows.append({**row, "slope": math.nan, "ci_low": math.nan, "ci_high": math.nan, "direction": NOT_COMPUTED})
                continue
            b, lo, hi = slope(points["position"], points["delta"])
            rows.append({**row, "slope": b, "ci_low": lo, "ci_high": hi, "direction": direction(base_delta, paper_delta, lo, hi)})
    return pd.DataFrame(rows, columns=SLOPE_COLUMNS)


def slope_table(slopes: pd.DataFrame) -> pd.DataFrame:
    """Claim x axis of an `axis_slopes` frame, after the paper's delta and the base's: the direction, with the
    slope per unit of the axis (AXIS_UNITS) and its 95% interval where there is one."""
    def text(r: pd.Series) -> str:
        if math.isnan(r["slope"]):
            return r["direction"]
        interval = "" if math.isnan(r["ci_low"]) else f" [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]"
        return f"{r['direction']}: {r['slope']:+.2f}{interval}"

    shown = slopes.assign(text=slopes.apply(text, axis=1))
    table = shown.pivot(index="claim", columns="axis", values="text").reindex(
        index=list(dict.fromkeys(slopes["claim"])), columns=list(dict.fromkeys(slopes["axis"])))
    table.columns.name = None
    first = slopes.drop_duplicates("claim").set_index("claim").reindex(table.index)
    for position, (name, column) in enumerate((("paper", "paper_delta"), ("base", "base_delta"))):
        table.insert(position, name, [("–" if math.isnan(v) else f"{v:+.1f}") for v in first[column].astype(float)])
    return table


SEEDS_WHERE_VERDICT_CHANGES = 3
"""Training seeds a rung needs once a claim's verdict there differs from the base study's (issue #22)."""


def verdict_changes(frame: pd.DataFrame, base: str, seeds: int = SEEDS_WHERE_VERDICT_CHANGES,
                    hours: Mapping[str, float] | None = None) -> pd.DataFrame:
    """Per computed rung other than `base` (a `ladder_claims` frame), the claims whose verdict differs from the base
    study's (as 'claim: base verdict -> rung verdict'), its training seeds and the seeds it still needs
    (columns rung, changed, seeds, seeds needed); rungs where no verdict changes need none. With `hours`
    ({rung: estimated hours of its missing seeds}, `ladder.seed_hours`), a column 'hours for the seeds' (0 where
    none are needed)."""
    at_base = frame[frame["rung"] == base].set_index("claim")["verdict"]
    rows = []
    for rung, part in frame[frame["rung"] != base].groupby("rung", sort=False):
        part = part[part["verdict"] != NOT_COMPUTED]
        if part.empty:
            continue
        changed = [f"{c}: {at_base[c]} -> {v}" for c, v in zip(part["claim"], part["verdict"])
                   if c in at_base.index and at_base[c] != v]
        have = int(part["n_seeds"].max())
        rows.append({"rung": rung, "changed": "; ".join(changed) or "none", "seeds": have,
                     "seeds needed": max(seeds - have, 0) if changed else 0})
    table = pd.DataFrame(rows, columns=["rung", "changed", "seeds", "seeds needed"])
    if hours is not None:
        table["hours for the seeds"] = [round(float(hours.get(r, math.nan)), 2) if n else 0.0
                                        for r, n in zip(table["rung"], table["seeds needed"])]
    return table


def seeds_note(changes: pd.DataFrame, ladder_hours: float, budget_hours: float) -> str:
    """Whether the missing seeds of a `verdict_changes` table (with its hours column) fit beside the declared
    ladder (`ladder_hours` estimated) in `budget_hours`, and what the chapter's verdict changes are read as."""
    declared = changes[(changes["seeds needed"] > 0) & (changes["hours for the seeds"] == 0)]
    later = (f" The missing seeds of {', '.join(declared['rung'])} are declared and still to compute."
             if len(declared) else "")
    need = changes[(changes["seeds needed"] > 0) & (changes["hours for the seeds"] > 0)]
    if need.empty:
        return ("No computed rung changes a verdict of the base study without its seeds declared." if len(declared)
                else "No computed rung changes a verdict of the base study, so no rung needs more training seeds.") + later
    extra = float(need["hours for the seeds"].sum())
    rungs = ", ".join(need["rung"])
    fits = ladder_hours + extra <= budget_hours
    verdict = ("they fit in the budget and are declared next" if fits else
               "they do not fit: the budget's hours go to the declared rungs and the combined rung's three seeds")
    return (f"{len(need)} computed rung(s) change a verdict of the base study ({rungs}). Their missing seeds are "
            f"estimated at {extra:.1f} hours beside the declared ladder's {ladder_hours:.1f} hours, "
            f"{ladder_hours + extra:.1f} against the {budget_hours:g}-hour budget: {verdict}. "
            + ("" if fits else "Until they are computed, a changed verdict on these rungs is one training seed's, "
               "its interval over images only, not over training seeds.") + later)


def failing_claims(frame: pd.DataFrame, base: str) -> dict[str, float]:
    """{claim: the paper's delta} of the claims that fail in the base study (`ladder_claims` frame)."""
    sel = frame[(frame["rung"] == base) & (frame["verdict"] == "fails")]
    return dict(zip(sel["claim"], sel["paper_delta"].astype(float)))


def failing_slopes(ladder: Sequence[RungResults], claim_list: Sequence[Claim], frame: pd.DataFrame) -> pd.DataFrame:
    """`axis_slopes` of the claims that fail in the base study (the first of `ladder`; `frame` its
    `ladder_claims`), over the per-seed deltas of `claim_list` on the computed rungs."""
    base = ladder[0].name
    return axis_slopes(ladder_seed_deltas(ladder, claim_list), positions(ladder), failing_claims(frame, base), base)


def absolute_table(ladder: Sequence[RungResults]) -> pd.DataFrame:
    """Per rung: training images, samples seen, and SIPE's and the CAM baseline's Table 1 mIoU (mean and std
    over seeds, n), nan where not computed; then the paper's row."""
    rows = []
    for rr in ladder:
        n = training_images(rr.cfg)
        row = {"rung": rr.name, "axis": rr.axis, "training images": n, "samples seen": samples_seen(rr.cfg, n)}
        t1 = rr.tables["table1"]
        for label, name in (("SIPE", "SIPE"), ("CAM", "Baseline (CAM)")):
            v = t1.loc[(t1["row"] == name) & (t1["quantity"] == "loc_maps_miou"), "value"].astype(float)
            row.update({f"{label} mean": v.mean() if len(v) else math.nan,
                        f"{label} std": v.std(ddof=1) if len(v) > 1 else math.nan, f"{label} n": len(v),
                        label: fmt_mean_std(v.tolist()) if len(v) else NOT_COMPUTED})
        rows.append(row)
    sipe, cam = (paper.paper_value("table1", r, "loc_maps_miou") for r in ("SIPE", "Baseline (CAM)"))
    rows.append({"rung": "paper", "axis": "", "training images": PAPER_TRAIN_IMAGES, "samples seen": paper_samples_seen(),
                 "SIPE mean": sipe, "SIPE std": math.nan, "SIPE n": 0, "SIPE": f"{sipe:.1f}",
                 "CAM mean": cam, "CAM std": math.nan, "CAM n": 0, "CAM": f"{cam:.1f}"})
    return pd.DataFrame(rows)


def delta_figure(frame: pd.DataFrame, labels: Mapping[str, str] = HEADLINE, columns: int = 4) -> Figure:
    """One panel per claim of `labels`: its delta per rung of a `ladder_claims` frame (mean over seeds with
    the seeds' std, or one seed with its 95% interval over images), the paper's delta as a dashed line, zero as
    a thin one; rungs not computed are named on the axis and left empty."""
    rungs = list(dict.fromkeys(frame["rung"]))
    n = len(labels)
    rows = math.ceil(n / columns)
    fig = Figure(figsize=(3.4 * min(columns, n), 3.0 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, min(columns, n), squeeze=False).ravel())
    for ax, (claim, label) in zip(axes, labels.items()):
        part = frame[frame["claim"] == claim].set_index("rung").reindex(rungs)
        done = part["verdict"] != NOT_COMPUTED
        x = np.arange(len(rungs))
        mean = part["ours_mean"].astype(float).to_numpy()
        one = part["n_seeds"].fillna(0).to_numpy() == 1
        low = np.where(one, mean - part["ci_low"].astype(float), part["ours_std"].astype(float))
        high = np.where(one, part["ci_high"].astype(float) - mean, part["ours_std"].astype(float))
        ok = done.to_numpy() & ~np.isnan(mean)
        ax.errorbar(x[ok], mean[ok], yerr=np.nan_to_num(np.vstack([low[ok], high[ok]])), fmt="o", capsize=3,
                    color="tab:blue", label="ours")
        paper_delta = part["paper_delta"].astype(float).dropna()
        if len(paper_delta):
            ax.axhline(paper_delta.iloc[0], color="tab:red", linestyle="--", label="paper")
        ax.axhline(0.0, color="grey", linewidth=0.6)
        ax.set_xticks(x, [r if d else f"{r}\n(not yet)" for r, d in zip(rungs, done)], rotation=60, fontsize=7)
        ax.set_xlim(-0.5, len(rungs) - 0.5)
        ax.set_title("\n".join(textwrap.wrap(label, 34)), fontsize=8)
        ax.set_ylabel("mIoU points", fontsize=8)
    axes[0].legend(fontsize=7)
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig


def dodged_x(table: pd.DataFrame, step: float = 1.03) -> np.ndarray:
    """The `samples seen` of each row of an `absolute_table`, spread by factors of `step` (centred, in row order)
    among the rows that share a value, so that rungs at the same samples seen stand side by side on a log axis."""
    x = table["samples seen"].astype(float).to_numpy()
    out = x.copy()
    for value in np.unique(x):
        rows = np.flatnonzero(x == value)
        out[rows] = value * step ** (np.arange(len(rows)) - (len(rows) - 1) / 2)
    return out


def absolute_figure(table: pd.DataFrame) -> Figure:
    """Two panels, SIPE and the CAM baseline: mIoU against the samples seen (log axis) of every computed rung of
    an `absolute_table` (mean with the seeds' std), one colour per rung named in the legend, rungs at the same
    samples seen side by side (`dodged_x`), the base and training-length rungs joined by a line, and the paper's
    number as a star."""
    fig = Figure(figsize=(8.6, 3.8), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    ours, paper_row = table[table["rung"] != "paper"], table[table["rung"] == "paper"]
    x = pd.Series(dodged_x(ours), index=ours.index)
    colours = dict(zip(ours["rung"], _rung_colours(len(ours))))
    length = ours["axis"].isin(["base", get_rung("epochs10").axis])
    for ax, label in zip(axes, ("SIPE", "CAM")):
        done = ours[ours[f"{label} n"] > 0]
        line = done[length.loc[done.index]]
        ax.plot(x.loc[line.index], line[f"{label} mean"], color="grey", lw=0.8, zorder=1,
                label="base and training length" if len(line) > 1 else None)
        for i, r in done.iterrows():
            ax.errorbar(x.loc[i], r[f"{label} mean"], yerr=0.0 if math.isnan(r[f"{label} std"]) else r[f"{label} std"],
                        fmt="o", color=colours[r["rung"]], capsize=3, label=r["rung"], zorder=2)
        ax.scatter(paper_row["samples seen"], paper_row[f"{label} mean"], marker="*", s=180, color="gold",
                   edgecolor="black", label="paper", zorder=3)
        if done.empty:
            ax.text(0.5, 0.5, "no rung computed yet", transform=ax.transAxes, ha="center", color="grey")
        ax.set_xscale("log")
        ax.set_xlim(table["samples seen"].min() / 1.5, table["samples seen"].max() * 1.5)
        ax.xaxis.set_major_locator(FixedLocator([5_000, 10_000, 20_000, 50_000]))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title("SIPE" if label == "SIPE" else "CAM baseline", fontsize=10)
        ax.set_xlabel("training samples seen (log)")
    axes[0].set_ylabel("mIoU on VOC train (localization maps)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=8)
    return fig


def _rung_colours(n: int) -> list:
    """`n` distinct colours of the tab10 palette (tab20 beyond ten)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i) for i in range(n)]


def partly_computed(ladder: Sequence[RungResults]) -> list[str]:
    """The rungs with some but not all of their planned units published."""
    return [rr.name for rr in ladder if rr.computed and len(rr.results.units) < len(rr.planned)]


def _where(axes: Sequence[str]) -> str:
    """'along data, length', 'at the combined rung', or both joined by 'and'."""
    combined = get_rung(COMBINED).axis
    single = [a for a in axes if a != combined]
    parts = ([f"along {', '.join(single)}"] if single else []) + (["at the combined rung"] if combined in axes else [])
    return " and ".join(parts)


def ladder_note(frame: pd.DataFrame, slopes: pd.DataFrame, base: str, partly: Sequence[str] = ()) -> str:
    """One sentence per finding: how many rungs are computed (those in `partly`, `partly_computed`, said to be
    partly so), and for each claim that fails in the base study the axes along which its delta moves toward (or
    away from) the paper's, read from `axis_slopes`."""
    rungs = [r for r in dict.fromkeys(frame["rung"]) if r != base]
    done = [r for r in rungs if (frame.loc[frame["rung"] == r, "verdict"] != NOT_COMPUTED).any()]
    if not done:
        return (f"No rung is computed yet ({len(rungs)} declared): the tables show the {base} study alone, and "
                "whether a failing claim moves toward the paper cannot be read yet.")
    whole = [r for r in done if r not in partly]
    text = f"{len(whole)} of {len(rungs)} rungs are computed ({', '.join(whole) or 'none'})"
    part = [r for r in done if r in partly]
    text += (f", and {len(part)} partly ({', '.join(part)}: the claims its computed units decide)." if part else ".")
    if slopes.empty:
        return text + f" No claim that these units decide fails in the {base} study."
    for claim, part in slopes.groupby("claim", sort=False):
        moves = {d: part.loc[part["direction"] == d, "axis"].tolist() for d in ("toward the paper", "away from the paper")}
        found = [f"{d} {_where(axes)}" for d, axes in moves.items() if axes]
        text += f" {claim}: " + ("; ".join(found) if found else "no axis moves it clearly") + "."
    return text


NOT_RECORDED = "not recorded"


def unit_machines(ladder: Sequence[RungResults]) -> pd.DataFrame:
    """Per published unit of every rung, the machine its record names (`sipe.infra.provenance.machine`: the CPU
    model and torch's CPU capability, the CUDA device if any), NOT_RECORDED for records older than that field
    (columns rung, unit, machine)."""
    rows = []
    for rr in ladder:
        for unit, record in rr.results.units.items():
            rows.append({"rung": rr.name, "unit": unit, "machine": machine_text(record.get("machine")) or NOT_RECORDED})
    return pd.DataFrame(rows, columns=["rung", "unit", "machine"])


def machines_note(machines: pd.DataFrame) -> str:
    """Which rungs of a `unit_machines` frame had all their units computed on the same kind of machine (so a
    claim's delta there, which reads two units of the rung, carries no noise between machines), which on several,
    and whose records do not say."""
    by_rung = machines.groupby("rung", sort=False)["machine"].agg(lambda m: sorted(set(m)))
    one: dict[str, list[str]] = {}
    for rung, found in by_rung.items():
        if found != [NOT_RECORDED] and len(found) == 1:
            one.setdefault(found[0], []).append(rung)
    text = [f"the units of {', '.join(rungs)} were all computed on the same kind of machine ({m}), so a claim's "
            "delta there reads no noise between machines" for m, rungs in one.items()]
    several = [f"{r} ({'; '.join(found)})" for r, found in by_rung.items() if len(found) > 1]
    if several:
        text.append(f"the units of {', '.join(several)} come from more than one machine, so their deltas may carry "
                    "floating-point noise between machines")
    unknown = [r for r, found in by_rung.items() if found == [NOT_RECORDED]]
    if unknown:
        text.append(f"the records of {', '.join(unknown)} predate the machine field, so a slope from them to a rung "
                    "may compare two machines, within the noise that separates machines (the reproduction page)")
    if not text:
        return "No rung is computed yet."
    joined = "; ".join(text)
    return joined[0].upper() + joined[1:] + "."


OTHER_MACHINES = "other-machines"
"""A rung's folder of units computed again on other kinds of machine (`<rung results>/other-machines/<machine>/`,
laid out as a results folder): kept to measure the noise between machines, not read as the rung's results."""


def machine_drift(ladder: Sequence[RungResults]) -> pd.DataFrame:
    """Per unit kept in a rung's OTHER_MACHINES folder, how far it lies from the rung's published unit
    (`sipe.study.certify.drift`, after - before = published - other machine), with columns rung and folder."""
    rows = []
    for rr in ladder:
        for folder in sorted(p for p in (rr.results_dir / OTHER_MACHINES).glob("*") if p.is_dir()):
            for record in sorted((folder / "runs").glob("*.json")):
                if record.stem in rr.results.units:
                    rows.append({"rung": rr.name, "folder": str(folder.relative_to(rr.results_dir)),
                                 **certify.drift(folder, rr.results_dir, record.stem)})
    return pd.DataFrame(rows)


def drift_note(drift: pd.DataFrame) -> str:
    """The units of a `machine_drift` frame in sentences: which two machines computed each, whether its logs
    agree to the last bit and for how many steps, and how far its mIoU readings lie apart."""
    if drift.empty:
        return "No unit of the ladder is kept computed on two kinds of machine."
    text = []
    for r in drift.itertuples():
        same = ("with the same settings and stage code" if r.same_settings and r.same_code
                else "with different settings or stage code (not a measure of the machines alone)")
        log = ""
        if hasattr(r, "same_steps") and not pd.isna(r.same_steps):
            steps = int(r.log_steps)
            if r.same_steps == steps:
                log = f"; its training logs agree to the last bit at all {steps} steps"
            else:
                log = (f"; its training logs agree to the last bit for the first {int(r.same_steps)} of {steps} steps"
                       if r.same_steps else f"; its training logs differ in their last bits from the first of {steps} steps")
                if hasattr(r, "same_loss_steps") and not pd.isna(r.same_loss_steps):
                    log += f" (the total loss agrees for the first {int(r.same_loss_steps)})"
                log += ", then part by rounding"
        before, after = r.machine_before or NOT_RECORDED, r.machine_after or NOT_RECORDED
        text.append(f"{r.rung}'s {r.unit} was computed on {before} ({r.folder}) and on {after} "
                    f"{same}{log}; its {r.readings} mIoU readings lie at most {r.max_abs:.2f} points apart "
                    f"(median {r.median_abs:.2f})")
    return ". ".join(text) + "."


HEADLINE_CLAIM = "SIPE beats the CAM baseline (localization maps)"


def findings_note(base: ExperimentConfig, work_dir: str | Path, base_results_dir: str | Path) -> str:
    """The ladder in a few sentences for the Findings page: SIPE - CAM (Table 1) in the base study, on each
    computed rung and in the paper, then `ladder_note` (which failing claims move toward the paper, and along
    which axes), from the committed units."""
    ladder = load_ladder(base, work_dir, base_results_dir)
    decided = decided_claims(base)
    frame = ladder_claims(ladder, decided)
    name = ladder[0].name
    slopes = failing_slopes(ladder, decided, frame)
    head = frame[(frame["claim"] == HEADLINE_CLAIM) & (frame["verdict"] != NOT_COMPUTED)
                 & frame["ours_mean"].notna()].set_index("rung")
    text = ladder_note(frame, slopes, name, partly_computed(ladder))
    if name not in head.index or len(head) < 2:
        return text
    paper_delta = float(head.loc[name, "paper_delta"])
    rungs = ", ".join(f"{r} {head.loc[r, 'ours_mean']:+.1f}" for r in head.index if r != name)
    return (f"SIPE - CAM (Table 1) is {head.loc[name, 'ours_mean']:+.1f} mIoU in the {name} study and "
            f"{paper_delta:+.1f} in the paper; on the computed rungs: {rungs}. " + text
            + " A verdict that changes on a one-seed rung is that seed's (the ladder chapter lists them).")
