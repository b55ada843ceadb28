"""sipe.study.rescore on hand-made results files: the void-ignored rows computed again from the confusions, every
other line kept byte for byte, the record saying what was rescored."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sipe.infra import provenance
from sipe.stages.evaluation import default_class_names, miou_result
from sipe.study import rescore
from sipe.study.records import RESULT_COLUMNS, unit_paths

NAMES = default_class_names(21)
BG, CAT, DOG = 0, 8, 12


def crf_confusions() -> np.ndarray:
    """(3 images, 2, 21, 21): every dog pixel left void by denseCRF (counted as background in [:, 0])."""
    c = np.zeros((3, 2, 21, 21), np.int32)
    c[0, :, BG, BG], c[0, 0, CAT, BG], c[0, :, CAT, CAT] = 40, 5, 15
    c[1, :, BG, BG], c[1, 0, DOG, BG] = 10, 10
    c[2, :, CAT, CAT], c[2, :, BG, CAT] = 6, 2
    return c


def _common(**kw):
    return {"threshold": None, "variant": "sipe", "seed": 0, "split": "train", "n_images": 3, **kw}


def write_unit(results_dir: Path, name: str, rows: list[dict], arrays: dict[str, np.ndarray], profile: str = "smoke") -> dict:
    paths = unit_paths(results_dir, name)
    for p in paths.values():
        p.parent.mkdir(parents=True, exist_ok=True)
    paths["csv"].write_text(pd.DataFrame(rows, columns=list(RESULT_COLUMNS)).to_csv(index=False))
    np.savez_compressed(paths["npz"], **arrays)
    record = {"unit": name, "profile": profile, "code": {"eval": "old", "train": "t0"}, "git_revision": "r0",
              "config": {"eval": {"present_classes_only": True}}}
    paths["json"].write_text(json.dumps(record, indent=2, sort_keys=True))
    return paths


def classification_rows(conf: np.ndarray) -> list[dict]:
    """The rows the pipeline wrote with the old definition (each reading's own classes), between other rows."""
    total = conf.astype(np.int64).sum(0)
    rows = [{**_common(reading="is_cam", background="estimated"), "quantity": "miou", "class": "", "value": 31.25}]
    for background, c in (("crf_void_bg", total[0]), ("crf_void_ignored", total[1])):
        r = miou_result(c, NAMES, "gt", "train", 3)
        rows.append({**_common(reading="is_cam", background=background), "quantity": "miou", "class": "", "value": r.miou})
        rows += [{**_common(reading="is_cam", background=background), "quantity": "iou", "class": n, "value": float(v)}
                 for n, v in r.per_class["iou"].items()]
    rows.append({**_common(reading="is_cam", background="crf"), "quantity": "void_fraction", "class": "", "value": 0.125})
    rows.append({**_common(reading="", background="", split="train_aug", n_images=None), "quantity": "train_loss_last10pct",
                 "class": "", "value": 0.1234567890123})
    return rows


def test_rescore_recomputes_the_void_ignored_rows_and_keeps_every_other_line(tmp_path: Path):
    conf = crf_confusions()
    paths = write_unit(tmp_path, "sipe-s0", classification_rows(conf), {"train/is_cam/crf": conf,
                                                                     "train/ids": np.array(["a", "b", "c"])})
    before = paths["csv"].read_text()
    assert pd.read_csv(paths["csv"]).query("background == 'crf_void_ignored' and quantity == 'miou'")["value"].item() \
        == pytest.approx((100 * 50 / 52 + 100 * 21 / 23) / 2), "the old definition dropped the dog"

    changes = rescore.rescore_unit(tmp_path, "sipe-s0", revision="abc123")

    after = paths["csv"].read_text()
    rows = pd.read_csv(paths["csv"])
    ignored = rows[rows["background"] == "crf_void_ignored"]
    miou = ignored.loc[ignored["quantity"] == "miou", "value"].item()
    assert miou == pytest.approx((100 * 50 / 52 + 100 * 21 / 23 + 0.0) / 3)
    iou = ignored[ignored["quantity"] == "iou"].set_index("class")["value"]
    assert iou.to_dict() == pytest.approx({"background": 100 * 50 / 52, "cat": 100 * 21 / 23, "dog": 0.0})
    kept = lambda text: [line for line in text.splitlines() if ",crf_void_ignored," not in line]
    assert kept(after) == kept(before), "every other line byte for byte"
    assert changes == [{"key": "train/is_cam/crf", "rows": {"reading": "is_cam", "split": "train",
                                                          "background": "crf_void_ignored"},
                        "miou_before": pytest.approx((100 * 50 / 52 + 100 * 21 / 23) / 2), "miou_after": miou,
                        "classes_after": 3, "classes_before": 2, "rows_changed": True}]
    record = json.loads(paths["json"].read_text())
    assert record["code"] == {"eval": provenance.stage_code_hashes()["eval"], "train": "t0"}
    assert record["rescored"]["revision"] == "abc123" and record["rescored"]["previous_code"]["eval"] == "old"
    assert record["rescored"]["readings"][0]["miou_after"] == changes[0]["miou_after"]
    assert "confusions are unchanged" in record["rescored"]["confusions"]

    again = rescore.rescore_unit(tmp_path, "sipe-s0", revision="def456")
    assert not again[0]["rows_changed"] and paths["csv"].read_text() == after
    assert json.loads(paths["json"].read_text())["rescored"]["revision"] == "abc123", "nothing left to rescore"


def test_a_unit_whose_readings_do_not_change_keeps_its_rows_byte_for_byte(tmp_path: Path):
    conf = crf_confusions()
    conf[1, 1, DOG, DOG] = 10                        # the dog scored: both definitions agree
    conf[1, 0, DOG, BG], conf[1, 0, DOG, DOG] = 0, 10
    paths = write_unit(tmp_path, "cam-s0", classification_rows(conf), {"train/is_cam/crf": conf})
    before = paths["csv"].read_text()
    assert not rescore.rescore_unit(tmp_path, "cam-s0", revision="abc123")[0]["rows_changed"]
    assert paths["csv"].read_text() == before
    assert json.loads(paths["json"].read_text())["rescored"]["readings"][0]["rows_changed"] is False


def test_rescore_refuses_confusions_that_do_not_reproduce_the_published_rows(tmp_path: Path, capsys):
    conf = crf_confusions()
    rows = classification_rows(conf)
    next(r for r in rows if r["background"] == "crf_void_bg" and r["quantity"] == "miou")["value"] += 1e-9
    paths = write_unit(tmp_path, "sipe-s0", rows, {"train/is_cam/crf": conf})
    before = paths["csv"].read_text(), paths["json"].read_text()
    with pytest.raises(rescore.RescoreError, match="do not reproduce the published row"):
        rescore.rescore_unit(tmp_path, "sipe-s0", revision="abc123")
    with pytest.raises(rescore.RescoreError, match="committed code"):
        rescore.rescore_unit(tmp_path, "sipe-s0", revision="abc123-dirty")
    assert (paths["csv"].read_text(), paths["json"].read_text()) == before
    assert rescore.main(["--results-dir", str(tmp_path), "--units", "nope-s0"]) == 2
    assert capsys.readouterr().err.startswith("error: nope-s0: results files missing")


def test_rescore_the_ir_labels_of_a_segmentation_unit(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(rescore.prov, "git_revision", lambda: "abc123")
    conf = crf_confusions()
    maps, ir = conf[:, 0], conf[:, 1]
    rows = []
    for reading, c, background in (("pseudo/maps", maps, "estimated"), ("pseudo/ir_labels", ir, "void_ignored")):
        rows.append({**_common(variant="cam", reading=reading, background=background), "quantity": "miou", "class": "",
                     "value": miou_result(c.astype(np.int64).sum(0), NAMES, "gt").miou})
    rows.append({**_common(variant="cam", reading="pseudo/ir_labels", background="void_ignored"), "quantity": "void_pct",
                 "class": "", "value": 12.5})
    paths = write_unit(tmp_path, "segmentation-s0", rows, {"train/cam/pseudo/maps": maps, "train/cam/pseudo/ir_labels": ir})
    assert rescore.rescorable_units(tmp_path) == ["segmentation-s0"]
    rescore.main(["--results-dir", str(tmp_path)])
    out = pd.read_csv(paths["csv"]).set_index(["reading", "quantity"])["value"]
    assert out[("pseudo/ir_labels", "miou")] == pytest.approx((100 * 50 / 52 + 100 * 21 / 23 + 0.0) / 3)
    assert out[("pseudo/ir_labels", "void_pct")] == 12.5 and out[("pseudo/maps", "miou")] == rows[0]["value"]


def test_a_unit_without_a_void_ignored_reading_is_checked_then_restamped(tmp_path: Path, monkeypatch):
    est = crf_confusions()[:, :1]
    value = miou_result(est.astype(np.int64).sum(0)[0], NAMES, "gt").miou
    rows = [{**_common(reading="is_cam", background="estimated"), "quantity": "miou", "class": "", "value": value}]
    paths = write_unit(tmp_path, "semantic_bpm-s0", rows, {"train/is_cam/estimated": est})
    monkeypatch.setattr(provenance, "git_revision", lambda: "c" * 40)
    before = paths["csv"].read_bytes()
    assert rescore.rescore_unit(tmp_path, "semantic_bpm-s0") == [{"key": "", "verified_rows": 1}]
    record = json.loads(paths["json"].read_text())
    assert paths["csv"].read_bytes() == before and record["code"]["eval"] == provenance.stage_code_hashes()["eval"]
    assert record["code_revisions"]["eval"] == "c" * 40 and record["rescored"]["previous_code"]["eval"] == "old"
    pd.DataFrame([{**rows[0], "value": value + 1e-9}], columns=list(RESULT_COLUMNS)).to_csv(paths["csv"], index=False)
    with pytest.raises(rescore.RescoreError, match="train/is_cam/estimated gives"):
        rescore.rescore_unit(tmp_path, "semantic_bpm-s0")
