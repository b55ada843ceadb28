"""Shared fixtures: a tiny synthetic VOC-layout dataset and the real VOC 2012 subset (when present). Under
pytest-xdist (`make test` runs one worker per core) each worker and the processes it starts use one thread."""
from __future__ import annotations

import os
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"  # one thread per xdist worker (and its subprocesses): no oversubscribed cores

import pytest

from sipe.data.synthetic import make_synthetic_voc

SUBSET_ENV = "SIPE_SUBSET_ROOT"
DEFAULT_SUBSET = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "voc2012_subset"


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
