"""What a change of setting does to the study's numbers, claims and time, from two results folders.

Usage: python benchmarks/bench_setting.py BASE_DIR OTHER_DIR --set SECTION.FIELD=VALUE [...] [--units U ...]
       [--data-root D]

BASE_DIR holds units of the `subset` profile as it is (e.g. results/subset); OTHER_DIR units computed with the
--set settings, e.g.

    python -m sipe stages --profile subset --set train.epochs=4 --units sipe-s15 cam-s15 \\
        --results-dir results/subset-4epochs

Each folder is read with its own configuration (`sipe.study.loading.load` takes a unit only when its recorded
configuration and data match), and the units found in both (by name: same variant and seed) are compared:
Table 1's readings per unit, the claims these units decide (`sipe.study.claims.unit_claims`) side by side with the
move of each delta, and the wall time of every stage as the units recorded it. It measures a setting's cost
in numbers against its saving in time; it changes nothing.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from sipe.infra.config import get_profile
from sipe.study.pipeline import plan
from sipe.study.claims import unit_claims
from sipe.study.loading import load
from sipe.study.tables import tidy

CLAIM_COLUMNS = ["ours_mean", "ci_low", "ci_high", "n_seeds", "verdict"]


def claims_side_by_side(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Two claims frames (label -> CLAIM_COLUMNS frame), side by side over the claims both decide, with
    whether the verdict is the same and how far the delta moved (second minus first)."""
    (a, ta), (b, tb) = tables.items()
    both = pd.concat({a: ta.set_index("claim")[CLAIM_COLUMNS], b: tb.set_index("claim")[CLAIM_COLUMNS]}, axis=1)
    both = both[(both[(a, "n_seeds")] > 0) & (both[(b, "n_seeds")] > 0)].copy()
    both[("", "same verdict")] = both[(a, "verdict")] == both[(b, "verdict")]
    both[("", "delta moved")] = both[(b, "ours_mean")] - both[(a, "ours_mean")]
    return both


def print_side_by_side(both: pd.DataFrame, title: str) -> None:
    """Print `claims_side_by_side`'s frame under `title` and the count of kept verdicts."""
    with pd.option_context("display.width", 250, "display.max_colwidth", 70, "display.float_format", "{:+.2f}".format):
        print(title)
        print(both.to_string())
    moved = both[("", "delta moved")].abs()
    print(f"{int(both[('', 'same verdict')].sum())} of {len(both)} claims keep their verdict; their deltas moved by "
          f"{moved.mean():.2f} points on average (max {moved.max():.2f})")


def stage_minutes(folder: str, names: list[str]) -> pd.DataFrame:
    """Minutes per stage (columns) of each unit (rows) from `<folder>/runs/<unit>.json`."""
    rows = {}
    for name in names:
        record = json.loads((Path(folder) / "runs" / f"{name}.json").read_text())
        rows[name] = {stage: s / 60.0 for stage, s in record.get("wall_seconds", {}).items()}
    table = pd.DataFrame.from_dict(rows, orient="index").fillna(0.0)
    table["total"] = table.sum(axis=1)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base_dir")
    parser.add_argument("other_dir")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", required=True)
    parser.add_argument("--units", nargs="+", help="the units to compare (default: every unit found in both)")
    parser.add_argument("--data-root", default="")
    args = parser.parse_args()
    settings = dict(item.split("=", 1) for item in args.set)
    over = {"data.root": args.data_root} if args.data_root else {}
    cfgs = {"profile": get_profile("subset", **over), "with " + ", ".join(args.set): get_profile("subset", **over, **settings)}
    folders = dict(zip(cfgs, (args.base_dir, args.other_dir)))

    units = [u for u in plan(cfgs["profile"]) if args.units is None or u.name in args.units]
    found = {label: set(load(cfg, folders[label], units).units) for label, cfg in cfgs.items()}
    shared = [u for u in units if all(u.name in names for names in found.values())]
    print(f"units in both folders (each with its own configuration): {', '.join(u.name for u in shared) or 'none'}")
    if not shared:
        return

    readings = []
    for label, cfg in cfgs.items():
        t1 = tidy("table1", load(cfg, folders[label], shared), cfg)
        readings.append(t1.assign(setting=label).pivot_table(index=["row", "quantity", "seed"], columns="setting",
                                                                 values="value"))
    readings = pd.concat(readings, axis=1)
    readings["moved"] = readings.iloc[:, 1] - readings.iloc[:, 0]
    with pd.option_context("display.width", 250, "display.float_format", "{:.2f}".format):
        print("\n# Table 1's readings of these units (mIoU)")
        print(readings.to_string())

    both = claims_side_by_side({label: unit_claims(cfg, folders[label], shared) for label, cfg in cfgs.items()})
    print_side_by_side(both, "\n# the claims these units decide")

    names = [u.name for u in shared]
    times = pd.concat({label: stage_minutes(folders[label], names)["total"] for label in cfgs}, axis=1)
    stages = pd.concat({label: stage_minutes(folders[label], names) for label in cfgs}, axis=0)
    with pd.option_context("display.width", 250, "display.float_format", "{:.1f}".format):
        print("\n# wall time per stage, minutes, as the units recorded it")
        print(stages.to_string())
        print(times.assign(saved=times.iloc[:, 0] - times.iloc[:, 1]).to_string())


if __name__ == "__main__":
    main()
