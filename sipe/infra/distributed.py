"""torch.distributed under torchrun: the process group from the launcher's environment, rank-0 guards,
barriers, sharding (image lists, training batches), DDP wrapping, and launching torchrun.

Without torchrun (WORLD_SIZE unset or 1) every helper is the identity or a no-op, so the single-process
path computes exactly what it computed before. Under torchrun the group is joined on first use: NCCL for
CUDA tensors (each rank on `cuda:LOCAL_RANK`) with gloo for CPU tensors, or gloo alone without a GPU.
Barriers, object broadcasts and metric means go through a separate gloo group whose timeout is
`$SIPE_DIST_TIMEOUT` seconds (default 6 h): ranks wait there while rank 0 holds a folder lock another job
has, or evaluates a unit alone.

    python -m sipe stages --nproc 2 ...                  # one machine: re-executes itself under torchrun
    torchrun --nproc_per_node=4 -m sipe stages ...       # the same, by hand
    torchrun --nnodes=2 --node_rank=R --nproc_per_node=4 --master_addr=HOST --master_port=29500 -m sipe stages ...
"""
from __future__ import annotations

import atexit
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import SipeError

if TYPE_CHECKING:
    import torch

TIMEOUT_ENV = "SIPE_DIST_TIMEOUT"
BACKEND_ENV = "SIPE_DIST_BACKEND"
DEFAULT_TIMEOUT_S = 6 * 3600
TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
T = TypeVar("T")

_control: Any = None


class DistributedError(SipeError, RuntimeError):
    """A distributed setting or launch cannot work (world size, batch split, a failed rank); the message says why."""


def launched() -> bool:
    """Whether this process is one of several started by torchrun (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _timeout() -> timedelta:
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        seconds = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise DistributedError(f"{TIMEOUT_ENV}={raw!r}: expected a number of seconds") from None
    return timedelta(seconds=seconds)


def init() -> bool:
    """Join torchrun's process group once (env:// rendezvous); returns whether the run is distributed."""
    global _control
    if not launched():
        return False
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        if _control is None:
            _control = dist.new_group(backend="gloo", timeout=_timeout())
        return True
    missing = [k for k in TORCHRUN_ENV if k not in os.environ]
    if missing:
        raise DistributedError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} not set: start the "
                               "processes with torchrun (or python -m sipe ... --nproc N), not by hand")
    cuda = torch.cuda.is_available()
    if cuda:
        local = int(os.environ["LOCAL_RANK"])
        if local >= torch.cuda.device_count():
            raise DistributedError(f"LOCAL_RANK {local} but this node has {torch.cuda.device_count()} GPU(s): "
                                   "use --nproc_per_node <= the number of GPUs")
        torch.cuda.set_device(local)
    backend = os.environ.get(BACKEND_ENV) or ("cpu:gloo,cuda:nccl" if cuda else "gloo")
    dist.init_process_group(backend)
    _control = dist.new_group(backend="gloo", timeout=_timeout())
    atexit.register(teardown)
    return True


def teardown() -> None:
    """Leave the process group (no-op when not in one)."""
    global _control
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _control = None


def world_size() -> int:
    """Number of processes of the run (1 without torchrun)."""
    if not init():
        return 1
    import torch.distributed as dist

    return dist.get_world_size()


def rank() -> int:
    """This process's global rank (0 without torchrun)."""
    if not init():
        return 0
    import torch.distributed as dist

    return dist.get_rank()


def is_main() -> bool:
    """Rank 0: the one process that writes run folders, results files, logs and progress bars."""
    return rank() == 0


def on_main(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """`fn(*args, **kwargs)` on rank 0 only (None elsewhere)."""
    return fn(*args, **kwargs) if is_main() else None


def main_path(path: Path) -> Path:
    """`path` on rank 0, os.devnull on the other ranks (for files only rank 0 appends to)."""
    return path if is_main() else Path(os.devnull)


def barrier() -> None:
    """Wait until every rank is here (no-op in a single process)."""
    if world_size() > 1:
        import torch.distributed as dist

        dist.barrier(group=_control)


def broadcast_object(obj: T) -> T:
    """Rank 0's `obj` on every rank (picklable; returned as is in a single process)."""
    if world_size() == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_control)
    return box[0]


def all_mean(values: Mapping[str, float]) -> dict[str, float]:
    """Each value's mean over the ranks (the mean over the global batch for per-rank batch means)."""
    if world_size() == 1:
        return dict(values)
    import torch
    import torch.distributed as dist

    keys = list(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(t, group=_control)
    return {k: float(v) / world_size() for k, v in zip(keys, t)}


def shard(items: Sequence[T]) -> Sequence[T]:
    """This rank's share of `items`: every world_size-th item from position rank (all of them in one process)."""
    n = world_size()
    return items if n == 1 else items[rank()::n]


def local_batch(global_batch: int, world: int | None = None) -> int:
    """Per-rank batch size of a global batch over `world` processes (default: this run's); DistributedError
    when the number of processes does not divide it."""
    n = world_size() if world is None else world
    if global_batch % n:
        raise DistributedError(f"train.batch_size={global_batch} (the global batch) is not divisible by the "
                               f"{n} processes; choose a batch size that is a multiple of the number of processes")
    return global_batch // n


class BatchShardSampler:
    """Rank r's part of each full global batch of `sampler`'s order: items [r*b, (r+1)*b) of every run of
    `global_batch` items (b = global_batch / world), so the ranks' batches together are the single-process batch."""

    def __init__(self, sampler: Any, global_batch: int, rank: int, world: int) -> None:
        self.sampler, self.global_batch, self.rank, self.world = sampler, global_batch, rank, world
        self.local = local_batch(global_batch, world)

    def __iter__(self) -> Iterator[int]:
        order = list(self.sampler)
        full = len(order) - len(order) % self.global_batch
        lo = self.rank * self.local
        for start in range(0, full, self.global_batch):
            yield from order[start + lo:start + lo + self.local]

    def __len__(self) -> int:
        return len(self.sampler) // self.global_batch * self.local


def rank_sampler(sampler: Any, global_batch: int) -> Any:
    """`sampler` itself in one process, else this rank's `BatchShardSampler` over it."""
    n = world_size()
    return sampler if n == 1 else BatchShardSampler(sampler, global_batch, rank(), n)


def wrap_model(model: "torch.nn.Module") -> "torch.nn.Module":
    """`model` in one process, else DistributedDataParallel over it: gradients averaged over the ranks,
    buffers (the frozen BatchNorm statistics, equal on every rank) not synced in forward, and a static graph,
    so parameters that get no gradient (the side convs of the CAM baseline) keep none, as in one process."""
    if world_size() == 1:
        return model
    import inspect

    import torch
    from torch.nn.parallel import DistributedDataParallel

    check_frozen_batchnorm(model)
    device = next(model.parameters()).device
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    params = inspect.signature(DistributedDataParallel).parameters
    no_sync = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
    return DistributedDataParallel(model, device_ids=ids, static_graph=True, **{no_sync: False})


def check_frozen_batchnorm(model: "torch.nn.Module") -> None:
    """DistributedError when a BatchNorm layer of `model` is in training mode (the method freezes their
    statistics; under DDP each rank would update its own from its slice of the batch)."""
    from torch.nn.modules.batchnorm import _BatchNorm

    training = [n for n, m in model.named_modules() if isinstance(m, _BatchNorm) and m.training]
    if training:
        raise DistributedError(f"BatchNorm layer(s) {training[:3]} in training mode: the method keeps BatchNorm "
                               "statistics frozen; build the model on a sipe.method.backbones.Backbone, whose "
                               "train() keeps them in eval mode")


@contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """`sipe.infra.locks.folder_lock` for a run: rank 0 holds the lock, every rank enters after it has it and leaves
    together (so rank 0's last files exist on leaving); a raising rank skips the closing barrier."""
    from .locks import folder_lock as lock

    if world_size() == 1:
        with lock(folder) as f:
            yield f
        return
    if is_main():
        with lock(folder) as f:
            barrier()
            yield f
            barrier()
    else:
        barrier()
        yield Path(folder)
        barrier()


def quiet_other_ranks() -> None:
    """Send the standard output of ranks other than 0 to os.devnull (logs from rank 0 only; stderr is kept)."""
    if launched() and int(os.environ.get("RANK", "0")) != 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process


def torchrun_command(args: Sequence[str], nproc: int) -> list[str]:
    """The command that runs `python <args>` in `nproc` processes on this machine (torchrun, standalone rendezvous)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]


def launch(args: Sequence[str], nproc: int, env: Mapping[str, str] | None = None) -> int:
    """Run `python <args>` (e.g. ['-m', 'sipe', 'stages', ...]) in `nproc` processes through torchrun and
    wait; 0 on success, DistributedError naming the failure otherwise (outputs written so far are kept)."""
    if nproc < 1:
        raise DistributedError(f"nproc={nproc}: the number of processes must be at least 1")
    cmd = torchrun_command(args, nproc)
    rc = subprocess.run(cmd, env=None if env is None else {**os.environ, **env}).returncode
    if rc != 0:
        raise DistributedError(
            f"{' '.join(args)} in {nproc} processes (torchrun) failed with exit status {rc}: a rank stopped "
            "(its traceback and rank are under 'Root Cause' above) and torchrun stopped the others. Finished "
            "outputs (checkpoints, map files, results of finished units) are kept: run the same command again to resume")
    return rc


def strip_nproc(argv: Sequence[str]) -> list[str]:
    """`argv` without its `--nproc N` / `--nproc=N` options."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def cli_args(cfg: Any, base: Any) -> list[str]:
    """`--device` and `--set section.field=value` options that turn profile config `base` into `cfg`
    (so a launched `python -m sipe` builds the same configuration)."""
    args: list[str] = []
    if cfg.device != base.device:
        args += ["--device", cfg.device]
    want, have = cfg.to_dict(), base.to_dict()
    for section, fields in want.items():
        if not isinstance(fields, dict):
            continue
        for name, value in fields.items():
            if value != have[section][name]:
                text = "none" if value is None else ",".join(map(str, value)) if isinstance(value, (tuple, list)) \
                    else str(value)
                args += ["--set", f"{section}.{name}={text}"]
    return args


__all__ = ["BatchShardSampler", "DistributedError", "all_mean", "barrier", "broadcast_object",
           "check_frozen_batchnorm", "cli_args", "folder_lock", "init", "is_main", "launch", "launched",
           "local_batch", "main_path", "on_main", "quiet_other_ranks", "rank", "rank_sampler", "shard",
           "strip_nproc", "teardown", "torchrun_command", "wrap_model", "world_size"]
