"""Stage 2: multi-scale + flip localization maps (CAM and IS-CAM) for every image of a split.

Each image gets `<out_dir>/<id>.npz` (see docs/architecture.md), written atomically; a rerun skips images
whose file exists, and a finished folder carries `DONE`.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from . import ipe
from .config import ExperimentConfig, ModelConfig
from .data.datasets import InferenceDataset
from .models import BACKBONES, Features, SIPENet
from .runtime import atomic_savez, atomic_write_json, resolve_device
from .train import load_trained

STRUCTURE = "structure"


def seed_method_key(method: str) -> str:
    """The map-file key of IS-CAM made with a seed method: 'is_cam' for structure-aware seeds, else 'is_cam@<method>'."""
    return "is_cam" if method == STRUCTURE else f"is_cam@{method}"


def _seeds(method: str, cam: torch.Tensor, seed_feature: torch.Tensor, label_mask: torch.Tensor, mcfg: ModelConfig) -> torch.Tensor:
    if method == STRUCTURE:
        return ipe.locate_seeds(cam, seed_feature, label_mask, bg_scale=mcfg.bg_scale, chunk_rows=mcfg.seed_chunk_rows)
    if method == "argmax":
        return ipe.cam_seeds(cam, label_mask)
    if method.startswith("threshold:"):
        return ipe.cam_seeds(cam, label_mask, threshold=float(method.split(":", 1)[1]))
    raise ValueError(f"unknown seed method {method!r}; use 'structure', 'argmax' or 'threshold:<t>'")


def fuse_flip(x: torch.Tensor) -> torch.Tensor:
    """(2,...,w) image + flipped-image outputs -> (1,...,w): x[0] + flip(x[1]); a single image passes through."""
    return x if x.shape[0] == 1 else (x[0] + x[1].flip(-1)).unsqueeze(0)


@torch.no_grad()
def infer_image(
    model: SIPENet,
    images: Sequence[torch.Tensor],
    label: torch.Tensor,
    size: tuple[int, int],
    mcfg: ModelConfig,
    seed_methods: Sequence[str] = (STRUCTURE,),
) -> dict[str, torch.Tensor]:
    """Multi-scale + flip maps of one image: {'cam', 'is_cam', 'is_cam@...'} each (C,H,W), max-normalised.

    images: per scale a (2,3,h,w) image + flip pair (or (1,3,h,w)); label: (K,) 0/1.
    Per scale, flip outputs are fused before seeds are located; the CAM is not label-masked for seed
    locating, seeds are; each scale's maps are upsampled to `size`, summed and max-normalised.
    """
    device = next(model.parameters()).device
    label_mask = torch.cat([label.new_ones(1), label]).to(device)[None, :, None, None]
    sums: dict[str, torch.Tensor] = {}
    for x in images:
        feats = Features(*(fuse_flip(t) for t in model.extract(x.to(device))))
        cam = ipe.cam_with_background(feats.logits)
        seed_feature = feats.get(mcfg.seed_feature_infer)
        proto_feature = feats.get(mcfg.prototype_feature)
        outs = {"cam": cam}
        for method in seed_methods:
            seeds = _seeds(method, cam, seed_feature, label_mask, mcfg)
            maps = ipe.is_cam(proto_feature, ipe.prototypes(seeds, proto_feature))
            if not mcfg.background_prototype:
                maps = ipe.background_from_foreground(maps)
            outs[seed_method_key(method)] = maps
        for key, value in outs.items():
            up = F.interpolate(value, size, mode="bilinear", align_corners=False)[0]
            sums[key] = sums[key] + up if key in sums else up
    return {k: ipe.max_normalize(v) for k, v in sums.items()}


def kept_channels(label: torch.Tensor) -> np.ndarray:
    """Channel indices kept in a map file: background (0) and the present classes (1..K)."""
    return np.concatenate([[0], np.flatnonzero(label.cpu().numpy() > 0.5) + 1]).astype(np.int64)


def _first(batch: list) -> dict:
    return batch[0]


@dataclass(frozen=True)
class MapsResult:
    maps_dir: Path
    n_images: int
    n_computed: int
    images_per_s: float


def make_maps(
    cfg: ExperimentConfig,
    checkpoint: str | Path,
    out_dir: str | Path,
    seed_methods: Sequence[str] = (STRUCTURE,),
    progress: bool = True,
) -> MapsResult:
    """Write the maps of `cfg.infer.split` with the trained `checkpoint` into `out_dir` (resumable)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "config.json", {"config": cfg.to_dict(), "checkpoint": str(checkpoint),
                                                 "seed_methods": list(seed_methods)})
    device = resolve_device(cfg.device)
    model, _ = load_trained(checkpoint, device)
    mcfg = cfg.model
    spec = BACKBONES[mcfg.backbone]
    ds = InferenceDataset(cfg.data.resolved_root(), cfg.infer.split, cfg.infer.scales, spec.mean, spec.std,
                          flip=cfg.infer.flip, max_images=cfg.infer.max_images)
    todo = [i for i, name in enumerate(ds.ids) if not (out_dir / f"{name}.npz").exists()]
    loader = DataLoader(torch.utils.data.Subset(ds, todo), batch_size=1, collate_fn=_first,
                        num_workers=cfg.data.num_workers)
    t0 = time.perf_counter()
    for item in tqdm(loader, total=len(todo), disable=not progress, desc="maps", unit="img"):
        maps = infer_image(model, item["images"], item["label"], tuple(item["size"]), mcfg, seed_methods)
        keys = kept_channels(item["label"])
        arrays = {k: v[keys].cpu().numpy().astype(np.float16) for k, v in maps.items()}
        if not cfg.infer.save_cam:
            arrays.pop("cam")
        atomic_savez(out_dir / f"{item['id']}.npz", keys=keys, **arrays)
    dt = time.perf_counter() - t0
    rate = len(todo) / dt if todo and dt > 0 else float("nan")
    atomic_write_json(out_dir / "DONE", {"n_images": len(ds), "computed_now": len(todo), "images_per_s": rate})
    return MapsResult(out_dir, len(ds), len(todo), rate)


def maps_dir_for(cfg: ExperimentConfig, work_dir: str | Path, variant: str, seed_methods: Sequence[str] = (STRUCTURE,)) -> Path:
    """Cache folder of a maps run: <work_dir>/maps/<variant>-<maps hash>[-<seed methods>]."""
    methods = tuple(seed_methods)
    suffix = "" if methods == (STRUCTURE,) else "-seeds" + hashlib.sha256(repr(methods).encode()).hexdigest()[:6]
    return Path(work_dir) / "maps" / f"{variant}-{cfg.stage_hash('maps')}{suffix}"

