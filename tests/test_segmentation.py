"""Tests for sipe.segmentation.network and sipe.stages.labelled: one training step, predictions, evaluation, bad input."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from sipe.infra.config import ConfigError, get_profile
from sipe.segmentation import network as seg
from sipe.data import voc
from sipe.stages.labelled import LabelledCropDataset, evaluate_label_dir, load_label, save_label_atomic
from sipe.method.backbones import WeightsError
from sipe.infra.runtime import seed_everything


def one_step_cfg(profile: str) -> seg.SegConfig:
    return get_profile(profile).seg.override(pretrained=False, crop_size=64, batch_size=2, epochs=1, max_steps=1)


@pytest.mark.parametrize("profile", ["smoke", "paper"])
def test_one_training_step_gives_a_finite_loss_and_moves_the_trainable_weights(profile, synthetic_root, tmp_path):
    cfg = one_step_cfg(profile)
    ids = voc.read_split(synthetic_root, "train_aug")[:2]
    seed_everything(cfg.seed)
    before = seg.build_segnet(cfg, 21).state_dict()
    run = seg.train_segmentation(cfg, synthetic_root, ids, "gt", 21, tmp_path / "run", device="cpu", progress=False)
    after = torch.load(run.checkpoint, weights_only=True)["model"]
    with run.metrics.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and math.isfinite(float(rows[0]["loss"])) and float(rows[0]["loss"]) > 0
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("head.") for k in changed)
    assert any(k.startswith("body.") for k in changed)
    assert not any("running_mean" in k or "running_var" in k for k in changed)  # BatchNorm statistics frozen
    if profile == "paper":
        assert not any(k.startswith("body.") and k.endswith((".bn1.weight", ".bn2.weight")) for k in changed)
        model, loaded = seg.load_segnet(run.checkpoint)
        assert loaded.backbone == seg.DEEPLAB_R101
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 21, 8, 8)  # output stride 8


def test_predictions_are_label_maps_of_the_image_size_and_evaluate(synthetic_root, tmp_path):
    cfg = one_step_cfg("smoke")
    ids = voc.read_split(synthetic_root, "train_aug")[:2]
    val = voc.read_split(synthetic_root, "val")[:2]
    run = seg.train_segmentation(cfg, synthetic_root, ids, "gt", 21, tmp_path / "run", device="cpu", progress=False)
    model, _ = seg.load_segnet(run.checkpoint)
    probs = seg.predict_probs(model, voc.load_image(synthetic_root, val[0]), (0.5, 1.0), True, *seg.normalization(cfg))
    assert probs.shape == (21, 96, 128)
    torch.testing.assert_close(probs.sum(0), torch.ones(96, 128))
    out = seg.predict(run.checkpoint, synthetic_root, val, tmp_path / "pred", device="cpu", progress=False)
    assert set(out) == set(seg.MODES) and all((d / "DONE").exists() for d in out.values())
    for d in out.values():
        for i in val:
            label = load_label(synthetic_root, d, i)
            assert label.shape == (96, 128) and label.max() < 21
        result = evaluate_label_dir(d, synthetic_root, val)
        assert 0.0 <= result.miou <= 100.0


def test_labelled_crops_and_bad_label_files_name_the_file(synthetic_root, tmp_path):
    ids = voc.read_split(synthetic_root, "train_aug")[:2]
    labels = tmp_path / "labels"
    for i in ids:
        save_label_atomic(labels / f"{i}.png", voc.load_mask(synthetic_root, i))
    ds = LabelledCropDataset(synthetic_root, ids, labels, 64, (0.5, 1.0), (0.5,) * 3, (0.5,) * 3, seed=1)
    item = ds[0]
    assert item["img"].shape == (3, 64, 64) and item["label"].shape == (64, 64)
    assert item["label"].dtype == torch.int64
    assert set(torch.unique(item["label"]).tolist()) <= set(range(21)) | {255}
    save_label_atomic(labels / f"{ids[1]}.png", np.zeros((10, 12), np.uint8))
    with pytest.raises(voc.DataError, match=rf"label map .*{ids[1]}\.png is 10x12 but its image .*{ids[1]}\.jpg is 96x128"):
        ds[1]
    (labels / f"{ids[0]}.png").unlink()
    with pytest.raises(voc.DataError, match=rf"missing \(first: .*{ids[0]}\.png"):
        LabelledCropDataset(synthetic_root, ids, labels, 64, (0.5, 1.0), (0.5,) * 3, (0.5,) * 3)


def test_missing_resnet101_weights_name_the_file(tmp_path):
    with pytest.raises(WeightsError, match=r"seg\.weights=.*nope\.pth.* resnet101-63fe2227\.pth"):
        seg.resnet101_state_dict(str(tmp_path / "nope.pth"))


def test_profiles_resolve():
    paper = get_profile("paper").seg
    assert (paper.backbone, paper.aspp_rates, paper.crop_size, paper.batch_size, paper.max_steps, paper.lr,
            paper.weight_decay) == ("deeplab_r101", (6, 12, 18, 24), 321, 10, 20000, 2.5e-4, 5e-4)
    assert get_profile("subset").seg.backbone == "efficientnet_lite0"
    with pytest.raises(ConfigError, match="unknown segmentation setting"):
        paper.override(rates=(1,))
