"""The numbers of the book's prose pages (the Markdown pages of book/), computed: settings from the configuration and the code,
results from the committed results folders. `write_book_numbers` writes them to `book/executed/numbers.json`
(the runner calls it after the notebooks); the Sphinx extension `book/_ext/book_numbers.py` hands them to the pages
as MyST substitutions, ``{{ name }}``, so no page types a number that the results or the settings give.
`FLOAT32_RESULTS` is the float32 study (maps in float32, the same trained models), compared with the published
bfloat16 one.

    python -m sipe.study.booknumbers [--results results/subset] [--float32 results/subset-float32]
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..infra.config import get_profile
from ..infra.runtime import atomic_write_text
from .paper import FULL_VOC_SIZES, PAPER_MOMENTUM, PAPER_SCALES
from .records import certificates

REPO_ROOT = Path(__file__).resolve().parents[2]
NUMBERS_FILE = "numbers.json"
FLOAT32_RESULTS = REPO_ROOT / "results" / "subset-float32"
PRECISIONS = ("float32", "bfloat16")
CI_LEVEL = 0.95
"""The level of the claims' bootstrap intervals (`sipe.study.intervals.bootstrap_claim`'s default)."""
COST_UNITS = {"sipe": "SIPE", "cam": "CAM baseline", "semantic_bpm": "Table 5 option (2)"}
"""The variants of the cost table of book/reproduce.md, with their names there."""
CORE_STUDY = {"sipe": 3, "cam": 3, "semantic_bpm": 1, "semantic_nobpm": 1, "hierarchical_nobpm": 1, "sipe_bg05": 1}
"""The core study of issue #6: units per variant (SIPE and the CAM baseline with three seeds, the others one)."""


def num(x: float, digits: int = 1, sign: bool = False) -> str:
    """x with `digits` decimals (and its sign when `sign`)."""
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def span(values: Sequence[float], digits: int = 1, unit: str = "") -> str:
    """'a-b' (lowest to highest of values, rounded), or one number when they round alike."""
    lo, hi = num(min(values), digits), num(max(values), digits)
    return (lo if lo == hi else f"{lo}-{hi}") + unit


def words(values: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    values = list(values)
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " and " + values[-1]


def settings_numbers() -> dict[str, str]:
    """The settings the prose names: from the profiles, the backbone's normalisation, IRN's protocols and
    settings, the segmentation network's and the claims' rules."""
    from ..method.backbones import BACKBONES
    from ..segmentation import irn
    from .claims import AT_LEAST_HALF, IN_FULL, MAGNITUDE_SHARE, SMALLER, UNCHANGED_TOLERANCE, UNDECIDED
    from .intervals import BOOTSTRAP_SAMPLES
    from .ladder import BUDGET_HOURS, RUNGS

    subset, paper = get_profile("subset"), get_profile("paper")
    lite = BACKBONES[subset.model.backbone]
    extra = [s for s in PAPER_SCALES if s not in subset.infer.scales]
    ir, seg = subset.irn, subset.seg
    return {
        "subset_norm_mean": num(lite.mean[0]), "subset_norm_std": num(lite.std[0]),
        "subset_bg_scale": num(subset.model.bg_scale), "paper_bg_scale": num(paper.model.bg_scale),
        "paper_momentum": num(PAPER_MOMENTUM), "subset_momentum": num(subset.train.momentum),
        "code_momentum": num(paper.train.momentum, 0), "subset_epochs": str(subset.train.epochs),
        "subset_batch": str(subset.train.batch_size), "subset_crop": str(subset.data.crop_size),
        "subset_resize_long": "-".join(str(x) for x in subset.data.resize_long),
        "subset_scales": words([num(s) for s in subset.infer.scales]), "paper_extra_scales": words([num(s) for s in extra]),
        "sipe_power": num(irn.PROTOCOLS["sipe"].power), "irn_conf_fg": num(irn.PROTOCOLS["irn"].conf_fg_threshold, 2),
        "irn_conf_bg": num(irn.PROTOCOLS["irn"].conf_bg_threshold, 2),
        "irn_rw_bg": num(irn.PROTOCOLS["irn"].rw_bg_threshold, 2),
        "irn_crop": str(ir.crop_size), "irn_epochs": str(ir.epochs), "irn_radius": str(ir.infer_radius),
        "irn_beta": num(ir.beta, 0), "irn_exp_times": str(ir.exp_times),
        "seg_rates": "/".join(str(r) for r in seg.aspp_rates), "seg_crop": str(seg.crop_size), "seg_epochs": str(seg.epochs),
        "ci_low_percentile": num(100 * (1 - CI_LEVEL) / 2), "ci_high_percentile": num(100 * (1 + CI_LEVEL) / 2),
        "unchanged_tolerance": num(UNCHANGED_TOLERANCE), "bootstrap_samples": f"{BOOTSTRAP_SAMPLES:,}",
        "selection_images": str(subset.study.selection_images), "fig8_thresholds": str(len(subset.study.fig8_thresholds)),
        "paper_epochs": str(paper.train.epochs), "subset_head_channels": f"{lite.stage_channels[-1]:,}",
        "ladder_data_images": " or ".join(str(r.overrides["data.max_images"]) for r in RUNGS if r.axis == "data"),
        "ladder_budget_hours": num(BUDGET_HOURS, 0), "ci_level": num(100 * CI_LEVEL, 0),
        "magnitude_share": num(100 * MAGNITUDE_SHARE, 0), "magnitude_in_full": IN_FULL, "magnitude_half": AT_LEAST_HALF,
        "magnitude_smaller": SMALLER, "magnitude_undecided": UNDECIDED,
    }


def records(results_dir: Path) -> dict[str, dict]:
    """{unit: its record} of `results_dir/runs/*.json`."""
    return {p.stem: json.loads(p.read_text()) for p in sorted((results_dir / "runs").glob("*.json"))}


def record_precision(record: Mapping) -> str:
    """The maps precision of a unit record (records from before the setting: float32)."""
    return record.get("config", {}).get("infer", {}).get("precision", "float32")


def stage_minutes(record: Mapping) -> dict[str, float]:
    """Minutes of a unit's training, maps (both splits), evaluations and in all, from its record."""
    w = record.get("wall_seconds", {})
    part = {s: sum(v for k, v in w.items() if k.startswith(p)) / 60 for s, p in
            (("train", "train"), ("maps", "maps_"), ("evaluation", "eval_"))}
    return {**part, "total": sum(w.values()) / 60}


def cost_table(runs: Mapping[str, dict]) -> pd.DataFrame:
    """Per variant of COST_UNITS, its fastest unit (least total minutes) and that unit's stage minutes."""
    rows = []
    for variant, label in COST_UNITS.items():
        units = {u: stage_minutes(r) for u, r in runs.items() if r["variant"] == variant}
        if units:
            unit = min(units, key=lambda u: units[u]["total"])
            rows.append({"unit (fastest of its variant)": f"{label} (`{unit}`)", **units[unit]})
    return pd.DataFrame(rows)


def cost_markdown(table: pd.DataFrame) -> str:
    """`cost_table` as a Markdown table, minutes with one decimal."""
    out = table.rename(columns={"maps": "maps (evaluated + selection split)"})
    for c in out.columns[1:]:
        out[c] = [f"{v:.1f} min" for v in out[c]]
    return out.to_markdown(index=False)


def core_least(runs: Mapping[str, dict], part: Callable[[Mapping], float]) -> dict[str, float]:
    """{variant of CORE_STUDY: the least `part(record)` over its units in `runs`}, variants without a unit left out."""
    least = {}
    for variant in CORE_STUDY:
        values = [part(r) for r in runs.values() if r["variant"] == variant]
        if values:
            least[variant] = min(values)
    return least


def train_minutes(record: Mapping) -> float:
    """Minutes of a unit's training, from its record."""
    return stage_minutes(record)["train"]


def core_hours(runs: Mapping[str, dict], train_runs: Mapping[str, dict] | None = None) -> float:
    """Hours of the core study (CORE_STUDY), each unit at its variant's fastest unit; with `train_runs`, each
    variant's training at the fastest of both folders (training is the same in either maps precision)."""
    rest = core_least(runs, lambda r: stage_minutes(r)["total"] - stage_minutes(r)["train"])
    train = core_least(runs, train_minutes)
    if train_runs:
        other = core_least(train_runs, train_minutes)
        train = {v: min(t, other.get(v, t)) for v, t in train.items()}
    return sum(CORE_STUDY[v] * (train[v] + rest[v]) for v in rest) / 60


def fastest_training(results_dir: Path, runs: Mapping[str, dict], variants: Sequence[str] = ("sipe", "cam")) -> list[tuple[float, float]]:
    """(steps per second, minutes) of the fastest training of each of `variants` among its units with a kept
    training log (load only slows a stage: the fastest is the nearest to an idle machine's)."""
    fastest = []
    for variant in variants:
        timed = []
        for u, r in runs.items():
            log, seconds = results_dir / "logs" / f"{u}.csv", r.get("wall_seconds", {}).get("train")
            if r["variant"] == variant and log.exists() and seconds:
                timed.append((pd.read_csv(log)["step"].max() / seconds, seconds / 60))
        if timed:
            fastest.append(max(timed))
    return fastest


def cost_numbers(results_dir: Path, float32_dir: Path | None) -> dict[str, str]:
    """The cost passages of the pages on reproducing and on the setting, from the units' records."""
    runs = {u: r for u, r in records(results_dir).items() if record_precision(r) == "bfloat16"}
    old = records(float32_dir) if float32_dir and float32_dir.is_dir() else {}
    table = cost_table(runs)
    fast = fastest_training(results_dir, runs)
    paper_epochs = get_profile("paper").train.epochs
    out = {**lever_numbers(runs, paper_epochs - 1, paper_epochs),
           "cost_table": cost_markdown(table), "core_hours": num(core_hours(runs)),
           "train_steps_per_s": span([r for r, _ in fast], 2), "train_minutes": span([m for _, m in fast]),
           "all_units": str(len(runs)), "all_units_hours": num(sum(stage_minutes(r)["total"] for r in runs.values()) / 60)}
    if old:
        old_fast = fastest_training(float32_dir, old)
        out.update(float32_steps_per_s=span([r for r, _ in old_fast], 2), float32_train_minutes=span([m for _, m in old_fast]),
                   core_hours_float32_training=num(core_hours(runs, old)))
    sccam = [r for r in runs.values() if r["variant"] == "sccam"]
    if sccam:
        rounds = [[v / 60 for k, v in r["wall_seconds"].items() if k.startswith("train_round") and k != "train_round0"]
                  for r in sccam]
        out.update(sccam_own_minutes=span([sum(r) for r in rounds], 0), sccam_round_minutes=span(sum(rounds, []), 0),
                   sccam_units=words([f"`{u}`" for u, r in runs.items() if r["variant"] == "sccam"]),
                   sccam_maps_minutes=span([stage_minutes(r)["maps"] for r in sccam]),
                   sccam_eval_minutes=span([stage_minutes(r)["evaluation"] for r in sccam]))
    seg = {u: stage_minutes(r)["total"] for u, r in runs.items() if r["variant"] == "segmentation"}
    if seg:
        out.update(seg_units=words([f"`{u}`" for u in seg]), seg_minutes=words([num(m, 0) for m in seg.values()]),
                   seg_minutes_span=span(list(seg.values()), 0))
    old_seg = {u: stage_minutes(r)["total"] for u, r in old.items() if r["variant"] == "segmentation"}
    if old_seg:
        out.update(float32_seg_units=words([f"`{u}`" for u in old_seg]),
                   float32_seg_minutes=words([num(m, 0) for m in old_seg.values()]))
    return out


def lever_numbers(runs: Mapping[str, dict], fewer_epochs: int, paper_epochs: int, selection_fraction: float = 0.5) -> dict[str, str]:
    """What the core study (CORE_STUDY, each variant at its fastest unit) would save with `fewer_epochs` training
    epochs instead of `paper_epochs` and a selection split `selection_fraction` as large (minutes), and its hours
    after both."""
    train = sum(CORE_STUDY[v] * m for v, m in core_least(runs, train_minutes).items())
    selection = sum(CORE_STUDY[v] * m for v, m in
                    core_least(runs, lambda r: r["wall_seconds"].get("maps_selection", 0.0) / 60).items())
    epochs_saved = train * (1 - fewer_epochs / paper_epochs)
    selection_saved = selection * (1 - selection_fraction)
    return {"lever_epochs": str(fewer_epochs), "lever_epochs_minutes": num(epochs_saved, 0),
            "lever_selection_minutes": num(selection_saved, 0), "lever_minutes": num(epochs_saved + selection_saved, 0),
            "lever_core_hours": num(core_hours(runs) - (epochs_saved + selection_saved) / 60)}


def certificate_numbers(runs: Mapping[str, dict]) -> dict[str, str]:
    """The certified changes of stage code as the records store them (`certified_before` and `certified`), oldest
    first: the first's numbers are named `cert_...`, the second's `cert2_...`, and so on: revisions, date and
    machine, and per certifying unit the training steps and confusion arrays found identical
    (`cert_<variant>_steps`, ...)."""
    found = {(c["revision"], c["date"]): c for r in runs.values() for c in certificates(r)}
    out: dict[str, str] = {}
    for i, (_, c) in enumerate(sorted(found.items(), key=lambda kv: kv[0][1])):
        name = "cert" if i == 0 else f"cert{i + 1}"
        m = c["machine"]
        out.update({f"{name}_revision": c["revision"][:7], f"{name}_previous": c["previous_revision"][:7],
                    f"{name}_date": c["date"][:10],
                    f"{name}_machine": f"{m['cpu']}, torch's {m['torch_cpu_capability']} kernels, {m['torch_threads']} threads"})
        for unit, comparison in zip(c["units"], c["comparison"]):
            key = f"{name}_{runs[unit]['variant']}" if unit in runs else f"{name}_{unit.split('-')[0]}"
            out.update({f"{key}_steps": str(comparison["log_steps"]), f"{key}_arrays": str(comparison["confusion_arrays"]),
                        f"{key}_published_at": comparison["revisions"].split("->")[0].strip()})
    return out


def results_numbers(results_dir: Path) -> dict[str, str]:
    """Sizes the committed results give: the evaluated images and the classes present in their ground truth (a
    SIPE unit's per-image confusions, rows = ground truth), the segmentation units' val images, the training
    steps of a SIPE unit's log; and the paper's split sizes."""
    from ..data import voc

    runs = records(results_dir)
    out = {"paper_train_aug_images": f"{FULL_VOC_SIZES['train_aug']:,}", "paper_train_images": f"{FULL_VOC_SIZES['train']:,}",
           "paper_val_images": f"{FULL_VOC_SIZES['val']:,}", "voc_classes": str(voc.NUM_CLASSES + 1)}
    sipe = sorted(u for u, r in runs.items() if r["variant"] == "sipe")
    if sipe:
        with np.load(results_dir / "confusions" / f"{sipe[0]}.npz") as z:
            first = z[sorted(f for f in z.files if f.startswith("train/"))[0]]
        out["eval_images"] = f"{first.shape[0]:,}"
        cm = first.reshape(-1, *first.shape[-2:]).sum(0)
        out["eval_classes_present"] = str(int((cm.sum(1) > 0).sum()))
        out["train_steps"] = str(int(pd.read_csv(results_dir / "logs" / f"{sipe[0]}.csv")["step"].max()))
    seg = sorted(u for u, r in runs.items() if r["variant"] == "segmentation")
    if seg:
        with np.load(results_dir / "confusions" / f"{seg[0]}.npz") as z:
            out["val_images"] = f"{len(z['val/ids']):,}"
    out.update(certificate_numbers(runs))
    return out


def segmentation_numbers(data_root: str | Path | None) -> dict[str, str]:
    """The subset's train_aug size, the segmentation unit's CPU budget, how many fewer images the subset's
    segmentation networks see, and their epochs in samples of train_aug epochs (needs the data root, for the
    split sizes)."""
    from ..data import voc
    from .segresults import cpu_budget

    if not data_root or not Path(data_root).is_dir():
        return {}
    cfg = get_profile("subset", **{"data.root": str(data_root)})
    i, s = cfg.irn, cfg.seg
    n_pseudo = len(voc.read_split(data_root, i.pseudo_split))
    n_aug = len(voc.read_split(data_root, cfg.data.train_split))
    return {"subset_train_images": f"{n_aug:,}", "seg_cpu_hours": num(cpu_budget(cfg)["cpu_min"].sum() / 60, 0),
            "seg_fewer_than_subset": num(n_aug / n_pseudo), "seg_fewer_than_paper": num(FULL_VOC_SIZES["train_aug"] / n_pseudo, 0),
            "irn_epochs_in_train_aug": num(i.epochs * n_pseudo / n_aug, 0),
            "seg_epochs_in_train_aug": num(s.epochs * n_pseudo / n_aug)}


def reading_moves(float32_dir: Path, bfloat16_dir: Path, units: Sequence[str]) -> pd.DataFrame:
    """Per mIoU reading of `units` in both folders: unit, reading and the absolute move bfloat16 - float32 (points)."""
    keys = ["quantity", "reading", "background", "threshold", "variant", "seed", "split"]
    frames = []
    for u in units:
        a, b = (pd.read_csv(d / "runs" / f"{u}.csv") for d in (float32_dir, bfloat16_dir))
        a, b = (f[f["quantity"] == "miou"] for f in (a, b))
        m = a.merge(b, on=keys, suffixes=("_a", "_b"))
        m["move"] = (m["value_b"] - m["value_a"]).abs()
        frames.append(m.assign(unit=u)[["unit", "reading", "move"]])
    return pd.concat(frames, ignore_index=True)


def shared_units(float32_dir: Path, bfloat16_dir: Path, kinds: Sequence[str] | None = None) -> list[str]:
    """Units mapped in float32 in one folder and bfloat16 in the other from the same training key."""
    a, b = records(float32_dir), records(bfloat16_dir)
    return [u for u in a if u in b and a[u].get("train_key") and a[u].get("train_key") == b[u].get("train_key")
            and (record_precision(a[u]), record_precision(b[u])) == PRECISIONS
            and (kinds is None or a[u]["variant"] in kinds)]


def precision_numbers(float32_dir: Path, bfloat16_dir: Path, claims: tuple[pd.DataFrame, pd.DataFrame] | None) -> dict[str, str]:
    """What bfloat16 maps cost against float32 maps of the same trained models: per classification unit mapped
    both ways, the mean move of its mIoU readings; the moves of the IS-CAM and CAM readings; with `claims` (the
    claims these units decide in float32 and in bfloat16, `sipe.study.claims.unit_claims`), how many keep
    their verdict and how far they move."""
    units = [u for u in shared_units(float32_dir, bfloat16_dir) if not u.startswith("segmentation")]
    if not units:
        return {}
    moves = reading_moves(float32_dir, bfloat16_dir, units)
    per_unit = moves.groupby("unit")["move"].mean()
    counts = moves.groupby("unit").size()
    is_cam, cam = moves[moves["reading"] == "is_cam"]["move"], moves[moves["reading"] == "cam"]["move"]
    out = {"precision_units": str(len(units)), "precision_unit_names": words([f"`{u}`" for u in units]),
           "precision_readings": span(counts.tolist(), 0), "precision_unit_moves": span(per_unit.tolist(), 2),
           "precision_top_unit": f"`{per_unit.idxmax()}`",
           "precision_iscam_mean": num(is_cam.mean(), 2), "precision_iscam_max": num(is_cam.max(), 1),
           "precision_cam_mean": num(cam.mean(), 2), "precision_cam_max": num(cam.max(), 2)}
    if claims is not None:
        out.update(claims_moves(*claims))
    return out


SIPE_CLAIM = "SIPE beats the CAM baseline (localization maps)"


def claims_moves(a: pd.DataFrame, b: pd.DataFrame) -> dict[str, str]:
    """How the claims decided in both frames (float32 a, bfloat16 b) move: how many keep their verdict, the
    three-seed claims' moves, SIPE's claim and the claim that moves most, in both."""
    both = a.merge(b, on="claim", suffixes=("_a", "_b")).set_index("claim")
    both = both[(both["n_seeds_a"] > 0) & (both["n_seeds_b"] > 0)]
    moved = (both["ours_mean_b"] - both["ours_mean_a"]).abs()
    three = moved[both["n_seeds_b"] >= 3]
    changed = both[both["verdict_a"] != both["verdict_b"]]
    kept = (f"all {len(both)} keep their verdict" if changed.empty else f"{len(both) - len(changed)} of {len(both)} keep "
            "their verdict; " + "; ".join(f'"{c}" goes from *{r.verdict_a}* to *{r.verdict_b}*' for c, r in changed.iterrows()))
    out = {"precision_verdicts": kept,
           "precision_three_seed_moves": span(three.tolist(), 1) if len(three) else "–",
           "precision_largest_claim": str(moved.idxmax()), "precision_largest_seeds": str(int(both.loc[moved.idxmax(), "n_seeds_b"]))}
    for key, claim in (("sipe", SIPE_CLAIM), ("largest", moved.idxmax())):
        if claim in both.index:
            r = both.loc[claim]
            for side, precision in zip("ab", PRECISIONS):
                tag = f"precision_{key}_{precision}"
                out[tag] = num(r[f"ours_mean_{side}"], 2, sign=True)
                out[f"{tag}_ci"] = f"{num(r[f'ci_low_{side}'], 2, sign=True)} to {num(r[f'ci_high_{side}'], 2, sign=True)}"
                out[f"{tag}_verdict"] = str(r[f"verdict_{side}"])
    return out


def precision_claims(float32_dir: Path, bfloat16_dir: Path, data_root: str | Path) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """The claims the classification units mapped both ways decide, from float32 and from bfloat16 maps."""
    from .pipeline import plan
    from .claims import unit_claims

    cfg = get_profile("subset", **{"data.root": str(data_root)})
    names = set(shared_units(float32_dir, bfloat16_dir))
    units = [u for u in plan(cfg) if u.name in names]
    if not units:
        return None
    return (unit_claims(cfg.override(**{"infer.precision": "float32"}), float32_dir, units),
            unit_claims(cfg, bfloat16_dir, units))


def book_numbers(results_dir: Path, float32_dir: Path | None = None, data_root: str | Path | None = None) -> dict[str, str]:
    """{substitution name: its text} of every number the prose pages show (the data root gives the split sizes and
    the units' identities; without it those numbers are left out)."""
    out = settings_numbers()
    out.update(cost_numbers(results_dir, float32_dir))
    out.update(results_numbers(results_dir))
    out.update(segmentation_numbers(data_root))
    if float32_dir is not None and float32_dir.is_dir():
        claims = precision_claims(float32_dir, results_dir, data_root) if data_root else None
        out.update(precision_numbers(float32_dir, results_dir, claims))
    return out


def write_book_numbers(out_dir: Path, results_dir: Path, float32_dir: Path | None = None,
                       data_root: str | Path | None = None) -> Path:
    """Write `book_numbers` to `out_dir/numbers.json`; the path."""
    path = Path(out_dir) / NUMBERS_FILE
    numbers = book_numbers(Path(results_dir), float32_dir, data_root)
    atomic_write_text(path, json.dumps(numbers, indent=1, sort_keys=True) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default=str(REPO_ROOT / "results" / "subset"))
    p.add_argument("--float32", default=str(FLOAT32_RESULTS))
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", default=str(REPO_ROOT / "book" / "executed"))
    a = p.parse_args(argv)
    print(write_book_numbers(Path(a.out), Path(a.results), Path(a.float32), a.data_root))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
