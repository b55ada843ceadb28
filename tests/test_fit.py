"""The one training loop (sipe.stages.fit) and the IRN / segmentation sections of the configuration."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import torch

from sipe.__main__ import config_from_args
from sipe.data import voc
from sipe.infra.config import ConfigError, get_profile
from sipe.segmentation import network as seg
from sipe.study import segstudy

SIPE = Path(__file__).resolve().parents[1] / "sipe"


class Interrupt(Exception):
    pass


def cli(root: Path, *sets: str):
    return config_from_args(argparse.Namespace(profile="smoke", set=list(sets), data_root=str(root), device="cpu"))


def test_set_irn_and_seg_fields_reach_the_unit_settings_and_its_identity(synthetic_root: Path) -> None:
    base = cli(synthetic_root)
    cfg = cli(synthetic_root, "irn.epochs=2", "seg.lr=0.003")
    irn_cfg, seg_cfg = segstudy.settings(cfg, 0)
    assert (irn_cfg.epochs, seg_cfg.lr) == (2, 0.003) and (irn_cfg.optim().epochs, seg_cfg.optim().lr) == (2, 0.003)
    assert segstudy.settings(base, 0)[0].epochs == get_profile("smoke").irn.epochs != 2
    ids = {c: segstudy.unit_identity(c, 0)["config_hash"] for c in (base, cfg, cli(synthetic_root, "irn.epochs=2"))}
    assert len(set(ids.values())) == 3
    assert base.stage_hash("eval") == cfg.stage_hash("eval"), "the classification stages do not read irn/seg"


@pytest.mark.parametrize("setting, message", [
    ("irn.crop_size=50", r"irn\.crop_size=50"), ("irn.batch_size=0", r"irn\.batch_size=0"),
    ("seg.lr=-1", r"seg\.lr=-1"), ("seg.epochs=0", r"seg\.epochs=0"), ("irn.backbone=nope", r"irn\.backbone='nope'"),
    ("seg.backbone=nope", r"seg\.backbone='nope'"), ("irn.radius=3", r"irn\.radius"),
])
def test_an_invalid_irn_or_seg_value_names_the_field(synthetic_root: Path, setting: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        cli(synthetic_root, setting)


def test_segmentation_training_resumes_to_the_weights_of_an_uninterrupted_run(synthetic_root: Path,
                                                                              tmp_path: Path) -> None:
    cfg = get_profile("smoke").seg.override(pretrained=False, crop_size=64, batch_size=2, epochs=2, max_steps=None)
    ids = voc.read_split(synthetic_root, "train_aug")[:4]
    whole = seg.train_segmentation(cfg, synthetic_root, ids, "gt", 21, tmp_path / "whole", device="cpu", progress=False)

    def stop(step: int, row: dict[str, float]) -> None:
        if step == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        seg.train_segmentation(cfg, synthetic_root, ids, "gt", 21, tmp_path / "resumed", device="cpu", progress=False,
                               on_step=stop)
    resumed = seg.train_segmentation(cfg, synthetic_root, ids, "gt", 21, tmp_path / "resumed", device="cpu",
                                     progress=False)
    assert whole.steps == resumed.steps == 4 and not resumed.reused
    a = torch.load(whole.checkpoint, weights_only=True)
    b = torch.load(resumed.checkpoint, weights_only=True)
    assert a["config"] == b["config"] and a["config"]["seg"]["aspp_rates"] == list(cfg.aspp_rates)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    steps = [line.split(",")[0] for line in resumed.metrics.read_text().splitlines()[1:]]
    assert steps == ["1", "2", "3", "4"]
    model, loaded = seg.load_segnet(resumed.checkpoint)
    assert loaded == cfg


def test_every_torch_load_of_the_package_refuses_pickled_code() -> None:
    calls = {f"{p.relative_to(SIPE)}:{m.group(0)}" for p in SIPE.rglob("*.py")
             for m in re.finditer(r"torch\.load\([^)]*\)", p.read_text())}
    assert calls and all("weights_only=True" in c for c in calls), sorted(c for c in calls if "weights_only=True" not in c)
