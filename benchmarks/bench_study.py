"""The whole study's wall time, stage by stage, from the units' own records (results/<profile>/runs/*.json).

    python benchmarks/bench_study.py [--results results/subset]

Prints, per unit and stage (train, maps on the evaluated split, maps on the selection split, evaluations),
the minutes recorded by `sipe.pipeline.run_unit`, their totals, and the estimate of the full plan from the
units finished so far (units of the same variant kind take the same time). Take the figures from a run on
an idle machine: stages that ran beside other jobs are slower.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def stage_table(results_dir: Path) -> pd.DataFrame:
    rows = []
    for path in sorted((results_dir / "runs").glob("*.json")):
        record = json.loads(path.read_text())
        for stage, seconds in record.get("wall_seconds", {}).items():
            rows.append({"unit": record["unit"], "variant": record["variant"], "stage": stage, "minutes": seconds / 60})
    return pd.DataFrame(rows, columns=["unit", "variant", "stage", "minutes"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default=str(REPO / "results" / "subset"))
    parser.add_argument("--planned-units", type=int, default=13)
    args = parser.parse_args()
    table = stage_table(Path(args.results))
    if table.empty:
        raise SystemExit(f"no unit records in {args.results}/runs: run `make stages` first")
    wide = table.pivot_table(index="unit", columns="stage", values="minutes", aggfunc="sum").fillna(0.0)
    wide["total"] = wide.sum(axis=1)
    print(wide.round(1).to_string())
    per_unit = wide["total"].mean()
    print(f"\n{len(wide)} unit(s) finished: {wide['total'].sum():.0f} min; mean {per_unit:.1f} min per unit; "
          f"{args.planned_units} planned units ~ {per_unit * args.planned_units / 60:.1f} h of stage time "
          "(notebooks and the book add a few minutes)")


if __name__ == "__main__":
    main()
