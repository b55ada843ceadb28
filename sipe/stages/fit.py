"""The one training loop of every network trained here (SIPE and its variants, SC-CAM's rounds, IRN, the
segmentation net): SGD + polynomial decay (`sipe.infra.config.OptimSettings`), resumable from its checkpoint.

`fit` trains a model: one row of metrics per step, the checkpoint (`step`, model, optimizer, scheduler,
`wall_seconds`) written atomically at every epoch end, at the last step and every `checkpoint_every` steps;
restarted, it continues from the checkpoint, drops the metric rows of the steps after it (atomically) and
reaches the same weights as an uninterrupted run (CPU). Under torchrun (`sipe.infra.distributed`) every rank
trains its slice of each global batch through DDP and rank 0 alone writes, unless `ddp=False` (a stage that
rank 0 runs alone).

`fit_folder` is `fit` in a run folder of a stage keyed by a settings dict (IRN, the segmentation net):
`config.json` (the settings), `metrics.csv`, `checkpoint.pt` and, once finished, `final.pt` = {"model",
"config" (JSON values), "steps"}; a folder holding a run of other settings raises ConfigMismatchError.
"""
from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from ..infra import distributed
from ..infra.config import OptimSettings
from ..infra.errors import SipeError
from ..infra.runtime import atomic_torch_save, atomic_write_json, atomic_write_text

StepFn = Callable[[torch.nn.Module, dict, torch.device], dict[str, torch.Tensor]]
"""step_fn(model, batch, device) -> the batch's losses: 'loss' is minimised, every key is logged."""
ParamGroups = Sequence[tuple[Sequence[torch.nn.Parameter], float]]
"""(parameters, lr multiplier) pairs."""
StepCallback = Callable[[int, dict[str, float]], None]


class ConfigMismatchError(SipeError, RuntimeError):
    """A run folder holds a run of a different configuration."""


class Fitted(NamedTuple):
    """Steps trained in all (resumed sessions included) and the training wall time they took (s)."""

    steps: int
    wall_seconds: float


@dataclass(frozen=True)
class FitResult:
    """A run folder of `fit_folder`: its final weights, metrics, whether it was reused, and its steps."""

    run_dir: Path
    checkpoint: Path
    metrics: Path
    reused: bool
    steps: int


class EpochSampler(Sampler[int]):
    """The epoch's permutation (seeded by (seed, epoch)), starting after `skip` already-trained items."""

    def __init__(self, n: int, seed: int, epoch: int, skip: int = 0) -> None:
        self.n, self.seed, self.epoch, self.skip = n, seed, epoch, skip

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1000003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g)[self.skip:].tolist())

    def __len__(self) -> int:
        return self.n - self.skip


def plan_steps(n_items: int, o: OptimSettings) -> tuple[int, int]:
    """(steps per epoch, total steps): full batches only (drop_last), capped by max_steps."""
    per_epoch = n_items // o.batch_size
    if per_epoch == 0:
        raise ValueError(f"{n_items} training images < batch size {o.batch_size}; lower the batch size")
    total = per_epoch * o.epochs
    return per_epoch, total if o.max_steps is None else min(total, o.max_steps)


def make_optimizer(groups: ParamGroups, o: OptimSettings, max_steps: int):
    """SGD over `groups` (each at lr x its multiplier) and polynomial decay over `max_steps` steps."""
    opt = torch.optim.SGD([{"params": list(p), "lr": o.lr * m} for p, m in groups],
                          lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=max_steps, power=o.poly_power)
    return opt, sched


def truncate_metrics(path: Path, upto_step: int, fields: Sequence[str]) -> None:
    """Drop the metric rows of steps after `upto_step` (they will be trained again); atomic."""
    if not path.exists():
        return
    with path.open() as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= upto_step]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def fit(
    model: torch.nn.Module,
    groups: ParamGroups,
    dataset: Dataset,
    step_fn: StepFn,
    o: OptimSettings,
    ckpt_path: Path,
    metrics_path: Path,
    fields: Sequence[str],
    lr_fields: Sequence[str] = ("lr",),
    device: torch.device | str | None = None,
    num_workers: int = 0,
    ddp: bool = True,
    progress: bool = True,
    desc: str = "fit",
    on_step: StepCallback | None = None,
) -> Fitted:
    """Train `model` on `dataset` (with `set_epoch` when it has one) with `o`, resuming from `ckpt_path`.

    groups: (parameters, lr multiplier); the lr of group i is logged as `lr_fields[i]`. One row of `fields`
    (step, epoch, the losses, the lrs, images_per_s, seconds) per step goes to `metrics_path`; the epoch order
    is `EpochSampler`'s; gradients are clipped to `o.clip` (None: not clipped). `on_step(step, row)` after each
    step (e.g. `sipe.infra.divergence.guarded`). device: default the model's.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    shared = ddp and distributed.world_size() > 1
    per_epoch, max_steps = plan_steps(len(dataset), o)
    local_batch = distributed.local_batch(o.batch_size) if shared else o.batch_size
    model.to(device).train()
    opt, sched = make_optimizer(groups, o, max_steps)

    step, wall_before, session_start = 0, 0.0, time.perf_counter()
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step, wall_before = state["step"], float(state.get("wall_seconds", 0.0))
    distributed.on_main(truncate_metrics, metrics_path, step, fields)
    net = distributed.wrap_model(model) if shared else model
    new_file = not metrics_path.exists() or metrics_path.stat().st_size == 0

    with distributed.main_path(metrics_path).open("a", newline="") as mf, tqdm(
        total=max_steps, initial=step, disable=not (progress and distributed.is_main()), desc=desc, unit="step",
    ) as bar:
        writer = csv.DictWriter(mf, fieldnames=list(fields))
        if new_file:
            writer.writeheader()
        while step < max_steps:
            epoch, in_epoch = divmod(step, per_epoch)
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
            sampler = EpochSampler(len(dataset), o.seed, epoch, skip=in_epoch * o.batch_size)
            loader = DataLoader(dataset, batch_size=local_batch, drop_last=True, num_workers=num_workers,
                                sampler=distributed.rank_sampler(sampler, o.batch_size) if shared else sampler,
                                pin_memory=device.type == "cuda")
            for batch in loader:
                t0 = time.perf_counter()
                out = step_fn(net, batch, device)
                opt.zero_grad(set_to_none=True)
                out["loss"].backward()
                if o.clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=o.clip)
                lrs = [g["lr"] for g in opt.param_groups]
                opt.step()
                sched.step()
                step += 1
                dt = time.perf_counter() - t0
                losses = {k: float(v.detach()) for k, v in out.items()}
                row = {"step": step, "epoch": epoch, **dict(zip(lr_fields, lrs)),
                       "images_per_s": o.batch_size / dt, "seconds": dt,
                       **(distributed.all_mean(losses) if shared else losses)}
                if not all(math.isfinite(row[k]) for k in out if k.startswith("loss")):
                    raise FloatingPointError(f"non-finite loss at step {step} ({desc}, {metrics_path.parent}): "
                                             f"{row}; lower the learning rate")
                writer.writerow({k: row.get(k, "") for k in fields})
                bar.update(1)
                if step % max(1, o.log_every) == 0 or step == max_steps:
                    mf.flush()
                    bar.set_postfix(loss=f"{row['loss']:.3f}", img_s=f"{row['images_per_s']:.1f}")
                if step % per_epoch == 0 or step == max_steps or (o.checkpoint_every and step % o.checkpoint_every == 0):
                    mf.flush()
                    distributed.on_main(atomic_torch_save, {
                        "step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(),
                        "wall_seconds": wall_before + time.perf_counter() - session_start}, ckpt_path)
                if on_step is not None:
                    on_step(step, row)
                if step >= max_steps:
                    break
    return Fitted(step, wall_before + time.perf_counter() - session_start)


def json_values(config: Mapping[str, Any]) -> dict[str, Any]:
    """`config` as JSON reads it back (tuples as lists, other objects as strings)."""
    return json.loads(json.dumps(config, sort_keys=True, default=str))


def _check_config(path: Path, wanted: dict[str, Any]) -> None:
    if path.exists():
        stored = json.loads(path.read_text())
        if stored != wanted:
            diff = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
            raise ConfigMismatchError(f"{path.parent} holds a run of other settings (differing: {diff}); "
                                      "use a new run folder or delete this one")
    else:
        atomic_write_json(path, wanted)


def fit_folder(
    model: torch.nn.Module,
    groups: ParamGroups,
    dataset: Dataset,
    step_fn: StepFn,
    run_dir: str | Path,
    o: OptimSettings,
    config: Mapping[str, Any],
    metric_names: Sequence[str] = ("loss",),
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    progress: bool = True,
    desc: str = "fit",
    on_step: StepCallback | None = None,
) -> FitResult:
    """`fit` (one process) in `run_dir` keyed by `config`; reuses a finished folder; `final.pt` when done.

    metric_names: the keys of step_fn's output logged (with step, epoch, lr, images_per_s, seconds)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final, ckpt, metrics = run_dir / "final.pt", run_dir / "checkpoint.pt", run_dir / "metrics.csv"
    wanted = json_values(config)
    _check_config(run_dir / "config.json", wanted)
    if final.exists():
        steps = torch.load(final, map_location="cpu", weights_only=True)["steps"]
        return FitResult(run_dir, final, metrics, True, steps)
    fields = ["step", "epoch", *metric_names, "lr", "images_per_s", "seconds"]
    fitted = fit(model, groups, dataset, step_fn, o, ckpt, metrics, fields, ("lr",), device, num_workers,
                 ddp=False, progress=progress, desc=desc, on_step=on_step)
    atomic_torch_save({"model": model.state_dict(), "config": wanted, "steps": fitted.steps}, final)
    return FitResult(run_dir, final, metrics, False, fitted.steps)
