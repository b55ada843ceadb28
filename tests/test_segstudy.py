"""The study's segmentation unit (sipe.study.segstudy) on the synthetic data: plan, results rows and files, reruns,
tidy tables and claims, and notebook 10 through the papermill runner."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sipe.study import claims, loading, notes, paper, pipeline, plan, records, segresults, segstudy, tables
from sipe.__main__ import main as cli_main
from sipe.infra import provenance
from sipe.infra.config import ConfigError, get_profile
from sipe.data import voc
from sipe.infra.errors import UnitNotComputedError
from sipe.study.chapters import setup

REPO = Path(__file__).resolve().parents[1]


def smoke(root: Path, **extra):
    return get_profile("smoke", **{"data.root": str(root), "device": "cpu", "study.seeds": (0,), **extra})


def test_segmentation_units_come_after_the_classification_units(synthetic_root: Path) -> None:
    cfg = get_profile("smoke", **{"data.root": str(synthetic_root)})
    units = plan.plan(cfg)
    assert units[: len(pipeline.plan(cfg))] == pipeline.plan(cfg)
    assert [u.name for u in units[len(pipeline.plan(cfg)):]] == ["segmentation-s0", "segmentation-s1"]
    assert [u.name for u in segstudy.plan(cfg.override(**{"study.multi_seed": ("sipe",)}))] == ["segmentation-s0"]
    assert segstudy.plan(cfg.override(**{"study.variants": ("cam",)})) == []
    with pytest.raises(ValueError, match="sipe-s0 is not a segmentation unit"):
        segstudy.run_unit(cfg, "work", pipeline.Unit("sipe", 0))


@pytest.mark.parametrize("main_rank", [True, False])
def test_under_torchrun_every_rank_makes_the_maps_and_rank0_alone_runs_the_rest(synthetic_root: Path, monkeypatch,
                                                                                main_rank: bool) -> None:
    from sipe.infra import distributed

    cfg = get_profile("smoke", **{"data.root": str(synthetic_root)})
    calls: list[tuple] = []
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "is_main", lambda: main_rank)
    monkeypatch.setattr(pipeline, "maps", lambda c, w, v, m, p: calls.append(("maps", v, c.train.seed, c.infer.split)))
    monkeypatch.setattr(plan, "CLASSIFICATION", replace(plan.CLASSIFICATION,
                                                        run=lambda c, w, u, r, p: calls.append(("unit", u.name))))
    seg = plan.KINDS[segstudy.UNIT_VARIANT]
    monkeypatch.setitem(plan.KINDS, segstudy.UNIT_VARIANT, replace(seg, run=lambda c, w, u, r, p: calls.append(("seg", u.name))))
    units = [pipeline.Unit(segstudy.UNIT_VARIANT, 0), pipeline.Unit("sipe", 0), pipeline.Unit(segstudy.UNIT_VARIANT, 1)]
    plan.run_plan(cfg, "work", "results", units, progress=False)
    maps = [("maps", v, s, "train_aug") for s in (0, 1) for v in ("sipe", "cam")]
    assert calls == [("unit", "sipe-s0"), *maps, *([("seg", "segmentation-s0"), ("seg", "segmentation-s1")] * main_rank)]


def test_stages_command_names_the_segmentation_units(synthetic_root: Path, tmp_path: Path, capsys) -> None:
    code = cli_main(["stages", "--profile", "smoke", "--data-root", str(synthetic_root), "--work-dir", str(tmp_path),
                     "--device", "cpu", "--units", "segmentation-s9"])
    assert code == 2
    assert "segmentation-s0" in capsys.readouterr().err


def test_chapter_claims_name_cells_of_the_segmentation_tables(synthetic_root: Path) -> None:
    cfg = smoke(synthetic_root)
    cells = {(n, c.row, c.quantity) for n in tables.SEGMENTATION_TABLES for c in tables.segmentation_cells(n, cfg)}
    chapter = [c for c in claims.CLAIMS if c.evidence == segresults.NOTEBOOK]
    assert len(chapter) == 3
    for c in chapter:
        assert c.better in cells and c.baseline in cells
    beats = chapter[-1]
    assert beats.paper is not None
    delta = paper.paper_value(*beats.paper[0]) - paper.paper_value(*beats.paper[1])
    frame = claims.claims({}, None, chapter)
    assert frame["paper_delta"].tolist()[-1] == pytest.approx(delta) and frame["verdict"].eq("not yet run").all()
    assert frame["paper_delta"].isna().tolist()[:2] == [True, True]


def test_a_study_that_reads_finished_units_says_the_unit_is_not_computed(synthetic_root: Path, tmp_path: Path) -> None:
    study = setup("smoke", str(synthetic_root), str(tmp_path / "work"), 0, "cpu", results_dir=str(tmp_path / "res"),
                  compute=False)
    with pytest.raises(UnitNotComputedError, match=r"segmentation-s0.*compute=False.*python -m sipe stages"):
        segresults.results(study)
    with pytest.raises(UnitNotComputedError, match="table3.csv missing"):
        segstudy.table3(study.cfg, study.work_dir, study.results_dir, compute=False)
    with pytest.raises(ConfigError, match="must include 'sipe'"):
        segresults.results(setup("smoke", str(synthetic_root), str(tmp_path / "work"), 0, "cpu",
                               **{"study.variants": ("cam",)}))


def test_pseudo_label_rows_name_each_stage_reading_and_the_chapter_code_is_outside_the_unit_hash(synthetic_root: Path) -> None:
    cells = {(c.row, c.quantity): c.reading for c in tables.segmentation_cells("pseudo_labels", smoke(synthetic_root))}
    cam = segstudy.irn.PROTOCOLS["irn"]
    assert f"background {cam.eval_threshold:g})" in cells[("Baseline (CAM)", "maps_miou")]
    assert f"background {cam.conf_fg_threshold:g} / {cam.conf_bg_threshold:g})" in cells[("Baseline (CAM)", "ir_labels_miou")]
    assert f"background {cam.rw_bg_threshold:g} after the walk)" in cells[("Baseline (CAM)", "random_walk_miou")]
    assert len({cells[("SIPE", f"{s}_miou")] for s in tables.PSEUDO_STAGES}) == 3
    hashed = {p.relative_to(REPO).as_posix() for pattern in segstudy.CODE_SOURCES for p in REPO.glob(pattern)}
    assert "sipe/study/segstudy.py" in hashed and "sipe/study/segresults.py" not in hashed


def test_ratio_and_figure_images() -> None:
    ratio = tables.ratio_per_seed(pd.Series({0: 30.0, 1: 20.0}), pd.Series({0: 60.0, 1: 0.0}))
    assert ratio.to_dict() == {0: 50.0}
    assert "not computed yet" in segresults.ratio_note(segresults.empty_table())


def test_coco_root_is_taken_from_the_repository_and_absent_layouts_give_none(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("SIPE_COCO_ROOT", raising=False)
    assert segstudy.coco_root("") is None
    assert segstudy.coco_root(str(tmp_path)) is None
    (tmp_path / "cls_labels_coco.npy").write_bytes(b"")
    assert segstudy.coco_root(str(tmp_path)) == tmp_path
    monkeypatch.setenv("SIPE_COCO_ROOT", str(tmp_path))
    assert segstudy.coco_root() == tmp_path


# --------------------------------------------------------------------------------- the unit end to end


@pytest.fixture(scope="module")
def unit_run(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("segstudy") / "work"
    cfg = smoke(synthetic_root)
    csv = segstudy.run_unit(cfg, work, pipeline.Unit(segstudy.UNIT_VARIANT, 0), work / "results", progress=False)
    return {"cfg": cfg, "work": work, "results": work / "results", "csv": csv}


@pytest.mark.slow
def test_the_unit_writes_its_rows_provenance_and_confusions(unit_run: dict, synthetic_root: Path) -> None:
    rows = pd.read_csv(unit_run["csv"])
    assert list(rows.columns) == list(pipeline.RESULT_COLUMNS)
    miou = rows[rows["quantity"] == "miou"]
    assert miou["value"].between(0, 100).all()
    got = set(zip(miou["variant"], miou["reading"], miou["split"]))
    for v in ("sipe", "cam"):
        assert {(v, f"pseudo/{s}", "train") for s in ("maps", "ir_labels", "random_walk")} <= got
    for labels in ("sipe", segstudy.GT_LABELS):
        assert {(labels, f"segnet/{m}", "val") for m in segstudy.MODE_NAMES} <= got
    assert set(rows["n_images"].dropna()) == {4.0}
    assert rows[rows["quantity"] == "void_pct"]["value"].between(0, 100).all()

    record = json.loads(unit_run["csv"].with_suffix(".json").read_text())
    assert record["variant"] == "segmentation" and record["refined"] == ["sipe", "cam"]
    assert set(segstudy.unit_identity(unit_run["cfg"], 0)) <= set(record)
    stages = {f"{k}_{v}" for k in ("ir_labels", "irn", "random_walk") for v in ("sipe", "cam")}
    stages |= {f"{k}_{v}" for k in ("segnet", "predict") for v in ("sipe", segstudy.GT_LABELS)}
    assert stages | {"maps_sipe", "maps_cam"} <= set(record["wall_seconds"]) and set(record["stages"]) >= stages
    for folder in record["stages"].values():
        path = unit_run["work"] / folder
        assert path.is_dir() and (folder.startswith("maps/") or json.loads((path / "wall.json").read_text())["finished"])
    assert record["stages"]["maps_sipe"].startswith("maps/sipe-s0-train_aug-")

    eval_ids = [i for i in voc.read_split(synthetic_root, "train_aug")[:8] if i in voc.read_split(synthetic_root, "train")]
    with np.load(unit_run["results"] / "confusions" / "segmentation-s0.npz") as z:
        assert z["train/ids"].tolist() == eval_ids
        assert z["train/sipe/pseudo/random_walk"].shape == (len(eval_ids), 21, 21)
        assert z["val/ground_truth/segnet/ms_crf"].shape == (4, 21, 21)


@pytest.mark.slow
def test_a_rerun_skips_the_unit_and_other_data_makes_it_stale(unit_run: dict) -> None:
    csv, cfg = unit_run["csv"], unit_run["cfg"]
    mtime = csv.stat().st_mtime_ns
    code = cli_main(["stages", "--profile", "smoke", "--data-root", str(cfg.data.root), "--work-dir", str(unit_run["work"]),
                     "--device", "cpu", "--set", "study.seeds=0", "--units", "segmentation-s0", "--no-progress"])
    assert code == 0 and csv.stat().st_mtime_ns == mtime
    units = segstudy.plan(cfg)
    loaded = loading.load(cfg, unit_run["results"], units)
    assert list(loaded.units) == ["segmentation-s0"] and not loaded.code_changed(["segmentation"])
    assert loading.load(cfg.override(**{"data.max_images": 7}), unit_run["results"], units).stale == ["segmentation-s0"]


@pytest.mark.slow
def test_a_change_to_the_segmentation_code_is_named_with_its_files(unit_run: dict, monkeypatch) -> None:
    cfg, units = unit_run["cfg"], segstudy.plan(unit_run["cfg"])
    asked = []

    def source_code_changes(rev: str, patterns) -> list[str]:
        asked.append(tuple(patterns))
        return ["sipe/segmentation/irn.py"]

    monkeypatch.setattr(provenance, "source_code_changes", source_code_changes)
    assert not loading.load(cfg, unit_run["results"], units).code_changed(["segmentation"]) and asked == []
    moved = {**segstudy.code_hashes(), "segmentation": "0" * 12}
    monkeypatch.setitem(plan.KINDS, segstudy.UNIT_VARIANT, replace(plan.KINDS[segstudy.UNIT_VARIANT], code_hashes=lambda: moved))
    loaded = loading.load(cfg, unit_run["results"], units)
    assert asked == [segstudy.CODE_SOURCES] and loaded.code_changed(["segmentation"]) == ["segmentation-s0"]
    assert loaded.units["segmentation-s0"]["code_changed"] == ["segmentation"]
    note = notes.code_note(loaded, ["segmentation"])
    assert "segmentation-s0: segmentation stage, `git diff" in note and "-- sipe/segmentation/irn.py`" in note
    monkeypatch.setattr(provenance, "source_code_changes", lambda rev, patterns: None)
    assert loading.load(cfg, unit_run["results"], units).code_changed(["segmentation"]) == ["segmentation-s0"]


@pytest.mark.slow
def test_tidy_tables_summary_and_claims(unit_run: dict) -> None:
    cfg = unit_run["cfg"]
    study = setup("smoke", str(cfg.data.root), str(unit_run["work"]), 0, "cpu", compute=False)
    assert study.results_dir == unit_run["results"]
    r = segresults.results(study)
    t2, tp = study.table("table2", r), study.table("pseudo_labels", r)
    assert list(t2.columns) == records.TIDY_COLUMNS and (unit_run["results"] / "table2.csv").exists()
    assert set(tp["quantity"]) == {"maps_miou", "ir_labels_miou", "random_walk_miou", "ir_void_pct"}
    assert set(tp["row"]) == {"SIPE", "Baseline (CAM)"} and (tp["split"] == "train").all()
    ours = t2[(t2["row"] == segstudy.PAPER_ROW) & (t2["quantity"] == "val_miou")]
    rows = pd.read_csv(unit_run["csv"])
    expected = rows[(rows["variant"] == "sipe") & (rows["reading"] == "segnet/ms_crf") & (rows["quantity"] == "miou")]
    assert ours["value"].tolist() == pytest.approx(expected["value"].tolist())
    shown = tables.summary("table2", t2)
    assert shown.loc[segstudy.PAPER_ROW, ("val_miou", "paper")] == "68.8"
    assert shown.loc[segstudy.PAPER_ROW, ("val_miou", "ours")].endswith("(n=1)")
    claims = segresults.chapter_claims(r, cfg, {"table2": t2, "pseudo_labels": tp})
    assert len(claims) == 3 and (claims["n_seeds"] == 1).all() and claims["ci_low"].notna().all()
    assert not claims["verdict"].eq("not yet run").any()
    fig = segresults.figure6(study, r)
    assert len(fig.axes) == 4 * 4


@pytest.mark.slow
def test_table3_runs_the_coco_path_and_writes_its_rows(tmp_path: Path) -> None:
    from data_prep import make_coco
    from test_coco import write_raw

    root = make_coco.build(write_raw(tmp_path / "raw"), tmp_path / "coco", progress=False)
    cfg = segstudy.coco_config("smoke", root, 0, "cpu").override(**{"train.batch_size": 2, "model.pretrained": False})
    assert cfg.data.dataset == "coco" and cfg.study.variants == ("sipe",)
    table = segstudy.table3(cfg, tmp_path / "work", tmp_path / "results", progress=False)
    assert set(table["row"]) >= {segstudy.PAPER_ROW} and len(table) == 3 and table["value"].between(0, 100).all()
    assert (tmp_path / "work" / "coco" / "map_labels").is_dir()
    again = segstudy.table3(cfg, tmp_path / "work", tmp_path / "results", compute=False)
    assert again["value"].tolist() == pytest.approx(table["value"].tolist())
    shown = tables.summary("table3", table)
    assert shown.loc[segstudy.PAPER_ROW, ("val_miou", "paper")] == "40.6"


# --------------------------------------------------------------------------------- the subset budget


def test_the_subset_pseudo_labels_voc_train_and_the_paper_train_aug(synthetic_root: Path, monkeypatch) -> None:
    sets = {"data.root": str(synthetic_root), "device": "cpu"}
    subset, paper_cfg = get_profile("subset", **sets), get_profile("paper", **sets)
    assert segstudy.pseudo_images(subset) == ("train", None) and segstudy.reuses_unit_maps(subset)
    assert segstudy.pseudo_images(paper_cfg) == ("train_aug", None) and not segstudy.reuses_unit_maps(paper_cfg)
    assert segstudy.pseudo_images(smoke(synthetic_root)) == ("train_aug", 8)
    assert segstudy.map_readings(subset, "sipe") == pipeline.unit_seed_methods(subset, "sipe")
    assert segstudy.map_readings(paper_cfg, "sipe") == (pipeline.STRUCTURE,)
    identity = segstudy.unit_identity(subset, 15)
    assert identity["data_train"] == voc.fingerprint(synthetic_root, "train")
    subset = subset.override(**{"irn.pseudo_split": ""})
    assert segstudy.pseudo_images(subset) == ("train_aug", None)
    other = segstudy.unit_identity(subset, 15)
    assert other["config_hash"] != identity["config_hash"] and other["data_train"] != identity["data_train"]


def test_the_subset_unit_refines_the_classification_units_maps_of_train(synthetic_root: Path, tmp_path: Path,
                                                                         monkeypatch) -> None:
    cfg = get_profile("subset", **{"data.root": str(synthetic_root), "device": "cpu"})
    work = tmp_path / "work"
    expected = {}
    for v in ("sipe", "cam"):
        ucfg = pipeline.unit_config(cfg, pipeline.Unit(v, 16))
        final = pipeline.run_dir_for(ucfg, work, v) / "final.pt"
        final.parent.mkdir(parents=True)
        final.write_bytes(v.encode())
        expected[v] = pipeline.maps_dir_for(ucfg, work, v, pipeline.checkpoint_digest(final),
                                            pipeline.unit_seed_methods(cfg, v))
        expected[v].mkdir(parents=True)
        (expected[v] / "DONE").write_text(json.dumps({"seconds": 5.0}))

    def no_new_maps(*args, **kwargs):
        raise AssertionError("the segmentation unit made maps of its own")

    monkeypatch.setattr(pipeline, "maps", no_new_maps)
    st = segstudy._Stages(cfg, work, 16, progress=False)
    for v in ("sipe", "cam"):
        assert st.maps(v) == expected[v]
        assert st.folders[f"maps_{v}"].startswith(f"maps/{v}-s16-train-") and f"maps_{v}" not in st.wall
    train = voc.read_split(synthetic_root, "train")
    assert st.train_ids() == train and st.eval_ids() == train


def test_the_setting_says_which_images_are_pseudo_labelled(synthetic_root: Path) -> None:
    cfg = get_profile("subset", **{"data.root": str(synthetic_root), "device": "cpu"})
    text = segresults.setting(cfg)
    n_train = len(voc.read_split(synthetic_root, "train"))
    assert (f"pseudo labels for {n_train} train images of 1,464 (paper: the 10,582 train_aug images), refining the "
            "classification units' maps of them; IRN and both segmentation nets (on SIPE's pseudo labels, on ground "
            "truth) train on these images") in text
    assert "IRN boundary branch on efficientnet_lite0, crop 256, 10 epochs" in text
    assert "segmentation net: ASPP on efficientnet_lite0 (paper: DeepLab-v2 ResNet-101), crop 256, 12 epochs" in text
    paper_text = segresults.setting(get_profile("paper", **{"data.root": str(synthetic_root)}))
    assert "pseudo labels for 8 train_aug images of 10,582; IRN and both" in paper_text


@pytest.mark.slow
def test_a_unit_pseudo_labelling_the_evaluated_split_runs_on_the_classification_maps(synthetic_root: Path, tmp_path: Path,
                                                                                    monkeypatch) -> None:
    cfg, work = smoke(synthetic_root, **{"irn.pseudo_split": "train"}), tmp_path / "work"
    csv = segstudy.run_unit(cfg, work, pipeline.Unit(segstudy.UNIT_VARIANT, 0), work / "results", progress=False)
    pipeline.run_unit(cfg, work, pipeline.Unit("sipe", 0), work / "results", progress=False)
    record = json.loads(csv.with_suffix(".json").read_text())
    train_maps = sorted(p.name for p in (work / "maps").glob("sipe-s0-train-*"))
    assert len(train_maps) == 1 and record["stages"]["maps_sipe"] == f"maps/{train_maps[0]}"
    assert not {"maps_sipe", "maps_cam"} & set(record["wall_seconds"])
    rows = pd.read_csv(csv)
    pseudo = rows[rows["reading"].str.startswith("pseudo/") & (rows["quantity"] == "miou")]
    assert set(pseudo["n_images"]) == {4.0} and set(rows[rows["quantity"] == "train_loss_last10pct"]["split"]) == {"train"}
    with np.load(work / "results" / "confusions" / "segmentation-s0.npz") as z:
        assert z["train/ids"].tolist() == voc.read_split(synthetic_root, "train")


def test_the_subset_cpu_budget_counts_every_stage_of_the_unit(synthetic_root: Path) -> None:
    from sipe.segmentation import irn, network as segmentation

    cfg = get_profile("subset", **{"data.root": str(synthetic_root)})
    b = segresults.cpu_budget(cfg)
    n_train, n_val = len(voc.read_split(synthetic_root, "train")), len(voc.read_split(synthetic_root, "val"))
    irn_epochs, seg_epochs = cfg.irn.epochs, cfg.seg.epochs
    assert b["images"].tolist() == [n_train] * 4 + [n_val]
    assert b["passes"].tolist() == [2, 2 * irn_epochs, 2, 2 * seg_epochs, 2]
    assert b.loc[1, "cpu_min"] == pytest.approx(n_train * 2 * irn_epochs * irn.SUBSET_CPU_SECONDS["irn_epoch"] / 60, abs=0.05)
    hours = b["cpu_min"].sum() / 60
    assert f"total {hours:.1f} CPU-hours, {hours / 2:.1f}-{hours:.1f} h of wall time" in segresults.budget_note(cfg)
    assert segresults.cpu_budget(get_profile("paper", **{"data.root": str(synthetic_root)})).empty
    assert "not measured for profile smoke" in segresults.budget_note(smoke(synthetic_root))


def test_the_subset_unit_fits_the_budget_on_the_real_subset(real_root: Path) -> None:
    cfg = get_profile("subset", **{"data.root": str(real_root)})
    b = segresults.cpu_budget(cfg)
    assert b["images"].tolist() == [len(voc.read_split(real_root, "train"))] * 4 + [len(voc.read_split(real_root, "val"))]
    assert b["cpu_min"].sum() / 60 < 5.0


def test_the_coco_path_pseudo_labels_its_training_split_with_its_own_maps(tmp_path: Path) -> None:
    for profile in ("subset", "paper"):
        cfg = get_profile(profile, **{"data.root": str(tmp_path), "data.dataset": "coco", "data.num_classes": 80,
                                      "data.train_split": "train", "infer.split": "train", "data.max_images": 50})
        assert segstudy.pseudo_images(cfg) == ("train", 50) and not segstudy.reuses_unit_maps(cfg)
        assert segstudy.map_readings(cfg, "sipe") == (pipeline.STRUCTURE,)


def test_a_running_stage_keeps_its_wall_time_on_disk_and_a_resumed_one_adds_to_it(synthetic_root: Path, tmp_path: Path,
                                                                                  monkeypatch) -> None:
    import time

    monkeypatch.setattr(segstudy, "WALL_HEARTBEAT_S", 0.05)
    cfg = get_profile("smoke", **{"data.root": str(synthetic_root), "device": "cpu"})
    stages = segstudy._Stages(cfg, tmp_path, 0, progress=False)
    seen = []

    def killed(folder: Path) -> None:
        time.sleep(0.3)
        seen.append(json.loads((folder / segstudy.WALL_FILE).read_text()))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        stages.stage("nets", "demo", ("k",), killed)
    assert seen and 0.1 < seen[0]["seconds"] < 1.0 and not seen[0]["finished"]
    (folder,) = (tmp_path / segstudy.UNIT_VARIANT / "nets").iterdir()
    first = json.loads((folder / segstudy.WALL_FILE).read_text())
    assert not first["finished"] and first["seconds"] >= 0.3

    stages.stage("nets", "demo", ("k",), lambda folder: time.sleep(0.1))
    done = json.loads((folder / segstudy.WALL_FILE).read_text())
    assert done["finished"] and done["seconds"] >= first["seconds"] + 0.1
    assert stages.wall["nets_demo"] == done["seconds"]


def test_ratio_and_refinement_notes_read_every_reading_per_seed() -> None:
    def row(r: str, q: str, seed: int, v: float) -> dict:
        return {"row": r, "quantity": q, "variant": "", "seed": seed, "split": "val", "reading": "", "value": v}

    t2 = pd.DataFrame([row(tables.RATIO_ROW, "val_miou_ratio_pct", 0, 80.0),
                       row("SIPE pseudo labels, single scale", "val_miou", 0, 23.0), row("Fully supervised, single scale", "val_miou", 0, 25.0),
                       row("SIPE pseudo labels, multi-scale + flip", "val_miou", 0, 24.0), row("Fully supervised, multi-scale + flip", "val_miou", 0, 30.0)])
    note = segresults.ratio_note(t2)
    assert "ours 80.0 (n=1) %" in note and "single scale 92.0 (n=1) %" in note and "multi-scale + flip 80.0 (n=1) %" in note
    tp = pd.DataFrame([row("SIPE", "maps_miou", 0, 35.0), row("SIPE", "random_walk_miou", 0, 36.0),
                       row("SIPE", "maps_miou", 1, 34.0), row("SIPE", "random_walk_miou", 1, 34.5)])
    assert segresults.refinement_note(tp) == "The random walk moves the pseudo labels' mIoU by: SIPE 0.8 ± 0.4 (n=2) (34.5 -> 35.2)."
    unpaired = pd.concat([tp, pd.DataFrame([row("SIPE", "maps_miou", 2, 10.0)])])
    assert segresults.refinement_note(unpaired) == segresults.refinement_note(tp), "means over the paired seeds only"
    assert segresults.refinement_note(segresults.empty_table()) == "The random walk has not run yet."


def test_ir_labels_void_ignored_keep_every_class_of_the_ground_truth(synthetic_root: Path, tmp_path: Path) -> None:
    """The IR labels' void-ignored mIoU averages over the classes of the ground truth (`gt_pixels`, from the
    void-as-background confusion), so a class the IR labels leave all void scores 0 instead of dropping out."""
    stages = segstudy._Stages(smoke(synthetic_root), tmp_path, 0, progress=False)
    ir = np.zeros((1, 21, 21), np.int64)
    ir[0, 0, 0], ir[0, 8, 8] = 40, 15                 # background and cat right; every dog pixel (12) void
    gt_pixels = np.zeros(21, np.int64)
    gt_pixels[[0, 8, 12]] = 50, 15, 10
    assert stages.score(ir, "cam", "pseudo/ir_labels", "train", "void_ignored", gt_pixels=gt_pixels) == \
        pytest.approx(200.0 / 3)
    assert stages.score(ir, "cam", "pseudo/ir_labels", "train", "void_ignored") == pytest.approx(100.0)
