"""Tests for sipe.study.paper, tables, intervals, claims and notes: the paper's numbers, tables from unit rows, intervals, verdicts, claims, notes."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sipe.study import claims, intervals, loading, notes, records, tables
from sipe.infra.config import SELECTION_SPLIT, get_profile
from sipe.stages.evaluation import miou_result
from sipe.study.paper import load_paper_results, paper_value
from sipe.study.pipeline import RESULT_COLUMNS


def test_load_paper_results_columns_and_values():
    df = load_paper_results()
    assert list(df.columns) == ["table", "row", "setting", "metric", "value", "note"]
    assert df["value"].dtype == float
    assert set(df.loc[df["table"] == "table4", "row"]) == {"CAM", "CAM + IPE", "CAM + IPE + GSC"}
    assert not df[["table", "row", "metric"]].duplicated().any()
    df.loc[:, "value"] = -1.0
    assert (load_paper_results()["value"] >= 0).all(), "a caller's edit must not reach the next caller"


def test_paper_value_and_errors():
    assert paper_value("table1", "SIPE", "loc_maps_miou") == 58.6
    assert paper_value("table1", "SIPE", "loc_maps_crf_miou") == 64.7
    assert paper_value("table5", "Hierarchical w/ BPM", "threshold_miou") == 57.6
    with pytest.raises(KeyError, match="CAM \\+ IPE \\+ GSC"):
        paper_value("table4", "CAM + GSC", "loc_maps_miou")
    with pytest.raises(KeyError, match="valid metrics"):
        paper_value("table4", "CAM", "val_miou")
    with pytest.raises(KeyError, match="valid tables"):
        paper_value("table9", "SIPE", "loc_maps_miou")


def _confusion(rng: np.random.Generator, c: int = 4, absent: int | None = None) -> np.ndarray:
    conf = rng.integers(0, 50, size=(c, c))
    if absent is not None:
        conf[absent, :] = 0
    return conf


def test_the_evidence_of_confusions_takes_its_miou_from_the_evaluation_module():
    rng = np.random.default_rng(0)
    confs = np.stack([_confusion(rng, absent=i % 4) for i in range(5)])
    got = intervals.confusion_evidence(confs[:-1], confs[1:]).delta(np.eye(4))
    want = [miou_result(a).miou - miou_result(b).miou for a, b in zip(confs[:-1], confs[1:])]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_bootstrap_interval_of_a_difference_over_images():
    rng = np.random.default_rng(1)
    a = np.stack([_confusion(rng) for _ in range(30)])
    delta, lo, hi = intervals.bootstrap_claim([intervals.confusion_evidence(a, a)], samples=200)
    assert (delta, lo, hi) == (0.0, 0.0, 0.0)
    better = a.copy()
    idx = np.arange(4)
    better[:, idx, idx] += 40
    delta, lo, hi = intervals.bootstrap_claim([intervals.confusion_evidence(better, a)], samples=500)
    assert delta == pytest.approx(miou_result(better.sum(0)).miou - miou_result(a.sum(0)).miou)
    assert 0 < lo <= delta <= hi
    with pytest.raises(ValueError, match="differ in shape"):
        intervals.bootstrap_claim([intervals.confusion_evidence(a, a[:3])])


@pytest.mark.parametrize("deltas, sign, ci, unchanged, expected", [
    ([2.0, 3.0, 2.5], 1, None, False, "holds"),
    ([-2.0, -3.0, -2.5], 1, None, False, "fails"),
    ([2.0, -1.0, 3.0], 1, None, False, "mixed"),
    ([0.1, 0.2, 5.0], 1, None, False, "mixed"),        # same sign, but the mean does not exceed the std
    ([-2.0, -3.0], -1, None, False, "holds"),          # the paper's difference is negative
    ([1.5], 1, (0.4, 2.6), False, "holds"),
    ([1.5], 1, (-0.4, 2.6), False, "mixed"),
    ([-1.5], 1, (-2.6, -0.4), False, "fails"),
    ([1.5], 1, None, False, claims.NO_INTERVAL),     # one seed and no interval: undecided, and said so
    ([0.3, -0.2, 0.1], 1, None, True, "holds"),
    ([2.5, 3.0], 1, None, True, "fails"),
    ([3.0, -3.0], 1, None, True, "mixed"),             # no change on average, but no seed within the tolerance
    ([0.5, 2.0], 1, None, True, "mixed"),
    ([2.5, 2.0, -0.5], 1, None, True, "mixed"),
    ([0.3], 1, (-0.6, 0.9), True, "holds"),           # one seed: the interval inside the tolerance band
    ([0.33], 1, (-2.25, 2.93), True, "mixed"),        # too wide to show "no change"
    ([-2.05], 1, (-4.30, -0.24), True, "mixed"),
    ([0.5], 1, (2.0, 3.0), True, "fails"),            # entirely outside the band
    ([-3.5], 1, (-4.0, -1.2), True, "fails"),
    ([0.3], 1, None, True, claims.NO_INTERVAL),
    ([], 1, None, False, "not yet run"),
    ([2.0, 3.0, 2.5], 1, (-0.5, 4.0), False, "mixed"),   # several seeds agreeing, but the interval decides
    ([2.0, 3.0, 2.5], 1, (0.5, 4.0), False, "holds"),
    ([-2.0, -3.0], -1, (-3.5, -0.2), False, "holds"),
    ([2.0, 3.0, -0.5], 1, (0.2, 3.5), False, "holds"),   # a seed of the other sign within a one-sided interval
    ([0.3, -0.2, 0.1], 1, (-1.5, 1.2), True, "mixed"),
])
def test_verdict_rules(deltas, sign, ci, unchanged, expected):
    assert claims.verdict(deltas, sign, ci, unchanged) == expected


def _row(variant, seed, reading, background, split, value, threshold=None, quantity="miou"):
    return {"quantity": quantity, "reading": reading, "background": background, "threshold": threshold, "class": "",
            "variant": variant, "seed": seed, "split": split, "value": value, "n_images": 10}


def _study_results(rows: list[dict]) -> loading.StudyResults:
    frame = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    units = {f"{v}-s{s}": {"variant": v, "code_changed": []} for v, s in set(zip(frame["variant"], frame["seed"]))}
    return loading.StudyResults(frame, units, Path("."), "train")


def test_threshold_readings_use_the_threshold_chosen_on_the_selection_split():
    rows = []
    for t, sel, train in ((0.2, 30.0, 40.0), (0.3, 35.0, 41.0), (0.5, 31.0, 47.0)):
        rows += [_row("cam", 15, "cam_irn", "threshold", SELECTION_SPLIT, sel, t),
                 _row("cam", 15, "cam_irn", "threshold", "train", train, t)]
    r = _study_results(rows)
    assert r.chosen_threshold("cam", "cam_irn").to_dict() == {15: 0.3}
    assert r.at_chosen("cam", "cam_irn").to_dict() == {15: 41.0}     # not the best on train (47.0 at t = 0.5)


def test_tables_summary_and_claims_from_unit_rows():
    cfg = get_profile("smoke")
    rows = []
    for seed, (s_est, s_crf, c_irn, c_crf, c_ipe) in zip((0, 1), ((40.0, 44.0, 30.0, 33.0, 35.0), (42.0, 47.0, 31.0, 32.0, 36.0))):
        rows += [_row("sipe", seed, "is_cam", "estimated", "train", s_est),
                 _row("sipe", seed, "is_cam", "crf_void_bg", "train", s_crf),
                 _row("cam", seed, "is_cam", "estimated", "train", c_ipe),
                 _row("cam", seed, "cam_irn", "crf_void_bg", "train", c_crf)]
        for t in cfg.eval.thresholds:
            best = np.isclose(t, 0.3)
            rows += [_row("cam", seed, "cam_irn", "threshold", SELECTION_SPLIT, 20.0 + 5 * best, t),
                     _row("cam", seed, "cam_irn", "threshold", "train", c_irn if best else 10.0, t)]
    r = _study_results(rows)
    t1 = tables.tidy("table1", r, cfg)
    sipe = t1[(t1["row"] == "SIPE") & (t1["quantity"] == "loc_maps_miou")]
    assert sipe["value"].tolist() == [40.0, 42.0] and set(sipe["seed"]) == {0, 1}
    base = t1[(t1["row"] == "Baseline (CAM)") & (t1["quantity"] == "loc_maps_miou")]
    assert base["value"].tolist() == [30.0, 31.0]
    shown = tables.summary("table1", t1)
    assert shown.loc["SIPE", ("loc_maps_miou", "ours")] == "41.0 ± 1.4 (n=2)"
    assert shown.loc["SIPE", ("loc_maps_miou", "paper")] == "58.6"
    assert shown.loc["SEAM CVPR20", ("loc_maps_miou", "ours")] == "–"

    t4 = tables.tidy("table4", r, cfg)
    out = claims.claims({"table1": t1, "table4": t4}).set_index("claim")
    beat = out.loc["SIPE beats the CAM baseline (localization maps)"]
    assert beat["paper_delta"] == pytest.approx(58.6 - 50.1)
    assert beat["ours_mean"] == pytest.approx(10.5) and beat["n_seeds"] == 2 and beat["verdict"] == "holds"
    crf = out.loc["denseCRF improves SIPE's localization maps"]
    assert crf["ours_mean"] == pytest.approx(4.5) and crf["verdict"] == "holds"
    gsc = out.loc["GSC improves over CAM + IPE"]
    assert gsc["ours_mean"] == pytest.approx(5.5) and gsc["verdict"] == "holds"
    ipe = out.loc["IPE improves over the CAM baseline"]
    assert ipe["ours_mean"] == pytest.approx(5.0)
    assert out.loc["Structure-aware seeds beat the best CAM threshold", "verdict"] == "not yet run"
    assert list(out.reset_index().columns) == claims.CLAIM_COLUMNS


def test_fig8_table_adds_the_papers_best_threshold_and_argmax_rows():
    cfg = get_profile("smoke")
    rows = [_row("sipe", 0, "is_cam", "estimated", "train", 50.0)]
    rows += [_row("sipe", 0, f"labels@threshold:{t:g}", "estimated", "train", 30.0 + 10 * t) for t in cfg.study.fig8_thresholds]
    rows += [_row("sipe", 0, "labels@argmax:1", "estimated", "train", 35.0)]
    t8 = tables.tidy("fig8", _study_results(rows), cfg)
    value = t8.set_index("row")["value"]
    assert value["CAM threshold (best over sweep)"] == pytest.approx(30.0 + 10 * max(cfg.study.fig8_thresholds))
    assert value["CAM argmax"] == 35.0 and value["Structure-aware seeds"] == 50.0
    out = claims.claims({"fig8": t8}).set_index("claim")
    assert out.loc["Structure-aware seeds beat the best CAM threshold", "ours_mean"] == pytest.approx(50.0 - 39.0)


PAPER_TEXT = Path(__file__).resolve().parents[2] / "shared" / "paper" / "SIPE-CVPR2022.txt"


@pytest.mark.skipif(not PAPER_TEXT.is_file(), reason=f"the paper's text is not at {PAPER_TEXT}")
def test_paper_numbers_are_transcribed_from_the_paper():
    """Every number of Tables 1, 2, 3 and 5 in paper_results.csv stands in the paper's table row of the same
    method (the row's first word), so a mistyped number fails here rather than in a claims table."""
    lines = PAPER_TEXT.read_text(encoding="utf-8").splitlines()
    rows: dict[str, list[str]] = {}
    for line in lines:
        if "|" in line:
            first = re.split(r"[\s\[|(]", line.strip(), maxsplit=1)[0]
            rows.setdefault(first, []).append(line)
    df = load_paper_results()
    checked = 0
    for r in df[df["table"].isin(["table1", "table2", "table3", "table5"])].itertuples():
        method = re.split(r"[\s(]", r.row, maxsplit=1)[0]
        numbers = {n for line in rows.get(method, []) for n in re.findall(r"(?<![\d.])\d+\.\d(?![\d.])", line)}
        assert f"{r.value:.1f}" in numbers, f"{r.table} {r.row} {r.metric} = {r.value} is not in the paper's {method!r} rows"
        checked += 1
    assert checked == 84


def test_one_seed_fig8_and_fig1_claims_get_bootstrap_intervals(tmp_path: Path):
    cfg = get_profile("smoke")
    rng = np.random.default_rng(3)
    base = np.stack([_confusion(rng) for _ in range(12)])
    better = base.copy()
    better[:, np.arange(4), np.arange(4)] += 50
    arrays, rows = {}, []
    for t in cfg.study.fig8_thresholds:
        key = f"labels@threshold:{t:g}"
        arrays[f"train/{key}/estimated"] = np.stack([base, base], 1)
        rows.append(_row("sipe", 0, key, "estimated", "train", 30.0 + t))
    arrays["train/is_cam/estimated"] = np.stack([better, better], 1)
    arrays["train/labels@argmax:1/estimated"] = np.stack([base, base], 1)
    rows += [_row("sipe", 0, "is_cam", "estimated", "train", 45.0), _row("sipe", 0, "labels@argmax:1", "estimated", "train", 30.5)]
    (tmp_path / "confusions").mkdir()
    np.savez(tmp_path / "confusions" / "sipe-s0.npz", **arrays)
    pairs = pd.DataFrame({"id": [f"i{k}" for k in range(15)], "seed": 1, "centre_mean": rng.uniform(0.0, 0.2, 15),
                          "prototype_mean": rng.uniform(0.5, 0.8, 15), "centroid_mean": [np.nan, *rng.uniform(0.2, 0.4, 14)]})
    other_seed = pairs.assign(seed=0, prototype_mean=pairs["centre_mean"] - 0.5)
    pd.concat([other_seed, pairs]).to_csv(tmp_path / f"{tables.FIG1_PAIRS}.csv", index=False)
    r = loading.StudyResults(pd.DataFrame(rows, columns=list(RESULT_COLUMNS)), {"sipe-s0": {"variant": "sipe", "code_changed": []}},
                             tmp_path, "train")
    fig1 = pd.DataFrame([{"row": row, "quantity": "mean_cosine", "variant": "cam", "seed": 1, "split": "train",
                          "reading": "", "value": v} for row, v in (("prototype", 0.65), ("class centre", 0.1),
                                                                    (tables.FIG1_CENTROID, 0.3))])
    out = claims.study_claims(r, cfg, {"fig8": tables.tidy("fig8", r, cfg), "fig1": fig1}).set_index("claim")
    structure = out.loc["Structure-aware seeds beat the best CAM threshold"]
    assert structure["ci_low"] > 0 and structure["verdict"] == "holds"
    argmax = out.loc["CAM argmax beats the best CAM threshold"]
    assert argmax["ci_high"] == pytest.approx(0.0) and argmax["verdict"] == claims.NOT_TESTABLE, \
        "alpha = 1 makes argmax the sweep's t = 0.5: the claim is decided by construction"
    proto = out.loc["The image-specific prototype is closer to its image's pixels than the class centre"]
    assert 0.3 < proto["ci_low"] < proto["ci_high"] < 0.8 and proto["verdict"] == "holds", "the interval of the claim's seed (1)"
    centroid = out.loc["The image-specific prototype is closer to its image's pixels than the class's centroid over other images"]
    assert 0.1 < centroid["ci_low"] < centroid["ci_high"] < 0.6 and centroid["verdict"] == "holds", \
        "the pair without a centroid (nan) is left out of the interval"


def test_bootstrap_of_paired_items():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    assert intervals.bootstrap_claim([intervals.paired_evidence(a, a - 1.0)], samples=100) == (1.0, 1.0, 1.0)
    delta, lo, hi = intervals.bootstrap_claim([intervals.paired_evidence(a, np.zeros(4))], samples=400)
    assert delta == 2.5 and 1.0 <= lo < delta < hi <= 4.0
    with pytest.raises(ValueError, match="equal-length"):
        intervals.bootstrap_claim([intervals.paired_evidence(a, a[:2])])


def test_table2_summary_shows_the_server_only_test_column_as_the_papers_alone():
    table = pd.DataFrame([{"row": "SIPE (ResNet101)", "quantity": "val_miou", "variant": "sipe", "seed": 0,
                           "split": "val", "value": 50.0}])
    shown = tables.summary("table2", table)
    assert ("test_miou", "paper") in shown.columns and ("test_miou", "ours") not in shown.columns
    assert shown.loc["SIPE (ResNet101)", ("test_miou", "paper")] == "69.7"
    assert shown.loc["SIPE (ResNet101)", ("val_miou", "ours")] == "50.0 (n=1)"


def test_summary_of_a_table_with_no_rows_and_no_paper_numbers_is_empty():
    from sipe.study import segresults

    shown = tables.summary("pseudo_labels", segresults.empty_table())
    assert shown.empty and shown.columns.nlevels == 2
    t2 = tables.summary("table2", segresults.empty_table())
    assert ("val_miou", "paper") in t2.columns and t2.columns[0] == ("supervision", "paper")
    assert t2.loc["EPS CVPR21 (ResNet101)", ("supervision", "paper")] == "I+S"
    assert t2.loc["IRN CVPR19 (ResNet50)", ("supervision", "paper")] == "I"
    assert ("supervision", "paper") not in tables.summary("table1", segresults.empty_table()).columns


def test_study_setting_names_each_departure_from_the_paper(synthetic_root: Path, tmp_path: Path) -> None:
    from sipe.study.chapters import Study

    def setting(profile: str, **over) -> str:
        cfg = get_profile(profile, **{"data.root": str(synthetic_root), **over})
        return Study(cfg, tmp_path / "work", tmp_path / "results").setting()

    subset = setting("subset")
    assert "maps in bfloat16 (paper: float32)" in subset
    counted = re.search(r"; mIoU over (\d+) of the 21 classes( \(absent from its labels: [a-z, ]+\))?;", subset)
    assert counted and 2 <= int(counted[1]) <= 21
    assert "map scales 1, 0.5, 1.5 (paper: 1, 0.5, 1.5, 2)" in subset
    assert "backbone efficientnet_lite0 (paper: ResNet-50)" in subset
    assert "maps in float32;" in setting("subset", **{"infer.precision": "float32"})
    paper = setting("paper")
    assert "maps in float32;" in paper and "bfloat16" not in paper and "map scales" not in paper and "(paper: ResNet-50)" not in paper


def test_claims_pair_the_two_cells_by_seed_value_not_by_position():
    """SC-CAM has seeds 16 and 17 only: SIPE's seed 15 must not be set against SC-CAM's seed 16."""
    values = {("SIPE", 15): 40.0, ("SIPE", 16): 43.0, ("SIPE", 17): 45.0,
              (tables.SCCAM_ROW, 16): 41.0, (tables.SCCAM_ROW, 17): 42.0}
    t1 = pd.DataFrame([{"row": row, "quantity": "loc_maps_miou", "variant": "", "seed": seed, "split": "train",
                        "reading": "", "value": v} for (row, seed), v in values.items()])
    seen = []
    out = claims.claims({"table1": t1}, lambda c, seed: seen.append(seed)).set_index("claim")
    beat = out.loc["SIPE beats SC-CAM (localization maps)"]
    assert beat["n_seeds"] == 2 and beat["ours_mean"] == pytest.approx(2.5)
    assert beat["ours_std"] == pytest.approx(np.std([2.0, 3.0], ddof=1))
    one = claims.claims({"table1": t1[t1["seed"] != 17]}, lambda c, seed: seen.append(seed)).set_index("claim")
    assert one.loc["SIPE beats SC-CAM (localization maps)", "ours_mean"] == pytest.approx(2.0) and 16 in seen
    with pytest.raises(ValueError, match="several values for one seed"):
        claims.claims({"table1": pd.concat([t1, t1.iloc[:1]])})


@pytest.mark.parametrize("alpha", [1.0, 2.0, 0.5, 4.0])
def test_argmax_threshold_solves_t_equals_one_minus_t_to_the_alpha(alpha):
    t = tables.argmax_threshold(alpha)
    assert 0 < t < 1 and t == pytest.approx((1 - t) ** alpha, abs=1e-9)
    assert tables.argmax_threshold(1.0) == pytest.approx(0.5) and tables.argmax_threshold(2.0) == pytest.approx((3 - 5 ** 0.5) / 2)


def test_verdict_note_counts_verdicts_and_names_failing_and_mixed_claims():
    frame = pd.DataFrame({"claim": ["a", "b", "c", "d", "e"],
                          "verdict": ["holds", "fails", "mixed", "holds", claims.NOT_TESTABLE]})
    note = notes.verdict_note(frame)
    assert note.startswith("Of the 5 claims this chapter checks, 2 hold, 1 is mixed, 1 fails, 1 is not testable here.")
    assert note.endswith("Failing: b. Mixed: c.")
    assert notes.verdict_note(frame, "the study checks", name_claims=False) == \
        "Of the 5 claims the study checks, 2 hold, 1 is mixed, 1 fails, 1 is not testable here."
    shown = claims.claims_display(pd.DataFrame(
        [["x", "Table 1", 8.5, 5.0, 1.0, 3, 4.2, 5.9, 5.0 / 8.5, 4.2 / 8.5, 5.9 / 8.5, "holds", claims.AT_LEAST_HALF, "03"],
         ["y", "Table 5", 1.6, 4.8, np.nan, 1, np.nan, np.nan, np.nan, np.nan, np.nan, claims.NO_INTERVAL, np.nan, "05"]],
        columns=claims.CLAIM_COLUMNS))
    assert shown.iloc[0].tolist() == ["x", "Table 1", "+8.5", "+5.0 ± 1.0 (n=3)", "[+4.2, +5.9]", "59% [49%, 69%]",
                                      "holds", claims.AT_LEAST_HALF, "03"]
    assert shown.iloc[1].tolist() == ["y", "Table 5", "+1.6", "+4.8 (n=1)", "–", "–", claims.NO_INTERVAL, "–", "05"]
    assert notes.verdict_note(shown, name_claims=False) == "Of the 2 claims this chapter checks, 1 holds, 1 has no " \
        "interval to decide it. Share of the paper's effect reproduced (claims with an interval and a paper difference): >= 50% 1."


def test_code_note_gives_one_diff_per_revision_and_changed_files():
    def unit(variant: str, rev: str, files: list[str]) -> dict:
        return {"variant": variant, "git_revision": rev, "profile": "subset", "code_changed": ["maps"],
                "code_changed_files": files}
    units = {"sipe-s15": unit("sipe", "a" * 40, ["sipe/stages/maps.py"]), "sipe-s16": unit("sipe", "a" * 40, ["sipe/stages/maps.py"]),
             "sipe-s17": unit("sipe", "b" * 40, ["sipe/stages/maps.py"])}
    r = loading.StudyResults(pd.DataFrame(columns=list(RESULT_COLUMNS)), units, Path("."), "train")
    note = notes.code_note(r, ["sipe"])
    assert note.count("git diff") == 2
    assert f"sipe-s15, sipe-s16: maps stage, `git diff {'a' * 12} -- sipe/stages/maps.py`" in note
    assert "--recompute --units sipe-s15 sipe-s16 sipe-s17`" in note


def test_study_foreground_share_counts_valid_ground_truth_pixels(synthetic_root: Path, tmp_path: Path) -> None:
    from sipe.data import voc
    from sipe.study.chapters import Study

    cfg = get_profile("smoke", **{"data.root": str(synthetic_root)})
    masks = [voc.load_mask(synthetic_root, i) for i in voc.read_split(synthetic_root, cfg.data.train_split)[: cfg.data.max_images]]
    fg = sum(int(((m > 0) & (m != 255)).sum()) for m in masks)
    valid = sum(int((m != 255).sum()) for m in masks)
    share = Study(cfg, tmp_path / "work", tmp_path / "results").foreground_share()
    assert 0 < share < 1 and share == pytest.approx(fg / valid)


def test_core_study_note_sums_the_core_plan_as_run(synthetic_root: Path, tmp_path: Path) -> None:
    from sipe.study import pipeline
    from sipe.infra.config import SCCAM
    from sipe.study.chapters import Study, core_plan

    cfg = get_profile("smoke", **{"data.root": str(synthetic_root)})
    core = core_plan(cfg)
    assert core and all(u.variant != SCCAM for u in core) and len(core) == len(pipeline.plan(cfg)) - sum(
        u.variant == SCCAM for u in pipeline.plan(cfg))
    times = pd.DataFrame([{"unit": u.name, "stage": st, "seconds": 60.0} for u in core[1:] for st in ("train", "maps_eval")]
                         + [{"unit": f"{SCCAM}-s0", "stage": "train_round1", "seconds": 6000.0}])
    note = Study(cfg, tmp_path / "work", tmp_path / "results").core_study_note(times)
    assert f"took {2 * (len(core) - 1)} min" in note and note.endswith(f"not computed yet: {core[0].name}.")


def test_seed_locating_note_places_structure_aware_seeds_on_each_seeds_curve():
    rows = []
    for seed, curve, ours in ((15, {0.3: 30.0, 0.4: 36.0, 0.5: 33.0}, 35.0), (16, {0.3: 31.0, 0.4: 34.0, 0.5: 37.0}, 32.0)):
        rows += [{"row": f"CAM threshold t = {t:g}", "seed": seed, "value": v} for t, v in curve.items()]
        rows += [{"row": "Structure-aware seeds", "seed": seed, "value": ours},
                 {"row": tables.FIG8_BEST, "seed": seed, "value": max(curve.values())}]
    note = notes.seed_locating_note(pd.DataFrame(rows))
    assert note.startswith("Structure-aware seeds reach 33.5 mIoU (n=2), above 1-2 of the 3 thresholds of the sweep, "
                           "and 3.0 below the best threshold (t = 0.4-0.5 by seed)")
    assert "for every seed" in note and "by 5.3" in note
    rows[-2]["value"] = 40.0
    note = notes.seed_locating_note(pd.DataFrame(rows))
    assert "above 2-3 of the 3" in note and "1.0 above the best" in note and "for every seed" not in note
    assert notes.seed_locating_note(pd.DataFrame(rows[:3])) == ""


def test_crf_void_note_measures_the_pixels_void_ignored_drops(tmp_path):
    (tmp_path / "confusions").mkdir()
    conf = np.zeros((2, 2, 3, 3), dtype=np.int64)
    conf[:, 0] = np.diag([30, 10, 0])
    conf[:, 1] = np.diag([20, 5, 0])
    np.savez(tmp_path / "confusions" / "sipe-s15.npz", **{"train/is_cam/crf": conf})
    conf[:, 1] = np.diag([30, 8, 0])
    np.savez(tmp_path / "confusions" / "sipe-s16.npz", **{"train/is_cam/crf": conf})
    rows = pd.DataFrame([{"variant": "sipe", "reading": "is_cam", "background": "crf_void_bg", "split": "train",
                          "quantity": "miou", "seed": s, "value": 50.0, "threshold": np.nan} for s in (15, 16, 17)])
    r = loading.StudyResults(rows=rows, units={}, results_dir=tmp_path, eval_split="train")
    share = notes.crf_void_share(r, "sipe", "is_cam")
    assert share.index.tolist() == [15, 16] and share.tolist() == pytest.approx([37.5, 5.0])
    note = notes.crf_void_note(r, {"SIPE": ("sipe", "is_cam"), "the CAM baseline": ("cam", "cam_irn")})
    assert "SIPE 21% (5-38% by seed)." in note and "CAM baseline" not in note
    assert notes.crf_void_note(r, {"the CAM baseline": ("cam", "cam_irn")}) == ""


def test_training_summary_reads_the_last_tenth_of_each_log() -> None:
    steps = np.arange(1, 21)
    log = pd.DataFrame({"step": steps, "loss": np.where(steps > 18, 0.5, 2.0), "images_per_s": steps.astype(float),
                        "seed_fg_share": np.where(steps > 18, 0.3, 0.9)})
    s = tables.training_summary({"sipe-s0": log, "cam-s0": log.drop(columns="seed_fg_share")}).set_index("unit")
    assert s.loc["sipe-s0", "steps"] == 20 and s.loc["sipe-s0", "final loss"] == pytest.approx(0.5)
    assert s.loc["sipe-s0", "training seeds called foreground"] == pytest.approx(0.3)
    assert s.loc["sipe-s0", "images/s (median)"] == pytest.approx(10.5)
    assert np.isnan(s.loc["cam-s0", "training seeds called foreground"])


def test_fig1_table_weights_the_share_by_pixels_and_keeps_every_pair() -> None:
    frame = pd.DataFrame({"centre_mean": [0.2, 0.4], "prototype_mean": [0.6, np.nan], "centroid_mean": [0.1, 0.3],
                          "n_pixels": [10, 30], "share_closer_to_prototype": [1.0, 0.0]})
    table, pairs = tables.fig1_table({15: frame, 16: frame}, "train")
    t = table.set_index(["row", "seed"])["value"]
    assert t[("class centre", 15)] == pytest.approx(0.3) and t[("prototype", 16)] == pytest.approx(0.6)
    assert t[("share of pixels closer to the prototype", 15)] == pytest.approx(0.25)
    assert list(table.columns) == records.TIDY_COLUMNS and len(pairs) == 4 and set(pairs["seed"]) == {15, 16}
def _two_class(fg: int, tp: int, fp: int, bg: int = 200) -> np.ndarray:
    """(2,2) confusion of one image: rows ground truth (background, object), columns prediction."""
    return np.array([[bg - fp, fp], [fg - tp, tp]])


def _seed_confusions(rng: np.random.Generator, n: int = 80, every: int = 0, few: bool = False):
    """(better, baseline) per-image confusions of one seed: `better` finds `every` more object pixels in every
    image; or (few) finds 2 fewer in every image and 2,200 more in one large image."""
    fg, fp = rng.integers(40, 60, n), rng.integers(5, 15, n)
    tp = (fg * rng.uniform(0.4, 0.6, n)).astype(int)
    base = np.stack([_two_class(f, t, p) for f, t, p in zip(fg, tp, fp)])
    better = base.copy()
    shift = -2 if few else every
    better[:, 1, 1] += shift
    better[:, 1, 0] -= shift
    if few:
        base = np.concatenate([base, _two_class(3000, 600, 10)[None]])
        better = np.concatenate([better, _two_class(3000, 2800, 10)[None]])
    return better, base


def test_the_interval_covers_images_as_well_as_seeds():
    """Three seeds agreeing closely: an effect carried by one image in each gets a wide interval (and no verdict),
    one present in every image a narrow one; seeds that disagree widen it whatever the images say."""
    rng = np.random.default_rng(0)
    few = [intervals.confusion_evidence(*_seed_confusions(rng, few=True)) for _ in range(3)]
    every = [intervals.confusion_evidence(*_seed_confusions(rng, every=4)) for _ in range(3)]
    for evidence in (few, every):
        deltas = [e.delta(np.ones((1, e.size)))[0] for e in evidence]
        assert min(deltas) > 0 and np.std(deltas, ddof=1) < 0.2, "consistent over seeds"
        assert claims.verdict(deltas, 1) == "holds", "the seeds alone would call both effects established"
    delta, lo, hi = intervals.bootstrap_claim(few, samples=1000)
    assert 15 < delta < 20 and lo < 0 < hi and hi - lo > 20
    assert claims.verdict([delta] * 3, 1, (lo, hi)) == "mixed"
    delta, lo, hi = intervals.bootstrap_claim(every, samples=1000)
    assert 0 < lo < delta < hi and hi - lo < 0.5
    assert claims.verdict([delta] * 3, 1, (lo, hi)) == "holds"
    disagree = every[:2] + [intervals.confusion_evidence(*_seed_confusions(rng, every=-4))]
    _, lo, hi = intervals.bootstrap_claim(disagree, samples=1000)
    assert lo < 0 < hi, "one seed of three with the opposite effect"


def test_one_seed_interval_is_the_bootstrap_over_its_images():
    rng = np.random.default_rng(5)
    better, base = _seed_confusions(rng, every=4)
    delta, lo, hi = intervals.bootstrap_claim([intervals.confusion_evidence(better, base)], samples=300, seed=2)
    assert delta == pytest.approx(miou_result(better.sum(0)).miou - miou_result(base.sum(0)).miou) and lo < delta < hi
    with pytest.raises(ValueError, match="no seed"):
        intervals.bootstrap_claim([])


@pytest.mark.parametrize("paper, ci, unchanged, expected", [
    (8.5, (9.0, 12.0), False, (9.0 / 8.5, 12.0 / 8.5, claims.IN_FULL)),
    (8.5, (4.5, 6.0), False, (4.5 / 8.5, 6.0 / 8.5, claims.AT_LEAST_HALF)),
    (8.5, (4.0, 6.0), False, (4.0 / 8.5, 6.0 / 8.5, claims.UNDECIDED)),
    (8.5, (1.0, 4.0), False, (1.0 / 8.5, 4.0 / 8.5, claims.SMALLER)),
    (8.5, (-3.0, -1.0), False, (-3.0 / 8.5, -1.0 / 8.5, claims.SMALLER)),     # the opposite effect
    (-2.0, (-3.0, -2.5), False, (1.25, 1.5, claims.IN_FULL)),                  # the paper's delta is negative
    (-0.3, (-0.5, 0.5), True, None),                                            # a claim of no change
    (float("nan"), (1.0, 2.0), False, None),
    (8.5, None, False, None),
])
def test_magnitude_is_the_share_of_the_papers_effect_the_interval_shows(paper, ci, unchanged, expected):
    got = claims.magnitude(paper, ci, unchanged)
    if expected is None:
        assert got is None
    else:
        assert got[:2] == pytest.approx(expected[:2]) and got[2] == expected[2]


def test_claims_take_the_interval_over_images_and_seeds():
    rng = np.random.default_rng(1)
    pairs = {s: _seed_confusions(rng, few=True) for s in (15, 16, 17)}
    rows = lambda name, i: pd.DataFrame([{"row": name, "quantity": "loc_maps_miou", "seed": s,
                                          "value": miou_result(p[i].sum(0)).miou} for s, p in pairs.items()])
    t4 = pd.concat([rows("CAM + IPE + GSC", 0), rows("CAM + IPE", 1)])
    claim = [c for c in claims.CLAIMS if c.claim == "GSC improves over CAM + IPE"]
    seeds_only = claims.claims({"table4": t4}, None, claim).iloc[0]
    assert seeds_only["verdict"] == "holds" and np.isnan(seeds_only["ci_low"]) and np.isnan(seeds_only["share"])
    out = claims.claims({"table4": t4}, lambda c, s: intervals.confusion_evidence(*pairs[s]), claim).iloc[0]
    assert out["n_seeds"] == 3 and out["ci_low"] < 0 < out["ci_high"] and out["verdict"] == "mixed"
    assert out["share"] == pytest.approx(out["ours_mean"] / 5.4) and out["share_low"] < 0 < 1 < out["share_high"]
    assert out["magnitude"] == claims.UNDECIDED
