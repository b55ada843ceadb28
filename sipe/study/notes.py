"""What the chapters print beside a table: notes on the denseCRF void, on where the structure-aware seeds fall
on the threshold curve and on the claims' verdicts, and each unit's provenance, cost and code changes.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from . import paper
from .claims import AT_LEAST_HALF, IN_FULL, NO_INTERVAL, NOT_TESTABLE, SMALLER, UNDECIDED
from .loading import StudyResults
from .tables import FIG8_BEST

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
