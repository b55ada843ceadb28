"""End to end on the synthetic data: train a few steps -> maps -> mIoU, for every backbone, and the command line.

The mIoU the package reports is checked against one computed here with numpy alone from the map files and
the masks, so a wrong labelling or confusion matrix fails even where the numbers of a few-step run mean
nothing."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sipe.study import pipeline
from sipe.__main__ import main as cli_main
from sipe.infra.config import ExperimentConfig, get_profile
from sipe.data.voc import CLASS_NAMES, load_mask
from sipe.stages.evaluation import MIoUResult, Scoring, SweepResult, evaluate_maps, map_ids

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # each test trains a model
BACKBONE_SETTINGS = {
    "resnet50": {"model.backbone": "resnet50", "model.pretrained": False, "model.semantic_layer": "default"},
    "efficientnet_lite0": {"model.backbone": "efficientnet_lite0", "model.pretrained": True},
}


def smoke_cfg(root: Path, backbone: str) -> ExperimentConfig:
    return get_profile("smoke", **{"data.root": str(root), "device": "cpu", **BACKBONE_SETTINGS[backbone]})


def present_class_names(root: Path, ids: list[str]) -> set[str]:
    values = set().union(*(np.unique(load_mask(root, i)).tolist() for i in ids))
    return {CLASS_NAMES[v] for v in values if v != 255}


def check_result(result: MIoUResult, present: set[str], expected_miou: float) -> None:
    assert set(result.per_class.index) == present == set(result.classes)
    assert result.miou == pytest.approx(expected_miou, abs=1e-9)
    assert result.miou == pytest.approx(result.per_class["iou"].mean())


def numpy_miou(maps_dir: Path, root: Path, ids: list[str], which: str, threshold: float | None = None) -> float:
    """mIoU (%) over the classes present in the ground truth, computed independently of sipe.stages.evaluation:
    label = keys[argmax over the channels] (channel 0 replaced by `threshold` when given), void ignored."""
    tp, gt_count, pred_count = np.zeros(21), np.zeros(21), np.zeros(21)
    for image_id in ids:
        with np.load(maps_dir / f"{image_id}.npz") as f:
            maps, keys = f[which].astype(np.float32), f["keys"]
        if threshold is not None:
            maps[0] = threshold
        pred = keys[maps.argmax(axis=0)]
        gt = load_mask(root, image_id)
        valid = gt != 255
        for c in range(21):
            tp[c] += np.sum((pred == c) & (gt == c) & valid)
            gt_count[c] += np.sum((gt == c) & valid)
            pred_count[c] += np.sum((pred == c) & valid)
    present = gt_count > 0
    return float(100 * np.mean(tp[present] / (gt_count + pred_count - tp)[present]))


@pytest.mark.parametrize("backbone", sorted(BACKBONE_SETTINGS))
def test_train_maps_evaluate(backbone: str, synthetic_root: Path, tmp_path: Path) -> None:
    cfg = smoke_cfg(synthetic_root, backbone)
    run = pipeline.trained(cfg, tmp_path, progress=False)
    assert run.checkpoint.exists() and not run.reused
    maps_dir = pipeline.maps(cfg, tmp_path, progress=False)
    assert (maps_dir / "DONE").exists()
    assert pipeline.trained(cfg, tmp_path, progress=False).reused

    ids = map_ids(maps_dir)
    assert len(ids) == cfg.infer.max_images
    present = present_class_names(synthetic_root, ids)
    assert "background" in present and len(present) >= 2
    for which in ("is_cam", "cam"):
        est = evaluate_maps(maps_dir, synthetic_root, ids, which=which, mode="estimated", scoring=Scoring(progress=False))
        check_result(est, present, numpy_miou(maps_dir, synthetic_root, ids, which))
    sweep = evaluate_maps(maps_dir, synthetic_root, ids, which="cam", mode="threshold",
                          thresholds=cfg.eval.thresholds, scoring=Scoring(progress=False))
    assert isinstance(sweep, SweepResult)
    assert sweep.sweep["threshold"].tolist() == list(cfg.eval.thresholds)
    expected = [numpy_miou(maps_dir, synthetic_root, ids, "cam", t) for t in cfg.eval.thresholds]
    np.testing.assert_allclose(sweep.sweep["miou"], expected, atol=1e-9)
    assert sweep.best_threshold == cfg.eval.thresholds[int(np.argmax(expected))]
    check_result(sweep.best, present, max(expected))


def test_command_line(synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`train` in process, then `python -m sipe eval` (reuses the run, makes maps, evaluates), then a bad setting."""
    args = ["--profile", "smoke", "--set", f"data.root={synthetic_root}", "--set", "model.pretrained=false",
            "--set", "train.max_steps=1", "--set", "infer.max_images=2", "--device", "cpu",
            "--work-dir", str(tmp_path), "--no-progress"]
    assert cli_main(["train", *args]) == 0
    out = capsys.readouterr().out
    assert out.startswith("trained: ") and out.strip().endswith("final.pt")

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    evaluated = subprocess.run([sys.executable, "-m", "sipe", "eval", *args], cwd=REPO, env=env,
                               capture_output=True, text=True, timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr
    lines = [line for line in evaluated.stdout.splitlines() if "mIoU" in line]
    assert len(lines) == 2 and lines[0].startswith("estimated background")
    miou = float(lines[0].split("mIoU")[1].split()[0])
    assert len(list((tmp_path / "runs").iterdir())) == 1
    (maps_dir,) = (tmp_path / "maps").iterdir()
    assert miou == pytest.approx(numpy_miou(maps_dir, synthetic_root, map_ids(maps_dir), "is_cam"), abs=0.005)

    assert cli_main(["show-config", "--profile", "smoke", "--set", "model.bg_scale=heavy"]) == 2
    assert "model.bg_scale" in capsys.readouterr().err
