"""Where a training step spends its time in the depthwise convolutions, and one lever for it.

Usage: python benchmarks/bench_depthwise.py [--batch 8] [--crop 256] [--repeats 20] [--threads N] [--steps 5]

For every depthwise convolution of the `subset` profile's trained backbone blocks (EfficientNet-Lite0 at
output stride 16: blocks 3-6, dilated in 5-6), at the input shape a training step gives it (found by forward
hooks on a synthetic batch): the time of its forward pass, of its input gradient and weight gradient as
PyTorch computes them (`aten.convolution_backward`, one output at a time), and of the input gradient
computed as a forward convolution of the output gradient with the kernel flipped (exact for stride 1 and
symmetric padding; the difference to PyTorch's is printed), and of the weight gradient computed as a grouped
convolution of the input with the output gradient (batch as channels, one group per channel). The sums per step are set beside the median
time of a whole SIPE training step (`bench_train_overhead`'s loop body) measured in the same process.
Nothing here changes `sipe`: it measures a lever, it does not take it.
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
import torch.nn.functional as F

from bench_train_overhead import make_step, synthetic_batch
from sipe.infra.config import get_profile
from sipe.method.network import build_model
from sipe.stages.train import build_optimizer


def median_ms(f: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        f()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def grouped_weight_grad(x: torch.Tensor, gy: torch.Tensor, m: torch.nn.Conv2d) -> torch.Tensor:
    """Weight gradient (C,1,k,k) of a stride-1 depthwise conv as a grouped conv: input (1, C*N, H, W), the output
    gradient as the kernel (C, N, H, W); every dilation-th output position is a kernel tap."""
    n, c, h, w = x.shape
    d, p = m.dilation[0], m.padding[0]
    y = F.conv2d(x.transpose(0, 1).reshape(1, c * n, h, w), gy.transpose(0, 1).contiguous(), padding=p, groups=c)
    return y[0, :, ::d, ::d].unsqueeze(1)


def depthwise_convs(model: torch.nn.Module, batch: dict) -> list[tuple[str, torch.nn.Conv2d, torch.Size]]:
    """(name, module, input shape) of every trained depthwise Conv2d met by a forward pass of `batch`."""
    found: list[tuple[str, torch.nn.Conv2d, torch.Size]] = []
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels and m.weight.requires_grad:
            hooks.append(m.register_forward_hook(lambda mod, inp, out, name=name: found.append((name, mod, inp[0].shape))))
    with torch.no_grad():
        model(batch["img"].contiguous(memory_format=torch.channels_last))
    for h in hooks:
        h.remove()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per operation")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = get_profile("subset", **{"data.crop_size": args.crop, "train.batch_size": args.batch, "device": "cpu",
                                    "model.pretrained": False})
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.data.num_classes).train()
    opt, _ = build_optimizer(model, cfg, max_steps=10**6)
    batch = synthetic_batch(args.batch, args.crop, cfg.data.num_classes)
    convs = depthwise_convs(model, batch)

    print(f"# bench_depthwise  {datetime.date.today()}  {platform.node()}  {platform.processor() or platform.machine()}"
          f"  torch {torch.__version__}  threads {torch.get_num_threads()}  load average at start {load_at_start:.2f}")
    print(f"backbone {cfg.model.backbone}, batch {args.batch}, crop {args.crop}, channels-last, median of "
          f"{args.repeats} calls, ms")
    print(f"{'layer':<26}{'input':>18}{'k':>3}{'dil':>4}{'fwd':>7}{'grad in':>9}{'flipped':>9}{'max diff':>10}"
          f"{'grad w':>8}{'grouped':>9}")
    totals = {"fwd": 0.0, "gx": 0.0, "flip": 0.0, "gw": 0.0, "grouped": 0.0}
    for name, m, shape in convs:
        g = torch.Generator().manual_seed(1)
        x = torch.randn(shape, generator=g).contiguous(memory_format=torch.channels_last)
        gy = torch.randn(F.conv2d(x, m.weight.detach(), None, m.stride, m.padding, m.dilation, m.groups).shape,
                         generator=g).contiguous(memory_format=torch.channels_last)
        w = m.weight.detach().contiguous(memory_format=torch.channels_last)
        conv = dict(stride=m.stride, padding=m.padding, dilation=m.dilation, groups=m.groups)

        def backward(mask: list[bool], gy=gy, x=x, w=w, m=m):
            return torch.ops.aten.convolution_backward(gy, x, w, None, list(m.stride), list(m.padding), list(m.dilation),
                                                       False, [0, 0], m.groups, mask)

        t = {"fwd": median_ms(lambda: F.conv2d(x, w, **conv), args.repeats),
             "gx": median_ms(lambda: backward([True, False, False]), args.repeats),
             "gw": median_ms(lambda: backward([False, True, False]), args.repeats)}
        flippable = m.stride == (1, 1) and gy.shape == x.shape
        if flippable:
            wf = w.flip(-1, -2).contiguous(memory_format=torch.channels_last)
            t["flip"] = median_ms(lambda: F.conv2d(gy, wf, **conv), args.repeats)
            diff = float((backward([True, False, False])[0] - F.conv2d(gy, wf, **conv)).abs().max())
            ref = backward([False, True, False])[1]
            assert torch.allclose(grouped_weight_grad(x, gy, m), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
            t["grouped"] = median_ms(lambda: grouped_weight_grad(x, gy, m), args.repeats)
        else:
            t["flip"], t["grouped"], diff = t["gx"], t["gw"], float("nan")
        for key in totals:
            totals[key] += t[key]
        k, d = m.kernel_size[0], m.dilation[0]
        print(f"{name[-26:]:<26}{str(tuple(shape)):>18}{k:>3}{d:>4}{t['fwd']:>7.1f}{t['gx']:>9.1f}"
              f"{t['flip'] if flippable else float('nan'):>9.1f}{diff:>10.1e}{t['gw']:>8.1f}"
              f"{t['grouped'] if flippable else float('nan'):>9.1f}")

    step = make_step(cfg, model, opt, batch)
    step_ms = median_ms(step, args.steps, warmup=2)
    backward_ms = totals["gx"] + totals["gw"]
    print(f"\nper training step: depthwise forward {totals['fwd']:.1f}, input gradients {totals['gx']:.1f} "
          f"(flipped forward: {totals['flip']:.1f}), weight gradients {totals['gw']:.1f}; "
          f"a whole SIPE step {step_ms:.0f}")
    print(f"depthwise backward = {100 * backward_ms / step_ms:.0f}% of a step; the flipped input gradient would save "
          f"{totals['gx'] - totals['flip']:.0f} ms = {100 * (totals['gx'] - totals['flip']) / step_ms:.0f}% of a step; "
          f"the grouped weight gradient takes {totals['grouped']:.1f} ms against {totals['gw']:.1f}")


if __name__ == "__main__":
    main()
