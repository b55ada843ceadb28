"""SC-CAM as a unit of the study (sipe.study.units): planned in every profile, round 0 = the CAM unit, its maps read
exactly as the CAM baseline's, its rows in Table 1 and its claims; existing units' config hashes unchanged."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sipe.study import claims, loading, notes, pipeline, plan, tables, units
from sipe.__main__ import main as cli_main
from sipe.infra import provenance
from sipe.infra.config import PROFILES, SCCAM, get_profile
from sipe.stages.maps import checkpoint_digest
from sipe.study.paper import paper_value
from sipe.study.pipeline import Unit
from sipe.baselines.sccam import FewImagesWarning

REPO = Path(__file__).resolve().parents[1]
SUBSET_CAM_S15_CONFIG_HASH = "f6dab139d727"
"""The subset profile's cam-s15 eval-stage hash before SC-CAM joined the study (SIPE's is in results/subset)."""


@pytest.mark.parametrize("profile", PROFILES)
def test_sccam_is_planned_after_the_first_seeds_with_every_seed(profile: str) -> None:
    cfg = get_profile(profile)
    names = [u.name for u in pipeline.plan(cfg)]
    first, *others = cfg.study.seeds
    old = ["sipe", "cam", "semantic_nobpm", "semantic_bpm", "hierarchical_nobpm", "sipe_bg05"]
    assert names[: len(old) + 1] == [f"{v}-s{first}" for v in old] + [f"sccam-s{first}"]
    assert names[len(old) + 1:] == [f"{v}-s{s}" for s in others for v in ("sipe", "cam", "sccam")]
    assert cfg.sccam.rounds == 3 and cfg.sccam.sub_weight == 5.0 and cfg.sccam.k == (2 if profile == "smoke" else 10)
    assert SCCAM in cfg.study.crf_variants


def test_existing_units_config_hashes_are_unchanged() -> None:
    """The float32-maps study's records (published before maps moved to bfloat16) keep their keys."""
    cfg = get_profile("subset", **{"infer.precision": "float32"})
    published = json.loads((REPO / "results" / "subset-float32" / "runs" / "sipe-s15.json").read_text())["config_hash"]
    sipe, cam, sccam = (pipeline.unit_config(cfg, Unit(v, 15)) for v in ("sipe", "cam", SCCAM))
    assert sipe.stage_hash("eval") == published
    assert cam.stage_hash("eval") == SUBSET_CAM_S15_CONFIG_HASH == sccam.stage_hash("eval")
    other = cfg.override(**{"sccam.k": 5})
    assert other.stage_hash("eval") == cfg.stage_hash("eval")
    hashes = {units.sccam_config_hash(c.stage_hash("eval"), c) for c in (sccam, pipeline.unit_config(other, Unit(SCCAM, 15)))}
    assert len(hashes) == 2 and SUBSET_CAM_S15_CONFIG_HASH not in hashes


def smoke(root: Path, **extra):
    return get_profile("smoke", **{"data.root": str(root), "model.pretrained": False, "device": "cpu",
                                   "study.seeds": (0,), "infer.max_images": 2, "study.selection_images": 2, **extra})


@pytest.fixture(scope="module")
def study_dirs(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The smoke profile's cam-s0 and sccam-s0 units (2 sub-categories, 3 rounds) on the synthetic data."""
    work, out = tmp_path_factory.mktemp("work"), tmp_path_factory.mktemp("results")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FewImagesWarning)
        plan.run_plan(smoke(synthetic_root), work, out, [Unit("cam", 0), Unit(SCCAM, 0)], progress=False)
    return work, out


def test_sccam_unit_end_to_end(study_dirs, synthetic_root: Path) -> None:
    work, out = study_dirs
    cfg = smoke(synthetic_root)
    cam_runs = sorted(p.name for p in (work / "runs").glob("cam-*"))
    assert len(cam_runs) == 1, "round 0 must be the CAM unit's own run"
    cam_final = work / "runs" / cam_runs[0] / "final.pt"
    (unit_dir,) = (work / "runs").glob("sccam-s0-*")
    (run_dir,) = unit_dir.glob("sccam-*")
    assert [d.name for d in sorted(run_dir.glob("round*"))] == ["round1", "round2", "round3"]
    assert checkpoint_digest(unit_dir / "final.pt") == checkpoint_digest(run_dir / "final.pt")

    record = json.loads((out / "runs" / "sccam-s0.json").read_text())
    cam_record = json.loads((out / "runs" / "cam-s0.json").read_text())
    assert record["config_hash"] == units.unit_identity(cfg, Unit(SCCAM, 0))["config_hash"] != cam_record["config_hash"]
    assert record["sccam"] == cfg.sccam.to_dict() and record["sccam_run"] == run_dir.name
    assert record["checkpoint_digest"] == checkpoint_digest(run_dir / "final.pt")
    wall = record["wall_seconds"]
    assert set(wall) == {"train_round0", "train_round1", "train_round2", "train_round3",
                         "maps_eval", "maps_selection", "eval_eval", "eval_selection"}
    cam_wall = torch.load(cam_final, map_location="cpu", weights_only=True)["wall_seconds"]
    assert wall["train_round0"] == pytest.approx(cam_wall, abs=0.06)
    rounds = json.loads((run_dir / "round2" / "wall_seconds.json").read_text())
    assert set(rounds) == {"features", "clustering", "training"}
    assert wall["train_round2"] == pytest.approx(sum(rounds.values()), abs=0.06)

    rows, cam_rows = (pd.read_csv(out / "runs" / f"{u}.csv") for u in ("sccam-s0", "cam-s0"))
    def readings(frame: pd.DataFrame) -> set[tuple]:
        return set(frame[["quantity", "reading", "background", "threshold", "split"]].astype(str).itertuples(index=False))

    assert set(rows["variant"]) == {SCCAM}
    assert readings(rows) == readings(cam_rows), "SC-CAM's readings must be the CAM baseline's"
    assert {"crf_void_bg", "crf_void_ignored"} <= set(rows.loc[rows["reading"] == "cam_irn", "background"])
    with np.load(out / "confusions" / "sccam-s0.npz") as a, np.load(out / "confusions" / "cam-s0.npz") as b:
        assert set(a.files) == set(b.files)


def test_finished_sccam_unit_is_reused_and_its_settings_identify_it(study_dirs, synthetic_root: Path, monkeypatch) -> None:
    work, out = study_dirs
    cfg = smoke(synthetic_root)
    csv = out / "runs" / "sccam-s0.csv"
    mtime = csv.stat().st_mtime_ns
    monkeypatch.setattr(units, "train_sccam", lambda *a, **k: pytest.fail("trained again"))
    assert units.run_unit(cfg, work, Unit(SCCAM, 0), out, progress=False) == csv and csv.stat().st_mtime_ns == mtime
    args = ["stages", "--profile", "smoke", "--set", f"data.root={synthetic_root}", "--set", "model.pretrained=false",
            "--set", "study.seeds=0", "--set", "infer.max_images=2", "--set", "study.selection_images=2", "--device", "cpu", "--work-dir", str(work), "--results-dir", str(out),
            "--units", "sccam-s0", "--no-progress"]
    assert cli_main(args) == 0 and csv.stat().st_mtime_ns == mtime
    loaded = loading.load(cfg, out, [Unit("cam", 0), Unit(SCCAM, 0)])
    assert list(loaded.units) == ["cam-s0", "sccam-s0"] and not loaded.stale
    assert loading.load(cfg.override(**{"sccam.k": 3}), out, [Unit("cam", 0), Unit(SCCAM, 0)]).stale == ["sccam-s0"]


def test_a_change_to_sccams_own_code_is_named_beside_its_unit_only(study_dirs, synthetic_root: Path, monkeypatch) -> None:
    _, out = study_dirs
    cfg = smoke(synthetic_root)
    asked = []

    def source_code_changes(rev: str, patterns) -> list[str]:
        asked.append(tuple(patterns))
        return [p for p in patterns if p == "sipe/baselines/sccam.py"]

    monkeypatch.setattr(provenance, "code_changes", lambda rev, stages: [])
    monkeypatch.setattr(provenance, "source_code_changes", source_code_changes)
    loaded = loading.load(cfg, out, [Unit("cam", 0), Unit(SCCAM, 0)])
    assert asked == [units.SCCAM_SOURCES]
    assert loaded.code_changed(["cam"]) == [] and loaded.code_changed([SCCAM]) == ["sccam-s0"]
    assert loaded.units["sccam-s0"]["code_changed"] == [SCCAM]
    note = notes.code_note(loaded, [SCCAM])
    assert f"sccam-s0: {SCCAM} stage, `git diff" in note and "-- sipe/baselines/sccam.py`" in note
    monkeypatch.setattr(provenance, "source_code_changes", lambda rev, patterns: [])
    assert not loading.load(cfg, out, [Unit("cam", 0), Unit(SCCAM, 0)]).code_changed([SCCAM])


def test_sccam_rows_in_table1_its_claims_and_its_cost(study_dirs, synthetic_root: Path) -> None:
    _, out = study_dirs
    cfg = smoke(synthetic_root)
    r = loading.load(cfg, out)
    assert "sipe-s0" in r.missing and "sccam-s0" in r.units
    t1 = tables.tidy("table1", r, cfg)
    sc = t1[t1["variant"] == SCCAM].set_index(["row", "quantity"])["value"]
    assert set(sc.index) == {(tables.SCCAM_ROW, "loc_maps_miou"), (tables.SCCAM_ROW, "loc_maps_crf_miou"),
                             (tables.SCCAM_ROW, "loc_maps_crf_void_ignored_miou"), ("SC-CAM, SIPE's background rule", "loc_maps_miou")}
    assert cfg.study.irn_threshold not in cfg.eval.thresholds, "smoke sweeps no t = 0.15: no IRN t row"
    assert sc[(tables.SCCAM_ROW, "loc_maps_crf_miou")] == r.by_seed(SCCAM, "cam_irn", "crf_void_bg")[0]
    assert sc[(tables.SCCAM_ROW, "loc_maps_miou")] == r.at_chosen(SCCAM, "cam_irn")[0]
    shown = tables.summary("table1", t1)
    assert shown.loc[tables.SCCAM_ROW, ("loc_maps_miou", "paper")] == "50.9"
    assert shown.loc[tables.SCCAM_ROW, ("loc_maps_crf_miou", "ours")].endswith("(n=1)")

    checked = claims.study_claims(r, cfg, {"table1": t1}).set_index("claim")
    for name, better, base in (("SC-CAM beats the CAM baseline (localization maps)", tables.SCCAM_ROW, "Baseline (CAM)"),
                               ("SC-CAM beats the CAM baseline with denseCRF (void as background)", tables.SCCAM_ROW, "Baseline (CAM)"),
                               ("SC-CAM beats the CAM baseline with denseCRF (void ignored)", tables.SCCAM_ROW, "Baseline (CAM)")):
        c = checked.loc[name]
        q = "loc_maps_crf_void_ignored_miou" if "void ignored" in name else "loc_maps_crf_miou" if "denseCRF" in name else "loc_maps_miou"
        paper_q = "loc_maps_crf_miou" if "denseCRF" in name else q
        assert c["paper_delta"] == pytest.approx(paper_value("table1", better, paper_q) - paper_value("table1", base, paper_q))
        ours = t1.set_index(["row", "quantity"])["value"]
        assert c["n_seeds"] == 1 and c["ours_mean"] == pytest.approx(ours[(better, q)] - ours[(base, q)])
        assert c["ci_low"] <= c["ours_mean"] <= c["ci_high"] and c["verdict"] in ("holds", "mixed", "fails")
    for name, delta in (("SIPE beats SC-CAM (localization maps)", 58.6 - 50.9), ("SIPE beats SC-CAM with denseCRF (void as background)", 64.7 - 55.3),
                        ("SIPE beats SC-CAM with denseCRF (void ignored)", 64.7 - 55.3)):
        assert checked.loc[name, "paper_delta"] == pytest.approx(delta) and checked.loc[name, "verdict"] == "not yet run"

    minutes = notes.stage_minutes(r, ["cam", SCCAM]).set_index("unit")
    wall = r.units["sccam-s0"]["wall_seconds"]
    assert minutes.loc["sccam-s0", "train"] == pytest.approx(sum(v for k, v in wall.items() if k.startswith("train")) / 60)
    assert minutes.loc["sccam-s0", "maps"] == pytest.approx((wall["maps_eval"] + wall["maps_selection"]) / 60)
    assert np.isnan(minutes.loc["cam-s0", "of which round 0"])
    note = notes.cost_note(r, {"cam": "The CAM baseline", SCCAM: "SC-CAM", "sipe": "SIPE"}).splitlines()
    assert note[0].startswith("The CAM baseline took ") and " to make its maps" in note[0]
    assert notes._duration(0.2) == "12 s" and notes._duration(3.54) == "3.5 min" and notes._duration(42.4) == "42 min"
    assert note[1].startswith("SC-CAM took ") and "round 0" in note[1]
    assert note[2] == "SIPE is not computed yet for this configuration (sipe-s0): its rows show '–' and its claims 'not yet run'."
