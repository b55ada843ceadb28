"""Stage 1: train SIPE (or a variant) on image-level labels; checkpointed every epoch and resumable.

A run folder holds `config.json`, `metrics.csv` (one row per step), `checkpoint.pt` (the last
checkpoint, written atomically) and, once finished, `final.pt`. Restarting `train` on the same folder
continues from the checkpoint and reaches the same final weights as an uninterrupted run (CPU).
"""
from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..infra import distributed
from ..method import ipe, losses
from ..infra.config import ExperimentConfig, load_config
from ..data.datasets import TrainDataset
from .fit import ConfigMismatchError, EpochSampler
from ..method.backbones import BACKBONES
from ..method.network import SIPENet, build_model
from ..infra.runtime import atomic_torch_save, atomic_write_json, atomic_write_text, resolve_device, seed_everything

METRIC_FIELDS = ("step", "epoch", "loss", "loss_cls", "loss_gsc", "lr_backbone", "lr_new", "images_per_s",
                 "seed_fg_share", "seconds")


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    checkpoint: Path
    metrics: Path
    reused: bool


def build_optimizer(model: torch.nn.Module, cfg: ExperimentConfig, max_steps: int):
    """SGD with the two learning-rate groups of `model.param_groups()` and polynomial decay over `max_steps` steps."""
    t = cfg.train
    backbone, new = model.param_groups()
    opt = torch.optim.SGD(
        [{"params": backbone, "lr": t.lr}, {"params": new, "lr": t.lr * t.new_layer_lr_mult}],
        lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay,
    )
    sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=max_steps, power=t.poly_power)
    return opt, sched


def make_train_dataset(cfg: ExperimentConfig) -> TrainDataset:
    spec = BACKBONES[cfg.model.backbone]
    d = cfg.data
    return TrainDataset(d.resolved_root(), d.train_split, d.resize_long, d.crop_size, spec.mean, spec.std,
                        max_images=d.max_images, seed=cfg.train.seed)


def plan_steps(n_images: int, cfg: ExperimentConfig) -> tuple[int, int]:
    """(steps per epoch, total steps): full batches only (drop_last), capped by train.max_steps."""
    per_epoch = n_images // cfg.train.batch_size
    if per_epoch == 0:
        raise ValueError(f"{n_images} training images < batch size {cfg.train.batch_size}")
    total = per_epoch * cfg.train.epochs
    if cfg.train.max_steps is not None:
        total = min(total, cfg.train.max_steps)
    return per_epoch, total


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


def _load_checkpoint(path: Path, model, opt, sched) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    return state


def _truncate_metrics(path: Path, upto_step: int, fields: Sequence[str] = METRIC_FIELDS) -> None:
    """Drop metric rows of steps after the checkpoint (they will be trained again)."""
    if not path.exists():
        return
    with path.open() as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= upto_step]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


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
    final, ckpt_path, metrics_path = run_dir / "final.pt", run_dir / "checkpoint.pt", run_dir / "metrics.csv"
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
    fitted = fit(cfg, model, dataset, train_step, ckpt_path, metrics_path, progress=progress, on_step=on_step)
    distributed.on_main(atomic_torch_save, {"model": model.state_dict(), "config": cfg.to_dict(),
                                            "steps": fitted.steps, "wall_seconds": fitted.wall_seconds}, final)
    return TrainResult(run_dir, final, metrics_path, reused=False)


class FitResult(NamedTuple):
    """Steps trained in all (resumed sessions included) and the training wall time they took (s)."""

    steps: int
    wall_seconds: float


StepFn = Callable[[torch.nn.Module, dict, ExperimentConfig, torch.device], dict[str, torch.Tensor]]


def fit(
    cfg: ExperimentConfig,
    model: torch.nn.Module,
    dataset: TrainDataset,
    step_fn: StepFn,
    ckpt_path: Path,
    metrics_path: Path,
    fields: Sequence[str] = METRIC_FIELDS,
    progress: bool = True,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    desc: str | None = None,
) -> FitResult:
    """The training loop shared by every model trained here; returns the steps trained and their wall time.

    `model` (on its device, with `param_groups()`) is trained on `dataset` (with `set_epoch`) by SGD +
    poly decay (`build_optimizer`) in the epoch order of `sipe.stages.fit.EpochSampler`; `step_fn(model, batch, cfg,
    device)` returns the losses ('loss' is minimised; every key is logged). Resumes from `ckpt_path`
    when it exists and writes it atomically at every epoch end, at the last step and every
    `train.checkpoint_every_steps`; one row of `fields` per step goes to `metrics_path`.
    Under torchrun (sipe.infra.distributed) each rank trains its slice of every global batch of `train.batch_size`
    through DDP, resumes from the same checkpoint, and rank 0 alone logs and writes checkpoints (losses
    logged are the means over the ranks).
    """
    device = next(model.parameters()).device
    per_epoch, max_steps = plan_steps(len(dataset), cfg)
    local_batch = distributed.local_batch(cfg.train.batch_size)
    model.train()
    opt, sched = build_optimizer(model, cfg, max_steps)

    step, wall_before, session_start = 0, 0.0, time.perf_counter()
    if ckpt_path.exists():
        state = _load_checkpoint(ckpt_path, model, opt, sched)
        step, wall_before = state["step"], float(state.get("wall_seconds", 0.0))
    distributed.on_main(_truncate_metrics, metrics_path, step, fields)
    net = distributed.wrap_model(model)
    new_file = not metrics_path.exists() or metrics_path.stat().st_size == 0
    t_cfg = cfg.train
    every = t_cfg.checkpoint_every_steps

    with distributed.main_path(metrics_path).open("a", newline="") as mf, tqdm(
        total=max_steps, initial=step, disable=not (progress and distributed.is_main()),
        desc=desc or f"train {cfg.profile}", unit="step",
    ) as bar:
        writer = csv.DictWriter(mf, fieldnames=fields)
        if new_file:
            writer.writeheader()
        while step < max_steps:
            epoch, in_epoch = divmod(step, per_epoch)
            dataset.set_epoch(epoch)
            sampler = distributed.rank_sampler(
                EpochSampler(len(dataset), t_cfg.seed, epoch, skip=in_epoch * t_cfg.batch_size), t_cfg.batch_size)
            loader = DataLoader(dataset, batch_size=local_batch, sampler=sampler, drop_last=True,
                                num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda")
            for batch in loader:
                t0 = time.perf_counter()
                out = step_fn(net, batch, cfg, device)
                opt.zero_grad(set_to_none=True)
                out["loss"].backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=t_cfg.clip_grad_norm)
                lrs = [g["lr"] for g in opt.param_groups]
                opt.step()
                sched.step()
                step += 1
                dt = time.perf_counter() - t0
                row = {
                    "step": step, "epoch": epoch, "lr_backbone": lrs[0], "lr_new": lrs[1],
                    "images_per_s": t_cfg.batch_size / dt, "seconds": dt,
                    **distributed.all_mean({k: float(v.detach()) for k, v in out.items()}),
                }
                if not all(math.isfinite(row[k]) for k in out if k.startswith("loss")):
                    raise FloatingPointError(f"non-finite loss at step {step}: {row}; lower train.lr")
                writer.writerow({k: row.get(k, "") for k in fields})
                bar.update(1)
                if step % max(1, t_cfg.log_every) == 0 or step == max_steps:
                    mf.flush()
                    bar.set_postfix(loss=f"{row['loss']:.3f}", img_s=f"{row['images_per_s']:.1f}")
                end_of_epoch = step % per_epoch == 0
                if end_of_epoch or step == max_steps or (every and step % every == 0):
                    mf.flush()
                    distributed.on_main(atomic_torch_save, {
                        "step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(),
                        "wall_seconds": wall_before + time.perf_counter() - session_start}, ckpt_path)
                if on_step is not None:
                    on_step(step, row)
                if step >= max_steps:
                    break
    wall = wall_before + time.perf_counter() - session_start
    return FitResult(step, wall)


def train_key(cfg: ExperimentConfig) -> str:
    """The training stage's key: its settings and the fingerprint of the training split it reads."""
    from ..data.voc import fingerprint

    d = cfg.data
    return cfg.stage_hash("train", fingerprint(d.resolved_root(), d.train_split, d.max_images))


def run_dir_for(cfg: ExperimentConfig, work_dir: str | Path, variant: str) -> Path:
    """The cache folder of a training run: <work_dir>/runs/<variant>-s<seed>-<train key>."""
    return Path(work_dir) / "runs" / f"{variant}-s{cfg.train.seed}-{train_key(cfg)}"
