"""Every published record's configuration identity is what the code of today computes for its unit.

The records under `results/subset/runs/` are reused and published only while `sipe.study.plan.has_results`
finds their `config_hash` equal to the unit's identity; a change of settings code (a section added, a field
renamed or moved) that moved it would silently orphan every published number. The data fingerprints are
not checked here (they need the data), only the settings' hash of each kind of unit.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from sipe.data import voc
from sipe.infra.config import get_profile
from sipe.study import plan
from sipe.study.pipeline import Unit

RUNS = Path(__file__).resolve().parents[1] / "results" / "subset" / "runs"
RECORDS = sorted(RUNS.glob("*.json"))


def test_records_of_every_kind_are_checked() -> None:
    kinds = {plan.kind_of(Unit(json.loads(p.read_text())["variant"], 0)).name for p in RECORDS}
    assert {"classification", "sccam", "segmentation"} <= kinds


@pytest.mark.parametrize("record", RECORDS, ids=[p.stem for p in RECORDS])
def test_published_config_hash_is_recomputed(record: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stored = json.loads(record.read_text())
    monkeypatch.setattr(voc, "fingerprint", lambda *args, **kwargs: "no data")
    cfg = get_profile(stored["profile"], **{"data.root": str(record.parent)})
    identity = plan.unit_identity(cfg, Unit(stored["variant"], stored["seed"]))
    assert identity["config_hash"] == stored["config_hash"]
