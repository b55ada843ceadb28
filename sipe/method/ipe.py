"""Image-specific prototype exploration: CAM with background, structure-aware seeds, prototypes, IS-CAM.

Shapes: N images, C = K + 1 channels with background at channel 0, D feature channels, h x w grid.
"""
from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

EPS = 1e-5
DEFAULT_SEED_BUDGET_BYTES = 64 * 2**20


def cam_with_background(logits: torch.Tensor) -> torch.Tensor:
    """Eqs. 1-2: (N,K,h,w) raw class logits -> (N,K+1,h,w) max-normalised CAM with background 1 - max_k CAM_k first."""
    cam = F.relu(logits)
    cam = cam / (cam.amax(dim=(2, 3), keepdim=True) + EPS)
    background = 1.0 - cam.amax(dim=1, keepdim=True)
    return torch.cat([background, cam], dim=1)


def l2_normalize(feature: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """x / (||x||_2 + 1e-5) along `dim` (the implementation's normalisation)."""
    return feature / (feature.norm(dim=dim, keepdim=True) + EPS)


def _rows_per_chunk(n: int, hw: int, chunk_rows: int | None, max_bytes: int | None, itemsize: int) -> int:
    if chunk_rows is not None:
        if chunk_rows <= 0:
            raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
        return min(chunk_rows, hw)
    budget = DEFAULT_SEED_BUDGET_BYTES if max_bytes is None else max_bytes
    return max(1, min(hw, budget // max(1, n * hw * itemsize)))


def structure_maps(feature: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """Structure maps ReLU(f_i . f_j) of the query pixels i in [start, stop) of the flattened grid:
    feature (N,D,h,w) -> (N, stop - start, h*w), f L2-normalised per pixel (Eq. 3)."""
    return _correlation_rows(l2_normalize(feature.flatten(2)), start, stop)


def _correlation_rows(f: torch.Tensor, start: int, stop: int | None) -> torch.Tensor:
    return F.relu(torch.bmm(f[:, :, start:stop].transpose(1, 2), f), inplace=True)


def structure_iou(
    cam: torch.Tensor,
    feature: torch.Tensor,
    chunk_rows: int | None = None,
    max_bytes: int | None = None,
) -> torch.Tensor:
    """Eqs. 3-4: IoU between every pixel's structure map ReLU(f_i . f_j) and every channel's CAM: (N,C,h,w).

    The (hw x hw) correlation is built `chunk_rows` query rows at a time (or as many rows as fit in
    `max_bytes`), so peak extra memory is N * rows * hw floats instead of C * (hw)^2.
    """
    n, c, h, w = cam.shape
    if feature.shape[0] != n or feature.shape[2:] != cam.shape[2:]:
        raise ValueError(f"feature {tuple(feature.shape)} and cam {tuple(cam.shape)} differ in N or h x w")
    hw = h * w
    f = l2_normalize(feature.flatten(2))
    cam_flat = cam.flatten(2).to(f.dtype)
    cam_sum = cam_flat.sum(-1)
    rows = _rows_per_chunk(n, hw, chunk_rows, max_bytes, f.element_size())
    iou = torch.empty(n, hw, c, dtype=f.dtype, device=f.device)
    for start in range(0, hw, rows):
        stop = min(hw, start + rows)
        corr = _correlation_rows(f, start, stop)
        inter = torch.bmm(corr, cam_flat.transpose(1, 2))
        union = corr.sum(-1, keepdim=True) + cam_sum.unsqueeze(1) - inter
        iou[:, start:stop] = inter / union.clamp_min(1e-12)
        del corr
    return iou.transpose(1, 2).reshape(n, c, h, w)


def locate_seeds(
    cam: torch.Tensor,
    feature: torch.Tensor,
    label_mask: torch.Tensor | None = None,
    bg_scale: float = 0.5,
    chunk_rows: int | None = None,
    max_bytes: int | None = None,
) -> torch.Tensor:
    """Eq. 5, structure-aware seeds: one-hot (N,C,h,w) of argmax_c IoU[c] (background IoU x bg_scale), x label_mask.

    cam: (N,C,h,w), background at channel 0. feature: (N,D,h,w). label_mask broadcastable to (N,C,h,w)
    (e.g. (N,C,1,1) image labels with background 1, or a per-pixel validity x label mask).
    No gradient flows through seeds.
    """
    with torch.no_grad():
        iou = structure_iou(cam.detach(), feature.detach(), chunk_rows=chunk_rows, max_bytes=max_bytes)
        iou[:, 0] *= bg_scale
        seeds = F.one_hot(iou.argmax(1), cam.shape[1]).permute(0, 3, 1, 2).to(cam.dtype)
        if label_mask is not None:
            seeds = seeds * label_mask.to(seeds.dtype)
    return seeds


def prototypes(
    seeds: torch.Tensor, feature: torch.Tensor, reduce: Literal["mean", "sum", "hw"] = "mean"
) -> torch.Tensor:
    """Eq. 6: (N,C,D) prototypes, the mean of `feature` over each channel's seed pixels (zero without seeds).

    seeds (N,C,h',w') are resized (nearest) to the feature grid. reduce="hw" divides by h*w as the
    authors' code does and "sum" does not divide; under the cosine of `is_cam` all three agree.
    """
    if seeds.shape[2:] != feature.shape[2:]:
        seeds = F.interpolate(seeds, feature.shape[2:], mode="nearest")
    seeds = seeds.to(feature.dtype)
    total = torch.einsum("nchw,ndhw->ncd", seeds, feature)
    if reduce == "sum":
        return total
    if reduce == "hw":
        return total / (feature.shape[2] * feature.shape[3])
    if reduce == "mean":
        return total / seeds.sum(dim=(2, 3)).clamp_min(1.0).unsqueeze(-1)
    raise ValueError(f"reduce={reduce!r}; choose 'mean', 'sum' or 'hw'")


def is_cam(feature: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Eq. 7: IS-CAM (N,C,h,w) = ReLU(cosine(feature(i), prototype_c)); a zero prototype gives a zero channel."""
    f = F.normalize(feature, dim=1, eps=1e-8)
    p = F.normalize(prototypes, dim=2, eps=1e-8)
    return F.relu(torch.einsum("ncd,ndhw->nchw", p, f))


def background_from_foreground(maps: torch.Tensor) -> torch.Tensor:
    """Replace channel 0 of (N,C,h,w) maps with 1 - max over the foreground channels (no BPM)."""
    bg = 1.0 - maps[:, 1:].amax(dim=1, keepdim=True)
    return torch.cat([bg.clamp_min(0.0), maps[:, 1:]], dim=1)


def label_mask(labels: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Image labels (N,K) (or (K,)) -> the C-channel mask [1, labels]: (N,C,1,1), or with a validity mask
    `valid` (N,S,S) -> (N,C,S,S) where background = valid and class k = valid x label_k."""
    labels = labels if labels.dim() == 2 else labels[None]
    ones = labels.new_ones(labels.shape[0], 1)
    mask = torch.cat([ones, labels], dim=1)[:, :, None, None]
    return mask if valid is None else valid.unsqueeze(1).to(mask.dtype) * mask


class IPEOutput(NamedTuple):
    seeds: torch.Tensor
    prototypes: torch.Tensor
    is_cam: torch.Tensor


def image_specific_cam(seeds: torch.Tensor, feature: torch.Tensor, background_prototype: bool = True) -> IPEOutput:
    """Prototypes (N,C,D) from `seeds` (N,C,h,w) on `feature` (N,D,h,w) and their IS-CAM (N,C,h,w).

    Without background prototype modelling IS-CAM's background channel is 1 - max over its foreground
    channels (the background prototype is dropped)."""
    protos = prototypes(seeds, feature)
    maps = is_cam(feature, protos)
    if not background_prototype:
        maps = background_from_foreground(maps)
    return IPEOutput(seeds, protos, maps)


def explore(
    cam: torch.Tensor,
    seed_feature: torch.Tensor,
    proto_feature: torch.Tensor,
    label_mask: torch.Tensor | None = None,
    bg_scale: float = 0.5,
    background_prototype: bool = True,
    chunk_rows: int | None = None,
    max_bytes: int | None = None,
) -> IPEOutput:
    """The IPE pipeline: structure-aware seeds on `seed_feature`, prototypes and IS-CAM on `proto_feature`."""
    seeds = locate_seeds(cam, seed_feature, label_mask, bg_scale=bg_scale, chunk_rows=chunk_rows, max_bytes=max_bytes)
    return image_specific_cam(seeds, proto_feature, background_prototype)


def max_normalize(maps: torch.Tensor) -> torch.Tensor:
    """Per-channel max normalisation over the spatial axes (+1e-5): (..., h, w) -> same shape."""
    return maps / (maps.amax(dim=(-2, -1), keepdim=True) + EPS)


def cam_seeds(
    cam: torch.Tensor, label_mask: torch.Tensor | None = None, threshold: float | None = None, alpha: float = 1.0
) -> torch.Tensor:
    """Seeds from the CAM alone (Fig. 8 baselines): one-hot (N,C,h,w) x label_mask.

    Without `threshold`: argmax over [background^alpha, foreground CAM] (Eq. 2's attenuation; with
    background = 1 - max CAM, alpha = 1 is the same rule as threshold 0.5, and any alpha is the rule of
    the threshold t solving t = (1 - t)^alpha). With `threshold` t: argmax over [t, foreground CAM]."""
    with torch.no_grad():
        scores = cam.detach().clone()
        if threshold is not None:
            scores[:, 0] = threshold
        elif alpha != 1.0:
            scores[:, 0] = scores[:, 0].clamp_min(0.0) ** alpha
        seeds = F.one_hot(scores.argmax(1), cam.shape[1]).permute(0, 3, 1, 2).to(cam.dtype)
        if label_mask is not None:
            seeds = seeds * label_mask.to(seeds.dtype)
    return seeds
