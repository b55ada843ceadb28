"""Seed locating: time and peak memory of the direct (C x hw x hw) formulation vs sipe.method.ipe.locate_seeds.

Methods: direct = the authors' broadcast product; matmul = locate_seeds unchunked (one (hw x hw) correlation,
then a matrix product with the CAM: what the matrix product buys); ours = locate_seeds with its default
memory budget (what chunking adds); budget = locate_seeds with --budget-mb.

Usage: python benchmarks/bench_seeds.py [--sizes 16 24 32 48 64 80 96] [--dim 768|2048] [--budget-mb 8]

Each (method, size) runs in a fresh child process on N=1, C=21 float32 inputs, after a warm-up call
on a 4x4 grid. Two peak-memory measures per case:
- torch: the peak of live torch CPU allocations during one call, from torch.profiler's memory events
  (allocation sizes summed in time order); exactly what the algorithm allocates.
- RSS: the process's peak resident set size during another call minus its RSS just before it (the
  kernel high-water mark VmHWM, reset through /proc/self/clear_refs; fallback ru_maxrss). This adds
  what the allocator and BLAS hold (glibc arenas, packing buffers) and is noisier.
Time is the best of --repeats further calls (the machine may be shared; the load average is printed).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("direct", "matmul", "ours", "ours-budget")


def _ipe():
    """sipe.method.ipe, from the installed package or else from this checkout."""
    try:
        import sipe.method.ipe as ipe
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        import sipe.method.ipe as ipe
    return ipe


def _rss_kib() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_kib(reset_ok: bool) -> int:
    if reset_ok:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def direct_seeds(cam, feature, bg_scale: float = 0.5):
    """The authors' formulation: (N,1,hw,hw) correlation times (N,C,1,hw) CAM, summed over the last axis."""
    import torch
    import torch.nn.functional as F

    n, c, h, w = cam.shape
    f = feature.reshape(n, -1, h * w)
    f = f / (f.norm(dim=1, keepdim=True) + 1e-5)
    corr = F.relu(torch.matmul(f.transpose(2, 1), f)).unsqueeze(1)
    cam_flat = cam.reshape(n, c, 1, h * w)
    inter = (corr * cam_flat).sum(-1)
    union = corr.sum(-1) + cam_flat.sum(-1) - inter
    iou = (inter / union).reshape(n, c, h, w)
    iou[:, 0] *= bg_scale
    return F.one_hot(iou.argmax(1), c).permute(0, 3, 1, 2).to(cam.dtype)


def torch_peak_bytes(fn) -> int:
    """Peak of live torch CPU allocations made while fn() runs, from torch.profiler memory events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns()
    )
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def run_child(method: str, size: int, channels: int, dim: int, repeats: int, budget: int) -> dict:
    """Peak memory (torch and RSS) and best time of one method at one grid size, in this process."""
    import torch

    ipe = _ipe()

    def call(cam, feature):
        if method == "direct":
            return direct_seeds(cam, feature)
        if method == "matmul":
            return ipe.locate_seeds(cam, feature, chunk_rows=size * size)
        if method == "ours":
            return ipe.locate_seeds(cam, feature)
        return ipe.locate_seeds(cam, feature, max_bytes=budget)

    g = torch.Generator().manual_seed(0)
    call(ipe.cam_with_background(torch.randn(1, channels - 1, 4, 4, generator=g)), torch.rand(1, dim, 4, 4, generator=g))
    cam = ipe.cam_with_background(torch.randn(1, channels - 1, size, size, generator=g))
    feature = torch.rand(1, dim, size, size, generator=g)

    with torch.no_grad():
        before = _rss_kib()
        reset_ok = _reset_peak()
        call(cam, feature)
        rss_peak = max(0, _peak_kib(reset_ok) - before) * 1024
        torch_peak = torch_peak_bytes(lambda: call(cam, feature))
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call(cam, feature)
            times.append(time.perf_counter() - start)
    return {
        "torch_bytes": torch_peak,
        "rss_bytes": rss_peak,
        "time_s": min(times),
        "rss_method": "VmHWM reset via /proc/self/clear_refs" if reset_ok else "ru_maxrss",
        "threads": torch.get_num_threads(),
    }


def measure(method: str, size: int, args: argparse.Namespace) -> dict:
    """Run one case in a fresh interpreter and parse its JSON line."""
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--child", method, str(size),
        "--channels", str(args.channels), "--dim", str(args.dim),
        "--repeats", str(args.repeats), "--budget-mb", str(args.budget_mb),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"bench_seeds child {method} {size}x{size} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _mib(n_bytes: float) -> float:
    return n_bytes / 2**20


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 24, 32, 48, 64, 80, 96], help="square grid sides")
    parser.add_argument("--channels", type=int, default=21, help="C = K + 1 (21 for VOC)")
    parser.add_argument("--dim", type=int, default=768, choices=[768, 2048], help="feature channels D")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls; the best is reported")
    parser.add_argument("--budget-mb", type=float, default=8.0, help="max_bytes of the 'ours-budget' run, MiB")
    parser.add_argument("--direct-limit-gb", type=float, default=6.0,
                        help="do not run direct when its (C+1)*(hw)^2 floats exceed this many GB; extrapolate")
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    budget = int(args.budget_mb * 2**20)

    if args.child:
        print(json.dumps(run_child(args.child[0], int(args.child[1]), args.channels, args.dim, args.repeats, budget)))
        return

    default_budget = _ipe().DEFAULT_SEED_BUDGET_BYTES
    load_before = os.getloadavg()
    rows = []
    info: dict = {}
    last_direct = None
    for size in args.sizes:
        hw = size * size
        row = {"size": size, "hw": hw, "theory": args.channels * hw * hw * 4}
        for method in METHODS:
            if method == "direct" and (args.channels + 1) * hw * hw * 4 > args.direct_limit_gb * 1e9:
                if last_direct is not None:
                    scale = (hw / last_direct["hw"]) ** 2
                    row[method] = {k: last_direct[k] * scale for k in ("torch_bytes", "rss_bytes", "time_s")}
                    row[method]["extrapolated"] = True
                else:
                    row[method] = None
                continue
            row[method] = measure(method, size, args)
            info = row[method]
            if method == "direct":
                last_direct = {"hw": hw, **row[method]}
        rows.append(row)
        print(f"done {size}x{size}", file=sys.stderr, flush=True)
    load_after = os.getloadavg()

    cpu = platform.processor() or platform.machine()
    print(f"# bench_seeds {datetime.date.today().isoformat()}: {cpu}, {os.cpu_count()} CPUs, torch threads "
          f"{info.get('threads')}, load avg {load_before[0]:.1f} -> {load_after[0]:.1f}; "
          f"N=1 C={args.channels} D={args.dim} float32")
    print(f"# ours = locate_seeds() (default budget {default_budget / 2**20:g} MiB); "
          f"budget = locate_seeds(max_bytes={args.budget_mb:g} MiB); direct = (N,1,hw,hw) x (N,C,1,hw) product")
    print("# torch = peak live torch allocations (torch.profiler memory events); "
          f"RSS = peak RSS - RSS before ({info.get('rss_method')}); one fresh process per cell")
    print(f"# C*hw^2 = bytes of the direct product; '~' = not run (over {args.direct_limit_gb:g} GB), "
          "extrapolated from the previous size by (hw)^2")
    print("# bound = budget + (D + 4C)*hw*4 B (the chunk plus linear-size arrays)")
    print()
    head = (f"{'grid':>5} {'hw':>5} {'C*hw^2':>8} | {'torch MiB: direct':>17} {'matmul':>6} {'ours':>6} {'budget':>6} {'bound':>6} | "
            f"{'RSS MiB: direct':>15} {'ours':>6} {'budget':>6} | {'direct/ours: torch':>18} {'RSS':>6}")
    print(head)
    print("-" * len(head))
    for row in rows:
        d, o, b = row["direct"], row["ours"], row["ours-budget"]
        m = "~" if d and d.get("extrapolated") else ""
        bound = budget + (args.dim + 4 * args.channels) * row["hw"] * 4
        ok = "ok" if b["torch_bytes"] <= bound else "OVER"
        d_t = f"{m}{_mib(d['torch_bytes']):.1f}" if d else "n/a"
        d_r = f"{m}{_mib(d['rss_bytes']):.1f}" if d else "n/a"
        r_t = f"{m}{d['torch_bytes'] / o['torch_bytes']:.1f}x" if d else "n/a"
        r_r = f"{m}{d['rss_bytes'] / max(o['rss_bytes'], 1):.1f}x" if d else "n/a"
        print(f"{row['size']:>2}x{row['size']:<2} {row['hw']:>5} {_mib(row['theory']):>8.1f} | {d_t:>17} "
              f"{_mib(row['matmul']['torch_bytes']):>6.1f} {_mib(o['torch_bytes']):>6.1f} {_mib(b['torch_bytes']):>6.1f} {_mib(bound):>6.1f}{ok:>5} | {d_r:>15} "
              f"{_mib(o['rss_bytes']):>6.1f} {_mib(b['rss_bytes']):>6.1f} | {r_t:>18} {r_r:>6}")
    print()
    head = (f"{'grid':>5} | {'direct s':>9} {'matmul s':>8} {'ours s':>8} {'budget s':>8} | {'direct/matmul':>13} "
            f"{'direct/ours':>11} {'direct/budget':>13}")
    print(head)
    print("-" * len(head))
    for row in rows:
        d, o, b = row["direct"], row["ours"], row["ours-budget"]
        m = "~" if d and d.get("extrapolated") else ""
        d_s = f"{m}{d['time_s']:.3f}" if d else "n/a"
        r_o = f"{m}{d['time_s'] / o['time_s']:.2f}x" if d else "n/a"
        r_b = f"{m}{d['time_s'] / b['time_s']:.2f}x" if d else "n/a"
        mm = row["matmul"]
        r_m = f"{m}{d['time_s'] / mm['time_s']:.2f}x" if d else "n/a"
        print(f"{row['size']:>2}x{row['size']:<2} | {d_s:>9} {mm['time_s']:>8.3f} {o['time_s']:>8.3f} {b['time_s']:>8.3f} | "
              f"{r_m:>13} {r_o:>11} {r_b:>13}")
    print(f"# time = best of {args.repeats} calls; ratio > 1: ours faster")


if __name__ == "__main__":
    main()
