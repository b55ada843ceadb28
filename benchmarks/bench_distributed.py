"""Training throughput of N gloo processes (DDP, sipe.infra.distributed) vs 1 process, and the gradient bytes all-reduced per step.

Usage: python benchmarks/bench_distributed.py [--backbone efficientnet_lite0|resnet50] [--batch 8] [--crop 256]
       [--steps 5] [--warmup 2] [--nproc 2]

Both runs do the loop body of `sipe.stages.train.fit` (train_step, backward, gradient clipping, SGD step; the same
`make_step` as bench_train_overhead) on random batches (no data loading) with the same global batch: one
process with `nproc` torch threads, then `nproc` processes with one thread each, joined by
`sipe.infra.distributed.init` from torchrun's environment variables (set here, gloo on CPU) and trained through
`sipe.infra.distributed.wrap_model` (DDP), each on global batch / nproc images. Each run is a fresh process; the
time per step is the median over `--steps` timed steps after `--warmup` untimed ones.

Communication: DDP all-reduces every trainable parameter's gradient once per step, G = trainable parameter
bytes (float32). A ring all-reduce moves 2(N-1)/N * G bytes in and out of each rank, so on N GPUs with link
bandwidth B a step adds at most 2(N-1)/N * G / B seconds (less where DDP overlaps it with the backward pass).
Also printed: one all_reduce of G bytes between the gloo processes here.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import socket
import statistics
import time

import torch
import torch.multiprocessing as mp

from bench_train_overhead import make_step, synthetic_batch
from sipe.infra import distributed
from sipe.infra.config import ExperimentConfig, get_profile
from sipe.method.network import build_model
from sipe.stages.train import build_optimizer

LINKS_GB_S = (("10 Gb Ethernet", 1.25), ("PCIe 4.0 x16", 25.0), ("NVLink (A100)", 300.0))


def config(args: argparse.Namespace) -> ExperimentConfig:
    settings = {"data.crop_size": args.crop, "train.batch_size": args.batch, "device": "cpu", "model.pretrained": False}
    if args.backbone == "resnet50":
        settings |= {"model.backbone": "resnet50", "model.semantic_layer": "default"}
    return get_profile("subset", **settings)


def worker(rank: int, world: int, threads: int, port: int, args: argparse.Namespace, results) -> None:
    """One process: `args.steps` timed training steps on its share of the global batch; rank 0 reports
    (seconds per step, trainable parameter bytes, seconds of one all_reduce of those bytes or nan)."""
    if world > 1:
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    cfg = config(args)
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.data.num_classes).train()
    opt, _ = build_optimizer(model, cfg, max_steps=10**6)
    net = distributed.wrap_model(model)
    batch = synthetic_batch(distributed.local_batch(args.batch), args.crop, cfg.data.num_classes, seed=rank)
    step = make_step(cfg, net, opt, batch)
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        distributed.barrier()
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    allreduce = float("nan")
    if world > 1:
        import torch.distributed as dist

        flat = torch.zeros(grad_bytes // 4)
        spans = []
        for _ in range(3):
            distributed.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(flat)
            spans.append(time.perf_counter() - t0)
        allreduce = statistics.median(spans)
    if rank == 0:
        results.put((statistics.median(times), grad_bytes, allreduce))
    distributed.teardown()


def run(world: int, threads: int, args: argparse.Namespace) -> tuple[float, int, float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    mp.start_processes(worker, args=(world, threads, port, args, results), nprocs=world, start_method="spawn")
    return results.get()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="efficientnet_lite0", choices=["efficientnet_lite0", "resnet50"])
    parser.add_argument("--batch", type=int, default=8, help="global batch")
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per run first")
    parser.add_argument("--nproc", type=int, default=2)
    args = parser.parse_args()
    distributed.local_batch(args.batch, args.nproc)
    load_at_start = os.getloadavg()[0]
    single, grad_bytes, _ = run(1, args.nproc, args)
    multi, _, allreduce = run(args.nproc, 1, args)
    n, mib = args.nproc, grad_bytes / 2**20
    print(f"# bench_distributed {datetime.date.today()}: {platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, load average {load_at_start:.2f} -> {os.getloadavg()[0]:.2f}")
    print(f"# backbone {args.backbone} (random init), crop {args.crop}, global batch {args.batch}, random batches "
          f"(no data loading), median of {args.steps} steps after {args.warmup}")
    print(f"{'run':<36}{'s/step':>9}{'images/s':>10}")
    print(f"{f'1 process x {n} threads':<36}{single:>9.3f}{args.batch / single:>10.2f}")
    print(f"{f'{n} processes x 1 thread (gloo, DDP)':<36}{multi:>9.3f}{args.batch / multi:>10.2f}")
    print(f"{n}-process / 1-process time per step: {multi / single:.2f}x")
    if os.cpu_count() and os.cpu_count() <= n:
        print(f"note: this machine has {os.cpu_count()} CPU cores, which the {n} processes share as the one process's "
              f"{n} threads do: the figure is the overhead of DDP (gradient all-reduce, per-process duplicates), "
              "not a speed-up; with one GPU per process each computes 1/N of the batch")
    print(f"gradient all-reduced per step: {grad_bytes:,} bytes ({mib:.1f} MiB) = the trainable float32 parameters")
    print(f"measured here: one all_reduce of {mib:.1f} MiB between {n} gloo processes: {allreduce * 1e3:.1f} ms")
    print("ring all-reduce per rank and step, 2(N-1)/N x G, and its time at a link bandwidth (upper bound, no overlap):")
    for world in (2, 4, 8, 16):
        moved = 2 * (world - 1) / world * grad_bytes
        times = ", ".join(f"{name} {moved / (gb * 1e9) * 1e3:.2f} ms" for name, gb in LINKS_GB_S)
        print(f"  N={world:<3}{moved / 2**20:8.1f} MiB   {times}")


if __name__ == "__main__":
    main()
