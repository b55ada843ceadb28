"""Trained weights on disk: what `train` writes as `final.pt` and how every later stage loads it.

A final checkpoint holds only tensors and plain values ({"model": state_dict, "config": dict, "steps": int}),
so it is read with `torch.load(weights_only=True)`: a checkpoint from elsewhere cannot run code.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..infra.config import ExperimentConfig
from ..method.network import SIPENet, build_model


def load_trained(checkpoint: str | Path, device: torch.device | str = "cpu") -> tuple[SIPENet, ExperimentConfig]:
    """The model and config stored in a `final.pt` written by `train` (no ImageNet weights needed)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    cfg = ExperimentConfig.from_dict(state["config"])
    model_cfg = cfg.model.__class__(**{**cfg.model.__dict__, "pretrained": False})
    model = build_model(model_cfg, cfg.data.num_classes)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cfg
