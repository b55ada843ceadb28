"""Stage 2: multi-scale + flip localization maps (CAM, IRN-protocol CAM, IS-CAM) for every image of a split.

Each image gets `<out_dir>/<id>.npz` (see docs/architecture.md), written atomically; a rerun skips images
whose file exists, and a finished folder carries `DONE`. A maps folder is tied to the checkpoint it was
made from: its name holds the checkpoint's digest, and `DONE` records it.

Map keys in a file (each (M,H,W) over `keys` = background + present classes, max-normalised):

- `cam`: SIPE's CAM (flip views fused on the logits, background 1 - max, per-scale normalisation);
- `cam_irn`: the CAM under IRN's protocol (`sipe.method.cams.irn_cam`); its channel 0 is 1 - max over the kept classes;
- `is_cam`: IS-CAM with structure-aware seeds (the variant's own prototype feature and BPM setting);
- `labels@<reading>`: uint8 (H,W) label map (estimated background) of IS-CAM made another way, for
  Fig. 8 and Table 4: seeds `argmax[:<alpha>]` or `threshold:<t>`, or `structure/<feature>` for
  structure seeds with prototypes on another feature.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..infra import distributed
from ..method import ipe
from ..method.cams import irn_cam
from ..infra.config import ExperimentConfig, ModelConfig
from ..data.datasets import InferenceDataset
from ..infra.errors import SipeError
from ..method.backbones import BACKBONES
from ..method.network import Features, SIPENet
from ..infra.runtime import atomic_savez, atomic_write_json, file_digest, precision_context, read_json, resolve_device
from .checkpoint import load_trained

STRUCTURE = "structure"
FEATURES = ("semantic", "hierarchical")


def seed_method_key(method: str) -> str:
    """The map-file key of a reading: 'is_cam' for structure-aware seeds, else 'labels@<method>'."""
    return "is_cam" if method == STRUCTURE else f"labels@{method}"


def parse_reading(method: str) -> tuple[str, float | None, str | None]:
    """'structure' | 'structure/<feature>' | 'argmax[:alpha]' | 'threshold:<t>' -> (seeds, number, feature)."""
    seeds, _, feature = method.partition("/")
    name, _, number = seeds.partition(":")
    ok = (name == STRUCTURE and not number) or (name in ("argmax", "threshold") and not feature)
    if feature and feature not in FEATURES:
        ok = False
    try:
        value = float(number) if number else None
    except ValueError:
        ok = False
    if not ok or (name == "threshold" and value is None):
        raise ValueError(f"unknown seed method {method!r}; use 'structure', 'structure/<semantic|hierarchical>', "
                         "'argmax', 'argmax:<alpha>' or 'threshold:<t>'")
    return name, value, feature or None


def fuse_flip(x: torch.Tensor) -> torch.Tensor:
    """(2,...,w) image + flipped-image outputs -> (1,...,w): x[0] + flip(x[1]); a single image passes through."""
    return x if x.shape[0] == 1 else (x[0] + x[1].flip(-1)).unsqueeze(0)


class ScaleOutput(NamedTuple):
    """One scale's inference on the stride-16 grid: fused features, CAM (1,C,h,w) and SIPE's IPE output."""

    features: Features
    cam: torch.Tensor
    ipe: ipe.IPEOutput
    view_logits: torch.Tensor


@torch.no_grad()
def infer_scale(model: SIPENet, views: torch.Tensor, label_mask: torch.Tensor, mcfg: ModelConfig) -> ScaleOutput:
    """SIPE's inference at one scale: (2 or 1,3,h,w) image (+ flip) -> fused features, CAM, seeds, IS-CAM
    and the per-view logits (2 or 1,K,h,w).

    Flip outputs are fused before seeds are located; the CAM is not label-masked for seed locating, the
    seeds are (label_mask (1,C,1,1))."""
    device = next(model.parameters()).device
    views_out = model.extract(views.to(device))
    feats = Features(*(fuse_flip(t) for t in views_out))
    cam = ipe.cam_with_background(feats.logits)
    out = ipe.explore(cam, feats.get(mcfg.seed_feature_infer), feats.get(mcfg.prototype_feature), label_mask,
                      bg_scale=mcfg.bg_scale, background_prototype=mcfg.background_prototype,
                      chunk_rows=mcfg.seed_chunk_rows)
    return ScaleOutput(feats, cam, out, views_out.logits)


def _reading(method: str, s: ScaleOutput, label_mask: torch.Tensor, mcfg: ModelConfig) -> torch.Tensor:
    name, value, feature = parse_reading(method)
    if name == STRUCTURE:
        if feature is None or feature == mcfg.prototype_feature:
            return s.ipe.is_cam
        return ipe.image_specific_cam(s.ipe.seeds, s.features.get(feature), mcfg.background_prototype).is_cam
    seeds = ipe.cam_seeds(s.cam, label_mask, threshold=value) if name == "threshold" else \
        ipe.cam_seeds(s.cam, label_mask, alpha=1.0 if value is None else value)
    return ipe.image_specific_cam(seeds, s.features.get(mcfg.prototype_feature), mcfg.background_prototype).is_cam


@torch.no_grad()
def infer_image(
    model: SIPENet,
    images: Sequence[torch.Tensor],
    label: torch.Tensor,
    size: tuple[int, int],
    mcfg: ModelConfig,
    seed_methods: Sequence[str] = (STRUCTURE,),
) -> dict[str, torch.Tensor]:
    """Multi-scale + flip maps of one image over the kept channels (`kept_channels(label)`: background +
    present classes): {'cam', 'cam_irn', 'is_cam'} each (M,H,W), and 'labels@<method>' (H,W).

    images: per scale a (2,3,h,w) image + flip pair (or (1,3,h,w)); label: (K,) 0/1. Each scale's maps
    are computed on all C channels (under bfloat16 autocast, in bfloat16), then only the kept ones are upsampled
    to `size` in float32, summed over scales and max-normalised per channel; 'labels@<method>' are the estimated-background label maps (class indices)
    of those IS-CAMs, and 'cam_irn' is IRN's protocol (`sipe.method.cams.irn_cam`) with channel 0 = 1 - max.
    """
    device = next(model.parameters()).device
    lm = ipe.label_mask(label.to(device))
    keys = torch.as_tensor(kept_channels(label), device=device)
    sums: dict[str, torch.Tensor] = {}
    irn_views: list[torch.Tensor] = []

    def add(key: str, value: torch.Tensor) -> None:
        sums[key] = sums[key] + value if key in sums else value

    for x in images:
        s = infer_scale(model, x, lm, mcfg)
        outs = {"cam": s.cam}
        for method in seed_methods:
            outs[seed_method_key(method)] = _reading(method, s, lm, mcfg)
        for key, value in outs.items():
            add(key, F.interpolate(value[:, keys].float(), size, mode="bilinear", align_corners=False)[0])
        irn_views.append(s.view_logits[:, keys[1:] - 1].float())
    maps = {k: ipe.max_normalize(v) for k, v in sums.items()}
    fg = irn_cam(irn_views, size)
    background = 1.0 - fg.amax(0, keepdim=True) if len(fg) else torch.ones(1, *size, device=device)
    maps["cam_irn"] = torch.cat([background, fg])
    for method in seed_methods:
        key = seed_method_key(method)
        if key != "is_cam":
            maps[key] = keys[channel_argmax(maps[key])].to(torch.uint8)
    return maps


def channel_argmax(x: torch.Tensor) -> torch.Tensor:
    """(M,H,W) -> (H,W) index of the largest channel (the first on ties), as `x.argmax(0)`: reduced over a
    contiguous last axis, which is 5-20x faster on the CPU than over the leading one."""
    return x.movedim(0, -1).contiguous().argmax(-1)


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
    seconds: float = 0.0


class StaleMapsError(SipeError, RuntimeError):
    """A maps folder was made from another checkpoint than the one asked for."""


class IncompleteMapsError(SipeError, RuntimeError):
    """Images of the split have no map file after every process finished its share."""


def _check_complete(out_dir: Path, ids: Sequence[str]) -> None:
    missing = [i for i in ids if not (out_dir / f"{i}.npz").exists()]
    if missing:
        raise IncompleteMapsError(f"{len(missing)} image(s) of the split have no map file in {out_dir} (first: "
                                  f"{missing[:5]}); run the same command again to make them")


def make_maps(
    cfg: ExperimentConfig,
    checkpoint: str | Path,
    out_dir: str | Path,
    seed_methods: Sequence[str] = (STRUCTURE,),
    progress: bool = True,
) -> MapsResult:
    """Write the maps of `cfg.infer.split` with the trained `checkpoint` into `out_dir` (resumable, locked).

    Under torchrun each rank makes its share of the missing images; once all are done and every image of
    the split has its file, rank 0 writes `DONE`."""
    for method in seed_methods:
        parse_reading(method)
    out_dir = Path(out_dir)
    digest = file_digest(checkpoint)
    with distributed.folder_lock(out_dir):
        meta = out_dir / "config.json"
        if meta.exists():
            made_from = read_json(meta).get("checkpoint_digest")
            if made_from not in (None, digest):
                raise StaleMapsError(f"{out_dir} holds maps of checkpoint {made_from}, not of {checkpoint} "
                                     f"({digest}); delete the folder or write the maps elsewhere")
        mcfg = cfg.model
        spec = BACKBONES[mcfg.backbone]
        ds = InferenceDataset(cfg.data.resolved_root(), cfg.infer.split, cfg.infer.scales, spec.mean, spec.std,
                              flip=cfg.infer.flip, max_images=cfg.infer.max_images)
        todo = distributed.broadcast_object([i for i, n in enumerate(ds.ids) if not (out_dir / f"{n}.npz").exists()])
        if not todo and (out_dir / "DONE").exists():
            return MapsResult(out_dir, len(ds), 0, float("nan"), 0.0)
        distributed.on_main((out_dir / "DONE").unlink, missing_ok=True)
        distributed.on_main(atomic_write_json, meta, {"config": cfg.to_dict(), "checkpoint": str(checkpoint),
                                                      "checkpoint_digest": digest, "seed_methods": list(seed_methods)})
        device = resolve_device(cfg.device)
        model, _ = load_trained(checkpoint, device)
        mine = distributed.shard(todo)
        loader = DataLoader(torch.utils.data.Subset(ds, mine), batch_size=1, collate_fn=_first,
                            num_workers=cfg.data.num_workers)
        t0 = time.perf_counter()
        shown = progress and distributed.is_main()
        for item in tqdm(loader, total=len(mine), disable=not shown, desc="maps", unit="img"):
            with precision_context(cfg.infer.precision, device):
                maps = infer_image(model, item["images"], item["label"], tuple(item["size"]), mcfg, seed_methods)
            keys = kept_channels(item["label"])
            arrays = {k: (v if v.dtype == torch.uint8 else v.float()).cpu().numpy() for k, v in maps.items()}
            arrays = {k: v if v.dtype == np.uint8 else v.astype(np.float16) for k, v in arrays.items()}
            if not cfg.infer.save_cam:
                arrays.pop("cam")
            atomic_savez(out_dir / f"{item['id']}.npz", keys=keys, **arrays)
        distributed.barrier()
        dt = time.perf_counter() - t0
        _check_complete(out_dir, ds.ids)
        rate = len(todo) / dt if todo and dt > 0 else float("nan")
        distributed.on_main(atomic_write_json, out_dir / "DONE", {"n_images": len(ds), "computed_now": len(todo),
                                                                  "images_per_s": rate, "seconds": dt,
                                                                  "checkpoint_digest": digest})
    return MapsResult(out_dir, len(ds), len(todo), rate, dt)


def maps_key(cfg: ExperimentConfig, checkpoint_digest: str, seed_methods: Sequence[str] = (STRUCTURE,)) -> str:
    """The maps stage's key: its settings, the split's data fingerprint, the checkpoint and the readings."""
    from ..data.voc import fingerprint

    fp = fingerprint(cfg.data.resolved_root(), cfg.infer.split, cfg.infer.max_images)
    return cfg.stage_hash("maps", fp, checkpoint_digest, repr(tuple(seed_methods)))


def maps_dir_for(cfg: ExperimentConfig, work_dir: str | Path, variant: str, checkpoint_digest: str,
                 seed_methods: Sequence[str] = (STRUCTURE,)) -> Path:
    """Cache folder of a maps run: <work_dir>/maps/<variant>-s<seed>-<split>-<maps key>."""
    split = cfg.infer.split.replace("-", "_")
    return Path(work_dir) / "maps" / f"{variant}-s{cfg.train.seed}-{split}-{maps_key(cfg, checkpoint_digest, seed_methods)}"


def checkpoint_digest(path: str | Path) -> str:
    """16-hex sha256 of a checkpoint file (what maps and evaluations are tied to)."""
    return file_digest(path)


__all__ = ["STRUCTURE", "MapsResult", "ScaleOutput", "StaleMapsError", "checkpoint_digest", "fuse_flip", "infer_image",
           "infer_scale", "channel_argmax", "kept_channels", "make_maps", "maps_dir_for", "maps_key", "parse_reading",
           "seed_method_key"]
