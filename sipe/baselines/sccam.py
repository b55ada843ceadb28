"""SC-CAM (Chang et al., CVPR 2020), the "SCE" baseline of SIPE's Table 1: sub-category exploration.

Round r (1..R): image-level features of every training image (the semantic feature, global-average-pooled,
whole image at one scale, no flip) come from the model of round r-1; per parent class, k-means on the
features of the images holding the class gives k sub-categories; a network with two heads, the parent
classifier (K) and a sub-category classifier (K x k), is trained with MLSM(parent) + w * MLSM(sub). CAMs come
from the parent head, which is `SIPENet.classifier`, so a round's `final.pt` is read by `checkpoint.load_trained`
and mapped by the maps stage like the CAM baseline.

Choices, following the authors' released code (Juliachang/SC-CAM: script.sh, extract_feature.py,
create_pseudo_label.py, train_cls.py):

- round 1's features come from a trained CAM-baseline classifier (their R1 extractor is `res38_cls.pth`,
  the AffinityNet classification model), not from the ImageNet backbone; `round0="imagenet"` is the option;
- every round trains from the ImageNet initialisation (their `--weights` is the ImageNet model each round);
  only the features (hence the sub-category labels) carry over between rounds;
- features are the raw pooled features (no L2 normalisation; `l2_normalize=True` is the option), of the
  whole image at scale 1.0; k-means with 10 initialisations and at most 300 iterations per class;
- sub-category s of class c is column c * k + s of the (N, K*k) sub-label matrix.

Training uses this package's optimiser, schedule, augmentation and epochs (`sipe.stages.train.fit_classifier`:
the loop `sipe.stages.fit.fit`), so SC-CAM differs from the CAM baseline only by the sub-category head and its loss.

Run folder: `config.json`, `sccam.json`, `round<r>/` (features.npy, assignments.npz, assignments.csv,
metrics.csv, checkpoint.pt, wall_seconds.json, final.pt) and, when every round is done, `final.pt` (the last
round's model). A finished round is never redone; an interrupted round resumes from its last checkpoint.
The study's SC-CAM units (`sipe.study.units`) run this with the profile's `sccam` settings (`sipe.infra.config.SCCAMConfig`).
"""
from __future__ import annotations

import dataclasses
import functools
import io
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..method import losses
from ..infra.config import ConfigError, ExperimentConfig, SCCAMConfig, load_config
from ..data.datasets import InferenceDataset, TrainDataset, collate_single
from ..data.voc import CLASS_NAMES
from ..method.backbones import BACKBONES
from ..method.network import SIPENet, build_model
from ..method.backbones import stage_channels
from ..infra.runtime import (atomic_savez, atomic_torch_save, atomic_write_bytes, atomic_write_json,
    atomic_write_text, resolve_device, seed_everything)
from ..stages.checkpoint import load_trained
from ..stages.train import ConfigMismatchError, fit_classifier, make_train_dataset, plan_steps

METRIC_FIELDS = ("step", "epoch", "loss", "loss_cls", "loss_sub", "lr_backbone", "lr_new", "images_per_s", "seconds")


# ----------------------------------------------------------------------------- features and clustering


def semantic_feature(model: SIPENet, x: torch.Tensor) -> torch.Tensor:
    """The semantic feature (N,D,h,w) of `x`, as `model.extract(x).semantic` (without the side convs)."""
    return model.backbone(x.contiguous(memory_format=torch.channels_last))[3]


def feature_dataset(cfg: ExperimentConfig, scale: float = 1.0) -> InferenceDataset:
    """The training images (same ids and order as `make_train_dataset`) whole, at one scale, unflipped."""
    spec = BACKBONES[cfg.model.backbone]
    return InferenceDataset(cfg.data.resolved_root(), cfg.data.train_split, (scale,), spec.mean, spec.std,
                            flip=False, max_images=cfg.data.max_images)


@torch.no_grad()
def image_features(
    model: SIPENet, dataset: InferenceDataset, num_workers: int = 0, progress: bool = True, desc: str = "features"
) -> np.ndarray:
    """float32 (N, D): the global-average-pooled semantic feature of every image of `dataset` (its first scale,
    its first view), in the dataset's order; the model is put in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    loader = DataLoader(dataset, batch_size=1, collate_fn=collate_single, num_workers=num_workers)
    rows = []
    for item in tqdm(loader, total=len(dataset), disable=not progress, desc=desc, unit="img"):
        x = item["images"][0][:1].to(device)
        rows.append(semantic_feature(model, x).mean(dim=(2, 3))[0].float().cpu().numpy())
    return np.stack(rows).astype(np.float32)


class FewImagesWarning(UserWarning):
    """A class has fewer training images than sub-categories asked for, so it gets fewer clusters."""


@dataclass(frozen=True)
class SubcategoryAssignment:
    """Sub-categories of every (image, class) pair.

    clusters: int64 (N, K): the sub-category of image i within class c, -1 where image i does not hold c.
    counts: int64 (K,): sub-categories made for each class (k, fewer when the class has fewer images than k).
    k: sub-categories per class asked for; the sub-label matrix has K * k columns (column c * k + j).
    """

    clusters: np.ndarray
    counts: np.ndarray
    k: int

    @property
    def num_classes(self) -> int:
        return int(self.clusters.shape[1])

    @property
    def sub_labels(self) -> np.ndarray:
        """float32 (N, K*k) 0/1: image i has sub-label c*k + j iff it holds class c and lies in its cluster j."""
        n, kc = self.clusters.shape
        out = np.zeros((n, kc * self.k), np.float32)
        rows, cls = np.nonzero(self.clusters >= 0)
        out[rows, cls * self.k + self.clusters[rows, cls]] = 1.0
        return out


def class_names(num_classes: int) -> list[str]:
    """Names of the K foreground classes (VOC's for K = 20)."""
    return list(CLASS_NAMES[1:]) if num_classes == len(CLASS_NAMES) - 1 else [f"class{c}" for c in range(num_classes)]


def cluster_subcategories(
    features: np.ndarray,
    labels: np.ndarray,
    k: int = 10,
    seed: int = 0,
    n_init: int = 10,
    max_iter: int = 300,
    l2_normalize: bool = False,
    names: list[str] | None = None,
) -> SubcategoryAssignment:
    """Per class, k-means (scikit-learn, `n_init` restarts, random_state=`seed`) on the features (N, D) of the
    images holding the class (labels (N, K) 0/1).

    A class with n < k images gets n clusters (none without images), with one FewImagesWarning naming every
    such class. Cluster indices are renumbered 0..m-1 in k-means' label order when k-means leaves a cluster
    empty (identical features), and counts[c] = m.
    """
    from sklearn.cluster import KMeans

    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels) > 0.5
    if features.ndim != 2 or labels.ndim != 2 or features.shape[0] != labels.shape[0]:
        raise ValueError(f"need features (N,D) and labels (N,K), got {features.shape} and {labels.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if l2_normalize:
        features = features / (np.linalg.norm(features, axis=1, keepdims=True) + 1e-12)
    n, kc = labels.shape
    names = names if names is not None else class_names(kc)
    clusters = np.full((n, kc), -1, np.int64)
    counts = np.zeros(kc, np.int64)
    few: list[str] = []
    for c in range(kc):
        idx = np.flatnonzero(labels[:, c])
        kk = min(k, idx.size)
        if kk < k:
            few.append(f"{names[c]} ({idx.size} image{'s' if idx.size != 1 else ''} -> {kk} cluster{'s' if kk != 1 else ''})")
        if kk == 0:
            continue
        if kk == 1:
            assign = np.zeros(idx.size, np.int64)
        else:
            km = KMeans(n_clusters=kk, n_init=n_init, max_iter=max_iter, random_state=seed)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Number of distinct clusters")
                assign = km.fit_predict(features[idx])
        _, assign = np.unique(assign, return_inverse=True)
        clusters[idx, c] = assign
        counts[c] = assign.max() + 1
    if few:
        warnings.warn(f"SC-CAM: {len(few)} class(es) have fewer training images than k={k} and get fewer "
                      f"sub-categories: {', '.join(few)}", FewImagesWarning, stacklevel=2)
    return SubcategoryAssignment(clusters, counts, int(k))


def save_assignment(assignment: SubcategoryAssignment, ids: list[str], out_dir: str | Path) -> Path:
    """Write `assignments.npz` (ids, clusters, counts, k) and `assignments.csv` (one row per image and held class:
    image_id, class_index (0-based in the label vector), class_name, cluster) into `out_dir`; returns the npz."""
    out_dir = Path(out_dir)
    if len(ids) != assignment.clusters.shape[0]:
        raise ValueError(f"{len(ids)} ids for {assignment.clusters.shape[0]} assignment rows")
    names = class_names(assignment.num_classes)
    lines = ["image_id,class_index,class_name,cluster"]
    for i, c in zip(*np.nonzero(assignment.clusters >= 0)):
        lines.append(f"{ids[i]},{c},{names[c]},{assignment.clusters[i, c]}")
    atomic_write_text(out_dir / "assignments.csv", "\n".join(lines) + "\n")
    return atomic_savez(out_dir / "assignments.npz", ids=np.asarray(ids), clusters=assignment.clusters,
                        counts=assignment.counts, k=np.int64(assignment.k))


def load_assignment(path: str | Path) -> tuple[SubcategoryAssignment, list[str]]:
    """(assignment, ids) from an `assignments.npz` written by `save_assignment` (or its folder)."""
    path = Path(path)
    path = path / "assignments.npz" if path.is_dir() else path
    with np.load(path) as z:
        return SubcategoryAssignment(z["clusters"], z["counts"], int(z["k"])), [str(i) for i in z["ids"]]


# ----------------------------------------------------------------------------- model and loss


class SCCAMNet(nn.Module):
    """A SIPENet (backbone + its parent classifier; side convs unused) plus a 1x1-conv sub-category head (K*k,
    no bias) on the semantic feature. Scores are the global average pools of each head's logits."""

    def __init__(self, net: SIPENet, k: int) -> None:
        super().__init__()
        self.net = net
        self.k = int(k)
        self.sub_classifier = nn.Conv2d(stage_channels(net.backbone)[3], net.num_classes * self.k, 1, bias=False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        semantic = semantic_feature(self.net, x)
        return {"score": self.net.classifier(semantic).mean(dim=(2, 3)),
                "sub_score": self.sub_classifier(semantic).mean(dim=(2, 3))}

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(trainable backbone parameters, new layers: parent and sub-category classifiers)."""
        new = list(self.net.classifier.parameters()) + list(self.sub_classifier.parameters())
        return self.net.backbone.trainable_parameters(), new


def build_sccam_model(cfg: ExperimentConfig, k: int) -> SCCAMNet:
    """SIPENet of `cfg.model` (ImageNet-initialised when pretrained) + a fresh sub-category head, channels-last."""
    net = build_model(cfg.model, cfg.data.num_classes)
    return SCCAMNet(net, k).to(memory_format=torch.channels_last)


def sccam_losses(
    parent_score: torch.Tensor, sub_score: torch.Tensor, labels: torch.Tensor, sub_labels: torch.Tensor, weight: float = 5.0
) -> dict[str, torch.Tensor]:
    """{'loss_cls': MLSM(parent), 'loss_sub': MLSM(sub), 'loss': loss_cls + weight * loss_sub}."""
    loss_cls = losses.classification_loss(parent_score, labels)
    loss_sub = losses.classification_loss(sub_score, sub_labels)
    return {"loss": loss_cls + weight * loss_sub, "loss_cls": loss_cls, "loss_sub": loss_sub}


def sccam_step(model: SCCAMNet, batch: dict, cfg: ExperimentConfig, device: torch.device, weight: float = 5.0) -> dict[str, torch.Tensor]:
    """One forward pass and the SC-CAM losses of a batch (a `fit_classifier` step function)."""
    out = model(batch["img"].to(device, non_blocking=True))
    return sccam_losses(out["score"], out["sub_score"], batch["label"].to(device, non_blocking=True),
                        batch["sub_label"].to(device, non_blocking=True), weight)


class SubLabelDataset(Dataset):
    """A TrainDataset whose items also carry `sub_label`: float32 (K*k,) row of the sub-label matrix."""

    def __init__(self, base: TrainDataset, sub_labels: np.ndarray) -> None:
        if len(base) != len(sub_labels):
            raise ValueError(f"{len(sub_labels)} sub-label rows for {len(base)} training images")
        self.base = base
        self.sub_labels = torch.from_numpy(np.asarray(sub_labels, np.float32))

    @property
    def ids(self) -> list[str]:
        return self.base.ids

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.base[index], "sub_label": self.sub_labels[index]}


# ----------------------------------------------------------------------------- the rounds


@dataclass(frozen=True)
class SCCAMResult:
    run_dir: Path
    checkpoint: Path
    round_dirs: tuple[Path, ...]
    reused: bool

    def round_seconds(self) -> dict[int, dict[str, float]]:
        """Wall time (s) of each round's phases: {round: {"features", "clustering", "training"}}."""
        return {r: json.loads((d / ROUND_SECONDS).read_text()) if (d / ROUND_SECONDS).exists() else {}
                for r, d in enumerate(self.round_dirs, start=1)}


ROUND_SECONDS = "wall_seconds.json"


def _record_seconds(rdir: Path, phase: str, seconds: float) -> None:
    """Set one phase's wall time in `<round dir>/wall_seconds.json` (features, clustering, training)."""
    path = rdir / ROUND_SECONDS
    record = json.loads(path.read_text()) if path.exists() else {}
    atomic_write_json(path, {**record, phase: round(float(seconds), 3)})


def _round0_train_hash(sccam: SCCAMConfig, round0_checkpoint: str | Path | None) -> str | None:
    if sccam.round0 == "imagenet":
        return None
    if round0_checkpoint is None:
        raise ValueError("sccam.round0='cam' needs round0_checkpoint: the final.pt of the CAM baseline "
                         "(e.g. pipeline.trained(cfg, work_dir, 'cam').checkpoint); or set round0='imagenet'")
    state = torch.load(round0_checkpoint, map_location="cpu", weights_only=True)
    return ExperimentConfig.from_dict(state["config"]).stage_hash("train")


def _save_npy(path: Path, array: np.ndarray) -> Path:
    buf = io.BytesIO()
    np.save(buf, array)
    return atomic_write_bytes(path, buf.getvalue())


def _save_model(path: Path, model: SCCAMNet, cfg: ExperimentConfig, sccam: SCCAMConfig, rnd: int, steps: int) -> None:
    """`load_trained`-compatible: 'model' is the SIPENet state (the parent head is its classifier)."""
    atomic_torch_save({"model": model.net.state_dict(), "sub_classifier": model.sub_classifier.state_dict(),
                       "config": cfg.to_dict(), "sccam": sccam.to_dict(), "round": rnd, "steps": steps}, path)


def train_sccam(
    cfg: ExperimentConfig,
    run_dir: str | Path,
    sccam: SCCAMConfig | None = None,
    round0_checkpoint: str | Path | None = None,
    progress: bool = True,
    on_step: Callable[[int, int, dict[str, float]], None] | None = None,
) -> SCCAMResult:
    """Train SC-CAM's `sccam.rounds` rounds in `run_dir` (resumable) and return the final parent-head model.

    cfg: the CAM baseline's config (model.gsc off): backbone, optimiser, schedule, augmentation, epochs per
    round. sccam: the SC-CAM settings (default: cfg.sccam). round0_checkpoint: the CAM baseline's `final.pt`
    whose features make round 1's sub-categories (needed when sccam.round0 == "cam"). on_step(round, step,
    metrics row) is called after every step. The final model's "wall_seconds" is the rounds' total.
    """
    sccam = (cfg.sccam if sccam is None else sccam).validate()
    if cfg.model.gsc:
        raise ConfigError("SC-CAM trains without the GSC loss: pass the CAM baseline's config "
                          "(variant_config(cfg, 'cam'), model.gsc=False)")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / "final.pt"
    round_dirs = tuple(run_dir / f"round{r}" for r in range(1, sccam.rounds + 1))
    r0_hash = _round0_train_hash(sccam, round0_checkpoint)
    meta = {"train_hash": cfg.stage_hash("train"), "sccam": sccam.to_dict(), "round0_train_hash": r0_hash}
    cfg_path, meta_path = run_dir / "config.json", run_dir / "sccam.json"
    if cfg_path.exists() or meta_path.exists():
        stored = json.loads(meta_path.read_text()) if meta_path.exists() else None
        stored_hash = load_config(cfg_path).stage_hash("train") if cfg_path.exists() else None
        if stored != meta or stored_hash != meta["train_hash"]:
            raise ConfigMismatchError(f"{run_dir} holds an SC-CAM run of another configuration ({stored} != {meta}); "
                                      "use a new run folder or delete this one")
    if final.exists():
        return SCCAMResult(run_dir, final, round_dirs, reused=True)
    atomic_write_json(cfg_path, cfg.to_dict())
    atomic_write_json(meta_path, meta)

    device = resolve_device(cfg.device)
    feats_ds = None
    for rnd, rdir in enumerate(round_dirs, start=1):
        rdir.mkdir(exist_ok=True)
        rfinal = rdir / "final.pt"
        if rfinal.exists():
            continue
        seed_everything(cfg.train.seed)
        train_ds = make_train_dataset(cfg)
        plan_steps(len(train_ds), cfg)
        if (rdir / "assignments.npz").exists():
            assignment, ids = load_assignment(rdir)
        else:
            feats_path = rdir / "features.npy"
            if feats_path.exists():
                features = np.load(feats_path)
            else:
                t0 = time.perf_counter()
                if feats_ds is None:
                    feats_ds = feature_dataset(cfg, sccam.feature_scale)
                if feats_ds.ids != train_ds.ids:
                    raise RuntimeError("feature and training datasets list different images")
                extractor = _extractor(cfg, sccam, rnd, round_dirs, round0_checkpoint, device)
                features = image_features(extractor, feats_ds, cfg.data.num_workers, progress,
                                          desc=f"sccam features r{rnd}/{sccam.rounds}")
                del extractor
                _save_npy(feats_path, features)
                _record_seconds(rdir, "features", time.perf_counter() - t0)
            t0 = time.perf_counter()
            labels = np.stack([train_ds.label(i) for i in range(len(train_ds))])
            assignment = cluster_subcategories(features, labels, sccam.k, cfg.train.seed, sccam.n_init,
                                               sccam.max_iter, sccam.l2_normalize)
            ids = list(train_ds.ids)
            save_assignment(assignment, ids, rdir)
            _record_seconds(rdir, "clustering", time.perf_counter() - t0)
        if ids != list(train_ds.ids):
            raise RuntimeError(f"{rdir / 'assignments.npz'} lists other images than the training split")

        seed_everything(cfg.train.seed)
        model = build_sccam_model(cfg, sccam.k).to(device)
        step_fn = functools.partial(sccam_step, weight=sccam.sub_weight)
        callback = None if on_step is None else functools.partial(on_step, rnd)
        fitted = fit_classifier(cfg, model, SubLabelDataset(train_ds, assignment.sub_labels), step_fn, rdir,
                                fields=METRIC_FIELDS, progress=progress, on_step=callback,
                                desc=f"sccam train r{rnd}/{sccam.rounds}")
        _record_seconds(rdir, "training", fitted.wall_seconds)
        _save_model(rfinal, model, cfg, sccam, rnd, fitted.steps)
        del model
    result = SCCAMResult(run_dir, final, round_dirs, reused=False)
    state = torch.load(round_dirs[-1] / "final.pt", map_location="cpu", weights_only=True)
    state["wall_seconds"] = float(sum(sum(r.values()) for r in result.round_seconds().values()))
    atomic_torch_save(state, final)
    return result


def _extractor(cfg: ExperimentConfig, sccam: SCCAMConfig, rnd: int, round_dirs: tuple[Path, ...],
               round0_checkpoint: str | Path | None, device: torch.device) -> SIPENet:
    """The model whose features make round `rnd`'s sub-categories: round rnd-1's, or round 0's."""
    if rnd > 1:
        return load_trained(round_dirs[rnd - 2] / "final.pt", device)[0]
    if sccam.round0 == "cam":
        return load_trained(round0_checkpoint, device)[0]
    seed_everything(cfg.train.seed)
    return build_model(cfg.model, cfg.data.num_classes).to(device).eval()

