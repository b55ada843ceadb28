"""CAM map making under IRN's protocol (jiwoon-ahn/irn, step/make_cam.py and net/resnet50_cam.CAM).

Unlike SIPE's maps (`maps.infer_image`: flip views fused on the raw logits, each scale's CAM max-normalised
before the multi-scale sum), IRN applies ReLU to each view's class maps, adds the flipped view back, sums the
raw (unnormalised) maps of all scales at image resolution and normalises once per class. Background is not a
map channel: IRN compares the foreground maps with a constant (0.15 for evaluation, 0.30 / 0.05 for the
confident regions of `crf.crf_labels(..., backgrounds=crf.IRN_BACKGROUNDS)`).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

EPS = 1e-5


def irn_cam(logits_per_scale: Sequence[torch.Tensor], size: tuple[int, int], strided_up: int | None = None) -> torch.Tensor:
    """(K, H, W) CAM from each scale's class logits, IRN style.

    logits_per_scale: per scale a (2, K, h_s, w_s) tensor (the image's logits and its flipped image's) or
    (1, K, h_s, w_s) without flip. Per scale: ReLU(view 0) + flip(ReLU(view 1)); each is upsampled bilinearly
    (align_corners=False) to `size` = (H, W) and the scales are summed; then every channel is divided by its
    maximum + 1e-5.
    strided_up: IRN's exact resizing: upsample to (ceil(H/s)*s, ceil(W/s)*s) and crop the top-left (H, W)
    (IRN uses s = 16); None upsamples straight to (H, W), as `maps.infer_image` does.
    """
    if not logits_per_scale:
        raise ValueError("logits_per_scale is empty")
    h, w = int(size[0]), int(size[1])
    target = (h, w) if strided_up is None else (-(-h // strided_up) * strided_up, -(-w // strided_up) * strided_up)
    total = None
    for logits in logits_per_scale:
        if logits.dim() != 4 or logits.shape[0] not in (1, 2):
            raise ValueError(f"each scale's logits must be (2 or 1, K, h, w), got {tuple(logits.shape)}")
        cam = F.relu(logits.float())
        fused = cam[0] + cam[1].flip(-1) if cam.shape[0] == 2 else cam[0]
        up = F.interpolate(fused[None], target, mode="bilinear", align_corners=False)[0, :, :h, :w]
        total = up if total is None else total + up
    return total / (total.amax(dim=(1, 2), keepdim=True) + EPS)
