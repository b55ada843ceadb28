"""Training losses: multi-label classification (Eq. 9) and general-specific consistency (Eq. 10)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .ipe import max_normalize


def classification_loss(score: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 9: multi-label soft margin loss between image scores (N,K) and 0/1 labels (N,K)."""
    return F.multilabel_soft_margin_loss(score, labels.to(score.dtype))


def gsc_loss(cam: torch.Tensor, is_cam: torch.Tensor) -> torch.Tensor:
    """Eq. 10, GSC: mean over (N,C,h,w) of ``|CAM - max_normalize(IS-CAM)|``; gradients flow into both sides."""
    if cam.shape != is_cam.shape:
        raise ValueError(f"cam {tuple(cam.shape)} and is_cam {tuple(is_cam.shape)} must have one shape")
    return (cam - max_normalize(is_cam)).abs().mean()
