"""Stage 1: train SIPE (or a variant) on image-level labels; checkpointed every epoch and resumable.

A run folder holds `config.json`, `metrics.csv` (one row per step), `checkpoint.pt` (the last
checkpoint, written atomically) and, once finished, `final.pt`. Restarting `train` on the same folder
continues from the checkpoint and reaches the same final weights as an uninterrupted run (CPU).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..infra import distributed
from ..method import ipe, losses
from ..infra.config import ExperimentConfig, load_config
from ..data.datasets import TrainDataset
from .fit import ConfigMismatchError, Fitted, fit, make_optimizer
from .fit import plan_steps as plan_optim_steps
from ..method.backbones import BACKBONES
from ..method.network import SIPENet, build_model
from ..infra.runtime import atomic_torch_save, atomic_write_json, resolve_device, seed_everything

METRIC_FIELDS = ("step", "epoch", "loss", "loss_cls", "loss_gsc", "lr_backbone", "lr_new", "images_per_s",
                 "seed_fg_share", "seconds")


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    checkpoint: Path
    metrics: Path
    reused: bool


def param_groups(model: torch.nn.Module, cfg: ExperimentConfig) -> list[tuple[list[torch.nn.Parameter], float]]:
    """`model.param_groups()` as (parameters, lr multiplier): the backbone at 1, the new layers at train.new_layer_lr_mult."""
    backbone, new = model.param_groups()
    return [(backbone, 1.0), (new, cfg.train.new_layer_lr_mult)]


def build_optimizer(model: torch.nn.Module, cfg: ExperimentConfig, max_steps: int):
    """SGD with the two learning-rate groups of `param_groups` and polynomial decay over `max_steps` steps."""
    return make_optimizer(param_groups(model, cfg), cfg.train.optim(), max_steps)


def make_train_dataset(cfg: ExperimentConfig) -> TrainDataset:
    spec = BACKBONES[cfg.model.backbone]
    d = cfg.data
    return TrainDataset(d.resolved_root(), d.train_split, d.resize_long, d.crop_size, spec.mean, spec.std,
                        max_images=d.max_images, seed=cfg.train.seed)


def plan_steps(n_images: int, cfg: ExperimentConfig) -> tuple[int, int]:
    """(steps per epoch, total steps): full batches only (drop_last), capped by train.max_steps."""
    return plan_optim_steps(n_images, cfg.train.optim())


def train_step(model: SIPENet, batch: dict, cfg: ExperimentConfig, device: torch.device) -> dict[str, torch.Tensor]:
    """Eq. 8: one forward pass and the losses of a batch, loss = L_cls + L_GSC (no optimizer step)."""
    img = batch["img"].to(device, non_blocking=True)
    labels = batch["label"].to(device, non_blocking=True)
    valid = batch["valid_mask"].to(device, non_blocking=True)
    use_gsc = cfg.model.gsc
    mask = ipe.label_mask(labels, valid)
    out = model(img, mask, with_ipe=use_gsc)
    loss_cls = losses.classification_loss(out["score"], labels)
    result = {"loss_cls": loss_cls}
    if use_gsc:
        loss_gsc = losses.gsc_loss(out["cam"], out["is_cam"])
        grid_valid = out["label_mask"][:, :1]
        fg = out["seeds"][:, 1:].sum(1, keepdim=True)
        result["seed_fg_share"] = (fg * grid_valid).sum() / grid_valid.sum().clamp_min(1.0)
        result["loss_gsc"] = loss_gsc
        result["loss"] = loss_cls + loss_gsc
    else:
        result["loss"] = loss_cls
    return result


def train(
    cfg: ExperimentConfig,
    run_dir: str | Path,
    progress: bool = True,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train `cfg` in `run_dir`, resuming from `run_dir/checkpoint.pt` when present; returns the final weights.

    The run folder is locked while training (see sipe.infra.locks): a second caller waits and then reuses it.
    Under torchrun every rank trains (DDP) and rank 0 alone writes the folder (see `fit`)."""
    run_dir = Path(run_dir)
    with distributed.folder_lock(run_dir):
        return _train_locked(cfg, run_dir, progress, on_step)


def _train_locked(cfg: ExperimentConfig, run_dir: Path, progress: bool,
                  on_step: Callable[[int, dict[str, float]], None] | None) -> TrainResult:
    final, metrics_path = run_dir / "final.pt", run_dir / "metrics.csv"
    cfg_path = run_dir / "config.json"
    if cfg_path.exists():
        stored = load_config(cfg_path)
        if stored.stage_hash("train") != cfg.stage_hash("train"):
            raise ConfigMismatchError(
                f"{run_dir} holds a run of another configuration (train hash {stored.stage_hash('train')} != "
                f"{cfg.stage_hash('train')}); use a new run folder or delete this one")
    if final.exists():
        return TrainResult(run_dir, final, metrics_path, reused=True)
    distributed.on_main(atomic_write_json, cfg_path, cfg.to_dict())

    device = resolve_device(cfg.device)
    seed_everything(cfg.train.seed)
    dataset = make_train_dataset(cfg)
    plan_steps(len(dataset), cfg)
    model = build_model(cfg.model, cfg.data.num_classes).to(device)
    fitted = fit_classifier(cfg, model, dataset, train_step, run_dir, progress=progress, on_step=on_step)
    distributed.on_main(atomic_torch_save, {"model": model.state_dict(), "config": cfg.to_dict(),
                                            "steps": fitted.steps, "wall_seconds": fitted.wall_seconds}, final)
    return TrainResult(run_dir, final, metrics_path, reused=False)


def fit_classifier(cfg: ExperimentConfig, model: torch.nn.Module, dataset: TrainDataset,
                   step_fn: Callable[[torch.nn.Module, dict, ExperimentConfig, torch.device], dict[str, torch.Tensor]],
                   run_dir: Path, fields: Sequence[str] = METRIC_FIELDS, progress: bool = True,
                   on_step: Callable[[int, dict[str, float]], None] | None = None, desc: str | None = None) -> Fitted:
    """`sipe.stages.fit.fit` of a classification network (SIPE, its variants, SC-CAM's rounds) under `cfg.train`
    in `run_dir` (`checkpoint.pt`, `metrics.csv`): `step_fn(model, batch, cfg, device)`, DDP under torchrun."""
    def step(net: torch.nn.Module, batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
        return step_fn(net, batch, cfg, device)

    return fit(model, param_groups(model, cfg), dataset, step, cfg.train.optim(), run_dir / "checkpoint.pt",
               run_dir / "metrics.csv", fields, ("lr_backbone", "lr_new"), num_workers=cfg.data.num_workers,
               progress=progress, desc=desc or f"train {cfg.profile}", on_step=on_step)


def train_key(cfg: ExperimentConfig) -> str:
    """The training stage's key: its settings and the fingerprint of the training split it reads."""
    from ..data.voc import fingerprint

    d = cfg.data
    return cfg.stage_hash("train", fingerprint(d.resolved_root(), d.train_split, d.max_images))


def run_dir_for(cfg: ExperimentConfig, work_dir: str | Path, variant: str) -> Path:
    """The cache folder of a training run: <work_dir>/runs/<variant>-s<seed>-<train key>."""
    return Path(work_dir) / "runs" / f"{variant}-s{cfg.train.seed}-{train_key(cfg)}"
