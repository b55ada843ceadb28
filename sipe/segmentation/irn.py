"""IRN refinement of localization maps into pseudo labels (Ahn et al., CVPR 2019), as SIPE uses it.

Three stages, each writing files and resuming where it stopped:

1. IR labels (`make_ir_labels`): confident foreground / background regions of each pseudo-labelled image
   (train_aug; VOC train in the subset profile, `irn.pseudo_split` of the configuration) from its maps with the two
   denseCRF runs of `sipe.stages.crf` (void where they disagree).
2. IRN (`train_irn`): a class-boundary branch over the frozen ImageNet backbone's four stage features,
   at stride 4. Pairs of pixels within `train_radius` get relation labels from the IR labels (same class
   background / same class foreground / different classes; pairs touching void are not used); the
   affinity of a pair is 1 - the largest boundary probability on the path between them; the loss is
   IRN's cross-entropy on those affinities.
3. Random walk (`make_pseudo_labels`): affinities within `infer_radius` from the boundary map,
   transition matrix T = row-normalised affinity^beta, maps^power (times 1 - boundary) propagated by
   T^(2^exp_times), upsampled, divided by their maximum and turned into labels (argmax; background
   either from the maps' own background channel, SIPE, or a constant, IRN).

Not implemented: IRN's displacement-field branch (it serves instance segmentation, not the semantic
pseudo labels), and IRN's stem-level boundary input (the registry backbones expose four stages).

Conventions: maps are (M,H,W) with channel classes `keys` (M,), keys[0] = 0 (background); a pixel grid
of h x w is flattened row-major to n = h*w.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from ..infra.config import IRNConfig, ModelConfig
from ..stages.crf import crf_labels
from ..data import transforms as T
from ..data import voc
from ..stages.labelled import LabelledCropDataset, check_same_size, save_label_atomic
from ..stages.evaluation import load_map
from ..infra.divergence import DIVERGENCE_FACTOR, DIVERGENCE_WINDOW, guarded
from ..stages.fit import FitResult, fit_folder
from ..method.backbones import BACKBONES, Backbone, build_backbone, check_backbone, stage_channels
from ..infra.runtime import atomic_write_json, resolve_device, seed_everything

# ----------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class LabelProtocol:
    """How maps become IR labels and how the random walk's output becomes labels.

    Attributes:
        which: map key ('is_cam' for SIPE, 'cam_irn' for the CAM baseline: IRN's map fusion, as in Table 1).
        background: 'maps' (SIPE): the maps' own background channel; the background-confident CRF run
            scales it by `ir_bg_scale`; it is propagated with the classes and competes in the final argmax.
            'threshold' (IRN): constant background `conf_fg_threshold` / `conf_bg_threshold` for the two CRF
            runs; the random walk propagates the classes only and the background is the constant
            `rw_bg_threshold` after normalisation by the maximum.
        power: exponent applied to the maps before the random walk (SIPE 1.5; IRN 1).
        eval_threshold: constant background of the 'threshold' protocol's maps before refinement (IRN's
            cam_eval_thres 0.15), used for their labels without the random walk (`map_labels`).
    """

    which: str
    background: Literal["maps", "threshold"]
    ir_bg_scale: float = 0.5
    conf_fg_threshold: float = 0.30
    conf_bg_threshold: float = 0.05
    rw_bg_threshold: float = 0.25
    power: float = 1.5
    eval_threshold: float = 0.15


PROTOCOLS: dict[str, LabelProtocol] = {
    "sipe": LabelProtocol("is_cam", "maps", power=1.5),
    "irn": LabelProtocol("cam_irn", "threshold", power=1.0),
}
"""'sipe': SIPE's cam2ir / make_seg_labels on IS-CAM; 'irn': IRN's on its CAM of the image's classes (baseline)."""


SUBSET_CPU_SECONDS = {"ir_labels": 1.02, "irn_epoch": 0.31, "random_walk": 0.29}
"""The subset profile's process CPU seconds per image (IRN training: per image and epoch; random walk at
image scale 0.5), measured by benchmarks/bench_table2.py on 4 VOC train images with one thread on a machine
shared with a background job (2026-12-02): upper bounds. `sipe.study.segresults.cpu_budget` sums them."""


# ------------------------------------------------------------------------------------------ path indexing


def search_directions(radius: int) -> np.ndarray:
    """int64 (D,2) offsets (dy, dx) of the pairs within `radius`: ``dy = 0`` and ``0 < dx < radius``, or
    ``0 < dy < radius`` and ``abs(dx) < radius``, with ``dy**2 + dx**2 < radius**2`` (each unordered pair once)."""
    if radius < 2:
        raise ValueError(f"radius must be >= 2, got {radius}")
    dirs = [(0, dx) for dx in range(1, radius)]
    dirs += [(dy, dx) for dy in range(1, radius) for dx in range(-radius + 1, radius) if dy * dy + dx * dx < radius * radius]
    return np.asarray(dirs, dtype=np.int64)


def path_offsets(dy: int, dx: int) -> np.ndarray:
    """int64 (L,2): the grid points of the box between (0,0) and (dy,dx) within distance 1 of the segment
    joining them (both ends included), destination first, (0,0) last."""
    length_sq = dy * dy + dx * dx
    pts = [(y, x) for y in range(min(0, dy), max(0, dy) + 1) for x in range(min(0, dx), max(0, dx) + 1)
           if (dy * x - dx * y) ** 2 < length_sq]
    pts.sort(key=lambda p: -(abs(p[0]) + abs(p[1])))
    return np.asarray(pts, dtype=np.int64)


@dataclass(frozen=True)
class PathIndex:
    """The pairs within a radius and the paths between them, grouped by path length for vectorised maxima.

    directions (D,2): destination offsets; offsets (U,2): every offset on some path; groups: per path
    length L, (rows into `directions` (D_L,), indices into `offsets` (D_L, L)).
    Sources are the pixels (y, x) with y < h - margin and margin <= x < w - margin, margin = radius - 1,
    so that every destination of every direction lies inside an h x w grid.
    """

    radius: int
    directions: np.ndarray
    offsets: np.ndarray
    groups: tuple[tuple[np.ndarray, np.ndarray], ...]

    @classmethod
    def of(cls, radius: int) -> "PathIndex":
        dirs = search_directions(radius)
        paths = [path_offsets(int(dy), int(dx)) for dy, dx in dirs]
        offsets = sorted({(int(y), int(x)) for p in paths for y, x in p})
        where = {o: i for i, o in enumerate(offsets)}
        by_len: dict[int, list[int]] = {}
        for d, p in enumerate(paths):
            by_len.setdefault(len(p), []).append(d)
        groups = tuple(
            (np.asarray(rows, dtype=np.int64),
             np.asarray([[where[(int(y), int(x))] for y, x in paths[d]] for d in rows], dtype=np.int64))
            for _, rows in sorted(by_len.items()))
        return cls(radius, dirs, np.asarray(offsets, dtype=np.int64), groups)

    @property
    def margin(self) -> int:
        return self.radius - 1

    def source_shape(self, h: int, w: int) -> tuple[int, int]:
        """(h - margin, w - 2 margin): the source region of an h x w grid."""
        m = self.margin
        if h - m <= 0 or w - 2 * m <= 0:
            raise ValueError(f"a {h}x{w} grid is too small for radius {self.radius}")
        return h - m, w - 2 * m

    def _shifted(self, x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
        hs, ws = self.source_shape(x.shape[-2], x.shape[-1])
        m = self.margin
        return x[..., dy:dy + hs, m + dx:m + dx + ws]

    def affinities(self, boundary: torch.Tensor) -> torch.Tensor:
        """(N,h,w) boundary probabilities -> (N,D,h',w') affinities: 1 - max boundary on each pair's path,
        for the sources of `source_shape` (differentiable)."""
        shifted = torch.stack([self._shifted(boundary, int(y), int(x)) for y, x in self.offsets], dim=1)
        out = boundary.new_empty((boundary.shape[0], len(self.directions), *shifted.shape[2:]))
        for rows, idx in self.groups:
            path_max = shifted[:, torch.from_numpy(idx).reshape(-1)].reshape(
                boundary.shape[0], *idx.shape, *shifted.shape[2:]).amax(dim=2)
            out[:, torch.from_numpy(rows)] = 1.0 - path_max
        return out

    def relation_labels(self, label: np.ndarray, ignore_index: int = voc.IGNORE_INDEX) -> np.ndarray:
        """uint8 (h,w) class map -> float32 (3,D,h',w') pair labels: background-positive (both ends the same,
        background), foreground-positive (same class > 0), negative (different); pairs touching void are 0."""
        label = torch.from_numpy(np.asarray(label).astype(np.int64))
        src = self._shifted(label, 0, 0).numpy()
        out = np.zeros((3, len(self.directions), *src.shape), dtype=np.float32)
        for d, (dy, dx) in enumerate(self.directions):
            dst = self._shifted(label, int(dy), int(dx)).numpy()
            valid = (src != ignore_index) & (dst != ignore_index)
            same = (src == dst) & valid
            out[0, d] = same & (src == 0)
            out[1, d] = same & (src > 0)
            out[2, d] = (src != dst) & valid
        return out


# --------------------------------------------------------------------------------------------- random walk


def banded_affinity(boundary: torch.Tensor, radius: int) -> tuple[np.ndarray, torch.Tensor]:
    """(h,w) boundary probabilities -> (offsets int64 (O,2), affinity (O,h,w)): affinity[o, y, x] is the
    affinity of pixel (y,x) with (y,x) + offsets[o]: 1 for the offset (0,0), 1 - max boundary on the path
    for the pairs within `radius` (both orders), 0 where the partner lies outside the grid."""
    h, w = boundary.shape
    index = PathIndex.of(radius)
    m = index.margin
    padded = F.pad(boundary[None, None].float(), (m, m, 0, m), value=1.0)[0]
    fwd = index.affinities(padded)[0]
    fwd_padded = F.pad(fwd, (m, m, m, 0))
    dirs = index.directions.tolist()
    bwd = torch.stack([fwd_padded[d, m - dy:m - dy + h, m - dx:m - dx + w] for d, (dy, dx) in enumerate(dirs)])
    offsets = np.asarray([(0, 0), *dirs, *((-dy, -dx) for dy, dx in dirs)], dtype=np.int64)
    return offsets, torch.cat([torch.ones(1, h, w), fwd, bwd])


def affinity_matrix(boundary: torch.Tensor, radius: int) -> torch.Tensor:
    """(h,w) boundary probabilities -> sparse COO (n,n) symmetric affinity of `banded_affinity`
    (1 on the diagonal, no entry for pairs farther than `radius` or outside the grid)."""
    h, w = boundary.shape
    offsets, aff = banded_affinity(boundary, radius)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    rows, cols, vals = [], [], []
    for o, (dy, dx) in enumerate(offsets.tolist()):
        ok = ((ys + dy >= 0) & (ys + dy < h) & (xs + dx >= 0) & (xs + dx < w)).reshape(-1)
        rows.append((ys * w + xs).reshape(-1)[ok])
        cols.append(((ys + dy) * w + xs + dx).reshape(-1)[ok])
        vals.append(aff[o].reshape(-1)[ok])
    return torch.sparse_coo_tensor(torch.stack([torch.cat(rows), torch.cat(cols)]), torch.cat(vals),
                                   (h * w, h * w), check_invariants=False).coalesce()


def transition_matrix(affinity: torch.Tensor, beta: float) -> torch.Tensor:
    """Row-stochastic (n,n) T = D^-1 A^beta of a non-negative affinity A (sparse COO or dense): rows sum to 1."""
    if affinity.is_sparse:
        a = affinity.coalesce()
        vals = a.values().clamp_min(0).pow(beta)
        rows = a.indices()[0]
        sums = torch.zeros(a.shape[0], dtype=vals.dtype).index_add_(0, rows, vals)
        return torch.sparse_coo_tensor(a.indices(), vals / sums[rows].clamp_min(1e-12), a.shape,
                                       check_invariants=False).coalesce()
    scaled = affinity.clamp_min(0).pow(beta)
    return scaled / scaled.sum(dim=1, keepdim=True).clamp_min(1e-12)


def banded_transition(affinity: torch.Tensor, beta: float) -> torch.Tensor:
    """(O,h,w) banded affinity -> (O,h,w) transition weights aff^beta / sum over offsets (sum to 1 per pixel)."""
    scaled = affinity.clamp_min(0).pow(beta)
    return scaled / scaled.sum(dim=0, keepdim=True).clamp_min(1e-12)


def random_walk(x: torch.Tensor, transition: torch.Tensor, exp_times: int) -> torch.Tensor:
    """(C,n) values -> (C,n) after 2^exp_times steps, out[c, i] = sum_j T^(2^t)[i, j] x[c, j], by squaring the
    (dense) transition matrix exp_times times (IRN's logt)."""
    p = transition.to_dense() if transition.is_sparse else transition
    for _ in range(exp_times):
        p = p @ p
    return x @ p.T


def banded_walk(x: torch.Tensor, offsets: np.ndarray, transition: torch.Tensor, steps: int) -> torch.Tensor:
    """(C,h,w) values -> (C,h,w) after `steps` steps y[:, p] = sum_o T[o, p] x[:, p + offsets[o]] with banded
    weights (O,h,w): the same walk as `random_walk` without forming the n x n matrix."""
    c, h, w = x.shape
    m = int(np.abs(offsets).max())
    for _ in range(steps):
        xp = F.pad(x, (m, m, m, m))
        y = torch.zeros_like(x)
        for o, (dy, dx) in enumerate(offsets.tolist()):
            y.addcmul_(transition[o], xp[:, m + dy:m + dy + h, m + dx:m + dx + w])
        x = y
    return x


def propagate(maps: torch.Tensor, boundary: torch.Tensor, radius: int = 5, beta: float = 10.0,
              exp_times: int = 8, method: str = "dense") -> torch.Tensor:
    """(C,h,w) maps and (h,w) boundary -> (C,h,w): maps x (1 - boundary) after 2^exp_times random-walk steps
    with T = D^-1 A^beta. method 'dense': IRN's matrix squaring (memory n^2); 'stencil': the banded walk."""
    c, h, w = maps.shape
    x = (maps * (1.0 - boundary)[None]).float()
    if method == "dense":
        tm = transition_matrix(affinity_matrix(boundary, radius), beta)
        return random_walk(x.reshape(c, h * w), tm, exp_times).reshape(c, h, w)
    if method == "stencil":
        offsets, aff = banded_affinity(boundary, radius)
        return banded_walk(x, offsets, banded_transition(aff, beta), 2 ** exp_times)
    raise ValueError(f"method={method!r}; use 'dense' or 'stencil'")


# ------------------------------------------------------------------------------------------------ network


class BoundaryNet(nn.Module):
    """IRN's class-boundary branch over a frozen backbone: per stage 1x1 conv -> 32 ch, GroupNorm(4),
    bilinear resize to the stride-4 grid, ReLU; concatenation -> 1x1 conv -> boundary logit (N,1,h/4,w/4)."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, 32, 1, bias=False), nn.GroupNorm(4, 32)) for c in stage_channels(backbone))
        self.fuse = nn.Conv2d(32 * len(self.branches), 1, 1, bias=True)
        if backbone.spec.stage_strides[0] != 4:
            raise ValueError(f"{backbone.spec.name}: IRN needs a stride-4 first stage, got {backbone.spec.stage_strides[0]}")

    def train(self, mode: bool = True) -> "BoundaryNet":
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N,3,H,W), H and W multiples of 16 -> boundary logits (N,1,H/4,W/4)."""
        with torch.no_grad():
            stages = self.backbone(x.contiguous(memory_format=torch.channels_last))
        grid = stages[0].shape[2:]
        feats = [F.relu(F.interpolate(b(s.float()), grid, mode="bilinear", align_corners=False))
                 for b, s in zip(self.branches, stages)]
        return self.fuse(torch.cat(feats, dim=1))

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.branches.parameters()) + list(self.fuse.parameters())


def build_irn(cfg: IRNConfig, pretrained: bool | None = None) -> BoundaryNet:
    mcfg = ModelConfig(backbone=cfg.backbone, pretrained=cfg.pretrained if pretrained is None else pretrained,
                       weights=cfg.weights)
    return BoundaryNet(build_backbone(mcfg))


def affinity_loss(aff: torch.Tensor, labels: torch.Tensor, eps: float = 1e-5) -> dict[str, torch.Tensor]:
    """IRN's loss: aff (N,D,h',w'), labels (N,3,D,h',w') = (bg-positive, fg-positive, negative).

    pos = (mean -log aff over bg pairs + mean over fg pairs) / 2, neg = mean -log(1 - aff) over negative
    pairs, loss = (pos + neg) / 2."""
    bg, fg, neg = labels[:, 0], labels[:, 1], labels[:, 2]
    log_pos = -torch.log(aff + eps)
    log_neg = -torch.log(1.0 + eps - aff)
    bg_loss = (bg * log_pos).sum() / (bg.sum() + eps)
    fg_loss = (fg * log_pos).sum() / (fg.sum() + eps)
    neg_loss = (neg * log_neg).sum() / (neg.sum() + eps)
    pos = bg_loss / 2 + fg_loss / 2
    return {"loss": (pos + neg_loss) / 2, "pos_bg": bg_loss, "pos_fg": fg_loss, "neg": neg_loss}


class RelationDataset(LabelledCropDataset):
    """LabelledCropDataset whose items also carry IRN's pair labels: `relations` uint8 (3,D,h',w') from
    the crop's labels downsampled 4x (nearest), for the pairs of `PathIndex.of(radius)`."""

    def __init__(self, *args: Any, radius: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.index = PathIndex.of(radius)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = super().__getitem__(index)
        grid = self.crop_size // 4
        small = T.resize(item["label"].numpy().astype(np.uint8), (grid, grid), "nearest")
        item["relations"] = torch.from_numpy(self.index.relation_labels(small).astype(np.uint8))
        return item


def _irn_step(model: BoundaryNet, batch: dict, device: torch.device, index: PathIndex) -> dict[str, torch.Tensor]:
    boundary = torch.sigmoid(model(batch["img"].to(device)))[:, 0]
    return affinity_loss(index.affinities(boundary), batch["relations"].to(device).float())


IRN_METRICS = ("loss", "pos_bg", "pos_fg", "neg")


def train_irn(
    cfg: IRNConfig,
    root: str | os.PathLike,
    ids: Sequence[str],
    ir_label_dir: str | os.PathLike,
    run_dir: str | os.PathLike,
    device: str = "auto",
    progress: bool = True,
    on_step=None,
    divergence_factor: float | None = DIVERGENCE_FACTOR,
    divergence_window: int = DIVERGENCE_WINDOW,
) -> FitResult:
    """Train the boundary branch on the IR labels of `ids` in `run_dir` (resumable; final.pt when done).

    Stops with DivergenceError when the loss's mean over `divergence_window` steps exceeds
    `divergence_factor` x its start (`sipe.infra.divergence.DivergenceGuard`; None: never)."""
    cfg.validate()
    check_backbone("irn.backbone", cfg.backbone)
    dev = resolve_device(device)
    spec = BACKBONES[cfg.backbone]
    seed_everything(cfg.seed)
    model = build_irn(cfg)
    dataset = RelationDataset(root, ids, ir_label_dir, cfg.crop_size, cfg.scale_range, spec.mean, spec.std,
                              seed=cfg.seed, radius=cfg.train_radius)
    config = {"stage": "irn", "irn": cfg.result_dict(), "ids": _digest(ids), "ir_labels": folder_id(ir_label_dir)}
    o = cfg.optim()
    return fit_folder(model, [(model.head_parameters(), o.new_lr_mult)], dataset,
                      partial(_irn_step, index=dataset.index), run_dir, o, config, IRN_METRICS, dev, cfg.num_workers,
                      progress, desc="IRN",
                      on_step=guarded(on_step, run_dir, "IRN lr (irn.lr)", divergence_factor, divergence_window))


def load_irn(checkpoint: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[BoundaryNet, IRNConfig]:
    """The boundary network and settings in a `final.pt` written by `train_irn` (no ImageNet weights needed)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    d = dict(state["config"]["irn"])
    d["scale_range"] = tuple(d["scale_range"])
    cfg = IRNConfig(**d)
    model = build_irn(cfg, pretrained=False)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cfg


# -------------------------------------------------------------------------------------------- the stages


def folder_id(path: str | os.PathLike) -> str:
    """'<parent>/<name>' of a stage folder: identifies its inputs without the work dir's location."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}"


def _digest(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def stage_key(*parts: Any) -> str:
    """12-hex digest of a stage's inputs (settings dicts, folder names, id digests)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def ir_label(img: np.ndarray, maps: np.ndarray, keys: np.ndarray, protocol: LabelProtocol, t: int = 10,
             gt_prob: float = 0.7) -> np.ndarray:
    """uint8 (H,W) IR label of one image: confident classes, 255 where the two CRF runs disagree."""
    if protocol.background == "maps":
        return crf_labels(img, maps, keys, protocol.ir_bg_scale, t, gt_prob)
    m = np.array(maps, dtype=np.float32, copy=True)
    m[0] = protocol.conf_fg_threshold
    return crf_labels(img, m, keys, protocol.conf_bg_threshold / protocol.conf_fg_threshold, t, gt_prob)


def _ir_label_one(image_id: str, maps_dir: str, root: str, out_dir: str, protocol: LabelProtocol, t: int,
                  gt_prob: float) -> str:
    out = Path(out_dir) / f"{image_id}.png"
    if out.exists():
        return image_id
    maps, keys = load_map(maps_dir, image_id, protocol.which)
    img = voc.load_image(root, image_id)
    check_same_size(maps[0], img, Path(maps_dir) / f"{image_id}.npz", voc.image_path(root, image_id))
    save_label_atomic(out, ir_label(img, maps, keys, protocol, t, gt_prob))
    return image_id


def make_ir_labels(
    maps_dir: str | os.PathLike, root: str | os.PathLike, ids: Sequence[str], out_dir: str | os.PathLike,
    protocol: LabelProtocol, cfg: IRNConfig, progress: bool = True,
) -> Path:
    """IR labels `<out_dir>/<id>.png` of `ids` from `<maps_dir>/<id>.npz` (resumable; DONE when finished)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / "DONE").exists():
        return out_dir
    todo = [i for i in ids if not (out_dir / f"{i}.png").exists()]
    one = partial(_ir_label_one, maps_dir=str(maps_dir), root=str(root), out_dir=str(out_dir), protocol=protocol,
                  t=cfg.crf_iterations, gt_prob=cfg.crf_gt_prob)
    t0 = time.perf_counter()
    with tqdm(total=len(ids), initial=len(ids) - len(todo), disable=not progress, desc="IR labels", unit="img") as bar:
        if cfg.label_workers > 1 and len(todo) > 1:
            with ProcessPoolExecutor(cfg.label_workers) as ex:
                for _ in ex.map(one, todo, chunksize=4):
                    bar.update()
        else:
            for i in todo:
                one(i)
                bar.update()
    atomic_write_json(out_dir / "DONE", {"n_images": len(ids), "computed_now": len(todo),
                                         "seconds": time.perf_counter() - t0, "protocol": asdict(protocol)})
    return out_dir


def map_labels(
    maps_dir: str | os.PathLike, root: str | os.PathLike, ids: Sequence[str], out_dir: str | os.PathLike,
    protocol: LabelProtocol, progress: bool = True,
) -> Path:
    """Pseudo labels without refinement (SIPE's COCO path): `<out_dir>/<id>.png` = the maps' labels, with
    their own background ('maps') or the constant `eval_threshold` ('threshold'). Resumable; DONE at the end."""
    from ..stages.evaluation import labels_from_maps

    out_dir = Path(out_dir)
    if (out_dir / "DONE").exists():
        return out_dir
    for image_id in tqdm(list(ids), disable=not progress, desc="labels from maps", unit="img"):
        out = out_dir / f"{image_id}.png"
        if out.exists():
            continue
        maps, keys = load_map(maps_dir, image_id, protocol.which)
        mode = "estimated" if protocol.background == "maps" else "threshold"
        save_label_atomic(out, labels_from_maps(maps, keys, mode, protocol.eval_threshold))
    atomic_write_json(out_dir / "DONE", {"n_images": len(ids), "maps": str(maps_dir), "protocol": asdict(protocol)})
    return out_dir


def pad_to(x: torch.Tensor, multiple: int = 16, at_least: int = 0) -> torch.Tensor:
    """Zero-pad (...,H,W) at the bottom/right to a multiple of `multiple` (and at least `at_least`)."""
    h, w = x.shape[-2:]
    ph = max(at_least, -(-h // multiple) * multiple) - h
    pw = max(at_least, -(-w // multiple) * multiple) - w
    return F.pad(x, (0, pw, 0, ph))


@torch.no_grad()
def boundary_map(model: BoundaryNet, img: np.ndarray, mean: Sequence[float], std: Sequence[float],
                 pad: int = 0) -> torch.Tensor:
    """uint8 (H,W,3) -> (ceil(H/4), ceil(W/4)) boundary probabilities of the image averaged with its
    flip's (IRN's EdgeDisplacement): both zero-padded at the bottom/right to a multiple of 16 (and at least
    `pad`), each logit map cropped to the image's grid, the flip's mirrored back, sigmoid of the mean."""
    x = torch.from_numpy(T.hwc_to_chw(T.normalize(img, mean, std)))
    x = pad_to(torch.stack([x, x.flip(-1)]), 16, pad)
    device = model.fuse.weight.device
    gh, gw = -(-img.shape[0] // 4), -(-img.shape[1] // 4)
    logits = model(x.to(device))[:, 0, :gh, :gw]
    return torch.sigmoid(logits[0] / 2 + logits[1].flip(-1) / 2).cpu()


def pseudo_label(maps: np.ndarray, keys: np.ndarray, boundary: torch.Tensor, protocol: LabelProtocol,
                 cfg: IRNConfig, size: tuple[int, int] | None = None) -> np.ndarray:
    """uint8 (H,W) pseudo label from maps (M,H,W) (keys (M,)) and the image's boundary map (gh,gw).

    The maps (SIPE: all channels; IRN: the foreground ones) are resized to the boundary grid, raised to
    `protocol.power`, propagated, upsampled x4 (cropped to the image at the boundary's scale, then resized to
    `size`, default the maps' size), divided by their maximum; label = keys[argmax] over the propagated
    channels, with a constant `rw_bg_threshold` background channel under the 'threshold' protocol."""
    maps = np.asarray(maps, dtype=np.float32)
    keys = np.asarray(keys)
    size = size or maps.shape[1:]
    x = torch.from_numpy(maps if protocol.background == "maps" else maps[1:])
    if x.shape[0] == 0:
        return np.zeros(size, dtype=np.uint8)
    gh, gw = boundary.shape
    x = F.interpolate(x[None], (gh, gw), mode="bilinear", align_corners=False)[0].clamp_min(0).pow(protocol.power)
    rw = propagate(x, boundary, cfg.infer_radius, cfg.beta, cfg.exp_times, cfg.rw_method)
    scaled = T.scaled_size(tuple(size), cfg.infer_scale)
    up = F.interpolate(rw[None], (gh * 4, gw * 4), mode="bilinear", align_corners=False)[..., :scaled[0], :scaled[1]]
    if tuple(scaled) != tuple(size):
        up = F.interpolate(up, tuple(size), mode="bilinear", align_corners=False)
    up = up[0] / up.max().clamp_min(1e-5)
    if protocol.background == "threshold":
        up = torch.cat([torch.full_like(up[:1], protocol.rw_bg_threshold), up])
    return keys[up.argmax(dim=0).numpy()].astype(np.uint8)


def make_pseudo_labels(
    checkpoint: str | os.PathLike, maps_dir: str | os.PathLike, root: str | os.PathLike, ids: Sequence[str],
    out_dir: str | os.PathLike, protocol: LabelProtocol, cfg: IRNConfig, device: str = "auto",
    progress: bool = True,
) -> Path:
    """Random-walk pseudo labels `<out_dir>/<id>.png` of `ids` with a trained IRN (resumable; DONE at the end)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / "DONE").exists():
        return out_dir
    dev = resolve_device(device)
    model, _ = load_irn(checkpoint, dev)
    spec = BACKBONES[cfg.backbone]
    todo = [i for i in ids if not (out_dir / f"{i}.png").exists()]
    t0 = time.perf_counter()
    for image_id in tqdm(todo, disable=not progress, desc="random walk", unit="img"):
        maps, keys = load_map(maps_dir, image_id, protocol.which)
        img = voc.load_image(root, image_id)
        check_same_size(maps[0], img, Path(maps_dir) / f"{image_id}.npz", voc.image_path(root, image_id))
        small = T.rescale(img, cfg.infer_scale, "bicubic") if cfg.infer_scale != 1.0 else img
        boundary = boundary_map(model, small, spec.mean, spec.std, pad=cfg.crop_size)
        save_label_atomic(out_dir / f"{image_id}.png", pseudo_label(maps, keys, boundary, protocol, cfg, img.shape[:2]))
    dt = time.perf_counter() - t0
    atomic_write_json(out_dir / "DONE", {"n_images": len(ids), "computed_now": len(todo), "seconds": dt,
                                         "images_per_s": len(todo) / dt if todo and dt > 0 else None,
                                         "checkpoint": str(checkpoint), "protocol": asdict(protocol)})
    return out_dir
