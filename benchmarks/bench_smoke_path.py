"""Wall time of the whole smoke path: every notebook through papermill (profile smoke), then the book build.

Usage: python benchmarks/bench_smoke_path.py [--data-root D] [--notebooks-dir notebooks] [--keep DIR] [--device cpu]

Runs in a temporary copy of the book's sources with a fresh work dir (nothing cached), so it measures
what CI and `make smoke` pay. Prints the time of each notebook (from the runner's provenance.json), the
runner's own overhead (kernel start-ups, papermill), the book build and the total. Target: <= 5 min on
a 2-core CPU. Data: --data-root, else $SIPE_DATA_ROOT, else ../shared/data/voc2012_subset.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(cmd: list[str]) -> float:
    """Run `cmd` (output shown), exit on failure; return its wall time in seconds."""
    start = time.perf_counter()
    proc = subprocess.run(cmd)
    if proc.returncode != 0:
        sys.exit(f"failed (exit {proc.returncode}): {' '.join(cmd)}")
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=os.environ.get("SIPE_DATA_ROOT")
                        or str(REPO.parent / "shared" / "data" / "voc2012_subset"))
    parser.add_argument("--keep", default=None, help="build here instead of a temporary folder (kept)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--notebooks-dir", default=str(REPO / "notebooks"))
    args = parser.parse_args()

    from sipe.reproduce import copy_book_sources

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.keep or tmp).resolve()
        root = copy_book_sources(base / "src")
        runner = timed([sys.executable, "-m", "sipe.reproduce", "--profile", "smoke", "--data-root", args.data_root,
                        "--work-dir", str(base / "work"), "--out", str(root / "book" / "executed"),
                        "--notebooks-dir", args.notebooks_dir, "--device", args.device])
        book = timed([str(Path(sys.executable).with_name("jupyter-book")), "build", "--quiet", str(root)])
        entries = json.loads((root / "book" / "executed" / "provenance.json").read_text())["notebooks"]

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nsmoke path on {os.cpu_count()} CPU(s), {platform.python_version()}, load average {load:.2f}")
    print(f"{'step':<34}{'seconds':>10}")
    for e in entries:
        print(f"  {e['name']:<32}{e['seconds']:>10.1f}")
    notebooks = sum(e["seconds"] for e in entries)
    print(f"  {'runner start-up, claims page':<32}{runner - notebooks:>10.1f}")
    print(f"{'runner total':<34}{runner:>10.1f}")
    print(f"{'jupyter-book build':<34}{book:>10.1f}")
    total = runner + book
    print(f"{'total':<34}{total:>10.1f}   ({'within' if total <= 300 else 'OVER'} the 5 min target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
