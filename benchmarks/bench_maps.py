"""Map generation speed: multi-scale + flip inference (`sipe.stages.maps.infer_image`) with a per-stage split.

Usage: python benchmarks/bench_maps.py [--profile subset] [--images 12] [--root DIR] [--threads N]

A SIPENet is built from the profile's model settings (ImageNet weights where the backbone has them, no
trained checkpoint: speed does not depend on training). Images: the first --images ids of the real VOC
subset's `train` split (--root, else $SIPE_SUBSET_ROOT, else ../shared/data/voc2012_subset) when present,
else synthetic 500x375 images. Stages are timed by wrapping the functions `infer_image` calls:
backbone (the backbone's forward), heads (side convs, side normalisation/resizing, classifier), IPE (CAM
with background, seed locating, prototypes, IS-CAM), upsample (flip fusion, upsampling to the image size,
multi-scale sum, normalisation: the rest of infer_image), plus input preparation (decode, rescale,
normalise) and saving the float16 map file. The first image is a warm-up and is not counted.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from sipe.method import ipe
from sipe.stages import maps
from sipe.infra.config import get_profile
from sipe.data.datasets import InferenceDataset
from sipe.data.synthetic import make_synthetic_voc
from sipe.method.backbones import BACKBONES
from sipe.method.network import build_model
from sipe.infra.runtime import atomic_savez

DEFAULT_SUBSET = Path(__file__).resolve().parents[2] / "shared" / "data" / "voc2012_subset"
IPE_FUNCTIONS = ("cam_with_background", "locate_seeds", "prototypes", "is_cam", "background_from_foreground")


class StageTimer:
    """Accumulates wall time per stage name; `wrap` times every call of a function under a stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.depth = 0

    def wrap(self, stage: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - t0

        return timed


@contextmanager
def instrumented(model, timer: StageTimer) -> Iterator[None]:
    """Time model.extract, the backbone's forward and the IPE functions that infer_image calls."""
    saved_ipe = {name: getattr(ipe, name) for name in IPE_FUNCTIONS}
    saved_forward, saved_extract = model.backbone.forward, model.extract
    try:
        for name in IPE_FUNCTIONS:
            setattr(ipe, name, timer.wrap("ipe", saved_ipe[name]))
        model.backbone.forward = timer.wrap("backbone", saved_forward)
        model.extract = timer.wrap("extract", saved_extract)
        yield
    finally:
        for name, fn in saved_ipe.items():
            setattr(ipe, name, fn)
        del model.backbone.forward, model.extract


def dataset_root(args: argparse.Namespace, tmp: Path) -> tuple[Path, str]:
    root = Path(args.root or os.environ.get("SIPE_SUBSET_ROOT") or DEFAULT_SUBSET).expanduser()
    if (root / "JPEGImages").is_dir():
        return root, f"real VOC subset ({root})"
    synth = make_synthetic_voc(tmp / "synthetic", n_images=max(2, args.images + 1), size=(375, 500), seed=0,
                               splits={"train": slice(None)})
    return synth, "synthetic 500x375 images"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="subset", choices=["smoke", "subset", "paper"])
    parser.add_argument("--images", type=int, default=12, help="timed images (one more is used as warm-up)")
    parser.add_argument("--root", default="", help="data root (default: the real subset, else synthetic)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--no-pretrained", action="store_true", help="random weights (e.g. resnet50 offline)")
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]
    if args.threads:
        torch.set_num_threads(args.threads)

    overrides = {"device": "cpu", "model.pretrained": False} if args.no_pretrained else {"device": "cpu"}
    cfg = get_profile(args.profile, **overrides)
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.data.num_classes).eval()
    spec = BACKBONES[cfg.model.backbone]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        root, source = dataset_root(args, tmp)
        ds = InferenceDataset(root, "train", cfg.infer.scales, spec.mean, spec.std, flip=cfg.infer.flip,
                              max_images=args.images + 1)
        per_image: list[dict[str, float]] = []
        sizes = []
        for index in range(len(ds)):
            timer = StageTimer()
            t0 = time.perf_counter()
            item = ds[index]
            t1 = time.perf_counter()
            with instrumented(model, timer):
                out = maps.infer_image(model, item["images"], item["label"], item["size"], cfg.model)
            t2 = time.perf_counter()
            keys = maps.kept_channels(item["label"])
            atomic_savez(tmp / f"{item['id']}.npz", keys=keys,
                         **{k: v[keys].numpy().astype(np.float16) for k, v in out.items()})
            t3 = time.perf_counter()
            s = timer.seconds
            per_image.append({
                "prepare": t1 - t0, "backbone": s["backbone"], "heads": s["extract"] - s["backbone"],
                "ipe": s["ipe"], "upsample": (t2 - t1) - s["extract"] - s["ipe"], "save": t3 - t2, "total": t3 - t0,
            })
            sizes.append(item["size"])
    timed = per_image[1:]
    n = len(timed)
    if n == 0:
        raise SystemExit(f"only {len(per_image)} image(s) in {source}: nothing timed after the warm-up")
    total = sum(r["total"] for r in timed)
    m = cfg.model
    print(f"# bench_maps  {datetime.date.today()}  {platform.node()}  {platform.processor() or platform.machine()}"
          f"  torch {torch.__version__}  threads {torch.get_num_threads()}  load average at start {load_at_start:.2f}")
    print(f"profile {cfg.profile}: backbone {m.backbone} (semantic {m.semantic_layer}, pretrained {m.pretrained}), "
          f"scales {cfg.infer.scales}, flip {cfg.infer.flip}; {n} images from {source}, "
          f"median size {int(statistics.median(h for h, _ in sizes))}x{int(statistics.median(w for _, w in sizes))}")
    print(f"images/s: {n / total:.2f} end to end, {n / sum(r['total'] - r['prepare'] - r['save'] for r in timed):.2f} "
          f"for infer_image alone")
    print(f"{'stage':<10}{'s/image':>10}{'share':>8}")
    for stage in ("prepare", "backbone", "heads", "ipe", "upsample", "save"):
        sec = sum(r[stage] for r in timed)
        print(f"{stage:<10}{sec / n:>10.3f}{100 * sec / total:>7.1f}%")


if __name__ == "__main__":
    main()
