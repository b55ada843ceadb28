"""End to end on the synthetic data: train a few steps -> maps -> mIoU, for every backbone, and the command line."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sipe import pipeline
from sipe.__main__ import main as cli_main
from sipe.config import ExperimentConfig, get_profile
from sipe.data.voc import CLASS_NAMES, load_mask
from sipe.evaluation import MIoUResult, SweepResult, evaluate_maps, map_ids

REPO = Path(__file__).resolve().parents[1]
BACKBONE_SETTINGS = {
    "resnet50": {"model.backbone": "resnet50", "model.pretrained": False, "model.semantic_layer": "default"},
    "efficientnet_lite0": {"model.backbone": "efficientnet_lite0", "model.pretrained": True},
}


def smoke_cfg(root: Path, backbone: str) -> ExperimentConfig:
    return get_profile("smoke", **{"data.root": str(root), "device": "cpu", **BACKBONE_SETTINGS[backbone]})


def present_class_names(root: Path, ids: list[str]) -> set[str]:
    values = set().union(*(np.unique(load_mask(root, i)).tolist() for i in ids))
    return {CLASS_NAMES[v] for v in values if v != 255}


def check_result(result: MIoUResult, present: set[str]) -> None:
    assert math.isfinite(result.miou) and 0.0 <= result.miou <= 100.0
    assert set(result.per_class.index) == present == set(result.classes)
    assert result.per_class["iou"].between(0, 100).all()


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
        est = evaluate_maps(maps_dir, synthetic_root, ids, which=which, mode="estimated", progress=False)
        check_result(est, present)
    sweep = evaluate_maps(maps_dir, synthetic_root, ids, which="cam", mode="threshold",
                          thresholds=cfg.eval.thresholds, progress=False)
    assert isinstance(sweep, SweepResult)
    assert sweep.sweep["threshold"].tolist() == list(cfg.eval.thresholds)
    assert sweep.best_threshold in cfg.eval.thresholds
    check_result(sweep.best, present)
    assert sweep.best.miou == pytest.approx(sweep.sweep["miou"].max())


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
    assert 0.0 <= miou <= 100.0
    assert len(list((tmp_path / "runs").iterdir())) == 1
    assert len(list((tmp_path / "maps").iterdir())) == 1

    assert cli_main(["show-config", "--profile", "smoke", "--set", "model.bg_scale=heavy"]) == 2
    assert "model.bg_scale" in capsys.readouterr().err
