"""The SIPE network: backbone + side convs (hierarchical feature) + classifier, with IPE in the forward pass."""
from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ipe
from .backbones import Backbone, build_backbone, stage_channels

if TYPE_CHECKING:
    from ..infra.config import ModelConfig

SIDE_CHANNELS = (128, 128, 256, 256)


class Features(NamedTuple):
    """Per-image outputs of the network body: logits (N,K,h,w), semantic (N,Ds,h,w), hierarchical (N,768,h,w)."""

    logits: torch.Tensor
    semantic: torch.Tensor
    hierarchical: torch.Tensor

    def get(self, name: str) -> torch.Tensor:
        return self.semantic if name == "semantic" else self.hierarchical


class SIPENet(nn.Module):
    """SIPE on any registered backbone.

    `extract` gives the logits and the two features; `forward` is the training pass (CAM with background,
    label-masked; seeds on the training seed feature; prototypes and IS-CAM on the prototype feature).
    """

    def __init__(self, cfg: ModelConfig, num_classes: int = 20, backbone: Backbone | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.backbone = backbone if backbone is not None else build_backbone(cfg)
        chans = stage_channels(self.backbone)
        self.sides = nn.ModuleList(nn.Conv2d(c, s, 1, bias=False) for c, s in zip(chans, SIDE_CHANNELS))
        self.classifier = nn.Conv2d(chans[3], num_classes, 1, bias=False)

    def extract(self, x: torch.Tensor) -> Features:
        """(N,3,H,W) -> Features on the stride-16 grid; side convs see detached stage outputs.

        Inputs are passed channels-last (the layout the model is built in: ~1.8x faster convolutions on CPU).
        """
        stages = self.backbone(x.contiguous(memory_format=torch.channels_last))
        grid = stages[2].shape[2:]
        sides = []
        for conv, s in zip(self.sides, stages):
            side = ipe.l2_normalize(conv(s.detach()))
            sides.append(side if side.shape[2:] == grid else F.interpolate(side, grid, mode="bilinear", align_corners=False))
        semantic = stages[3]
        return Features(self.classifier(semantic), semantic, torch.cat(sides, dim=1))

    def forward(self, x: torch.Tensor, label_mask: torch.Tensor | None = None, with_ipe: bool = True) -> dict[str, torch.Tensor]:
        """Training pass. label_mask: (N,C,H',W') (resized nearest to the grid) or (N,C,1,1) = validity x [1, labels].

        Returns score (N,K), cam (N,C,h,w) masked, label_mask as applied to the grid (when given), and with_ipe:
        seeds, prototypes (N,C,D), is_cam (N,C,h,w).
        """
        feats = self.extract(x)
        score = feats.logits.mean(dim=(2, 3))
        cam = ipe.cam_with_background(feats.logits)
        if label_mask is not None:
            if label_mask.shape[-1] > 1 and label_mask.shape[2:] != cam.shape[2:]:
                label_mask = F.interpolate(label_mask, cam.shape[2:], mode="nearest")
            cam = cam * label_mask
        out = {"score": score, "cam": cam}
        if label_mask is not None:
            out["label_mask"] = label_mask
        if with_ipe:
            res = ipe.explore(
                cam,
                feats.get(self.cfg.seed_feature_train),
                feats.get(self.cfg.prototype_feature),
                label_mask=label_mask,
                bg_scale=self.cfg.bg_scale,
                background_prototype=self.cfg.background_prototype,
                chunk_rows=self.cfg.seed_chunk_rows,
            )
            out.update(seeds=res.seeds, prototypes=res.prototypes, is_cam=res.is_cam)
        return out

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(trainable backbone parameters, new layers: classifier and side convs)."""
        new = list(self.classifier.parameters()) + list(self.sides.parameters())
        return self.backbone.trainable_parameters(), new


def build_model(cfg: ModelConfig, num_classes: int = 20) -> SIPENet:
    """SIPENet in channels-last memory format."""
    return SIPENet(cfg, num_classes).to(memory_format=torch.channels_last)
