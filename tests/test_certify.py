"""Certifying a change of stage code: two computations compared bit for bit, records re-stamped only then."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from sipe.__main__ import main as cli_main
from sipe.infra import provenance
from sipe.study import certify, loading
from sipe.study.pipeline import Unit
from sipe.study.records import unit_paths

from conftest import GOLDEN, REV, copy_results


def test_identical_units_certify_and_restamped_records_are_current(tmp_path: Path, monkeypatch) -> None:
    names = ["sipe-s0", "cam-s0"]
    after = copy_results(tmp_path / "after", names)
    comparison = certify.compare(GOLDEN, after, names)
    assert comparison["identical"].all() and (comparison["log_steps"] == 2).all()
    cert = certify.certificate(comparison, after)
    assert cert["revision"] == REV and cert["units"] == names and cert["machine"]["cpu"] == provenance.cpu_model()

    published = copy_results(tmp_path / "published", ["sipe-s0"], revision="2" * 40)
    record = json.loads(unit_paths(published, "sipe-s0")["json"].read_text())
    old_code = record["code"]
    monkeypatch.setattr(provenance, "code_changes", lambda rev, stages: ["sipe/stages/maps.py"])
    with pytest.raises(certify.CertificationError, match="sipe/stages/maps.py"):
        certify.restamp(published, ["sipe-s0"], cert)
    monkeypatch.setattr(provenance, "code_changes", lambda rev, stages: [] if rev == REV else ["sipe/stages/maps.py"])
    changed, _ = loading.code_changes(record, Unit("sipe", 0), provenance.stage_code_hashes(), ())
    assert sorted(changed) == ["eval", "maps"]
    certify.restamp(published, ["sipe-s0"], cert)
    stamped = json.loads(unit_paths(published, "sipe-s0")["json"].read_text())
    assert stamped["code"] == provenance.stage_code_hashes() and stamped["certified"]["previous_code"] == old_code
    assert stamped["certified"]["revision"] == REV and stamped["git_revision"] == "2" * 40
    assert loading.code_revision(stamped) == REV
    assert loading.code_changes(stamped, Unit("sipe", 0), provenance.stage_code_hashes(), ()) == ([], [])
    assert "certified_before" not in stamped

    later = {**cert, "revision": "3" * 40}
    monkeypatch.setattr(provenance, "code_changes", lambda rev, stages: [])
    certify.restamp(published, ["sipe-s0"], later)
    again = json.loads(unit_paths(published, "sipe-s0")["json"].read_text())
    assert again["certified"]["revision"] == "3" * 40 and again["certified"]["previous_revision"] == REV
    assert again["certified_before"] == [stamped["certified"]], "an earlier certificate is kept, not replaced"


def test_a_difference_or_an_uncommitted_revision_certifies_nothing(tmp_path: Path) -> None:
    after = copy_results(tmp_path / "after", ["cam-s0"])
    rows = pd.read_csv(unit_paths(after, "cam-s0")["csv"])
    rows.loc[rows["quantity"] == "miou", "value"] += 1e-12
    rows.to_csv(unit_paths(after, "cam-s0")["csv"], index=False)
    comparison = certify.compare(GOLDEN, after, ["cam-s0"])
    assert not comparison["rows"].all()
    with pytest.raises(certify.CertificationError, match="units that differ: cam-s0"):
        certify.certificate(comparison, after)
    dirty = copy_results(tmp_path / "dirty", ["cam-s0"], revision=REV + "-dirty")
    with pytest.raises(certify.CertificationError, match="one committed revision"):
        certify.certificate(certify.compare(GOLDEN, dirty, ["cam-s0"]), dirty)
    with pytest.raises(certify.CertificationError, match="results files missing"):
        certify.compare(GOLDEN, tmp_path / "nothing", ["cam-s0"])


def test_certify_command_prints_the_comparison_and_fails_on_a_difference(tmp_path: Path, capsys) -> None:
    after = copy_results(tmp_path / "after", ["sipe-s0"])
    assert cli_main(["certify", "--before", str(GOLDEN), "--after", str(after), "--units", "sipe-s0"]) == 0
    assert "sipe-s0" in capsys.readouterr().out
    log = after / "logs" / "sipe-s0.csv"
    pd.read_csv(log).assign(loss=lambda t: t["loss"] * 2).to_csv(log, index=False)
    assert cli_main(["certify", "--before", str(GOLDEN), "--after", str(after), "--units", "sipe-s0"]) == 1
    assert cli_main(["certify", "--before", str(GOLDEN), "--units", "sipe-s0"]) == 2
    assert "certify needs --before, --after and --units" in capsys.readouterr().err


def test_drift_counts_the_steps_two_computations_share_and_how_far_their_readings_lie(tmp_path: Path) -> None:
    names = ["sipe-s0"]
    same = certify.drift(GOLDEN, copy_results(tmp_path / "same", names), "sipe-s0")
    assert same["same_steps"] == same["log_steps"] == 2 and same["max_abs"] == 0.0 and same["same_code"]

    other = copy_results(tmp_path / "other", names)
    log = pd.read_csv(other / "logs" / "sipe-s0.csv")
    log.loc[1, "loss"] += 1e-7
    log.loc[:, "seconds"] *= 3
    log.to_csv(other / "logs" / "sipe-s0.csv", index=False)
    rows = pd.read_csv(unit_paths(other, "sipe-s0")["csv"])
    miou = rows.index[(rows["quantity"] == "miou") & (rows["split"] == "train")]
    rows.loc[miou, "value"] += 0.1
    rows.loc[miou[0], "value"] -= 0.4
    rows.loc[(rows["quantity"] == "miou") & (rows["split"] != "train"), "value"] += 5.0
    rows.to_csv(unit_paths(other, "sipe-s0")["csv"], index=False)
    record = json.loads(unit_paths(other, "sipe-s0")["json"].read_text())
    record["machine"] = {"cpu": "Other CPU", "torch_cpu_capability": "AVX2", "cuda": ""}
    unit_paths(other, "sipe-s0")["json"].write_text(json.dumps(record))

    d = certify.drift(other, GOLDEN, "sipe-s0")
    assert d["same_steps"] == d["same_loss_steps"] == 1 and d["log_steps"] == 2, \
        "the second step's loss differs; timings are not compared"
    assert d["readings"] == len(miou), "only the evaluated split's readings"
    assert d["max_abs"] == pytest.approx(0.3) and d["median_abs"] == pytest.approx(0.1)
    assert d["machine_before"] == "Other CPU, AVX2" and d["same_settings"] and d["same_code"]
    log.loc[0, "loss_gsc"] += 1e-9
    log.to_csv(other / "logs" / "sipe-s0.csv", index=False)
    d = certify.drift(other, GOLDEN, "sipe-s0")
    assert d["same_steps"] == 0 and d["same_loss_steps"] == 1, "a smaller column can part before the total loss"
    with pytest.raises(certify.CertificationError, match="results files missing"):
        certify.drift(GOLDEN, tmp_path / "nothing", "sipe-s0")
