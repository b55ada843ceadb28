"""Tests for sipe.method's backbones and network: the backbone registry (stages, freezing, fixed BN, weights) and SIPENet's features."""
from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from sipe.method import ipe, losses
from sipe.infra.config import ConfigError, ModelConfig, get_profile
from sipe.data.voc import CLASS_NAMES, load_cls_labels, load_image, load_mask, read_split
from sipe.method.backbones import BACKBONES, WeightsError, build_backbone
from sipe.method.network import SIPENet, build_model
from sipe.method.backbones import LITE, RESNET50_FILE, _load_by_order, check_model, efficientnet_lite_weights_file, stage_channels
from sipe.method.network import SIDE_CHANNELS
from sipe.stages.train import build_optimizer

LITES = ("efficientnet_lite0", "efficientnet_lite2")
FROZEN = {"resnet50": ("stem", "layer1", "layer2"), **{n: ("stem", "frozen_blocks") for n in LITES}}
TRAINABLE = {"resnet50": ("layer3", "layer4"), **{n: ("blocks34", "blocks56", "head") for n in LITES}}
IMAGENET_CATS = range(281, 286)


def model_cfg(backbone: str, **kw) -> ModelConfig:
    return ModelConfig(backbone=backbone, pretrained=False, **kw)


@pytest.fixture(scope="module", params=sorted(BACKBONES))
def net(request: pytest.FixtureRequest) -> SIPENet:
    """A SIPENet with random weights on each registered backbone (shared by the tests of this module)."""
    torch.manual_seed(0)
    return build_model(model_cfg(request.param), num_classes=20)


def batch_norms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def params_of(module: nn.Module, names: tuple[str, ...]) -> list[nn.Parameter]:
    return [p for name in names for p in getattr(module, name).parameters()]


def sipe_loss(model: SIPENet, x: torch.Tensor) -> torch.Tensor:
    """Classification + GSC loss of a training pass with labels {3} and {2, 7}."""
    labels = torch.zeros(x.shape[0], 20)
    labels[0, 3] = 1
    labels[-1, [2, 7]] = 1
    mask = ipe.label_mask(labels, torch.ones(x.shape[0], *x.shape[2:]))
    out = model(x, mask)
    return losses.classification_loss(out["score"], labels) + losses.gsc_loss(out["cam"], out["is_cam"])


def test_registry_declares_four_stages() -> None:
    for name, spec in BACKBONES.items():
        assert spec.name == name
        assert len(spec.stage_channels) == len(spec.stage_strides) == 4
        assert spec.stage_strides[2] == spec.stage_strides[3] == 16
        assert "default" in spec.semantic_layers


@pytest.mark.parametrize("size", [(64, 64), (96, 128)])
def test_stage_and_feature_shapes(net: SIPENet, size: tuple[int, int]) -> None:
    h, w = size
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        stages = net.backbone(x)
        feats = net.extract(x)
    spec = net.backbone.spec
    assert [tuple(s.shape) for s in stages] == [
        (2, c, h // s, w // s) for c, s in zip(spec.stage_channels, spec.stage_strides)
    ]
    grid = (h // 16, w // 16)
    assert tuple(feats.logits.shape) == (2, 20, *grid)
    assert tuple(feats.semantic.shape) == (2, spec.stage_channels[3], *grid)
    assert tuple(feats.hierarchical.shape) == (2, 768, *grid)
    assert torch.equal(feats.semantic, stages[3])


def test_hierarchical_feature_blocks_are_normalised_sides(net: SIPENet) -> None:
    """Side maps are L2-normalised per pixel, then resized to the stride-16 grid: blocks 3-4 (already on the
    grid) are unit vectors; blocks 1-2 are bilinear averages of unit vectors (norm <= 1)."""
    raw: list[torch.Tensor] = []
    hooks = [conv.register_forward_hook(lambda m, i, o: raw.append(o)) for conv in net.sides]
    try:
        with torch.no_grad():
            hier = net.extract(torch.randn(1, 3, 96, 128)).hierarchical
    finally:
        for h in hooks:
            h.remove()
    blocks = torch.split(hier, SIDE_CHANNELS, dim=1)
    for k, (block, side) in enumerate(zip(blocks, raw)):
        norm = block.norm(dim=1)
        if k >= 2:
            torch.testing.assert_close(norm, torch.ones_like(norm), atol=1e-4, rtol=0)
        else:
            assert side.shape[2:] == (96 // 4 // 2 ** k, 128 // 4 // 2 ** k)
            unit = side / side.norm(dim=1, keepdim=True)
            torch.testing.assert_close(unit.norm(dim=1), torch.ones_like(unit[:, 0]))
            expected = F.interpolate(unit, block.shape[2:], mode="bilinear", align_corners=False)
            torch.testing.assert_close(block, expected, atol=1e-4, rtol=1e-4)
            assert float(norm.max()) <= 1.0 + 1e-5 and float(norm.min()) > 0.1


@pytest.mark.parametrize("name, channels", [("efficientnet_lite0", (24, 40, 112, 320)),
                                           ("efficientnet_lite2", (24, 48, 120, 352))])
def test_efficientnet_blocks6_semantic_layer(name: str, channels: tuple[int, int, int, int]) -> None:
    torch.manual_seed(0)
    m = build_model(model_cfg(name, semantic_layer="blocks6"))
    assert stage_channels(m.backbone) == channels
    with torch.no_grad():
        feats = m.extract(torch.randn(1, 3, 64, 96))
    assert tuple(feats.semantic.shape) == (1, channels[3], 4, 6)
    assert tuple(feats.hierarchical.shape) == (1, 768, 4, 6)


def test_unknown_semantic_layer_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"model\.semantic_layer"):
        build_backbone(model_cfg("resnet50", semantic_layer="conv_head"))
    with pytest.raises(ConfigError, match=r"model\.backbone='vgg16'"):
        check_model(model_cfg("vgg16"))


def test_gradient_reaches_only_trainable_parts(net: SIPENet) -> None:
    name = net.cfg.backbone
    net.zero_grad(set_to_none=True)
    sipe_loss(net, torch.randn(2, 3, 64, 64)).backward()
    frozen = params_of(net.backbone, FROZEN[name])
    assert frozen and all(p.grad is None and not p.requires_grad for p in frozen)
    for part in TRAINABLE[name]:
        params = list(getattr(net.backbone, part).parameters())
        assert params and all(p.grad is not None for p in params), part
        assert any(float(p.grad.abs().sum()) > 0 for p in params), part
    for module in [net.classifier, *net.sides]:
        assert module.weight.grad is not None and float(module.weight.grad.abs().sum()) > 0
    net.zero_grad(set_to_none=True)


def test_batchnorm_statistics_are_frozen(net: SIPENet) -> None:
    net.train()
    bns = batch_norms(net)
    assert bns and all(not bn.training for bn in bns)
    assert net.training and net.backbone.training and all(m.training for m in [net.classifier, *net.sides])
    before = [(bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()) for bn in bns]
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(2, 3, 64, 64) * 3 + 1, with_ipe=False)
    for bn, (mean, var, count) in zip(bns, before):
        assert torch.equal(bn.running_mean, mean) and torch.equal(bn.running_var, var)
        assert torch.equal(bn.num_batches_tracked, count)
    net.eval()
    assert all(not bn.training for bn in bns)


def test_optimizer_groups_hold_trainable_backbone_and_new_layers(net: SIPENet) -> None:
    cfg = get_profile("smoke", **{"model.backbone": net.cfg.backbone, "model.semantic_layer": "default",
                                  "model.pretrained": False})
    opt, _ = build_optimizer(net, cfg, max_steps=10)
    backbone_group, new_group = opt.param_groups
    expected_backbone = params_of(net.backbone, TRAINABLE[net.cfg.backbone])
    expected_new = [*net.classifier.parameters(), *net.sides.parameters()]
    assert {id(p) for p in backbone_group["params"]} == {id(p) for p in expected_backbone}
    assert len(backbone_group["params"]) == len(expected_backbone)
    assert {id(p) for p in new_group["params"]} == {id(p) for p in expected_new}
    assert backbone_group["lr"] == pytest.approx(cfg.train.lr)
    assert new_group["lr"] == pytest.approx(cfg.train.lr * cfg.train.new_layer_lr_mult)
    grouped = {id(p) for g in opt.param_groups for p in g["params"]}
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    assert grouped == trainable


def cat_only_ids(root: Path, n: int) -> list[str]:
    """The n images (of the first 40 cat-only train_aug ids) where the cat covers most pixels."""
    cat = CLASS_NAMES.index("cat")
    labels = load_cls_labels(root)
    ids = [i for i in read_split(root, "train_aug") if labels[i].sum() == 1 and labels[i][cat - 1] == 1][:40]
    if not ids:
        pytest.skip(f"no cat-only image in {root}")
    share = {i: float((load_mask(root, i) == cat).mean()) for i in ids}
    return sorted(ids, key=lambda i: -share[i])[:n]


@pytest.mark.parametrize("name", LITES)
def test_efficientnet_lite_imagenet_weights_recognise_cats(real_root: Path, name: str) -> None:
    import timm

    net = timm.create_model(LITE[name].timm_name, pretrained=False)
    path = efficientnet_lite_weights_file(name)
    _load_by_order(net, torch.load(path, map_location="cpu", weights_only=True), str(path))
    net.eval()
    for image_id in cat_only_ids(real_root, 3):
        img = Image.fromarray(load_image(real_root, image_id)).resize((224, 224), Image.BICUBIC)
        x = (torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0) - 0.5) / 0.5
        with torch.no_grad():
            top5 = net(x.permute(2, 0, 1)[None]).topk(5).indices[0].tolist()
        assert any(c in IMAGENET_CATS for c in top5), (image_id, top5)


@pytest.mark.parametrize("name", LITES)
def test_efficientnet_backbone_loads_package_weights(name: str) -> None:
    path = efficientnet_lite_weights_file(name)
    state = torch.load(path, map_location="cpu", weights_only=True)
    backbone = build_backbone(ModelConfig(backbone=name, pretrained=True))
    stem_conv = backbone.stem[0].weight
    assert any(v.shape == stem_conv.shape and torch.equal(v, stem_conv) for v in state.values())


def test_load_by_order_rejects_mismatched_shapes() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1))
    good = {f"w{i}": torch.randn_like(v) for i, v in enumerate(model.state_dict().values())}
    _load_by_order(model, good, "good.pth")
    assert torch.equal(model[1].weight, good["w2"])
    bad = dict(good, w2=torch.randn(2, 5, 1, 1))
    with pytest.raises(WeightsError, match="bad.pth"):
        _load_by_order(model, bad, "bad.pth")
    with pytest.raises(WeightsError, match="short.pth"):
        _load_by_order(model, {"w0": good["w0"]}, "short.pth")


def test_resnet50_missing_weights_error_names_file_and_place(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def no_download(*args, **kwargs):
        raise urllib.error.URLError("no internet")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    with pytest.raises(WeightsError) as err:
        build_backbone(ModelConfig(backbone="resnet50", pretrained=True))
    message = str(err.value)
    assert "URLError" in message and RESNET50_FILE in message
    assert str(tmp_path / "hub" / "checkpoints" / RESNET50_FILE) in message
    assert "model.weights" in message


def test_resnet50_weights_file_and_cache_are_loaded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from torchvision.models import resnet50

    torch.manual_seed(1)
    state = resnet50(weights=None).state_dict()
    given = tmp_path / "my_resnet50.pth"
    torch.save(state, given)
    backbone = build_backbone(ModelConfig(backbone="resnet50", pretrained=True, weights=str(given)))
    assert torch.equal(backbone.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    assert torch.equal(backbone.stem[1].running_var, state["bn1.running_var"])

    with pytest.raises(WeightsError, match="missing.pth"):
        build_backbone(ModelConfig(backbone="resnet50", pretrained=True, weights=str(tmp_path / "missing.pth")))

    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    given.rename(cache / RESNET50_FILE)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    cached = build_backbone(ModelConfig(backbone="resnet50", pretrained=True))
    assert torch.equal(cached.layer4[0].conv1.weight, state["layer4.0.conv1.weight"])
