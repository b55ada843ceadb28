"""Training speed of SIPE (classification + IPE + GSC) vs classification-only training on the same backbone.

Usage: python benchmarks/bench_train_overhead.py [--backbone efficientnet_lite0|resnet50] [--batch 8] [--crop 256]
       [--block 3] [--repeats 7] [--warmup 2] [--threads N] [--profile]

Both modes run the training loop body of `sipe.stages.train` (train_step, backward, gradient clipping, SGD step) on
one model, on synthetic random batches (no data loading), in ONE process: after a warm-up the two modes
alternate in blocks of --block steps (the first mode of each repeat alternates too), so slow drifts of the
machine hit both. Reported: median images/s per mode and the median of the per-repeat time ratios
(SIPE / classification-only). Target: ratio <= 1.15. --profile (or a ratio above 1.15) adds a torch.profiler
table of the operators whose time grows most from classification-only to SIPE steps.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from typing import Callable

import torch

from sipe.infra.config import ExperimentConfig, get_profile
from sipe.method.network import build_model
from sipe.stages.train import build_optimizer, train_step

TARGET = 1.15


def synthetic_batch(n: int, crop: int, num_classes: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A training batch of random images (N,3,S,S), 1-3 random labels per image, crops with padded borders."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(n, num_classes)
    valid = torch.ones(n, crop, crop)
    for i in range(n):
        k = int(torch.randint(1, 4, (1,), generator=g))
        labels[i, torch.randperm(num_classes, generator=g)[:k]] = 1
        h, w = (int(v) for v in torch.randint(crop // 2, crop + 1, (2,), generator=g))
        valid[i, h:] = 0
        valid[i, :, w:] = 0
    img = torch.randn(n, 3, crop, crop, generator=g) * valid[:, None]
    return {"img": img, "label": labels, "valid_mask": valid}


def make_step(cfg: ExperimentConfig, model, opt, batch: dict) -> Callable[[], None]:
    """One training step of `cfg` (its model.gsc decides SIPE vs classification-only), as in sipe.stages.train.train."""
    device = torch.device("cpu")

    def step() -> None:
        out = train_step(model, batch, cfg, device)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=cfg.train.clip_grad_norm)
        opt.step()

    return step


def time_block(step: Callable[[], None], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t0) / n


def profile_modes(steps: dict[str, Callable[[], None]], n: int, rows: int = 15) -> None:
    """Per-operator CPU time (ms per step, self time) of both modes and the operators SIPE adds most time to."""
    from torch.profiler import ProfilerActivity, profile

    totals: dict[str, dict[str, float]] = {}
    for mode, step in steps.items():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(n):
                step()
        totals[mode] = {e.key: e.self_cpu_time_total / 1e3 / n for e in prof.key_averages()}
    sipe, cls = totals["sipe"], totals["cls_only"]
    diff = sorted(((sipe.get(k, 0.0) - cls.get(k, 0.0), k) for k in set(sipe) | set(cls)), reverse=True)
    print(f"\nprofile: self CPU ms/step  sipe {sum(sipe.values()):.1f}  cls_only {sum(cls.values()):.1f}")
    print(f"{'operator':<44}{'sipe':>10}{'cls_only':>10}{'extra':>10}")
    for extra, key in diff[:rows]:
        print(f"{key[:43]:<44}{sipe.get(key, 0.0):>10.2f}{cls.get(key, 0.0):>10.2f}{extra:>10.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="efficientnet_lite0", choices=["efficientnet_lite0", "resnet50"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--block", type=int, default=3, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=7, help="timed blocks per mode")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per mode first")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--profile", action="store_true", help="always print the profiler comparison")
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]
    if args.threads:
        torch.set_num_threads(args.threads)

    settings = {"data.crop_size": args.crop, "train.batch_size": args.batch, "device": "cpu"}
    if args.backbone == "resnet50":
        settings |= {"model.backbone": "resnet50", "model.semantic_layer": "default", "model.pretrained": False}
    base = get_profile("subset", **settings)
    cfgs = {"sipe": base, "cls_only": base.override(**{"model.gsc": False})}
    torch.manual_seed(0)
    model = build_model(base.model, base.data.num_classes).train()
    opt, _ = build_optimizer(model, base, max_steps=10**6)
    batch = synthetic_batch(args.batch, args.crop, base.data.num_classes)
    steps = {mode: make_step(cfg, model, opt, batch) for mode, cfg in cfgs.items()}

    for step in steps.values():
        time_block(step, args.warmup)
    times: dict[str, list[float]] = {mode: [] for mode in steps}
    order = list(steps)
    for r in range(args.repeats):
        for mode in order if r % 2 == 0 else order[::-1]:
            times[mode].append(time_block(steps[mode], args.block))
    ratios = [s / c for s, c in zip(times["sipe"], times["cls_only"])]
    ratio = statistics.median(ratios)

    m = base.model
    print(f"# bench_train_overhead  {datetime.date.today()}  {platform.node()}  {platform.processor() or platform.machine()}"
          f"  torch {torch.__version__}  threads {torch.get_num_threads()}  load average at start {load_at_start:.2f}")
    print(f"backbone {m.backbone} (semantic {m.semantic_layer}, pretrained {m.pretrained}), batch {args.batch}, "
          f"crop {args.crop}, {args.repeats} interleaved blocks of {args.block} steps per mode, synthetic inputs")
    print(f"{'mode':<10}{'img/s median':>14}{'min':>8}{'max':>8}{'s/step':>9}")
    for mode, ts in times.items():
        rates = [args.batch / t for t in ts]
        print(f"{mode:<10}{statistics.median(rates):>14.2f}{min(rates):>8.2f}{max(rates):>8.2f}{statistics.median(ts):>9.3f}")
    print(f"SIPE / classification-only time per step: median {ratio:.3f} (per-repeat {min(ratios):.3f}-{max(ratios):.3f}); "
          f"target <= {TARGET}: {'met' if ratio <= TARGET else 'NOT met'}")
    if args.profile or ratio > TARGET:
        profile_modes(steps, args.block)


if __name__ == "__main__":
    main()
