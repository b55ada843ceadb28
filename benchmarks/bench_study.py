"""The whole study's wall time, stage by stage, from the units' own records (results/<profile>/runs/*.json).

    python benchmarks/bench_study.py [--results results/subset] [--profile subset] [--maps-speedup 3.1]

Prints, per unit and stage (train, maps on the evaluated split, maps on the selection split, evaluations),
the minutes recorded by `sipe.study.pipeline.run_unit`; then, per variant, its fastest unit (load only slows a
stage, so the fastest is the nearest to an idle machine's), and the estimate of a plan from them: the
classification units of the profile's plan (each planned unit costs its variant's fastest; a variant with no
finished unit is left out and named), and the core study of issue #6 (SIPE and the CAM baseline with every
seed, every other variant but SC-CAM with one), estimated so and summed as its units ran. The records say nothing of the load they ran under: take the
figures from runs on an idle machine.

Then two levers, from the same records: the time each unit's training spent outside its steps (the training
stage's wall time minus the sum of the per-step times of its kept log, `results/<profile>/logs/<unit>.csv`:
decoding and augmenting images in the main process, checkpoints), which bounds what a loader worker
(`data.num_workers`) can save; and, with --maps-speedup F (e.g. `bench_precision.py`'s bfloat16 figure), the
core study with every maps stage F times faster. With --train-from DIR each variant's training stage is the
fastest of both folders (training is the same in either maps precision), for a figure nearer an idle machine's.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def record_precision(record: dict) -> str:
    """The maps precision a unit record was computed with (records from before the setting: float32)."""
    return record.get("config", {}).get("infer", {}).get("precision", "float32")


def stage_table(results_dir: Path, precision: str | None = None) -> pd.DataFrame:
    """One row per (unit, stage): unit, variant, stage, minutes; only units whose maps were made in `precision`
    (None: every unit)."""
    rows = []
    for path in sorted((results_dir / "runs").glob("*.json")):
        record = json.loads(path.read_text())
        if precision is not None and record_precision(record) != precision:
            continue
        for stage, seconds in record.get("wall_seconds", {}).items():
            rows.append({"unit": record["unit"], "variant": record["variant"], "stage": stage, "minutes": seconds / 60})
    return pd.DataFrame(rows, columns=["unit", "variant", "stage", "minutes"])


def plan_estimate(per_variant: pd.Series, units: list[tuple[str, int]]) -> tuple[float, list[str]]:
    """(minutes, variants without a finished unit) of `units` [(variant, seed)] at their variants' minutes."""
    known = [v for v, _s in units if v in per_variant.index]
    return float(sum(per_variant[v] for v in known)), sorted({v for v, _s in units if v not in per_variant.index})


def loading_minutes(results_dir: Path, table: pd.DataFrame) -> pd.DataFrame:
    """Per unit with a kept training log: training minutes, minutes inside the steps, and the rest."""
    rows = []
    for unit, minutes in table[table["stage"] == "train"].set_index("unit")["minutes"].items():
        log = results_dir / "logs" / f"{unit}.csv"
        if log.exists():
            inside = pd.read_csv(log)["seconds"].sum() / 60
            rows.append({"unit": unit, "train": minutes, "in steps": inside, "outside steps": minutes - inside})
    return pd.DataFrame(rows, columns=["unit", "train", "in steps", "outside steps"]).set_index("unit")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default=str(REPO / "results" / "subset"))
    parser.add_argument("--profile", default="subset")
    parser.add_argument("--maps-speedup", type=float, default=0.0, help="also estimate the study with maps F times faster")
    parser.add_argument("--train-from", help="also take each variant's fastest training stage from this results "
                        "folder (e.g. results/subset-float32: the same training, mapped in the other precision)")
    parser.add_argument("--precision", help="only units whose maps were made in this precision (default: the "
                        "profile's infer.precision; 'any': every unit)")
    args = parser.parse_args()
    from sipe.study import pipeline, segstudy
    from sipe.infra.config import SCCAM, get_profile
    from sipe.study.chapters import core_plan

    cfg = get_profile(args.profile)
    precision = None if args.precision == "any" else args.precision or cfg.infer.precision
    table = stage_table(Path(args.results), precision)
    if table.empty:
        raise SystemExit(f"no unit records in {args.results}/runs with maps in {precision}: run `make stages` first, "
                         "or give --precision")
    print(f"units with maps in {precision or 'any precision'}, from {args.results}")
    seg = table[table["variant"] == segstudy.UNIT_VARIANT]
    shared = (table["variant"] == SCCAM) & (table["stage"] == "train_round0")
    table = table[(table["variant"] != segstudy.UNIT_VARIANT) & ~shared]
    if shared.any():
        print("(an SC-CAM unit's train_round0 is the CAM unit of its seed, counted there, not here)")
    wide = table.pivot_table(index=["variant", "unit"], columns="stage", values="minutes", aggfunc="sum").fillna(0.0)
    wide["total"] = wide.sum(axis=1)
    print(wide.round(1).to_string())
    per_variant = wide.loc[wide.groupby(level="variant")["total"].idxmin()].droplevel("unit")
    print("\nthe fastest unit of each variant (minutes):")
    print(per_variant.round(1).to_string())
    if args.train_from:
        other = stage_table(Path(args.train_from))
        other = other[other["stage"] == "train"].groupby("variant")["minutes"].min()
        faster = other.reindex(per_variant.index).lt(per_variant["train"]).fillna(False)
        per_variant.loc[faster, "train"] = other[faster[faster].index]
        per_variant["total"] = per_variant.drop(columns="total").sum(axis=1)
        print(f"\nwith the fastest training of each variant in either folder ({args.train_from} too; training does not "
              "depend on the maps precision):")
        print(per_variant.round(1).to_string())

    st = cfg.study
    planned = [(u.variant, u.seed) for u in pipeline.plan(cfg)]
    core = [(u.variant, u.seed) for u in core_plan(cfg)]
    totals = per_variant["total"]
    for name, units in ((f"the {args.profile} plan's {len(planned)} classification units", planned),
                        (f"issue #6's study ({len(core)} units: SIPE and the CAM baseline x {len(st.seeds)} seeds, "
                         "the other variants but SC-CAM x 1)", core)):
        minutes, unknown = plan_estimate(totals, units)
        print(f"\n{name}: {minutes:.0f} min = {minutes / 60:.2f} h of stage time"
              + (f" (not counted, no finished unit: {', '.join(unknown)})" if unknown else "")
              + "; the notebooks and the book add a few minutes")
    ran = wide["total"].droplevel("variant").reindex([f"{v}-s{s}" for v, s in core])
    print(f"the core study as its units ran (the sum of their records, load included): {ran.sum():.0f} min = "
          f"{ran.sum() / 60:.2f} h" + (f" (not finished: {', '.join(ran.index[ran.isna()])})" if ran.isna().any() else ""))

    loading = loading_minutes(Path(args.results), table)
    if not loading.empty:
        print("\ntraining time outside the steps (image decoding and augmentation, checkpoints), minutes:")
        print(loading.round(2).to_string())
        share = loading["outside steps"].sum() / loading["train"].sum()
        print(f"{100 * share:.1f}% of the training time of these units: a loader worker saves at most that, "
              f"{share * per_variant['train'].reindex([v for v, _ in core]).sum():.0f} min over the core study")
    if not seg.empty:
        per_stage = seg.pivot_table(index="stage", columns="unit", values="minutes", aggfunc="sum")
        print("\nsegmentation units, minutes per stage as recorded (a stage resumed after an interruption records "
              "only its last piece):")
        print(per_stage.round(1).to_string())
        fastest = float(per_stage.sum().min())
        n_seg = len(segstudy.plan(cfg))
        minutes, unknown = plan_estimate(totals, planned)
        print(f"the whole {args.profile} plan ({len(planned)} classification + {n_seg} segmentation units at "
              f"{fastest:.0f} min each): {minutes + n_seg * fastest:.0f} min = {(minutes + n_seg * fastest) / 60:.2f} h"
              + (f" (not counted, no finished unit: {', '.join(unknown)})" if unknown else ""))
    if args.maps_speedup > 0:
        maps_cols = [c for c in per_variant.columns if c.startswith("maps_")]
        faster = totals - per_variant[maps_cols].sum(axis=1) * (1 - 1 / args.maps_speedup)
        minutes, _ = plan_estimate(faster, core)
        print(f"\nthe core study with maps {args.maps_speedup:g}x faster: {minutes:.0f} min = {minutes / 60:.2f} h "
              "of stage time")


if __name__ == "__main__":
    main()
