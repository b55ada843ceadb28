"""A speed lever for the CPU study: bfloat16 autocast against float32, for a training step and for one image's maps.

Usage: python benchmarks/bench_precision.py [--batch 8] [--crop 256] [--size 375 500] [--block 2] [--repeats 5]
       [--warmup 1] [--threads N] [--checkpoint final.pt] [--data-root D --images 4 --eval-images 100] [--fig8]

Training: the loop body of `sipe.stages.train` (train_step, backward, gradient clipping, SGD step) of the `subset`
profile's SIPE model on a synthetic batch (as `bench_train_overhead.py`), with and without
`torch.autocast("cpu", torch.bfloat16)` around the forward and the losses. Maps: `sipe.stages.maps.infer_image` of one
random image of --size at the profile's inference scales with flips (the stage-2 work per image), both ways.
Both modes run in ONE process in interleaved blocks (the first mode of each repeat alternates), so slow
drifts of the machine hit both; the ratio is the median of the per-repeat time ratios (float32 / bfloat16,
above 1 = bfloat16 faster). Also printed: how far the bfloat16 maps are from the float32 ones (max and mean
absolute difference of the max-normalised IS-CAM, share of pixels whose argmax label changes), which says
whether the lever could be taken without recomputing the study (it cannot when labels change). Without
--checkpoint the model is the ImageNet backbone with untrained heads (the timing is a trained model's; the
differences are not meaningful, and IS-CAM is empty, so the CAM is compared); with --checkpoint (a unit's
`final.pt`) and --data-root (the first --images images of the `train` split, as the maps stage reads them)
they are real. --eval-images N (with both) then maps the first N `train` images both ways and prints the
mIoU of IS-CAM with its estimated background against the ground truth: the lever's effect on a number the
study publishes. Take the figures on an idle machine (the load average at start is printed).

--compare FLOAT32_DIR BFLOAT16_DIR [--units U...]: no timing; the claims that the classification units decide
(`sipe.study.claims.unit_claims`), from the `subset` study's records in FLOAT32_DIR (maps in float32) and in
BFLOAT16_DIR (maps in bfloat16, the profile's setting), side by side: what the lever does to every claim. Give the
units to compare, else every unit of the plan; only those whose records name the same checkpoint in both
folders (the same training run, mapped both ways) are compared. With --same-training, units whose records share
the training key (training config and data) are paired although trained in separate runs: training on the CPU
is deterministic here (sipe-s15 and cam-s15, trained again at later revisions, gave bit-identical per-image
confusions), so the whole study's claims can be set side by side.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from bench_study import record_precision
from bench_train_overhead import synthetic_batch, time_block
from sipe.stages.checkpoint import load_trained
from sipe.infra.config import get_profile
from sipe.data.datasets import InferenceDataset, scale_views
from sipe.stages.maps import STRUCTURE, infer_image
from sipe.study.pipeline import fig8_methods
from sipe.method.backbones import BACKBONES
from sipe.method.network import build_model
from sipe.infra.runtime import precision_context
from sipe.stages.train import build_optimizer, train_step

MODES = ("float32", "bfloat16")


def interleaved(steps: dict[str, Callable[[], object]], block: int, repeats: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per call of each step, `repeats` blocks of `block` calls each, modes alternating."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {m: [] for m in steps}
    order = list(steps)
    for r in range(repeats):
        for mode in order if r % 2 == 0 else order[::-1]:
            times[mode].append(time_block(steps[mode], block))
    return times


def report(what: str, times: dict[str, list[float]], unit: str, per_call: float) -> None:
    ratios = [a / b for a, b in zip(times["float32"], times["bfloat16"])]
    for mode in MODES:
        ts = times[mode]
        print(f"  {mode:<9} {statistics.median(ts):8.3f} s/call  ({per_call / statistics.median(ts):.2f} {unit}; "
              f"min {min(ts):.3f}, max {max(ts):.3f})")
    print(f"  {what}: float32 / bfloat16 time, median {statistics.median(ratios):.2f} "
          f"(per-repeat {min(ratios):.2f}-{max(ratios):.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--size", type=int, nargs=2, default=(375, 500), help="image height width for the maps")
    parser.add_argument("--block", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--checkpoint", help="a trained unit's final.pt for the maps (default: untrained heads)")
    parser.add_argument("--data-root", help="VOC root: map real `train` images (default: one random image of --size)")
    parser.add_argument("--images", type=int, default=4, help="images mapped per call with --data-root")
    parser.add_argument("--eval-images", type=int, default=0, help="images scored both ways (needs --checkpoint, --data-root)")
    parser.add_argument("--fig8", action="store_true", help="maps with Fig. 8's readings, as a SIPE unit makes them "
                        "(default: structure-aware seeds only, as the other units)")
    parser.add_argument("--compare", nargs=2, metavar=("FLOAT32_DIR", "BFLOAT16_DIR"),
                        help="compare the claims of two results folders instead of timing")
    parser.add_argument("--units", nargs="+", help="with --compare: the units to compare (default: every unit found)")
    parser.add_argument("--same-training", action="store_true",
                        help="with --compare: pair units by training key (same training config and data, trained "
                             "in separate runs) instead of by checkpoint file")
    args = parser.parse_args()
    if args.compare:
        compare_claims(*args.compare, units=args.units, data_root=args.data_root, same_training=args.same_training)
        return
    load_at_start = os.getloadavg()[0]
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = get_profile("subset", **{"data.crop_size": args.crop, "train.batch_size": args.batch, "device": "cpu"})
    print(f"# bench_precision  {datetime.date.today()}  {platform.node()}  {platform.processor() or platform.machine()}"
          f"  torch {torch.__version__}  threads {torch.get_num_threads()}  load average at start {load_at_start:.2f}")
    print(f"backbone {cfg.model.backbone}, {args.repeats} interleaved blocks of {args.block} calls per mode")

    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.data.num_classes).train()
    opt, _ = build_optimizer(model, cfg, max_steps=10**6)
    batch = synthetic_batch(args.batch, args.crop, cfg.data.num_classes)

    def train_in(mode: str) -> Callable[[], None]:
        def step() -> None:
            with precision_context(mode, "cpu"):
                out = train_step(model, batch, cfg, torch.device("cpu"))
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=cfg.train.clip_grad_norm)
            opt.step()
        return step

    print(f"training step, batch {args.batch}, crop {args.crop}, synthetic inputs:")
    report("training", interleaved({m: train_in(m) for m in MODES}, args.block, args.repeats, args.warmup),
           "img/s", args.batch)

    if args.checkpoint:
        model, cfg = load_trained(args.checkpoint)
    model.eval()
    spec = BACKBONES[cfg.model.backbone]
    if args.data_root:
        ds = InferenceDataset(args.data_root, "train", cfg.infer.scales, spec.mean, spec.std, cfg.infer.flip,
                              max_images=args.images)
        items = [ds[i] for i in range(len(ds))]
    else:
        h, w = args.size
        image = np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8)
        label = torch.zeros(cfg.data.num_classes)
        label[[4, 14]] = 1
        items = [{"images": [scale_views(image, s, spec.mean, spec.std, cfg.infer.flip) for s in cfg.infer.scales],
                  "label": label, "size": (h, w)}]
    outputs: dict[str, dict[str, torch.Tensor]] = {}

    methods = fig8_methods(get_profile("subset")) if args.fig8 else (STRUCTURE,)

    def maps_in(mode: str) -> Callable[[], None]:
        def call() -> None:
            with torch.inference_mode(), precision_context(mode, "cpu"):
                outputs[mode] = [infer_image(model, it["images"], it["label"], tuple(it["size"]), cfg.model, methods)
                                 for it in items]
        return call

    sizes = sorted({tuple(it["size"]) for it in items})
    print(f"maps of {len(items)} image(s) of {sizes}, scales {tuple(cfg.infer.scales)}, flip {cfg.infer.flip}, "
          f"{len(methods)} seed reading(s):")
    report("maps", interleaved({m: maps_in(m) for m in MODES}, args.block, args.repeats, args.warmup), "img/s",
           len(items))
    for key in ("is_cam", "cam"):
        pairs = [(a[key].float(), b[key].float()) for a, b in zip(outputs["float32"], outputs["bfloat16"])]
        if all(a.max() > 0 for a, _ in pairs):
            break
    diffs = torch.cat([(x - y).abs().flatten() for x, y in pairs])
    changed = torch.cat([(x.argmax(0) != y.argmax(0)).flatten() for x, y in pairs]).float().mean()
    print(f"  {key}, bfloat16 vs float32: max |diff| {float(diffs.max()):.3f}, mean |diff| "
          f"{float(diffs.mean()):.4f}, pixels whose argmax label changes {100 * float(changed):.2f}%"
          + ("" if args.checkpoint else " (untrained heads)"))

    if args.eval_images and args.checkpoint and args.data_root:
        score(model, cfg, args.data_root, args.eval_images)


def compare_claims(float32_dir: str, bfloat16_dir: str, units: list[str] | None, data_root: str | None,
                   same_training: bool = False) -> None:
    """Print the unit-decided claims of the `subset` study from maps in float32 and in bfloat16, side by side
    (units mapped from the same checkpoint file, or with `same_training` from the same training key)."""
    from bench_setting import claims_side_by_side, print_side_by_side
    from sipe.study.pipeline import plan
    from sipe.study.claims import unit_claims

    over = {"data.root": data_root} if data_root else {}
    cfg = get_profile("subset", **over)
    shared, unshared = [], []
    for u in plan(cfg):
        if units is not None and u.name not in units:
            continue
        records = [json.loads(p.read_text()) if p.exists() else {}
                   for p in (Path(d) / "runs" / f"{u.name}.json" for d in (float32_dir, bfloat16_dir))]
        digests = [r.get("train_key" if same_training else "checkpoint_digest") for r in records]
        precisions = [record_precision(r) for r in records]
        same = digests[0] is not None and digests[0] == digests[1] and precisions == list(MODES)
        (shared if same else unshared).append(u)
    how = "the same training key (config and data; runs apart)" if same_training else "the same checkpoint"
    print(f"units mapped both ways from {how}: {', '.join(u.name for u in shared) or 'none'}; "
          f"left out (missing, not yet mapped in both precisions, or trained apart): "
          f"{', '.join(u.name for u in unshared) or 'none'}")
    tables = {mode: unit_claims(cfg.override(**{"infer.precision": mode}), folder, shared)
              for mode, folder in zip(MODES, (float32_dir, bfloat16_dir))}
    print_side_by_side(claims_side_by_side(tables), f"# the claims these units decide, from float32 maps ({float32_dir}) "
                       f"and bfloat16 maps ({bfloat16_dir})")


def score(model: torch.nn.Module, cfg, root: str, n: int) -> None:
    """mIoU (%) of IS-CAM (estimated background) on the first `n` `train` images, float32 and bfloat16 maps."""
    from tqdm import tqdm

    from sipe.data.voc import load_mask
    from sipe.stages.evaluation import confusion_matrix, labels_from_maps, miou_result
    from sipe.stages.maps import kept_channels

    spec = BACKBONES[cfg.model.backbone]
    ds = InferenceDataset(root, "train", cfg.infer.scales, spec.mean, spec.std, cfg.infer.flip, max_images=n)
    n_classes = cfg.data.num_classes + 1
    conf = {m: np.zeros((n_classes, n_classes), np.int64) for m in MODES}
    changed = total = 0
    for i in tqdm(range(len(ds)), desc="scoring", unit="img"):
        it = ds[i]
        gt = load_mask(root, it["id"])
        keys = np.asarray(kept_channels(it["label"]))
        labels = {}
        for mode in MODES:
            with torch.inference_mode(), precision_context(mode, "cpu"):
                maps = infer_image(model, it["images"], it["label"], tuple(it["size"]), cfg.model)
            labels[mode] = labels_from_maps(maps["is_cam"].float().numpy(), keys)
            conf[mode] += confusion_matrix(labels[mode], gt, n_classes)
        changed += int((labels["float32"] != labels["bfloat16"]).sum())
        total += labels["float32"].size
    mious = {m: miou_result(c, present_classes=None).miou for m, c in conf.items()}
    print(f"IS-CAM (estimated background) on the first {len(ds)} train images: mIoU float32 {mious['float32']:.2f}, "
          f"bfloat16 {mious['bfloat16']:.2f} (difference {mious['bfloat16'] - mious['float32']:+.2f}); "
          f"labels differ at {100 * changed / total:.2f}% of the pixels")


if __name__ == "__main__":
    main()
