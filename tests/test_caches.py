"""Honest caches: stage keys (data fingerprint, checkpoint digest, non-result settings), folder locks, and
results that are published only for the configuration and data they came from."""
from __future__ import annotations

import json
import multiprocessing as mp
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sipe.study import loading, notes, pipeline, plan, records
from sipe.infra import provenance
from sipe.infra.config import get_profile
from sipe.data import voc
from sipe.data.synthetic import make_synthetic_voc
from sipe.infra.locks import FolderBusyError, folder_lock
from sipe.stages.maps import StaleMapsError, make_maps, maps_dir_for
from sipe.stages.train import run_dir_for, train_key


def tiny(root: Path, **extra):
    return get_profile("smoke", **{"data.root": str(root), "data.max_images": 4, "train.batch_size": 2,
                                   "train.max_steps": 1, "model.pretrained": False, "infer.max_images": 2,
                                   "study.selection_images": 2, "study.seeds": (0,), "study.variants": ("sipe",),
                                   "device": "cpu", **extra})


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    return make_synthetic_voc(tmp_path / "voc", n_images=9, size=(64, 80), seed=1)


def test_data_fingerprint_follows_ids_file_sizes_and_labels_not_the_folder(root: Path, tmp_path: Path) -> None:
    fp = voc.fingerprint(root, "train")
    moved = Path(shutil.copytree(root, tmp_path / "elsewhere"))
    assert voc.fingerprint(moved, "train") == fp
    ids = voc.read_split(moved, "train")
    assert voc.fingerprint(moved, "train", max_images=len(ids) - 1) != fp
    with voc.image_path(moved, ids[0]).open("ab") as f:
        f.write(b"\0")
    assert voc.fingerprint(moved, "train") != fp
    labels = voc.load_cls_labels(root)
    labels[ids[1]] = 1.0 - labels[ids[1]]
    np.save(voc.labels_path(root), labels, allow_pickle=True)
    assert voc.fingerprint(root, "train") != fp


def test_fingerprints_are_read_once_per_split_only_inside_a_memo_block(root: Path) -> None:
    fp = voc.fingerprint(root, "train")
    ids = voc.read_split(root, "train")

    def grow() -> None:
        with voc.image_path(root, ids[0]).open("ab") as f:
            f.write(b"\0")

    with voc.fingerprints_memoized():
        assert voc.fingerprint(root, "train") == fp
        grow()
        assert voc.fingerprint(root, "train") == fp, "inside the block a split is read once"
        assert voc.fingerprint(root, "train", max_images=2) == voc.fingerprint(root, "train", max_images=2) != fp
        with voc.fingerprints_memoized():
            assert voc.fingerprint(root, "train") == fp, "an inner block shares the outer block's memo"
    changed = voc.fingerprint(root, "train")
    assert changed != fp
    grow()
    assert voc.fingerprint(root, "train") != changed, "outside a block every call reads the data"


def test_stage_keys_ignore_settings_that_cannot_change_a_result(root: Path) -> None:
    base = tiny(root)
    for change in ({"train.log_every": 7}, {"train.checkpoint_every_steps": 3}, {"model.seed_chunk_rows": 5},
                   {"data.num_workers": 1}, {"study.seeds": (3, 4)}):
        cfg = base.override(**change)
        assert train_key(cfg) == train_key(base), change
        assert cfg.stage_hash("eval") == base.stage_hash("eval"), change
    for change in ({"train.lr": 0.02}, {"train.seed": 1}, {"model.bg_scale": 0.5}):
        assert train_key(base.override(**change)) != train_key(base), change


def test_run_folder_key_follows_the_training_data(root: Path, tmp_path: Path) -> None:
    cfg = tiny(root)
    before = run_dir_for(cfg, tmp_path, "sipe")
    ids = voc.read_split(root, "train_aug")
    (root / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("".join(f"{i}\n" for i in reversed(ids)))
    assert run_dir_for(cfg, tmp_path, "sipe") != before


def test_maps_are_tied_to_their_checkpoint(root: Path, tmp_path: Path) -> None:
    cfg = tiny(root)
    run = pipeline.trained(cfg, tmp_path / "work", progress=False)
    other = pipeline.trained(cfg.override(**{"train.seed": 5}), tmp_path / "work", progress=False)
    digest = pipeline.checkpoint_digest(run.checkpoint)
    assert maps_dir_for(cfg, tmp_path, "sipe", digest) != maps_dir_for(cfg, tmp_path, "sipe", pipeline.checkpoint_digest(other.checkpoint))
    out = tmp_path / "maps"
    made = make_maps(cfg, run.checkpoint, out, progress=False)
    assert json.loads((out / "DONE").read_text())["checkpoint_digest"] == digest and made.n_computed == 2
    with pytest.raises(StaleMapsError, match="another|not of"):
        make_maps(cfg, other.checkpoint, out, progress=False)


def _hold(folder: str, seconds: float, ready) -> None:
    with folder_lock(folder):
        ready.set()
        time.sleep(seconds)


def test_a_second_writer_waits_or_stops_with_a_clear_message(tmp_path: Path) -> None:
    folder = tmp_path / "runs" / "sipe-s0-abc"
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(folder), 3.0, ready))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(FolderBusyError) as e:
            with folder_lock(folder, wait=False):
                pass
        assert str(folder) in str(e.value) and f"pid {holder.pid}" in str(e.value)
        start = time.monotonic()
        with folder_lock(folder, quiet=True):
            waited = time.monotonic() - start
        assert waited > 0.5
    finally:
        holder.join(30)


def test_unit_results_are_reused_and_published_only_for_their_configuration(root: Path, tmp_path: Path, monkeypatch) -> None:
    cfg = tiny(root)
    work, out = tmp_path / "work", tmp_path / "results"
    unit = pipeline.Unit("sipe", 0)
    csv = pipeline.run_unit(cfg, work, unit, out, progress=False)
    record = json.loads(csv.with_suffix(".json").read_text())
    assert record["data_train"] == voc.fingerprint(root, "train_aug", 4)
    assert record["checkpoint_digest"] and set(record["wall_seconds"]) >= {"train", "maps_eval", "maps_selection"}
    mtime = csv.stat().st_mtime_ns
    assert pipeline.run_unit(cfg, work, unit, out, progress=False) == csv and csv.stat().st_mtime_ns == mtime

    loaded = loading.load(cfg, out)
    assert list(loaded.units) == ["sipe-s0"] and not loaded.stale
    assert not loaded.code_changed(["sipe"])
    assert loading.load(cfg.override(**{"eval.crf_iterations": 3}), out).stale == ["sipe-s0"]
    ids = voc.read_split(root, "train")
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("".join(f"{i}\n" for i in ids[::-1]))
    assert loading.load(cfg, out).stale == ["sipe-s0"]
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("".join(f"{i}\n" for i in ids))

    monkeypatch.setattr(provenance, "stage_code_hashes", lambda: {**record["code"], "maps": "changed"})
    monkeypatch.setattr(provenance, "code_changes", lambda rev, stages: ["sipe/stages/maps.py"])
    again = loading.load(cfg, out)
    assert again.code_changed(["sipe"]) == ["sipe-s0"] and again.units["sipe-s0"]["code_changed"] == ["maps"]
    note = notes.code_note(again, ["sipe"])
    assert "stage code has changed since (sipe-s0: maps stage" in note and "-- sipe/stages/maps.py`" in note
    assert "`python -m sipe stages --profile smoke --recompute --units sipe-s0`" in note
    monkeypatch.setattr(provenance, "code_changes", lambda rev, stages: [])
    assert not loading.load(cfg, out).code_changed(["sipe"])


def fake_repo(root: Path) -> str:
    """A git repository whose stage entry modules import a maps and an evaluation module (and not figures);
    its first commit's revision."""
    files = {"sipe/__init__.py": "", "sipe/stages/__init__.py": "", "sipe/study/__init__.py": "",
             "sipe/stages/train.py": "x = 1\n", "sipe/stages/maps.py": '"""Maps."""\n\n\ndef f(x):\n    """Double."""\n    return 2 * x\n',
             "sipe/stages/evaluation.py": "x = 1\n", "sipe/study/figures.py": "x = 1\n",
             "sipe/study/pipeline.py": "from ..stages import evaluation, maps, train\n"}
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    for args in (("init", "-q"), ("add", "."), ("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "start")):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()


def changed_stage_files(revision: str, stages: list[str], repo: Path) -> list[str] | None:
    return provenance.changed_files(revision, provenance.stage_patterns(stages, repo), repo)


def test_changed_stage_files_names_the_stage_sources_edited_since_a_revision(tmp_path: Path) -> None:
    rev = fake_repo(tmp_path)
    assert "sipe/stages/evaluation.py" in provenance.stage_files("eval", tmp_path)
    assert "sipe/study/figures.py" not in provenance.stage_files("eval", tmp_path)
    assert changed_stage_files(rev, ["eval"], tmp_path) == []
    for name in ("stages/evaluation.py", "study/figures.py"):
        (tmp_path / "sipe" / name).write_text("x = 2\n")
    assert changed_stage_files(rev, ["maps"], tmp_path) == []
    assert changed_stage_files(rev, ["eval"], tmp_path) == ["sipe/stages/evaluation.py"]
    assert changed_stage_files("0" * 40, ["eval"], tmp_path) is None
    assert changed_stage_files("unknown", ["eval"], tmp_path) is None
    assert provenance.code_changes(rev, ["eval"], repo=tmp_path) == ["sipe/stages/evaluation.py"]
    assert provenance.source_code_changes(rev, ["sipe/study/figures.py", "sipe/stages/maps.py"], repo=tmp_path) == ["sipe/study/figures.py"]
    assert provenance.source_code_changes("unknown", ["sipe/study/figures.py"], repo=tmp_path) is None


def test_code_changes_ignore_docstrings_comments_and_layout(tmp_path: Path) -> None:
    rev = fake_repo(tmp_path)
    source = tmp_path / "sipe" / "stages" / "maps.py"
    source.write_text('"""Maps, reworded."""\n\n\ndef f(x):  # twice x\n    """Twice `x`."""\n\n    return 2*x\n')
    assert changed_stage_files(rev, ["maps"], tmp_path) == ["sipe/stages/maps.py"]
    assert provenance.code_changes(rev, ["maps"], repo=tmp_path) == []
    source.write_text('"""Maps."""\n\n\ndef f(x):\n    """Double."""\n    return 3 * x\n')
    assert provenance.code_changes(rev, ["maps"], repo=tmp_path) == ["sipe/stages/maps.py"]
    assert provenance.stages_using(["sipe/stages/maps.py"]) == ["maps", "eval"]
    assert provenance.stages_using(["sipe/study/figures.py"]) == []


def test_a_commits_sources_are_read_once_per_process_the_working_tree_each_time(tmp_path: Path) -> None:
    rev = fake_repo(tmp_path)
    source = tmp_path / "sipe" / "stages" / "maps.py"
    committed = source.read_text()
    source.write_text("def f(x):\n    return 3 * x\n")
    before = provenance._committed_source.cache_info()
    assert provenance.code_changes(rev, ["maps"], repo=tmp_path) == ["sipe/stages/maps.py"]
    assert provenance.code_changes(rev, ["maps"], repo=tmp_path) == ["sipe/stages/maps.py"]
    after = provenance._committed_source.cache_info()
    assert (after.misses - before.misses, after.hits - before.hits) == (1, 1)
    source.write_text(committed + "\n# a comment\n")
    assert provenance.code_changes(rev, ["maps"], repo=tmp_path) == []


def test_a_units_confusions_are_read_once_and_cannot_be_changed(tmp_path: Path) -> None:
    key = "train/is_cam/estimated"
    ids = np.array(["a", "b"])
    conf = np.arange(2 * 3 * 3, dtype=np.int32).reshape(2, 3, 3)
    (tmp_path / "confusions").mkdir()
    np.savez_compressed(tmp_path / "confusions" / "sipe-s0.npz", **{key: conf, "train/ids": ids})
    r = loading.StudyResults(rows=pd.DataFrame(), units={}, results_dir=tmp_path, eval_split="train")
    first = r.confusions("sipe", 0, key)
    (tmp_path / "confusions" / "sipe-s0.npz").unlink()
    assert r.confusions("sipe", 0, key) is first and np.array_equal(first, conf)
    with pytest.raises(ValueError):
        first[0, 0, 0] = 1
    with pytest.raises(FileNotFoundError):
        r.confusions("cam", 0, key)


def test_a_units_training_log_is_kept_beside_its_results_and_read_without_the_run(root: Path, tmp_path: Path) -> None:
    from sipe.infra.errors import UnitNotComputedError
    from sipe.study.chapters import setup

    overrides = {"data.max_images": 4, "train.batch_size": 2, "train.max_steps": 2, "model.pretrained": False,
                 "infer.max_images": 2, "study.selection_images": 2, "study.variants": ("sipe",)}
    work, out = tmp_path / "work", tmp_path / "results"
    study = setup("smoke", str(root), str(work), 0, "cpu", results_dir=str(out), compute=False, **overrides)
    unit = pipeline.Unit("sipe", 0)
    plan.run_plan(study.cfg, work, out, [unit], progress=False)
    kept = records.training_log_path(out, unit.name)
    run = run_dir_for(pipeline.unit_config(study.cfg, unit), work, "sipe")
    assert kept.read_bytes() == (run / "metrics.csv").read_bytes()
    logged = study.metrics("sipe", 0)

    shutil.rmtree(run)
    assert study.metrics("sipe", 0).equals(logged)
    stale = setup("smoke", str(root), str(work), 0, "cpu", results_dir=str(out), compute=False,
                  **{**overrides, "train.max_steps": 3})
    with pytest.raises(UnitNotComputedError):
        stale.metrics("sipe", 0)


def test_recompute_sets_a_units_folders_aside_and_computes_it_again(root: Path, tmp_path: Path) -> None:
    from sipe.study import units
    from sipe.__main__ import main

    cfg = tiny(root)
    work, out = tmp_path / "work", tmp_path / "results"
    unit = pipeline.Unit("sipe", 0)
    csv = units.run_unit(cfg, work, unit, out, progress=False)
    first = json.loads(csv.with_suffix(".json").read_text())
    run = run_dir_for(pipeline.unit_config(cfg, unit), work, "sipe")

    with folder_lock(work / "evals" / unit.name):
        with pytest.raises(FolderBusyError, match="sipe-s0"):
            plan.set_aside(cfg, work, out, unit)
    assert csv.with_suffix(".json").exists() and run.is_dir()

    moved = plan.set_aside(cfg, work, out, unit)
    assert moved == [run.with_name(moved[0].name)] and moved[0].name.startswith(f"{run.name}.replaced-")
    assert (moved[0] / "final.pt").exists() and not run.exists() and not csv.with_suffix(".json").exists()
    assert loading.load(cfg, out).missing == ["sipe-s0"]

    sets = ["--set", "data.max_images=4", "--set", "train.batch_size=2", "--set", "train.max_steps=1",
            "--set", "model.pretrained=false", "--set", "infer.max_images=2", "--set", "study.selection_images=2",
            "--set", "study.seeds=0", "--set", "study.variants=sipe", "--set", "study.multi_seed=sipe"]
    common = ["stages", "--profile", "smoke", "--data-root", str(root), "--work-dir", str(work), "--device", "cpu",
              "--results-dir", str(out), "--no-progress", *sets]
    assert main([*common, "--units", "sipe-s0"]) == 0
    second = json.loads(csv.with_suffix(".json").read_text())
    assert second["finished"] >= first["finished"] and (run / "final.pt").exists() and moved[0].is_dir()
    assert main([*common, "--recompute"]) == 2  # --recompute without --units is refused
    assert main([*common, "--recompute", "--units", "sipe-s0"]) == 0
    third = json.loads(csv.with_suffix(".json").read_text())
    assert third["finished"] >= second["finished"] and (run / "final.pt").exists()
    assert len(list(run.parent.glob(f"{run.name}.replaced-*"))) == 2  # the second run was set aside in turn


def test_recompute_sets_aside_a_segmentation_units_own_stage_folders_only(root: Path, tmp_path: Path) -> None:
    from sipe.study.pipeline import Unit

    work, out = tmp_path / "work", tmp_path / "results"
    unit = Unit("segmentation", 0)
    stages = {"maps_sipe": "maps/sipe-s0-train-abc", "irn_sipe": "segmentation/irn/sipe-s0-def",
              "segnet_sipe": "segmentation/segnet/sipe-s0-123", "predict_sipe": "segmentation/predict/sipe-s0-456"}
    for folder in stages.values():
        (work / folder).mkdir(parents=True)
        (work / folder / "DONE").write_text("{}")
    (out / "runs").mkdir(parents=True)
    (out / "runs" / "segmentation-s0.json").write_text(json.dumps({"stages": stages}))
    moved = plan.set_aside(tiny(root), work, out, unit)
    assert sorted(m.parent.name for m in moved) == ["irn", "predict", "segnet"]
    assert all((m / "DONE").exists() and ".replaced-" in m.name for m in moved)
    assert (work / stages["maps_sipe"]).is_dir() and not (work / stages["irn_sipe"]).exists()
    assert not (out / "runs" / "segmentation-s0.json").exists()
