"""The whole study's wall time, stage by stage, from the units' own records (results/<profile>/runs/*.json).

    python benchmarks/bench_study.py [--results results/subset] [--profile subset] [--data-root DIR]

Prints, per unit and stage (train, maps on the evaluated split, maps on the selection split, evaluations),
the minutes recorded by `sipe.pipeline.run_unit`; then, per variant, its fastest unit (load only slows a
stage, so the fastest is the nearest to an idle machine's), and the estimate of a plan from them: the
classification units of the profile's plan (each planned unit costs its variant's fastest; a variant with no
finished unit is left out and named), and the core study of issue #6 (SIPE and the CAM baseline with every
seed, every other variant but SC-CAM with one). The records say nothing of the load they ran under: take the
figures from runs on an idle machine.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def stage_table(results_dir: Path) -> pd.DataFrame:
    """One row per (unit, stage): unit, variant, stage, minutes."""
    rows = []
    for path in sorted((results_dir / "runs").glob("*.json")):
        record = json.loads(path.read_text())
        for stage, seconds in record.get("wall_seconds", {}).items():
            rows.append({"unit": record["unit"], "variant": record["variant"], "stage": stage, "minutes": seconds / 60})
    return pd.DataFrame(rows, columns=["unit", "variant", "stage", "minutes"])


def plan_estimate(per_variant: pd.Series, units: list[tuple[str, int]]) -> tuple[float, list[str]]:
    """(minutes, variants without a finished unit) of `units` [(variant, seed)] at their variants' minutes."""
    known = [v for v, _s in units if v in per_variant.index]
    return float(sum(per_variant[v] for v in known)), sorted({v for v, _s in units if v not in per_variant.index})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default=str(REPO / "results" / "subset"))
    parser.add_argument("--profile", default="subset")
    args = parser.parse_args()
    table = stage_table(Path(args.results))
    if table.empty:
        raise SystemExit(f"no unit records in {args.results}/runs: run `make stages` first")
    wide = table.pivot_table(index=["variant", "unit"], columns="stage", values="minutes", aggfunc="sum").fillna(0.0)
    wide["total"] = wide.sum(axis=1)
    print(wide.round(1).to_string())
    per_variant = wide.loc[wide.groupby(level="variant")["total"].idxmin()].droplevel("unit")
    print("\nthe fastest unit of each variant (minutes):")
    print(per_variant.round(1).to_string())

    from sipe import pipeline
    from sipe.config import SCCAM, get_profile

    cfg = get_profile(args.profile)
    st = cfg.study
    planned = [(u.variant, u.seed) for u in pipeline.plan(cfg)]
    core = [(v, s) for v, s in planned if v != SCCAM and (s == st.seeds[0] or v in ("sipe", "cam"))]
    totals = per_variant["total"]
    for name, units in ((f"the {args.profile} plan's {len(planned)} classification units", planned),
                        (f"issue #6's study ({len(core)} units: SIPE and the CAM baseline x {len(st.seeds)} seeds, "
                         "the other variants but SC-CAM x 1)", core)):
        minutes, unknown = plan_estimate(totals, units)
        print(f"\n{name}: {minutes:.0f} min = {minutes / 60:.2f} h of stage time"
              + (f" (not counted, no finished unit: {', '.join(unknown)})" if unknown else "")
              + "; the notebooks and the book add a few minutes")


if __name__ == "__main__":
    main()
