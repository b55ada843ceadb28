"""The book re-executes from the committed outputs alone: `python -m sipe.reproduce --no-compute` on a copy of
the repository's tracked files (no work folder) finishes every chapter and writes the committed tables again."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sipe.infra.provenance import REPO_ROOT
from sipe.reproduce import NOTEBOOKS
from sipe.study.figinputs import FIGURES, record_path

pytestmark = pytest.mark.slow  # re-executes every chapter (minutes)

PROFILE = "subset"
CLEARED_ENV = ("SIPE_WORK_DIR", "SIPE_RESULTS_DIR", "SIPE_DATA_ROOT")


def tracked_copy(dest: Path) -> Path:
    """The repository's tracked files (`git ls-files`) copied to `dest`: a fresh clone without .git."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, text=True,
                           check=True).stdout.split("\0")
    for name in filter(None, files):
        src = REPO_ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def test_no_compute_on_a_fresh_copy_executes_every_chapter(real_root: Path, tmp_path: Path) -> None:
    results = REPO_ROOT / "results" / PROFILE
    missing = [name for name in FIGURES if not record_path(results, name).is_file()]
    if missing:
        pytest.skip(f"no committed figure inputs {missing} in {results}: write them with "
                    f"`python -m sipe figure-inputs --profile {PROFILE}`")
    clone = tracked_copy(tmp_path / "clone")
    env = {k: v for k, v in os.environ.items() if k not in CLEARED_ENV}
    env["PYTHONPATH"] = str(clone)
    run = subprocess.run([sys.executable, "-m", "sipe.reproduce", "--profile", PROFILE, "--no-compute",
                          "--data-root", str(real_root), "--device", "cpu"],
                         cwd=clone, env=env, capture_output=True, text=True, timeout=3600)
    assert run.returncode == 0, f"runner failed:\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}"
    assert f"{len(NOTEBOOKS)}/{len(NOTEBOOKS)} notebook(s) finished" in run.stdout
    assert not (clone / "work").exists(), "the chapters made a work folder: something was computed"
    for nb in NOTEBOOKS:
        assert (clone / "book" / "executed" / f"{nb.name}.ipynb").is_file(), nb.name
        assert not (clone / "book" / "executed" / f"{nb.name}.failed.ipynb").exists(), nb.name
    for table in sorted(results.glob("*.csv")):
        assert (clone / "results" / PROFILE / table.name).read_text() == table.read_text(), \
            f"{table.name} changed when re-executed from the committed outputs"
