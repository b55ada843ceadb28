"""The ladder of settings (sipe.study.ladder, sipe.study.ladderresults): the rungs' configurations, the command
line, the cost estimate, the chapter's deltas, verdicts and slopes on hand-made tables, and the chapter run
with no rung computed."""
from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from sipe.__main__ import main
from sipe.infra.config import ConfigError, get_profile
from sipe.stages.train import plan_steps
from sipe.study import claims, ladder, ladderresults as lr, pipeline
from sipe.study.loading import StudyResults
from sipe.study.records import RESULT_COLUMNS, RESULTS_ENV

from conftest import copy_results

REPO = Path(__file__).resolve().parents[1]
SUBSET = get_profile("subset")
SUBSET_TRAIN_IMAGES = 1500
PLAN_FIELDS = {"study.variants", "study.seeds", "study.multi_seed"}


def flat(cfg) -> dict[str, object]:
    return {f"{section}.{k}": v for section, fields in cfg.to_dict().items() if isinstance(fields, dict)
            for k, v in fields.items()}


def differing(a, b) -> set[str]:
    fa, fb = flat(a), flat(b)
    return {k for k in fa if fa[k] != fb[k]}


@pytest.mark.parametrize("rung", ladder.RUNGS, ids=lambda r: r.name)
def test_a_rung_differs_from_subset_in_exactly_its_declared_fields(rung):
    cfg = ladder.rung_config(rung, SUBSET)
    changed = differing(cfg, SUBSET)
    assert changed - PLAN_FIELDS == set(rung.overrides)
    assert cfg.study.variants == rung.variants == ladder.LADDER_VARIANTS and cfg.study.seeds == rung.seeds
    assert pipeline.plan(cfg) == rung.units
    for unit in rung.units:
        mine, base = pipeline.unit_config(cfg, unit), pipeline.unit_config(SUBSET, unit)
        assert mine.stage_hash("eval") != base.stage_hash("eval")
        assert (mine.stage_hash("train") == base.stage_hash("train")) == (rung.name == "scales4")


def test_the_rungs_set_what_the_ladder_promises():
    by_name = {r.name: ladder.rung_config(r, SUBSET) for r in ladder.RUNGS}
    base_steps = plan_steps(SUBSET_TRAIN_IMAGES, SUBSET)[1]
    for name, n in (("data375", 375), ("data750", 750)):
        assert by_name[name].data.max_images == n
        assert plan_steps(n, by_name[name])[1] == base_steps == 935
    assert [plan_steps(SUBSET_TRAIN_IMAGES, by_name[n])[1] for n in ("epochs10", "epochs20")] == [2 * 935, 4 * 935]
    crop = by_name["crop352"].data
    assert crop.crop_size == 352 and np.allclose(np.divide(crop.resize_long, crop.crop_size),
                                                 np.divide(SUBSET.data.resize_long, SUBSET.data.crop_size))
    assert by_name["scales4"].infer.scales == (1.0, 0.5, 1.5, 2.0)
    assert by_name["lite2"].model.backbone == "efficientnet_lite2" and by_name["lite2"].model.semantic_layer == "conv_head"
    assert len(ladder.get_rung("combined").seeds) == 3


def test_a_rung_refuses_unknown_fields_unchanged_values_unknown_variants_and_other_profiles():
    rung = ladder.get_rung("lite2")
    with pytest.raises(ConfigError, match=r"unknown config field 'model\.backbon'"):
        ladder.rung_config(replace(rung, overrides={"model.backbon": "efficientnet_lite2"}), SUBSET)
    with pytest.raises(ConfigError, match=r"train\.epochs=5 is the base profile's value"):
        ladder.rung_config(replace(rung, overrides={"train.epochs": 5}), SUBSET)
    with pytest.raises(ConfigError, match=r"model\.backbone='efficientnet_lite9'; choose one of"):
        ladder.rung_config(replace(rung, overrides={"model.backbone": "efficientnet_lite9"}), SUBSET)
    with pytest.raises(ConfigError, match="variants must be among"):
        ladder.rung_config(replace(rung, variants=("sipe", "nope")), SUBSET)
    with pytest.raises(ConfigError, match=r"applies to the profiles \['smoke', 'subset'\], not 'paper'"):
        ladder.rung_config(rung, get_profile("paper"))


def test_an_unknown_rung_names_the_rungs():
    with pytest.raises(ConfigError) as error:
        ladder.get_rung("lite3")
    assert str(error.value).startswith("unknown rung 'lite3'; choose one of ['data375', 'data750', 'epochs10'")


@pytest.fixture()
def captured(monkeypatch):
    """Replaces the runner of `python -m sipe stages`: the calls it gets (config, work, results folder, units)."""
    from sipe.study import plan

    calls = []
    monkeypatch.setattr(plan, "run_plan", lambda cfg, work, results_dir, units, progress=True:
                        calls.append((cfg, Path(work), results_dir, list(units))))
    monkeypatch.delenv(RESULTS_ENV, raising=False)
    return calls


def test_the_rung_option_sets_the_settings_plan_and_results_folder(captured, tmp_path):
    assert main(["stages", "--profile", "subset", "--rung", "lite2", "--work-dir", str(tmp_path), "--no-progress"]) == 0
    assert main(["stages", "--profile", "smoke", "--rung", "combined", "--work-dir", str(tmp_path),
                 "--units", "cam-s16", "sipe-s15"]) == 0
    (cfg, work, results_dir, units), (cfg2, _, results_dir2, units2) = captured
    assert cfg == ladder.rung_config(ladder.get_rung("lite2"), SUBSET) and work == tmp_path
    assert Path(results_dir) == REPO / "results" / "ladder" / "lite2"
    assert units == [pipeline.Unit("sipe", 15), pipeline.Unit("cam", 15)]
    assert cfg2.profile == "smoke" and cfg2.infer.scales == ladder.FOUR_SCALES
    assert Path(results_dir2) == tmp_path / "results" / "ladder" / "combined"
    assert units2 == [pipeline.Unit("cam", 16), pipeline.Unit("sipe", 15)]


def test_the_rung_option_reports_unknown_rungs_and_units_on_one_line(captured, tmp_path, capsys):
    assert main(["stages", "--profile", "subset", "--rung", "lite3", "--work-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: unknown rung 'lite3'; choose one of ['data375'")
    assert main(["stages", "--profile", "subset", "--rung", "lite2", "--units", "sipe-s16"]) == 2
    assert "--units ['sipe-s16'] not in the rung lite2 plan: ['cam-s15', 'sipe-s15']" in capsys.readouterr().err
    assert main(["train", "--profile", "subset", "--rung", "lite2"]) == 2
    assert "--rung applies to the stages and show-config commands" in capsys.readouterr().err
    assert captured == []


def test_the_ladder_command_prints_every_rung_and_the_total(capsys):
    assert main(["ladder"]) == 0
    out = capsys.readouterr().out
    assert all(f"`{r.name}`" in out for r in ladder.RUNGS)
    assert re.search(r"Total: \d+\.\d hours of stage time, within the 12-hour budget", out)


def write_record(folder: Path, unit: str, train: float, maps: tuple[float, float], evals: tuple[float, float],
                 steps_per_epoch: int = 187, epochs: int = 5) -> None:
    (folder / "runs").mkdir(parents=True, exist_ok=True)
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    wall = {"train": train, "maps_eval": maps[0], "maps_selection": maps[1], "eval_eval": evals[0],
            "eval_selection": evals[1]}
    (folder / "runs" / f"{unit}.json").write_text(json.dumps({"wall_seconds": wall}))
    steps = np.arange(1, steps_per_epoch * epochs + 1)
    pd.DataFrame({"step": steps, "epoch": (steps - 1) // steps_per_epoch, "seconds": train / len(steps)}).to_csv(
        folder / "logs" / f"{unit}.csv", index=False)


def test_the_budget_scales_the_measured_stage_times(tmp_path):
    for unit, train in (("sipe-s15", 1000.0), ("sipe-s16", 1200.0), ("sipe-s17", 5000.0), ("cam-s15", 800.0)):
        write_record(tmp_path, unit, train, (300.0, 100.0), (200.0, 20.0))
    measured = ladder.measured_seconds(tmp_path)
    assert measured.loc["sipe", "train"] == 1200.0 and measured.loc["cam", "train"] == 800.0
    assert measured.loc["sipe", ["maps", "eval", "steps_per_epoch", "steps"]].tolist() == [400.0, 220.0, 187, 935]
    rungs = [ladder.get_rung(n) for n in ("epochs10", "data375", "lite2", "crop352", "scales4", "combined")]
    table = ladder.budget(rungs, tmp_path).set_index("rung")
    hours = lambda seconds: pytest.approx(seconds / 3600.0)
    lite2_train, lite2_maps = 129.5 / 85.7, 69.5 / 51.5
    assert table.loc["epochs10", "train_h"] == hours(2 * (1200 + 800))
    assert table.loc["epochs10", "maps_h"] == hours(2 * 400) and table.loc["epochs10", "eval_h"] == hours(2 * 220)
    assert table.loc["data375", "train_h"] == hours(1200 + 800)
    assert table.loc["lite2", "train_h"] == hours(lite2_train * 2000) and table.loc["lite2", "maps_h"] == hours(lite2_maps * 800)
    assert table.loc["crop352", "train_h"] == hours((352 / 256) ** 2 * 2000)
    assert table.loc["scales4", "train_h"] == 0.0 and table.loc["scales4", "maps_h"] == hours(7.5 / 3.5 * 800)
    assert table.loc["combined", "train_h"] == hours(2 * lite2_train * 2000)
    assert table.loc["combined", "maps_h"] == hours(3 * lite2_maps * 7.5 / 3.5 * 800)
    assert table["total_h"].tolist() == pytest.approx(table[["train_h", "maps_h", "eval_h"]].sum(axis=1).tolist())
    with pytest.raises(ConfigError, match="exceed its 1-hour budget"):
        ladder.check_fits(table.reset_index(), budget_hours=1.0)


def test_measured_hours_count_a_shared_training_once(tmp_path):
    def record(folder: Path, unit: str, key: str) -> None:
        write_record(folder, unit, 3600.0, (1800.0, 360.0), (360.0, 72.0))
        path = folder / "runs" / f"{unit}.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "train_key": key}))

    record(tmp_path / "subset", "sipe-s15", "sipe-s15-base")
    record(tmp_path / "subset", "cam-s15", "cam-s15-base")
    record(tmp_path / "ladder" / "scales4", "sipe-s15", "sipe-s15-base")
    record(tmp_path / "ladder" / "lite2", "sipe-s15", "sipe-s15-lite2")
    record(tmp_path / "ladder" / "lite2", "cam-s15", "cam-s15-lite2")
    record(tmp_path / "ladder" / "combined", "sipe-s15", "sipe-s15-lite2")
    rungs = [ladder.get_rung(n) for n in ("lite2", "scales4", "combined", "data375")]
    table = ladder.measured_hours(rungs, tmp_path).set_index("rung")
    assert table.loc["lite2", "measured_h"] == pytest.approx(2 * 1.72)
    assert table.loc["scales4", "measured_h"] == pytest.approx(0.72)
    assert table.loc["combined", "measured_h"] == pytest.approx(0.72)
    assert math.isnan(table.loc["data375", "measured_h"])
    assert table["units_done"].tolist() == [2, 1, 1, 0] and table["units"].tolist() == [2, 2, 6, 2]
    shown = ladder.budget_markdown(ladder.budget(rungs, tmp_path / "subset").assign(total_h=1.0),
                                   measured=table.reset_index())
    assert "| 3.4 " in shown and "0.7 (1 of 2 units)" in shown and "0.7 (1 of 6 units)" in shown
    assert "not yet computed" in shown


def test_the_projection_scales_the_units_still_to_compute_by_the_measured_ratio(tmp_path):
    for unit in ("sipe-s15", "cam-s15"):
        write_record(tmp_path / "subset", unit, 1000.0, (300.0, 100.0), (200.0, 20.0))
    rungs = [ladder.get_rung(n) for n in ("lite2", "scales4", "epochs10")]
    estimated = ladder.unit_budget(rungs, tmp_path / "subset")
    assert estimated.groupby("rung", sort=False)["total_h"].sum().tolist() == \
        pytest.approx(ladder.budget(rungs, tmp_path / "subset")["total_h"].tolist())
    nothing = ladder.projection(estimated, ladder.measured_unit_hours(rungs, tmp_path))
    assert math.isnan(nothing["ratio"]) and nothing["remaining_h"] == pytest.approx(estimated["total_h"].sum())
    table = ladder.budget(rungs, tmp_path / "subset")
    assert "computed units took" not in ladder.budget_markdown(table, projected=nothing)

    lite2 = estimated.set_index(["rung", "unit"]).loc[("lite2", "sipe-s15")]
    folder = tmp_path / "ladder" / "lite2"
    write_record(folder, "sipe-s15", 2 * 3600 * lite2["train_h"], (2 * 3600 * lite2["maps_h"], 0.0),
                 (2 * 3600 * lite2["eval_h"], 0.0))
    path = folder / "runs" / "sipe-s15.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "train_key": "sipe-s15-lite2"}))
    measured = ladder.measured_unit_hours(rungs, tmp_path)
    assert measured["measured_h"].notna().tolist() == [True] + [False] * 5
    assert measured["slow_train_h"].iloc[0] == pytest.approx(0.0, abs=1e-9)
    p = ladder.projection(estimated, measured)
    rest = estimated["total_h"].sum() - lite2["total_h"]
    assert p["ratio"] == pytest.approx(2.0) and p["measured_h"] == pytest.approx(2 * lite2["total_h"])
    assert p["remaining_h"] == pytest.approx(rest) and p["projected_h"] == pytest.approx(2 * lite2["total_h"] + 2 * rest)
    shown = ladder.budget_markdown(table, budget_hours=0.1, projected=p)
    assert f"({p['ratio']:.2f}x)" in shown and f"the whole ladder {p['projected_h']:.1f} hours, over the budget" in shown

    log_path = folder / "logs" / "sipe-s15.csv"
    log = pd.read_csv(log_path)
    pace = float(log["seconds"].iloc[0])
    log.loc[:99, "seconds"] += 36.0
    log.to_csv(log_path, index=False)
    record = json.loads(path.read_text())
    record["wall_seconds"]["train"] += 100 * 36.0
    path.write_text(json.dumps(record))
    slow = ladder.measured_unit_hours(rungs, tmp_path)["slow_train_h"].iloc[0]
    assert slow == pytest.approx(100 * 36.0 / 3600.0)
    p = ladder.projection(estimated, ladder.measured_unit_hours(rungs, tmp_path))
    assert p["slow_h"] == pytest.approx(slow) and pace > 0
    assert p["paced_ratio"] == pytest.approx(2.0) and p["ratio"] == pytest.approx(2.0 + slow / lite2["total_h"])

    only_lite2 = estimated[(estimated["rung"] == "lite2") & (estimated["unit"] == "sipe-s15")]
    done = ladder.projection(only_lite2, ladder.measured_unit_hours(rungs, tmp_path))
    assert done["remaining_h"] == 0.0 and done["projected_h"] == pytest.approx(done["measured_h"])
    said = ladder.projection_note(done, budget_hours=done["measured_h"] - slow / 2)
    assert said.startswith("All units are computed") and "still to compute" not in said
    assert f"took {done['measured_h']:.1f} hours where" in said and "over the budget. Of these" in said
    assert f"the ladder would have taken {done['paced_projected_h']:.1f} hours ({done['paced_ratio']:.2f}x), within" in said


def test_slow_steps_are_the_seconds_beyond_the_median_pace():
    assert ladder.slow_step_seconds(pd.DataFrame({"seconds": [1.0, 1.0, 1.0, 4.0, 1.0]})) == pytest.approx(3.0)
    assert ladder.slow_step_seconds(pd.DataFrame({"seconds": [0.7] * 10})) == pytest.approx(0.0)
    assert ladder.slow_step_seconds(pd.DataFrame({"seconds": []})) == 0.0


def test_a_variant_without_a_measured_unit_is_a_clear_error(tmp_path):
    write_record(tmp_path, "sipe-s15", 1000.0, (300.0, 100.0), (200.0, 20.0))
    with pytest.raises(ConfigError, match="no measured unit of 'cam'"):
        ladder.measured_seconds(tmp_path)


def test_the_declared_ladder_fits_the_budget_and_the_book_shows_its_table():
    table = ladder.budget()
    assert ladder.check_fits(table) <= ladder.BUDGET_HOURS
    page = (REPO / "book" / "reproduce.md").read_text()
    block = re.search(r"<!-- ladder table:.*?-->\n(.*?)<!-- end of the ladder table -->", page, re.S)
    projected = ladder.projection(ladder.unit_budget(), ladder.measured_unit_hours())
    assert block and block.group(1) == ladder.budget_markdown(table, measured=ladder.measured_hours(),
                                                               projected=projected)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", sorted(ladder.BACKBONE_COSTS))
def test_backbone_costs_are_the_measured_flops(backbone):
    measured = ladder.measure_backbone_flops(backbone)
    declared = ladder.BACKBONE_COSTS[backbone]
    assert measured.train_gflops == pytest.approx(declared.train_gflops, rel=0.01)
    assert measured.maps_gflops == pytest.approx(declared.maps_gflops, rel=0.01)


def tidy_rows(cells: dict[tuple[str, str], list[float]], seeds=(15, 16, 17)) -> pd.DataFrame:
    """A tidy table: {(row, quantity): value per seed}."""
    return pd.DataFrame([{"row": row, "quantity": q, "variant": "", "seed": s, "split": "train", "reading": "",
                          "value": v} for (row, q), values in cells.items() for s, v in zip(seeds, values)])


def hand_made(sipe: list[float], cam: list[float], seeds=(15, 16, 17)) -> dict[str, pd.DataFrame]:
    return {"table1": tidy_rows({("SIPE", "loc_maps_miou"): sipe, ("Baseline (CAM)", "loc_maps_miou"): cam}, seeds)}


SIPE_VS_CAM = next(c for c in claims.CLAIMS if c.claim == "SIPE beats the CAM baseline (localization maps)")


def test_seed_deltas_pair_the_two_cells_by_seed():
    tables = hand_made([36.0, 35.5, 36.5], [34.0, 34.0, 33.0])
    tables["table1"] = tables["table1"][~((tables["table1"]["row"] == "SIPE") & (tables["table1"]["seed"] == 17))]
    deltas = lr.seed_deltas(tables, [SIPE_VS_CAM])
    assert deltas.to_dict("list") == {"claim": [SIPE_VS_CAM.claim] * 2, "seed": [15, 16], "delta": [2.0, 1.5]}
    assert lr.seed_deltas({}, [SIPE_VS_CAM]).empty


def empty_rung(name: str, axis: str, tmp_path: Path) -> lr.RungResults:
    r = StudyResults(pd.DataFrame(columns=[*RESULT_COLUMNS, "unit"]), {}, tmp_path, "train")
    return lr.RungResults(name, axis, SUBSET, tmp_path, r, {}, ("sipe-s15", "cam-s15"))


def test_deltas_and_verdicts_per_rung_with_a_rung_not_computed(tmp_path):
    base = claims.claims(hand_made([36.0, 36.5, 35.5], [34.0, 34.0, 34.0]), claim_list=[SIPE_VS_CAM])
    worse = claims.claims(hand_made([33.0, 32.0, 33.0], [34.0, 34.0, 34.0]), claim_list=[SIPE_VS_CAM])
    frame = pd.concat([base.assign(rung="subset", axis="base"), worse.assign(rung="epochs10", axis="length"),
                       lr.rung_claims(empty_rung("lite2", "backbone", tmp_path), [SIPE_VS_CAM])], ignore_index=True)
    verdicts = lr.verdict_table(frame)
    assert verdicts.loc[SIPE_VS_CAM.claim].tolist() == ["+8.5", "holds", "fails", lr.NOT_COMPUTED]
    assert list(verdicts.columns) == ["paper", "subset", "epochs10", "lite2"]
    shown = lr.delta_table(frame, lr.HEADLINE)
    assert shown.loc["SIPE - CAM"].tolist() == ["+8.5", "+2.0 ± 0.5 (n=3)", "-1.3 ± 0.6 (n=3)", lr.NOT_COMPUTED]


def test_a_rung_whose_verdict_changes_needs_three_seeds():
    a, b = "SIPE beats the CAM baseline (localization maps)", "IPE improves over the CAM baseline"
    rows = [("subset", a, "holds", 3), ("subset", b, "mixed", 3),
            ("data375", a, "holds", 1), ("data375", b, "fails", 1),
            ("epochs10", a, "fails", 3), ("epochs10", b, "mixed", 3),
            ("scales4", a, "holds", 1), ("scales4", b, "mixed", 1),
            ("lite2", a, lr.NOT_COMPUTED, 0), ("lite2", b, lr.NOT_COMPUTED, 0)]
    frame = pd.DataFrame(rows, columns=["rung", "claim", "verdict", "n_seeds"])
    changes = lr.verdict_changes(frame, "subset").set_index("rung")
    assert list(changes.index) == ["data375", "epochs10", "scales4"]
    assert changes.loc["data375"].tolist() == [f"{b}: mixed -> fails", 1, 2]
    assert changes.loc["epochs10"].tolist() == [f"{a}: holds -> fails", 3, 0]
    assert changes.loc["scales4"].tolist() == ["none", 1, 0]


def test_rung_status_names_the_units_folder_and_command(tmp_path, monkeypatch):
    monkeypatch.delenv(RESULTS_ENV, raising=False)
    folder = ladder.rung_results_dir("subset", tmp_path, "lite2")
    r = StudyResults(pd.DataFrame(columns=[*RESULT_COLUMNS, "unit"]), {}, folder, "train", missing=["cam-s15", "sipe-s15"])
    status = lr.rung_status([replace(empty_rung("lite2", "backbone", tmp_path), results_dir=folder, results=r)])
    assert status.iloc[0].to_dict() == {"rung": "lite2", "axis": "backbone", "units": "sipe-s15 cam-s15", "planned": 2,
                                        "published": 0, "results": "results/ladder/lite2",
                                        "command": "python -m sipe stages --profile subset --rung lite2"}


def test_a_one_seed_delta_shows_its_interval():
    frame = pd.DataFrame([{"rung": "lite2", "axis": "backbone", "claim": "c", "paper_delta": 1.0, "ours_mean": -0.5,
                           "ours_std": math.nan, "n_seeds": 1, "ci_low": -1.25, "ci_high": 0.5, "verdict": "mixed"}])
    assert lr.delta_table(frame).loc["c"].tolist() == ["+1.0", "-0.5 [-1.2, +0.5]"]


def test_the_ladder_decides_the_claims_of_sipe_and_cam_units_only():
    names = [c.claim for c in lr.decided_claims(SUBSET)]
    assert set(names) == {*lr.HEADLINE, "denseCRF improves SIPE's localization maps", claims.ARGMAX_CLAIM}
    assert all(h in {c.claim for c in claims.CLAIMS} for h in lr.HEADLINE)


def test_slope_is_least_squares_with_a_t_interval():
    x, y = [0, 0, 0, 1, 2], [-1.0, -1.2, -0.8, 0.5, 2.1]
    b, lo, hi = lr.slope(x, y)
    fit = stats.linregress(x, y)
    half = stats.t.ppf(0.975, len(x) - 2) * fit.stderr
    assert (b, lo, hi) == pytest.approx((fit.slope, fit.slope - half, fit.slope + half))
    assert lr.slope([0, 1, 2], [1.0, 3.0, 5.0]) == pytest.approx((2.0, 2.0, 2.0))
    b, lo, hi = lr.slope([0, 1], [1.0, 3.0])
    assert b == 2.0 and math.isnan(lo) and math.isnan(hi)
    assert all(math.isnan(v) for v in lr.slope([1, 1, 1], [1.0, 2.0, 3.0]))


def test_direction_reads_the_interval_against_the_paper():
    assert lr.direction(-1.0, 5.0, 0.2, 1.0) == "toward the paper"
    assert lr.direction(-1.0, 5.0, -2.0, -0.1) == "away from the paper"
    assert lr.direction(8.0, 5.0, -2.0, -0.1) == "toward the paper"
    assert lr.direction(-1.0, 5.0, -0.5, 0.5) == "no clear move"
    assert lr.direction(-1.0, 5.0, math.nan, math.nan) == "no interval"
    assert lr.direction(-1.0, math.nan, 0.2, 1.0) == "no paper delta"


def test_axis_slopes_per_claim_and_axis():
    deltas = pd.DataFrame([("subset", "c", s, d) for s, d in zip((15, 16, 17), (-1.0, -1.2, -0.8))]
                          + [("epochs10", "c", 15, 0.5), ("epochs20", "c", 15, 2.1), ("lite2", "c", 15, -3.0)],
                          columns=["rung", "claim", "seed", "delta"])
    where = pd.DataFrame([("subset", "length", 12.87), ("epochs10", "length", 13.87), ("epochs20", "length", 14.87),
                          ("subset", "backbone", 6.42), ("lite2", "backbone", 7.02),
                          ("subset", "crop", 8.0), ("crop352", "crop", 8.46)], columns=["rung", "axis", "position"])
    slopes = lr.axis_slopes(deltas, where, {"c": 5.0}, "subset").set_index("axis")
    fit = stats.linregress([12.87] * 3 + [13.87, 14.87], [-1.0, -1.2, -0.8, 0.5, 2.1])
    assert slopes.loc["length", "slope"] == pytest.approx(fit.slope)
    assert slopes.loc["length", ["rungs", "points", "direction"]].tolist() == ["epochs10, epochs20", 5, "toward the paper"]
    assert slopes.loc["length", "base_delta"] == pytest.approx(-1.0)
    assert slopes.loc["backbone", "slope"] == pytest.approx(-2.0 / 0.6)
    assert slopes.loc["backbone", "direction"] == "away from the paper"
    assert slopes.loc["crop", "direction"] == lr.NOT_COMPUTED and math.isnan(slopes.loc["crop", "slope"])
    table = lr.slope_table(slopes.reset_index())
    assert table.loc["c", ["paper", "base", "crop"]].tolist() == ["+5.0", "-1.0", lr.NOT_COMPUTED]
    assert table.loc["c", "length"].startswith("toward the paper: +1.")


def test_failing_claims_are_read_from_the_base_rung():
    frame = pd.DataFrame({"rung": ["subset", "subset", "lite2"], "claim": ["a", "b", "a"], "paper_delta": [3.1, 1.0, 3.1],
                          "verdict": ["fails", "holds", "holds"]})
    assert lr.failing_claims(frame, "subset") == {"a": 3.1}


def test_positions_grow_toward_the_paper():
    lite2 = ladder.rung_config(ladder.get_rung("lite2"), SUBSET)
    assert lr.axis_position(SUBSET, "data", 1500) == pytest.approx(math.log2(1500))
    assert lr.axis_position(SUBSET, "length", 1500) == pytest.approx(math.log2(7480))
    assert lr.axis_position(lite2, "backbone", 1500) - lr.axis_position(SUBSET, "backbone", 1500) == \
        pytest.approx(math.log2(129.5 / 85.7))
    assert lr.axis_position(SUBSET, "scales", 1500) == pytest.approx(math.log2(3.5))
    assert lr.paper_samples_seen() == 52880 and lr.samples_seen(SUBSET, 1500) == 7480


def test_the_claims_page_column_reads_the_combined_rung(tmp_path, monkeypatch):
    monkeypatch.setenv(RESULTS_ENV, str(tmp_path))
    table = pd.DataFrame({"claim": [c.claim for c in claims.CLAIMS], "verdict": "holds"})
    shown = lr.with_combined_verdicts(table, SUBSET, tmp_path)
    decided = {c.claim for c in lr.decided_claims(SUBSET)}
    column = shown.set_index("claim")[lr.COMBINED_COLUMN]
    assert SIPE_VS_CAM.claim in decided and 0 < len(decided) < len(table)
    assert (column[list(decided)] == lr.NOT_COMPUTED).all()
    assert (column.drop(list(decided)) == lr.NOT_IN_LADDER).all()


def test_missing_seeds_are_priced_and_weighed_against_the_budget():
    a = "SIPE beats the CAM baseline (localization maps)"
    frame = pd.DataFrame([("subset", a, "holds", 3), ("data375", a, "fails", 1), ("lite2", a, "holds", 1)],
                         columns=["rung", "claim", "verdict", "n_seeds"])
    hours = ladder.seed_hours(["data375", "lite2"])
    assert hours["data375"] > 0 and hours["lite2"] > 0
    changes = lr.verdict_changes(frame, "subset", hours=hours).set_index("rung")
    assert changes.loc["data375", "hours for the seeds"] == round(hours["data375"], 2)
    assert changes.loc["lite2", "hours for the seeds"] == 0.0
    tight = lr.seeds_note(changes.reset_index(), ladder_hours=11.0, budget_hours=12.0)
    assert "data375" in tight and "do not fit" in tight and "one training seed's" in tight
    roomy = lr.seeds_note(changes.reset_index(), ladder_hours=1.0, budget_hours=12.0)
    assert "fit in the budget" in roomy and "do not fit" not in roomy
    assert "no rung needs" in lr.seeds_note(changes.iloc[:0].reset_index(), 1.0, 12.0)
    queued = pd.DataFrame([{"rung": "combined", "changed": "c: holds -> fails", "seeds": 1, "seeds needed": 2,
                            "hours for the seeds": 0.0}])
    both = lr.seeds_note(pd.concat([changes.reset_index(), queued]), ladder_hours=11.0, budget_hours=12.0)
    assert "1 computed rung(s) change a verdict" in both and "seeds of combined are declared and still to compute" in both
    assert "declared and still to compute" in lr.seeds_note(queued, 1.0, 12.0)


def test_reseeding_a_rung_prices_two_more_seeds_of_its_units():
    declared = ladder.budget().set_index("rung")["total_h"]
    extra = ladder.seed_hours(["data750", "combined", "lite2"])
    assert extra["combined"] == 0.0  # declared with three seeds already
    assert 1.5 * declared["data750"] < extra["data750"] <= 2.0 * declared["data750"] + 1e-9
    # lite2's seeds 16 and 17 are the combined rung's trainings: only their maps and readings are added
    assert 0 < extra["lite2"] < declared["lite2"]


def test_the_findings_note_reads_the_committed_rungs(real_root, tmp_path, monkeypatch):
    monkeypatch.delenv(RESULTS_ENV, raising=False)
    cfg = SUBSET.override(**{"data.root": str(real_root)})
    text = lr.findings_note(cfg, tmp_path, REPO / "results" / "subset")
    published = {r.name: [u.name for u in r.units if (REPO / "results" / "ladder" / r.name / "runs" / f"{u.name}.json").exists()]
                 for r in ladder.RUNGS}
    whole = [r.name for r in ladder.RUNGS if len(published[r.name]) == len(r.units)]
    assert whole, "no committed rung to read"
    assert "+8.5 in the paper" in text
    for rung in whole:
        assert re.search(rf"\b{rung} [+-]\d+\.\d\b", text), rung
    assert f"{len(whole)} of {len(ladder.RUNGS)} rungs are computed ({', '.join(whole)})" in text
    partly = [r for r, units in published.items() if units and r not in whole]
    if partly:
        assert f"and {len(partly)} partly ({', '.join(partly)}" in text


def test_the_ladder_note_tells_whole_rungs_from_partly_computed_ones():
    a = "SIPE beats the CAM baseline (localization maps)"
    frame = pd.DataFrame([("subset", a, "holds"), ("lite2", a, "mixed"), ("combined", a, "holds"), ("crop352", a, lr.NOT_COMPUTED)],
                         columns=["rung", "claim", "verdict"])
    slopes = pd.DataFrame(columns=["claim", "axis", "direction"])
    assert lr.ladder_note(frame, slopes, "subset").startswith("2 of 3 rungs are computed (lite2, combined).")
    text = lr.ladder_note(frame, slopes, "subset", partly=["combined"])
    assert text.startswith("1 of 3 rungs are computed (lite2), and 1 partly (combined: ")
    assert lr.ladder_note(frame.iloc[[0, 3]], slopes, "subset").startswith("No rung is computed yet (1 declared)")


def test_the_ladder_note_names_axes_and_the_combined_rung_apart():
    a = "Estimated background beats the threshold for option (4)"
    frame = pd.DataFrame([("subset", a, "fails"), ("data375", a, "fails"), ("combined", a, "fails")],
                         columns=["rung", "claim", "verdict"])
    slopes = pd.DataFrame([(a, "data", "away from the paper"), (a, "length", "away from the paper"),
                           (a, "combined", "away from the paper"), (a, "backbone", "toward the paper"),
                           (a, "crop", lr.NOT_COMPUTED)], columns=["claim", "axis", "direction"])
    text = lr.ladder_note(frame, slopes, "subset")
    assert text.endswith(f" {a}: toward the paper along backbone; away from the paper along data, length and at the "
                         "combined rung."), text


def test_the_machines_note_says_which_rungs_read_one_kind_of_machine(tmp_path):
    def rung(name: str, machines: dict[str, dict]) -> lr.RungResults:
        rr = empty_rung(name, "data", tmp_path)
        rr.results.units.update({u: ({"machine": m} if m else {}) for u, m in machines.items()})
        return rr

    epyc = {"cpu": "AMD EPYC", "torch_cpu_capability": "AVX512", "torch_threads": 2, "cuda": ""}
    xeon = {"cpu": "Intel Xeon", "torch_cpu_capability": "AVX2", "torch_threads": 2, "cuda": ""}
    ladder_results = [rung("subset", {"sipe-s15": None, "cam-s15": None}), rung("data375", {"sipe-s15": epyc, "cam-s15": epyc}),
                      rung("lite2", {"sipe-s15": epyc, "cam-s15": xeon}), rung("crop352", {})]
    machines = lr.unit_machines(ladder_results)
    assert machines.loc[machines["rung"] == "lite2", "machine"].tolist() == ["AMD EPYC, AVX512", "Intel Xeon, AVX2"]
    assert set(machines["rung"]) == {"subset", "data375", "lite2"}
    text = lr.machines_note(machines)
    assert text.startswith("The units of data375 were all computed on the same kind of machine (AMD EPYC, AVX512)")
    assert "lite2 (AMD EPYC, AVX512; Intel Xeon, AVX2) come from more than one machine" in text
    assert "the records of subset predate the machine field" in text and "crop352" not in text
    assert lr.machines_note(lr.unit_machines([rung("crop352", {})])) == "No rung is computed yet."


def test_rungs_at_the_same_samples_seen_stand_apart_in_the_absolute_figure():
    samples = [7480, 7480, 14960, 7480, 52880]
    x = lr.dodged_x(pd.DataFrame({"samples seen": samples}), step=1.1)
    assert x[2] == 14960 and x[4] == 52880
    assert x[[0, 1, 3]] == pytest.approx([7480 / 1.1, 7480, 7480 * 1.1])

    rows = [("subset", "base", 7480, 36.0, 34.0, 3), ("data375", "data", 7480, 32.6, 27.1, 1),
            ("epochs10", "length", 14960, 37.0, 35.0, 1), ("crop352", "crop", 7480, math.nan, math.nan, 0),
            ("paper", "", 52880, 58.6, 50.1, 0)]
    table = pd.DataFrame([{"rung": r, "axis": a, "samples seen": s, "SIPE mean": m, "CAM mean": c,
                           "SIPE std": 0.3 if n > 1 else math.nan, "CAM std": 0.1 if n > 1 else math.nan,
                           "SIPE n": n, "CAM n": n} for r, a, s, m, c, n in rows])
    fig = lr.absolute_figure(table)
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["base and training length", "paper", "subset", "data375",
                                                           "epochs10"]
    sipe_axis = fig.axes[0]
    (line,) = sipe_axis.get_lines()[:1]
    assert line.get_ydata().tolist() == [36.0, 37.0]


def test_a_unit_kept_from_another_machine_is_compared_with_the_published_one(tmp_path):
    rung_dir, other = tmp_path / "epochs10", tmp_path / "epochs10" / lr.OTHER_MACHINES / "other-cpu"
    for folder in (rung_dir, other):
        copy_results(folder, ["sipe-s0"])
    record = json.loads((other / "runs" / "sipe-s0.json").read_text())
    (other / "runs" / "sipe-s0.json").write_text(json.dumps({**record, "machine": {"cpu": "Other CPU"}}))
    log = pd.read_csv(other / "logs" / "sipe-s0.csv")
    log.loc[1, "loss_gsc"] *= 1.001
    log.to_csv(other / "logs" / "sipe-s0.csv", index=False)
    published = StudyResults(pd.DataFrame(columns=[*RESULT_COLUMNS, "unit"]), {"sipe-s0": {}}, rung_dir, "train")
    rung = lr.RungResults("epochs10", "length", SUBSET, rung_dir, published, {}, ("sipe-s0",))
    (tmp_path / "subset").mkdir()

    drift = lr.machine_drift([empty_rung("subset", "base", tmp_path / "subset"), rung])
    assert drift[["rung", "unit", "folder"]].values.tolist() == [["epochs10", "sipe-s0", "other-machines/other-cpu"]]
    assert drift.loc[0, "same_steps"] == 1 and drift.loc[0, "max_abs"] == 0.0
    note = lr.drift_note(drift)
    assert "epochs10's sipe-s0 was computed on Other CPU" in note
    assert "for the first 1 of 2 steps (the total loss agrees for the first 2), then part by rounding" in note
    assert "differ in their last bits from the first of 2 steps" in lr.drift_note(drift.assign(same_steps=0))
    assert f"on {lr.NOT_RECORDED} with the same settings" in note
    assert lr.drift_note(drift.iloc[:0]) == "No unit of the ladder is kept computed on two kinds of machine."
