"""A resumable SGD loop with polynomial decay, shared by the IRN and segmentation stages (pattern of sipe.stages.train).

A run folder holds `config.json` (the stage's settings), `metrics.csv` (one row per step),
`checkpoint.pt` (the last checkpoint, written atomically at every epoch end and every
`checkpoint_every` steps) and, once finished, `final.pt` = {"model", "config", "steps"}. Calling `fit`
again on the folder continues from the checkpoint and reaches the same weights as an uninterrupted run
(CPU); a folder holding a run of other settings raises ConfigMismatchError.
"""
from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from ..infra.errors import SipeError
from ..infra.runtime import atomic_torch_save, atomic_write_json

StepFn = Callable[[torch.nn.Module, dict, torch.device], dict[str, torch.Tensor]]


class ConfigMismatchError(SipeError, RuntimeError):
    """A run folder holds a run of a different configuration."""


@dataclass(frozen=True)
class FitResult:
    run_dir: Path
    checkpoint: Path
    metrics: Path
    reused: bool
    steps: int


@dataclass(frozen=True)
class LoopSettings:
    """Optimisation of one stage: SGD over param groups (each with an lr multiplier), poly decay to max_steps."""

    batch_size: int
    epochs: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    max_steps: int | None = None
    seed: int = 0
    checkpoint_every: int | None = None
    num_workers: int = 0


class EpochSampler(Sampler[int]):
    """The epoch's permutation (seeded by (seed, epoch)), starting after `skip` already-trained items."""

    def __init__(self, n: int, seed: int, epoch: int, skip: int = 0) -> None:
        self.n, self.seed, self.epoch, self.skip = n, seed, epoch, skip

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1000003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g)[self.skip:].tolist())

    def __len__(self) -> int:
        return self.n - self.skip


def plan(n_items: int, s: LoopSettings) -> tuple[int, int]:
    """(steps per epoch, total steps): full batches only, capped by max_steps."""
    per_epoch = n_items // s.batch_size
    if per_epoch == 0:
        raise ValueError(f"{n_items} training images < batch size {s.batch_size}; lower the batch size")
    total = per_epoch * s.epochs
    return per_epoch, total if s.max_steps is None else min(total, s.max_steps)


def _check_config(path: Path, config: Mapping[str, Any]) -> None:

    wanted = json.loads(json.dumps(config, sort_keys=True, default=str))
    if path.exists():
        stored = json.loads(path.read_text())
        if stored != wanted:
            diff = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
            raise ConfigMismatchError(f"{path.parent} holds a run of other settings (differing: {diff}); "
                                      "use a new run folder or delete this one")
    else:
        atomic_write_json(path, wanted)


def _truncate(path: Path, fields: Sequence[str], upto: int) -> None:
    if not path.exists():
        return
    with path.open() as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= upto]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields))
        w.writeheader()
        w.writerows(rows)


def fit(
    model: torch.nn.Module,
    groups: Sequence[tuple[Sequence[torch.nn.Parameter], float]],
    dataset: Dataset,
    step_fn: StepFn,
    run_dir: str | Path,
    settings: LoopSettings,
    config: Mapping[str, Any],
    metric_names: Sequence[str] = ("loss",),
    device: torch.device | str = "cpu",
    progress: bool = True,
    desc: str = "fit",
    collate_fn: Callable | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> FitResult:
    """Train `model` on `dataset` in `run_dir`, resuming from its checkpoint; `final.pt` when done.

    groups: (parameters, lr multiplier) pairs; step_fn(model, batch, device) returns a dict of scalar
    tensors with at least "loss" (the others are logged under `metric_names`).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final, ckpt, metrics = run_dir / "final.pt", run_dir / "checkpoint.pt", run_dir / "metrics.csv"
    _check_config(run_dir / "config.json", config)
    if final.exists():
        steps = torch.load(final, map_location="cpu", weights_only=False)["steps"]
        return FitResult(run_dir, final, metrics, True, steps)
    device = torch.device(device)
    s = settings
    per_epoch, max_steps = plan(len(dataset), s)
    model.to(device).train()
    opt = torch.optim.SGD([{"params": list(p), "lr": s.lr * m} for p, m in groups],
                          lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=max_steps, power=s.poly_power)
    step = 0
    if ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step = state["step"]
    fields = ["step", "epoch", *metric_names, "lr", "images_per_s", "seconds"]
    _truncate(metrics, fields, step)
    new_file = not metrics.exists() or metrics.stat().st_size == 0
    with metrics.open("a", newline="") as mf, tqdm(total=max_steps, initial=step, disable=not progress,
                                                   desc=desc, unit="step") as bar:
        writer = csv.DictWriter(mf, fieldnames=fields)
        if new_file:
            writer.writeheader()
        while step < max_steps:
            epoch, in_epoch = divmod(step, per_epoch)
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
            sampler = EpochSampler(len(dataset), s.seed, epoch, skip=in_epoch * s.batch_size)
            loader = DataLoader(dataset, batch_size=s.batch_size, sampler=sampler, drop_last=True,
                                num_workers=s.num_workers, collate_fn=collate_fn)
            for batch in loader:
                t0 = time.perf_counter()
                out = step_fn(model, batch, device)
                opt.zero_grad(set_to_none=True)
                out["loss"].backward()
                lr = opt.param_groups[0]["lr"]
                opt.step()
                sched.step()
                step += 1
                dt = time.perf_counter() - t0
                row = {"step": step, "epoch": epoch, "lr": lr, "images_per_s": s.batch_size / dt, "seconds": dt,
                       **{k: float(v.detach()) for k, v in out.items()}}
                if not math.isfinite(row["loss"]):
                    raise FloatingPointError(f"non-finite loss at step {step} in {run_dir}: {row}; lower the lr")
                writer.writerow({k: row.get(k, "") for k in fields})
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.3f}", img_s=f"{row['images_per_s']:.1f}")
                if step % per_epoch == 0 or step == max_steps or (s.checkpoint_every and step % s.checkpoint_every == 0):
                    mf.flush()
                    atomic_torch_save({"step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
                                       "scheduler": sched.state_dict()}, ckpt)
                if on_step is not None:
                    on_step(step, row)
                if step >= max_steps:
                    break
    atomic_torch_save({"model": model.state_dict(), "config": dict(config), "steps": step}, final)
    return FitResult(run_dir, final, metrics, False, step)
