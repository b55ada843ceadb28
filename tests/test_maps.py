"""Tests for sipe.stages.maps: flip fusion, multi-scale map files, resumable map folders, seed methods, no-BPM maps."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sipe.method import ipe
from sipe.infra.config import ExperimentConfig, ModelConfig, get_profile
from sipe.data.datasets import InferenceDataset
from sipe.data.voc import load_cls_labels, load_image
from sipe.stages.maps import (MapsResult, channel_argmax, fuse_flip, infer_image, kept_channels, make_maps,
    seed_method_key)
from sipe.method.backbones import BACKBONES
from sipe.method.network import SIPENet, build_model
from sipe.stages.train import train

METHODS = ("structure", "threshold:0.3", "argmax")
F16_TOL = 1e-3


def tiny_cfg(root: Path) -> ExperimentConfig:
    return get_profile(
        "smoke",
        **{"data.root": str(root), "data.max_images": 4, "train.batch_size": 2, "train.max_steps": 1,
           "model.pretrained": False, "infer.max_images": 3, "device": "cpu"},
    )


@pytest.fixture(scope="module")
def model() -> SIPENet:
    torch.manual_seed(0)
    return build_model(ModelConfig(backbone="efficientnet_lite0", pretrained=False, semantic_layer="conv_head")).eval()


@pytest.fixture(scope="module")
def item(synthetic_root: Path) -> dict:
    """The first `train` image of the synthetic data at scales 1.0 and 0.5, each with its flip."""
    spec = BACKBONES["efficientnet_lite0"]
    return InferenceDataset(synthetic_root, "train", (1.0, 0.5), spec.mean, spec.std)[0]


@pytest.fixture(scope="module")
def maps_run(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> MapsResult:
    """Maps of 3 synthetic images with three seed methods, from a model trained one step (shared: read only)."""
    cfg = tiny_cfg(synthetic_root)
    run = train(cfg, tmp_path_factory.mktemp("run"), progress=False)
    return make_maps(cfg, run.checkpoint, tmp_path_factory.mktemp("maps"), seed_methods=METHODS, progress=False)


def test_fuse_flip() -> None:
    x = torch.arange(12.0).reshape(2, 1, 2, 3)
    expected = torch.tensor([[[[0 + 8, 1 + 7, 2 + 6], [3 + 11, 4 + 10, 5 + 9]]]])
    assert torch.equal(fuse_flip(x), expected)
    assert torch.equal(fuse_flip(x[:1]), x[:1])


def test_infer_image_fuses_flip_before_locating_seeds(model: SIPENet, item: dict) -> None:
    pair = item["images"][0]
    assert torch.equal(pair[1], pair[0].flip(-1))
    mcfg = model.cfg
    maps = infer_image(model, [pair], item["label"], item["size"], mcfg)
    with torch.no_grad():
        a, b = model.extract(pair[:1]), model.extract(pair[1:])
    logits = a.logits + b.logits.flip(-1)
    hier = a.hierarchical + b.hierarchical.flip(-1)
    cam = ipe.cam_with_background(logits)
    label_mask = torch.cat([torch.ones(1), item["label"]])[None, :, None, None]
    seeds = ipe.locate_seeds(cam, hier, label_mask, bg_scale=mcfg.bg_scale)
    keys = torch.as_tensor(kept_channels(item["label"]))
    irn = F.relu(a.logits) + F.relu(b.logits).flip(-1)
    expected = {"cam": cam, "is_cam": ipe.is_cam(hier, ipe.prototypes(seeds, hier))}
    assert maps.keys() == {*expected, "cam_irn"}
    for key, value in expected.items():
        up = F.interpolate(value[:, keys], item["size"], mode="bilinear", align_corners=False)[0]
        torch.testing.assert_close(maps[key], ipe.max_normalize(up), atol=1e-5, rtol=1e-4)
    fg = ipe.max_normalize(F.interpolate(irn[:, keys[1:] - 1], item["size"], mode="bilinear", align_corners=False)[0])
    torch.testing.assert_close(maps["cam_irn"][1:], fg, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(maps["cam_irn"][0], 1 - fg.amax(0), atol=1e-5, rtol=1e-4)


def test_fused_maps_are_flip_equivariant(model: SIPENet, item: dict) -> None:
    """Fusing l(x) + flip(l(flip x)) makes the maps of the flipped image the flipped maps of the image."""
    swapped = [pair.flip(0) for pair in item["images"]]
    maps = infer_image(model, item["images"], item["label"], item["size"], model.cfg)
    flipped = infer_image(model, swapped, item["label"], item["size"], model.cfg)
    for key in maps:
        torch.testing.assert_close(flipped[key], maps[key].flip(-1), atol=1e-4, rtol=1e-4)


def test_threshold_above_every_cam_value_gives_only_a_background_prototype(model: SIPENet, item: dict) -> None:
    maps = infer_image(model, item["images"], item["label"], item["size"], model.cfg,
                       seed_methods=("threshold:1.5",))
    key = seed_method_key("threshold:1.5")
    assert key == "labels@threshold:1.5"
    assert maps[key].dtype == torch.uint8 and maps[key].shape == tuple(item["size"])
    assert torch.count_nonzero(maps[key]) == 0


def test_unknown_seed_method_is_rejected(model: SIPENet, item: dict) -> None:
    with pytest.raises(ValueError, match="random"):
        infer_image(model, item["images"][:1], item["label"], item["size"], model.cfg, seed_methods=("random",))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_channel_argmax_is_argmax_over_the_first_axis_ties_included(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    for m in (1, 2, 3, 6):
        x = torch.rand(m, 37, 53, generator=g).to(dtype)
        x[:, :5] = 0.5
        x[:, 5:9, :7] = torch.rand(1, 4, 7, generator=g).to(dtype)
        got = channel_argmax(x)
        assert got.shape == (37, 53) and torch.equal(got, x.argmax(0))
    assert int(channel_argmax(torch.tensor([[[0.2]], [[0.7]], [[0.7]]]))[0, 0]) == 1


def test_kept_channels() -> None:
    label = torch.zeros(20)
    label[[2, 14]] = 1
    assert kept_channels(label).tolist() == [0, 3, 15]
    assert kept_channels(torch.zeros(20)).tolist() == [0]


def test_map_files(maps_run: MapsResult, synthetic_root: Path) -> None:
    d = maps_run.maps_dir
    labels = load_cls_labels(synthetic_root)
    files = sorted(d.glob("*.npz"))
    assert maps_run.n_images == maps_run.n_computed == len(files) == 3
    assert (d / "DONE").exists() and (d / "config.json").exists()
    for path in files:
        image_id = path.stem
        with np.load(path) as z:
            data = {k: z[k] for k in z.files}
        assert set(data) == {"keys", "cam", "cam_irn", *(seed_method_key(m) for m in METHODS)}
        expected_keys = [0, *(np.flatnonzero(labels[image_id]) + 1)]
        assert data["keys"].dtype == np.int64 and data["keys"].tolist() == expected_keys
        shape = (len(expected_keys), *load_image(synthetic_root, image_id).shape[:2])
        for key, maps in data.items():
            if key == "keys":
                continue
            if key.startswith("labels@"):
                assert maps.dtype == np.uint8 and maps.shape == shape[1:], key
                assert set(np.unique(maps)) <= set(expected_keys), key
                continue
            assert maps.dtype == np.float16 and maps.shape == shape, key
            values = maps.astype(np.float32)
            assert values.min() >= 0.0 and values.max() <= 1.0, key
            tol = F16_TOL
            if key == "cam_irn":
                np.testing.assert_allclose(values[0], 1 - values[1:].max(axis=0), atol=F16_TOL)
                values = values[1:]
                tol = 0.01  # normalised once by max + 1e-5: an untrained model's small raw sums peak below 1
            peaks = values.reshape(len(values), -1).max(axis=1)
            assert np.all((peaks == 0) | (np.abs(peaks - 1) < tol)), (key, peaks)
        assert abs(float(data["cam"][0].max()) - 1) < F16_TOL


def test_rerun_skips_finished_images_and_recomputes_deleted_ones(maps_run: MapsResult, tmp_path: Path, synthetic_root: Path) -> None:
    folder = tmp_path / "maps"
    shutil.copytree(maps_run.maps_dir, folder)
    files = sorted(folder.glob("*.npz"))
    mtimes = {p.name: p.stat().st_mtime_ns for p in files}
    checkpoint = json.loads((folder / "config.json").read_text())["checkpoint"]
    cfg = tiny_cfg(synthetic_root)

    again = make_maps(cfg, checkpoint, folder, seed_methods=METHODS, progress=False)
    assert (again.n_images, again.n_computed) == (3, 0)
    assert {p.name: p.stat().st_mtime_ns for p in files} == mtimes

    deleted = files[1]
    before = dict(np.load(deleted))
    deleted.unlink()
    redo = make_maps(cfg, checkpoint, folder, seed_methods=METHODS, progress=False)
    assert redo.n_computed == 1 and deleted.exists()
    after = np.load(deleted)
    assert sorted(after.files) == sorted(before)
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value)
    assert {p.name: p.stat().st_mtime_ns for p in files if p != deleted} == {
        k: v for k, v in mtimes.items() if k != deleted.name
    }


def test_bfloat16_maps_are_a_separate_cache_close_to_float32(maps_run: MapsResult, tmp_path: Path, synthetic_root: Path) -> None:
    from sipe.stages.maps import checkpoint_digest, maps_dir_for

    checkpoint = json.loads((maps_run.maps_dir / "config.json").read_text())["checkpoint"]
    cfg = tiny_cfg(synthetic_root)
    bf16 = cfg.override(**{"infer.precision": "bfloat16"})
    digest = checkpoint_digest(checkpoint)
    assert maps_dir_for(bf16, tmp_path, "sipe", digest, METHODS) != maps_dir_for(cfg, tmp_path, "sipe", digest, METHODS)
    made = make_maps(bf16, checkpoint, tmp_path / "bf16", seed_methods=METHODS, progress=False)
    assert made.n_computed == 3
    assert json.loads((made.maps_dir / "config.json").read_text())["config"]["infer"]["precision"] == "bfloat16"
    differs = []
    for path in sorted(maps_run.maps_dir.glob("*.npz")):
        with np.load(path) as a, np.load(made.maps_dir / path.name) as b:
            assert sorted(a.files) == sorted(b.files)
            for key in ("cam", "is_cam", "cam_irn"):
                assert b[key].dtype == np.float16 and b[key].shape == a[key].shape
                diff = np.abs(a[key].astype(np.float32) - b[key].astype(np.float32))
                assert diff.mean() < 0.05, (path.name, key, diff.mean())  # untrained heads: small raw sums, normalised
                differs.append(diff.max() > 0)
    assert any(differs), "bfloat16 autocast left every map bit-identical: it did not run"


def test_training_pass_without_bpm_has_background_one_minus_max_foreground() -> None:
    torch.manual_seed(0)
    net = build_model(ModelConfig(backbone="efficientnet_lite0", pretrained=False, background_prototype=False))
    labels = torch.zeros(2, 20)
    labels[0, 4] = 1
    labels[1, [0, 11]] = 1
    with torch.no_grad():
        out = net(torch.randn(2, 3, 64, 64), ipe.label_mask(labels, torch.ones(2, 64, 64)))
    fg = out["is_cam"][:, 1:]
    torch.testing.assert_close(out["is_cam"][:, 0], (1 - fg.amax(dim=1)).clamp_min(0))
    absent = torch.cat([torch.zeros(2, 1), 1 - labels], dim=1).bool()
    assert torch.count_nonzero(out["is_cam"][absent]) == 0


def test_maps_without_bpm_have_background_one_minus_max_foreground(
    model: SIPENet, item: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One scale at the feature grid's size and no final normalisation: channel 0 = 1 - max over the others."""
    mcfg = ModelConfig(backbone="efficientnet_lite0", pretrained=False, background_prototype=False)
    pair = item["images"][0]
    grid = tuple(s // 16 for s in pair.shape[2:])
    monkeypatch.setattr(ipe, "max_normalize", lambda maps: maps)
    raw = infer_image(model, [pair], item["label"], grid, mcfg)["is_cam"]
    expected = (1 - raw[1:].amax(dim=0)).clamp_min(0)
    torch.testing.assert_close(raw[0], expected)
    monkeypatch.undo()
    with_bpm = infer_image(model, [pair], item["label"], grid, model.cfg)["is_cam"]
    no_bpm = infer_image(model, [pair], item["label"], grid, mcfg)["is_cam"]
    torch.testing.assert_close(no_bpm[1:], with_bpm[1:])
    assert not torch.allclose(no_bpm[0], with_bpm[0])
