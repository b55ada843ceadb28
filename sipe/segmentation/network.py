"""The segmentation network trained on pseudo labels (or ground truth), and its evaluation on val.

paper profile: DeepLab-v2 (ResNet-101 at output stride 8, ASPP of four 3x3 branches with rates 6/12/18/24
summed, frozen BatchNorm), trained as deeplab-pytorch's VOC recipe: crop 321, batch 10, 20k steps, SGD
lr 2.5e-4 (head x10), momentum 0.9, weight decay 5e-4, poly 0.9; evaluated multi-scale + denseCRF.
The backbone starts from torchvision's ImageNet ResNet-101 (DeepLab-v2's recipe starts from an MS-COCO
pretrained model, which is not distributed in a form torchvision reads; say so beside any number).
subset/smoke: the same ASPP head on a registry backbone (EfficientNet-Lite0 at output stride 16).

Evaluation: single scale (the image, no flip), and multi-scale + flip with softmax probabilities
averaged over the views, then denseCRF on those probabilities (deeplab-pytorch's CRF settings). mIoU by
`sipe.stages.evaluation`, over the classes present in the evaluated ground truth.
"""
from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from ..infra.config import DEEPLAB_R101, ModelConfig, SegConfig
from ..data import transforms as T
from ..data import voc
from ..stages.labelled import GROUND_TRUTH, LabelledCropDataset, save_label_atomic
from ..infra.divergence import DIVERGENCE_FACTOR, DIVERGENCE_WINDOW, guarded
from ..stages.fit import FitResult, fit_folder
from ..method.backbones import BACKBONES, build_backbone, check_backbone, imagenet_state_dict, stage_channels
from ..infra.runtime import atomic_write_json, resolve_device, seed_everything

RESNET101_FILE = "resnet101-63fe2227.pth"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalization(cfg: SegConfig) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(mean, std) of the input normalisation of `cfg.backbone`."""
    if cfg.backbone == DEEPLAB_R101:
        return IMAGENET_MEAN, IMAGENET_STD
    spec = BACKBONES[cfg.backbone]
    return spec.mean, spec.std


SUBSET_CPU_SECONDS = {"train_epoch": 0.19, "ss": 0.16, "ms": 0.46, "ms_crf": 1.78}
"""The subset profile's process CPU seconds per image (training: per image and epoch; prediction per val
image and mode, 'ms_crf' including its multi-scale probabilities, which 'ms' shares when both are made),
measured by benchmarks/bench_table2.py on 4 images with one thread on a machine shared with a background
job (2026-12-02): upper bounds. `sipe.study.segresults.cpu_budget` sums them."""


# ------------------------------------------------------------------------------------------------- models


class ASPP(nn.Module):
    """DeepLab-v2 ASPP: parallel 3x3 convolutions with dilation r (one per rate) to C classes, summed."""

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r) for r in rates)
        for b in self.branches:
            nn.init.normal_(b.weight, std=0.01)
            nn.init.zeros_(b.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(b(x) for b in self.branches)


def _freeze_bn(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


class SegNet(nn.Module):
    """A feature extractor (N,3,H,W) -> (N,D,h,w) and an ASPP head -> logits (N,C,h,w); BatchNorm frozen."""

    def __init__(self, body: nn.Module, channels: int, num_classes: int, rates: Sequence[int]) -> None:
        super().__init__()
        self.body = body
        self.head = ASPP(channels, num_classes, rates)
        self.num_classes = num_classes

    def train(self, mode: bool = True) -> "SegNet":
        super().train(mode)
        _freeze_bn(self)
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x.contiguous(memory_format=torch.channels_last))
        return out[-1] if isinstance(out, (list, tuple)) else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N,3,H,W) -> logits (N,C,h,w) at the body's output stride."""
        return self.head(self.features(x))

    def param_groups(self, head_lr_mult: float) -> list[tuple[list[nn.Parameter], float]]:
        body = [p for p in self.body.parameters() if p.requires_grad]
        return [(body, 1.0), (list(self.head.parameters()), head_lr_mult)]


class _ResNetBody(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))


def resnet101_state_dict(weights: str = "") -> dict[str, torch.Tensor]:
    """torchvision ImageNet ResNet-101 weights: a given file (`seg.weights`), else the torch cache, else a download."""
    return imagenet_state_dict("resnet101", RESNET101_FILE, weights, "seg.weights")


def deeplab_r101(num_classes: int, pretrained: bool = True, weights: str = "",
                 rates: Sequence[int] = (6, 12, 18, 24)) -> SegNet:
    """DeepLab-v2: ResNet-101 with layer3/layer4 dilated (output stride 8), BatchNorm frozen (statistics and
    affine parameters), ASPP rates 6/12/18/24."""
    from torchvision.models import resnet101

    net = resnet101(weights=None, replace_stride_with_dilation=[False, True, True])
    if pretrained:
        net.load_state_dict(resnet101_state_dict(weights))
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            for p in m.parameters():
                p.requires_grad_(False)
    return SegNet(_ResNetBody(net), 2048, num_classes, rates)


def build_segnet(cfg: SegConfig, num_classes: int, pretrained: bool | None = None) -> SegNet:
    """The profile's segmentation network for `num_classes` channels (background included)."""
    pre = cfg.pretrained if pretrained is None else pretrained
    if cfg.backbone == DEEPLAB_R101:
        model = deeplab_r101(num_classes, pre, cfg.weights, cfg.aspp_rates)
    else:
        backbone = build_backbone(ModelConfig(backbone=cfg.backbone, pretrained=pre, weights=cfg.weights))
        model = SegNet(backbone, stage_channels(backbone)[3], num_classes, cfg.aspp_rates)
    return model.to(memory_format=torch.channels_last)


# ---------------------------------------------------------------------------------------------- training


def seg_step(model: SegNet, batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
    """Cross-entropy (void 255 ignored) of the logits upsampled to the crop against the crop's labels."""
    img, label = batch["img"].to(device), batch["label"].to(device)
    logits = F.interpolate(model(img), label.shape[-2:], mode="bilinear", align_corners=False)
    return {"loss": F.cross_entropy(logits, label, ignore_index=voc.IGNORE_INDEX)}


def train_segmentation(
    cfg: SegConfig,
    root: str | os.PathLike,
    ids: Sequence[str],
    labels: str | os.PathLike,
    num_classes: int,
    run_dir: str | os.PathLike,
    device: str = "auto",
    progress: bool = True,
    on_step=None,
    divergence_factor: float | None = DIVERGENCE_FACTOR,
    divergence_window: int = DIVERGENCE_WINDOW,
) -> FitResult:
    """Train on the label maps `labels` ('gt' or a folder of PNGs) of `ids` in `run_dir` (resumable).

    Stops with DivergenceError when the loss's mean over `divergence_window` steps exceeds
    `divergence_factor` x its start (`sipe.infra.divergence.DivergenceGuard`; None: never)."""
    cfg.validate()
    check_backbone("seg.backbone", cfg.backbone, (DEEPLAB_R101,))
    dev = resolve_device(device)
    seed_everything(cfg.seed)
    model = build_segnet(cfg, num_classes)
    dataset = LabelledCropDataset(root, ids, labels, cfg.crop_size, cfg.scale_range, *normalization(cfg), seed=cfg.seed)
    labels_id = GROUND_TRUTH if str(labels) == GROUND_TRUTH else f"{Path(labels).parent.name}/{Path(labels).name}"
    config = {"stage": "segmentation", "seg": cfg.result_dict(), "num_classes": num_classes, "labels": labels_id,
              "ids": hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]}
    o = cfg.optim()
    return fit_folder(model, model.param_groups(o.new_lr_mult), dataset, seg_step, run_dir, o, config, ("loss",), dev,
                      cfg.num_workers, progress, desc="segmentation",
                      on_step=guarded(on_step, run_dir, "segmentation lr (seg.lr, seg.head_lr_mult)", divergence_factor,
                                      divergence_window))


def load_segnet(checkpoint: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[SegNet, SegConfig]:
    """The network and settings of a `final.pt` written by `train_segmentation` (no ImageNet weights needed)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    d = dict(state["config"]["seg"])
    for k in ("aspp_rates", "scale_range", "eval_scales"):
        d[k] = tuple(d[k])
    cfg = SegConfig(**d)
    model = build_segnet(cfg, state["config"]["num_classes"], pretrained=False)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cfg


# -------------------------------------------------------------------------------------------- inference


@torch.no_grad()
def predict_probs(model: SegNet, img: np.ndarray, scales: Sequence[float], flip: bool,
                  mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (H,W,3) -> float32 (C,H,W) softmax probabilities averaged over scales (and horizontal flips)."""
    h, w = img.shape[:2]
    device = next(model.head.parameters()).device
    total = None
    for s in scales:
        x = torch.from_numpy(T.hwc_to_chw(T.normalize(T.rescale(img, s, "bicubic"), mean, std)))
        views = torch.stack([x, x.flip(-1)]) if flip else x[None]
        logits = F.interpolate(model(views.to(device)), (h, w), mode="bilinear", align_corners=False)
        probs = logits.softmax(dim=1)
        if flip:
            probs = probs[:1] + probs[1:].flip(-1)
        total = probs[0] if total is None else total + probs[0]
    return (total / (len(scales) * (2 if flip else 1))).cpu()


def crf_probabilities(img: np.ndarray, probs: np.ndarray, cfg: SegConfig) -> np.ndarray:
    """int64 (H,W) labels after denseCRF with unary -log(probs (C,H,W)) over image uint8 (H,W,3)."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    c, h, w = probs.shape
    d = dcrf.DenseCRF2D(w, h, c)
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs.astype(np.float32))))
    d.addPairwiseGaussian(sxy=cfg.crf_pos_xy, compat=cfg.crf_pos_w)
    d.addPairwiseBilateral(sxy=cfg.crf_bi_xy, srgb=cfg.crf_bi_rgb, rgbim=np.ascontiguousarray(img), compat=cfg.crf_bi_w)
    return np.argmax(np.array(d.inference(cfg.crf_iterations)).reshape(c, h, w), axis=0)


MODES = ("ss", "ms", "ms_crf")
"""Prediction modes: single scale; multi-scale + flip; multi-scale + flip + denseCRF."""


def predict(
    checkpoint: str | os.PathLike, root: str | os.PathLike, ids: Sequence[str], out_dir: str | os.PathLike,
    modes: Sequence[str] = MODES, device: str = "auto", progress: bool = True,
) -> dict[str, Path]:
    """Label PNGs `<out_dir>/<mode>/<id>.png` of `ids` for each mode (resumable; DONE per mode)."""
    unknown = set(modes) - set(MODES)
    if unknown:
        raise ValueError(f"unknown prediction modes {sorted(unknown)}; use {MODES}")
    out = {m: Path(out_dir) / m for m in modes}
    todo_modes = [m for m in modes if not (out[m] / "DONE").exists()]
    if not todo_modes:
        return out
    model, cfg = load_segnet(checkpoint, resolve_device(device))
    norm = normalization(cfg)
    t0 = time.perf_counter()
    for image_id in tqdm(list(ids), disable=not progress, desc="segmentation predictions", unit="img"):
        need = [m for m in todo_modes if not (out[m] / f"{image_id}.png").exists()]
        if not need:
            continue
        img = voc.load_image(root, image_id)
        if "ss" in need:
            save_label_atomic(out["ss"] / f"{image_id}.png",
                              predict_probs(model, img, (1.0,), False, *norm).argmax(0).numpy().astype(np.uint8))
        if "ms" in need or "ms_crf" in need:
            probs = predict_probs(model, img, cfg.eval_scales, cfg.eval_flip, *norm).numpy()
            if "ms" in need:
                save_label_atomic(out["ms"] / f"{image_id}.png", probs.argmax(0).astype(np.uint8))
            if "ms_crf" in need:
                save_label_atomic(out["ms_crf"] / f"{image_id}.png", crf_probabilities(img, probs, cfg).astype(np.uint8))
    for m in todo_modes:
        atomic_write_json(out[m] / "DONE", {"n_images": len(ids), "checkpoint": str(checkpoint),
                                            "seconds": time.perf_counter() - t0})
    return out
