"""How long the test suite takes: `make test-fast` (pytest -m "not slow") and `make test` (every test), each as the
Makefile runs it (pytest-xdist, one worker per core, one test file per worker at a time), timed from start to exit.

Usage: python benchmarks/bench_tests.py [--workers auto] [--only fast|full] [--durations 15]

Printed: the machine (CPU model, cores, the load average before each run: take the figures on an idle machine),
per run its wall seconds against its target (fast: 90 s, full: 300 s on a 2-core machine), pytest's summary line
and its slowest tests. Exit status 1 if a run's tests fail.
"""
from __future__ import annotations

import argparse
import datetime
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


def run(kind: str, workers: str, durations: int) -> tuple[float, int, str, list[str]]:
    """Run the suite `kind` once; (wall seconds, exit code, pytest's summary line, its slowest tests)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", workers, "--dist", "loadfile",
           f"--durations={durations}", *MARKERS[kind]]
    env = {k: v for k, v in os.environ.items() if k != "SIPE_DATA_ROOT"}
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.monotonic() - start
    lines = proc.stdout.splitlines()
    summary = next((l.strip("= ") for l in reversed(lines) if re.search(r"\d+ (passed|failed)", l)), "no summary")
    slowest = [l for l in lines if re.match(r"^\d+\.\d+s (call|setup|teardown)", l)]
    return wall, proc.returncode, summary, slowest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", default="auto", help="pytest-xdist workers (-n), as TEST_WORKERS of the Makefile")
    p.add_argument("--only", choices=sorted(TARGETS), help="time one of the two runs")
    p.add_argument("--durations", type=int, default=15, help="slowest tests to print per run")
    a = p.parse_args(argv)
    print(f"{datetime.date.today()}  {cpu_model() or 'unknown CPU'}, {os.cpu_count()} cores, python {platform.python_version()}, "
          f"workers {a.workers}")
    failed = False
    for kind in [a.only] if a.only else ["fast", "full"]:
        load = os.getloadavg()[0]
        wall, code, summary, slowest = run(kind, a.workers, a.durations)
        failed |= code != 0
        verdict = "within" if wall <= TARGETS[kind] else "over"
        print(f"\n{kind}: {wall:.0f} s ({verdict} the {TARGETS[kind]:.0f} s target; load average before {load:.2f}); {summary}")
        for line in slowest:
            print(f"  {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
