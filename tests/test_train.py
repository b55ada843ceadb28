"""Tests for sipe.stages.train: run folder contents, the CAM variant, poly decay, resuming, reuse and mismatches."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from sipe.infra.config import ExperimentConfig, get_profile, load_config, variant_config
from sipe.method.network import build_model
from sipe.stages.checkpoint import load_trained
from sipe.stages.train import ConfigMismatchError, TrainResult, plan_steps, train

N_IMAGES, BATCH, EPOCHS = 6, 2, 2
PER_EPOCH = N_IMAGES // BATCH
TOTAL = PER_EPOCH * EPOCHS


class Interrupt(RuntimeError):
    pass


def tiny_cfg(root: Path, **overrides) -> ExperimentConfig:
    """Smoke profile on the synthetic data: 6 images, batch 2, 2 epochs (3 steps each), checkpoint every 2 steps."""
    return get_profile(
        "smoke",
        **{
            "data.root": str(root), "data.max_images": N_IMAGES, "train.batch_size": BATCH,
            "train.epochs": EPOCHS, "train.max_steps": None, "train.checkpoint_every_steps": 2,
            "model.pretrained": False, "device": "cpu", **overrides,
        },
    )


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def interrupt_at(step: int):
    def on_step(s: int, row: dict[str, float]) -> None:
        if s == step:
            raise Interrupt(f"stopped at step {s}")

    return on_step


def final_state(result: TrainResult) -> dict[str, torch.Tensor]:
    return torch.load(result.checkpoint, map_location="cpu", weights_only=False)["model"]


@pytest.fixture(scope="module")
def run_a(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """An uninterrupted run of tiny_cfg (shared: tests must not modify its folder)."""
    return train(tiny_cfg(synthetic_root), tmp_path_factory.mktemp("run_a"), progress=False)


def test_plan_steps() -> None:
    cfg = get_profile("smoke", **{"train.batch_size": 4, "train.epochs": 3, "train.max_steps": None})
    assert plan_steps(9, cfg) == (2, 6)
    assert plan_steps(9, cfg.override(**{"train.max_steps": 4})) == (2, 4)
    with pytest.raises(ValueError, match="batch size"):
        plan_steps(3, cfg)


def test_run_folder_contents(run_a: TrainResult, synthetic_root: Path) -> None:
    d = run_a.run_dir
    assert not run_a.reused and run_a.checkpoint == d / "final.pt"
    assert {"config.json", "metrics.csv", "checkpoint.pt", "final.pt"} <= {p.name for p in d.iterdir()}
    assert load_config(d / "config.json") == tiny_cfg(synthetic_root)
    rows = read_rows(run_a.metrics)
    assert [int(r["step"]) for r in rows] == list(range(1, TOTAL + 1))
    assert [int(r["epoch"]) for r in rows] == [s // PER_EPOCH for s in range(TOTAL)]
    for r in rows:
        loss, cls, gsc = float(r["loss"]), float(r["loss_cls"]), float(r["loss_gsc"])
        assert all(math.isfinite(v) and v >= 0 for v in (loss, cls, gsc))
        assert loss == pytest.approx(cls + gsc, rel=1e-5)
        assert 0.0 <= float(r["seed_fg_share"]) <= 1.0
        assert float(r["images_per_s"]) > 0
    assert torch.load(d / "checkpoint.pt", weights_only=False)["step"] == TOTAL


def test_final_weights_load_into_a_model(run_a: TrainResult) -> None:
    model, cfg = load_trained(run_a.checkpoint)
    state = final_state(run_a)
    assert cfg.model.backbone == "efficientnet_lite0" and not model.training
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_frozen_layers_keep_their_initial_weights(run_a: TrainResult) -> None:
    """train() seeds torch with train.seed before building the model, so the initial weights can be rebuilt."""
    cfg = load_config(run_a.run_dir / "config.json")
    torch.manual_seed(cfg.train.seed)
    init = build_model(cfg.model, cfg.data.num_classes).state_dict()
    trained = final_state(run_a)
    for key in ("backbone.stem.0.weight", "backbone.frozen_blocks.1.0.conv_dw.weight", "backbone.frozen_blocks.2.1.bn1.weight"):
        assert torch.equal(trained[key], init[key]), key
    for key in ("classifier.weight", "sides.0.weight", "sides.3.weight", "backbone.head.0.weight",
                "backbone.blocks34.0.0.conv_pw.weight"):
        assert not torch.equal(trained[key], init[key]), key


def test_lr_follows_poly_decay(run_a: TrainResult) -> None:
    cfg = load_config(run_a.run_dir / "config.json")
    t = cfg.train
    for r in read_rows(run_a.metrics):
        done = int(r["step"]) - 1
        expected = t.lr * (1 - done / TOTAL) ** t.poly_power
        assert float(r["lr_backbone"]) == pytest.approx(expected, rel=1e-6)
        assert float(r["lr_new"]) == pytest.approx(expected * t.new_layer_lr_mult, rel=1e-6)


def test_cam_variant_logs_no_gsc_loss(synthetic_root: Path, tmp_path: Path) -> None:
    cfg = variant_config(tiny_cfg(synthetic_root, **{"train.max_steps": 2}), "cam")
    assert cfg.model.gsc is False
    rows = read_rows(train(cfg, tmp_path, progress=False).metrics)
    assert len(rows) == 2
    for r in rows:
        assert r["loss_gsc"] == "" and r["seed_fg_share"] == ""
        assert float(r["loss"]) == float(r["loss_cls"]) and math.isfinite(float(r["loss"]))


@pytest.mark.parametrize(
    "stop_at, checkpoint_step",
    [(PER_EPOCH + 2, PER_EPOCH + 1), (PER_EPOCH, PER_EPOCH)],
    ids=["mid-epoch", "epoch-boundary"],
)
def test_interrupted_run_resumes_to_the_same_weights(
    run_a: TrainResult, synthetic_root: Path, tmp_path: Path, stop_at: int, checkpoint_step: int
) -> None:
    """Stop at `stop_at`; the last checkpoint is at `checkpoint_step` (every 2 steps, and at each epoch end)."""
    cfg = tiny_cfg(synthetic_root)
    with pytest.raises(Interrupt):
        train(cfg, tmp_path, progress=False, on_step=interrupt_at(stop_at))
    assert not (tmp_path / "final.pt").exists()
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["step"] == checkpoint_step
    assert int(read_rows(tmp_path / "metrics.csv")[-1]["step"]) == stop_at

    seen: list[int] = []
    resumed = train(cfg, tmp_path, progress=False, on_step=lambda s, row: seen.append(s))
    assert not resumed.reused
    assert seen == list(range(checkpoint_step + 1, TOTAL + 1))
    a, b = final_state(run_a), final_state(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows_a, rows_b = read_rows(run_a.metrics), read_rows(resumed.metrics)
    assert [int(r["step"]) for r in rows_b] == list(range(1, TOTAL + 1))
    for ra, rb in zip(rows_a, rows_b):
        assert (ra["loss"], ra["lr_backbone"], ra["epoch"]) == (rb["loss"], rb["lr_backbone"], rb["epoch"])


def test_finished_run_is_reused_without_training(run_a: TrainResult, synthetic_root: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in run_a.run_dir.iterdir() if p.name != ".lock"}
    called: list[int] = []
    again = train(tiny_cfg(synthetic_root), run_a.run_dir, progress=False, on_step=lambda s, row: called.append(s))
    assert again.reused and again.checkpoint == run_a.checkpoint and called == []
    assert {p.name: p.stat().st_mtime_ns for p in run_a.run_dir.iterdir() if p.name != ".lock"} == before
    moved = tiny_cfg(synthetic_root, **{"data.num_workers": 1}).override(**{"data.root": "/data/moved"})
    assert train(moved, run_a.run_dir, progress=False).reused


def test_folder_of_another_config_is_refused(run_a: TrainResult, synthetic_root: Path) -> None:
    before = (run_a.run_dir / "config.json").read_bytes()
    other = tiny_cfg(synthetic_root, **{"model.bg_scale": 0.5})
    with pytest.raises(ConfigMismatchError, match=str(run_a.run_dir)):
        train(other, run_a.run_dir, progress=False)
    assert (run_a.run_dir / "config.json").read_bytes() == before
