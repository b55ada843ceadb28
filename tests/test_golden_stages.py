"""Every kind of unit computes what it computed before the package was regrouped.

`tests/data/golden_stages/` holds the results files of four smoke units (SIPE, the CAM baseline, SC-CAM and
segmentation: training, maps, evaluations, SC-CAM's rounds, IR labels, IRN, the random walk and the
segmentation net) computed at the revision and on the machine named in its `golden.json`, before the
regrouping, by the commands it names. The test computes them again with the current code. On the same kind of
machine every training log, confusion and result row must be identical; on another CPU the floating-point
noise of its kernels is allowed for (result rows within 0.5 points). A change that moves a number fails here;
a deliberate change of the method regenerates the folder and says why in its commit.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sipe.data.synthetic import make_synthetic_voc
from sipe.infra import provenance
from sipe.infra.config import get_profile
from sipe.study import plan
from sipe.study.certify import TIMING_COLUMNS, compare_unit
from sipe.study.pipeline import Unit
from sipe.study.records import unit_paths

GOLDEN = Path(__file__).parent / "data" / "golden_stages"
META = json.loads((GOLDEN / "golden.json").read_text())


@pytest.fixture(scope="module")
def recomputed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("golden_stages")
    root = make_synthetic_voc(tmp / "data", n_images=16, size=(96, 128), seed=0)
    cfg = get_profile("smoke", **{"data.root": str(root), "device": "cpu"})
    units = [Unit(*name.rsplit("-s", 1)[:1], int(name.rsplit("-s", 1)[1])) for name in META["units"]]
    plan.run_plan(cfg, tmp / "work", tmp / "results", units, progress=False)
    return tmp / "results"


def same_machine() -> bool:
    here = provenance.machine()
    return all(here[k] == META["machine"][k] for k in ("cpu", "torch_cpu_capability", "torch_threads"))


@pytest.mark.slow
@pytest.mark.parametrize("name", META["units"])
def test_unit_recomputes_the_golden_results(recomputed: Path, name: str) -> None:
    if same_machine():
        result = compare_unit(GOLDEN, recomputed, name)
        assert result["identical"], result
        return
    old = pd.read_csv(unit_paths(GOLDEN, name)["csv"])
    new = pd.read_csv(unit_paths(recomputed, name)["csv"])
    assert list(new.columns) == list(old.columns) and len(new) == len(old)
    np.testing.assert_allclose(new["value"].to_numpy(float), old["value"].to_numpy(float), atol=0.5, equal_nan=True)


def test_the_comparison_sees_a_changed_confusion_and_log(tmp_path: Path) -> None:
    """compare_unit on the golden folder against a copy with one pixel moved, and one loss changed."""
    name = "cam-s0"
    copy = tmp_path / "copy"
    for kind, path in unit_paths(GOLDEN, name).items():
        target = unit_paths(copy, name)[kind]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    (copy / "logs").mkdir()
    log = pd.read_csv(GOLDEN / "logs" / f"{name}.csv")
    log.to_csv(copy / "logs" / f"{name}.csv", index=False)
    (copy / "runs" / f"{name}.json").write_text(json.dumps({"git_revision": "x"}))
    assert compare_unit(GOLDEN, copy, name)["identical"]
    timed = log.assign(**{c: log[c] * 2 for c in TIMING_COLUMNS if c in log})
    timed.to_csv(copy / "logs" / f"{name}.csv", index=False)
    assert compare_unit(GOLDEN, copy, name)["identical"], "timings are not compared"
    log.assign(loss=log["loss"] + 1e-9).to_csv(copy / "logs" / f"{name}.csv", index=False)
    assert not compare_unit(GOLDEN, copy, name)["training_log"]
    log.to_csv(copy / "logs" / f"{name}.csv", index=False)
    with np.load(unit_paths(GOLDEN, name)["npz"]) as data:
        arrays = {k: data[k] for k in data.files}
    key = next(k for k, v in arrays.items() if v.dtype.kind == "i" and v.sum() > 0)
    arrays[key] = arrays[key].copy()
    arrays[key].flat[int(np.flatnonzero(arrays[key])[0])] -= 1
    np.savez_compressed(unit_paths(copy, name)["npz"], **arrays)
    result = compare_unit(GOLDEN, copy, name)
    assert not result["confusions"] and not result["identical"]
