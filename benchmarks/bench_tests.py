"""How long the test suite takes: `make test-fast` (pytest -m "not slow") and `make test` (every test), each as the
Makefile runs it (pytest-xdist, one worker per core, one test file per worker at a time), timed from start to exit.

Usage: python benchmarks/bench_tests.py [--workers auto] [--only fast|full] [--durations 15] [--write-durations]

Printed: the machine (CPU model, cores, the load average before each run: take the figures on an idle machine),
per run its wall seconds against its target (fast: 90 s, full: 300 s on a 2-core machine), pytest's summary line
and its slowest tests. Exit status 1 if a run's tests fail. With --write-durations, the full run's seconds per test
file are written to tests/durations.json, which tests/conftest.py reads to hand the longest files out first.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

from sipe.infra.provenance import cpu_model

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"fast": 90.0, "full": 300.0}
MARKERS = {"fast": ["-m", "not slow"], "full": []}
XDIST = ["--dist", "loadfile", "--no-loadscope-reorder"]
"""The Makefile's scheduling (PYTEST): a test file per worker at a time, in the collection's order."""
UNSET = ("SIPE_DATA_ROOT", "PYTHONDONTWRITEBYTECODE")
"""The environment variables the Makefile's TEST_ENV removes."""
DURATIONS = REPO / "tests" / "durations.json"
DURATION_LINE = re.compile(r"^(\d+\.\d+)s (call|setup|teardown)\s+([^:\s]+)::")


def file_seconds(lines: list[str]) -> dict[str, float]:
    """{test file: seconds of its tests' setup, call and teardown} from pytest's --durations lines."""
    seconds: dict[str, float] = {}
    for line in lines:
        if m := DURATION_LINE.match(line.strip()):
            seconds[m.group(3)] = seconds.get(m.group(3), 0.0) + float(m.group(1))
    return {f: round(s, 1) for f, s in sorted(seconds.items(), key=lambda kv: -kv[1])}


def run(kind: str, workers: str) -> tuple[float, int, str, list[str]]:
    """Run the suite `kind` once; (wall seconds, exit code, pytest's summary line, every test's durations line)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", workers, *XDIST,
           "--durations=0", "--durations-min=0", *MARKERS[kind]]
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.monotonic() - start
    lines = proc.stdout.splitlines()
    summary = next((l.strip("= ") for l in reversed(lines) if re.search(r"\d+ (passed|failed)", l)), "no summary")
    timed = [l for l in lines if DURATION_LINE.match(l.strip())]
    return wall, proc.returncode, summary, timed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", default="auto", help="pytest-xdist workers (-n), as TEST_WORKERS of the Makefile")
    p.add_argument("--only", choices=sorted(TARGETS), help="time one of the two runs")
    p.add_argument("--durations", type=int, default=15, help="slowest tests to print per run")
    p.add_argument("--write-durations", action="store_true", help=f"write the full run's seconds per file to {DURATIONS}")
    a = p.parse_args(argv)
    print(f"{datetime.date.today()}  {cpu_model() or 'unknown CPU'}, {os.cpu_count()} cores, python {platform.python_version()}, "
          f"workers {a.workers}")
    failed = False
    for kind in [a.only] if a.only else ["fast", "full"]:
        load = os.getloadavg()[0]
        wall, code, summary, timed = run(kind, a.workers)
        failed |= code != 0
        verdict = "within" if wall <= TARGETS[kind] else "over"
        print(f"\n{kind}: {wall:.0f} s ({verdict} the {TARGETS[kind]:.0f} s target; load average before {load:.2f}); {summary}")
        for line in timed[: a.durations]:
            print(f"  {line}")
        per_file = file_seconds(timed)
        print(f"  test seconds {sum(per_file.values()):.0f} over {len(per_file)} files; longest: "
              + ", ".join(f"{f} {s:.0f}" for f, s in list(per_file.items())[:4]))
        if kind == "full" and a.write_durations:
            DURATIONS.write_text(json.dumps(per_file, indent=1) + "\n")
            print(f"  written: {DURATIONS.relative_to(REPO)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
