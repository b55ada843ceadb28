"""Shared fixtures: a tiny synthetic VOC-layout dataset and the real VOC 2012 subset (when present); `copy_results`
(a results folder of the golden units); the test files ordered longest first. Under pytest-xdist (`make test` runs
one worker per core) each worker and the processes it starts use one thread."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"  # one thread per xdist worker (and its subprocesses): no oversubscribed cores

import pytest

from sipe.data.synthetic import make_synthetic_voc
from sipe.study.records import unit_paths

SUBSET_ENV = "SIPE_SUBSET_ROOT"
DEFAULT_SUBSET = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "voc2012_subset"
GOLDEN = Path(__file__).parent / "data" / "golden_stages"
REV = "1" * 40


def copy_results(to: Path, names: list[str], revision: str = REV) -> Path:
    """A results folder holding the golden files of `names`, their records stamped `revision`."""
    for name in names:
        for kind, path in unit_paths(GOLDEN, name).items():
            target = unit_paths(to, name)[kind]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        record = json.loads(unit_paths(to, name)["json"].read_text())
        unit_paths(to, name)["json"].write_text(json.dumps({**record, "git_revision": revision}))
        log = GOLDEN / "logs" / f"{name}.csv"
        if log.exists():
            (to / "logs").mkdir(exist_ok=True)
            shutil.copyfile(log, to / "logs" / log.name)
    return to


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 synthetic 96x128 images (splits train 4, val 4, train_aug 8 = all but val; selection split train_aug-train-val 4); shared, so do not modify it."""
    return make_synthetic_voc(tmp_path_factory.mktemp("synthetic_voc"), n_images=12, size=(96, 128), seed=0)


@pytest.fixture(scope="session")
def real_root() -> Path:
    """The real VOC 2012 subset ($SIPE_SUBSET_ROOT, else ../shared/data/voc2012_subset); skips when absent."""
    root = Path(os.environ.get(SUBSET_ENV) or DEFAULT_SUBSET).expanduser()
    if not (root / "JPEGImages").is_dir():
        pytest.skip(f"real VOC subset not found at {root}: set {SUBSET_ENV} to its folder to run this test")
    return root


DURATIONS = Path(__file__).with_name("durations.json")
"""{test file: seconds its tests took in the last `benchmarks/bench_tests.py --write-durations` run}."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order the test files longest first (their measured seconds in `DURATIONS`; unmeasured files keep their order,
    after the measured ones), so that pytest-xdist, handing out one file at a time in this order
    (`--dist loadfile --no-loadscope-reorder`), starts the long files first and its workers end together."""
    seconds = json.loads(DURATIONS.read_text()) if DURATIONS.is_file() else {}
    items.sort(key=lambda item: -seconds.get(item.nodeid.split("::")[0], 0.0))
