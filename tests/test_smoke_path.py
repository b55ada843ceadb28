"""The smoke path end to end, as CI runs it: every notebook through the runner (papermill) on a synthetic dataset,
each computing the units it shows (training, maps, evaluations, SC-CAM, segmentation) with the smoke profile,
then the claims and the book's numbers written; what chapters 10 and 12 say when COCO or the ladder's rungs are
not there. The book built from the committed outputs is tested in
tests/test_book.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from sipe.data.synthetic import make_synthetic_voc
from sipe.reproduce import NOTEBOOKS
from sipe.study import ladder
from sipe.study.claims import CLAIMS
from sipe.study.ladderresults import NOT_COMPUTED

pytestmark = pytest.mark.slow  # every notebook computes its smoke units (about two minutes)

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"


def test_every_notebook_computes_and_runs_on_the_smoke_profile(tmp_path: Path) -> None:
    root = make_synthetic_voc(tmp_path / "synthetic_voc", n_images=16, size=(96, 128), seed=0)
    work, out = tmp_path / "work", tmp_path / "executed"
    env = {k: v for k, v in os.environ.items() if k not in ("SIPE_WORK_DIR", "SIPE_RESULTS_DIR", "SIPE_DATA_ROOT")}
    run = subprocess.run(
        [sys.executable, "-m", "sipe.reproduce", "--profile", "smoke", "--data-root", str(root), "--work-dir", str(work),
         "--out", str(out), "--notebooks-dir", str(NOTEBOOKS_DIR), "--device", "cpu"],
        env=env, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, f"runner failed:\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}"
    assert f"{len(NOTEBOOKS)}/{len(NOTEBOOKS)} notebook(s) finished" in run.stdout
    shown = {}
    for nb in NOTEBOOKS:
        executed = nbformat.read(out / f"{nb.name}.ipynb", as_version=4)
        errors = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])
                  if o.get("output_type") == "error"]
        assert not errors, f"{nb.name}: {errors[0].get('ename')}"
        assert executed.metadata.get("papermill", {}).get("parameters", {}).get("profile") == "smoke", nb.name
        shown[nb.name] = (outputs_text(executed), images(executed))

    text, pngs = shown["10_table2_table3_segmentation"]
    assert "MS COCO 2014 is not available" in text and "train2014.zip" in text, "Table 3 must say what to fetch"
    assert "not computed yet" not in text and "68.8" in text and pngs >= 1
    text, pngs = shown["12_ladder"]
    assert f"No rung is computed yet ({len(ladder.RUNGS)} declared)" in text
    assert text.count(NOT_COMPUTED) >= len(ladder.RUNGS) and pngs == 2
    assert not (work / "results" / "ladder").exists(), "the ladder chapter computed a rung"

    results = work / "results"
    claims = pd.read_csv(results / "claims.csv")
    assert set(claims["claim"]) == {c.claim for c in CLAIMS}
    computed = claims[claims["verdict"].isin(["holds", "fails", "mixed"])]
    assert len(computed) >= len(CLAIMS) // 2, computed["claim"].tolist()
    assert computed["ours_mean"].notna().all()
    for table in ("table1", "table4", "table5", "fig8", "table2"):
        rows = pd.read_csv(results / f"{table}.csv")
        assert len(rows) and rows["value"].notna().any(), table
    runs = sorted((results / "runs").glob("*.json"))
    kinds = {json.loads(p.read_text())["variant"] for p in runs}
    assert {"sipe", "cam", "sccam", "segmentation"} <= kinds, kinds
    assert (results / "pseudo_labels.csv").exists()


def outputs_text(nb) -> str:
    """Every code cell's output as text (streams, plain text and Markdown)."""
    return "\n".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                     + str(o.get("data", {}).get("text/markdown", ""))
                     for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def images(nb) -> int:
    """How many outputs of the notebook are PNG images."""
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
