"""Single-image analysis: every intermediate of SIPE's inference for one image, and what the figures read from it.

Grid coordinates are (y, x) on the stride-16 feature grid (h, w); channel indices follow the CAM's layout,
background at 0 and VOC class c at channel c (so `class_index` 8 is "cat", its classifier row is 7).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np
import pandas as pd
import torch

from ..method import ipe
from ..infra.config import ExperimentConfig, FeatureName
from ..data import voc
from ..data.datasets import scale_views
from ..stages.maps import infer_scale
from ..method.backbones import BACKBONES
from ..method.network import SIPENet

Pixel = tuple[int, int]
DEFAULT_EXAMPLE_CLASSES = ("cat", "dog", "horse", "sheep", "cow", "person")


@dataclass(frozen=True, eq=False)
class ImageAnalysis:
    """SIPE's intermediates for one image at one scale (image and its flip fused), all numpy on the CPU.

    image uint8 (H,W,3); gt uint8 (H,W) or None without a mask file; label (K,); logits (K,h,w);
    cam (C,h,w) with background 1 - max over all K classes (unmasked); semantic (Ds,h,w); hierarchical
    (768,h,w); seeds (C,h,w) structure-aware one-hot seeds (inference rule, label-masked); prototypes (C,D)
    and is_cam (C,h,w) on `prototype_feature`; classifier_weight (K,Ds).
    """

    image_id: str
    scale: float
    image: np.ndarray
    gt: np.ndarray | None
    label: np.ndarray
    logits: np.ndarray
    cam: np.ndarray
    semantic: np.ndarray
    hierarchical: np.ndarray
    seeds: np.ndarray
    prototypes: np.ndarray
    is_cam: np.ndarray
    classifier_weight: np.ndarray
    seed_feature: FeatureName = "hierarchical"
    prototype_feature: FeatureName = "hierarchical"
    bg_scale: float = 0.5

    @property
    def grid_shape(self) -> tuple[int, int]:
        return tuple(self.cam.shape[1:])  # type: ignore[return-value]

    def feature(self, name: FeatureName) -> np.ndarray:
        """The (D,h,w) feature called `name` ('semantic' or 'hierarchical')."""
        if name == "semantic":
            return self.semantic
        if name == "hierarchical":
            return self.hierarchical
        raise ValueError(f"feature={name!r}; choose 'semantic' or 'hierarchical'")


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


@torch.no_grad()
def analyze_image(
    model: SIPENet,
    cfg: ExperimentConfig,
    root: str | os.PathLike,
    image_id: str,
    scale: float = 1.0,
    flip: bool = True,
) -> ImageAnalysis:
    """SIPE's inference on one image at one scale (plus its flip): the maps stage's own function
    (`sipe.stages.maps.infer_scale`) on the inference dataset's preprocessing (`scale_views`), kept on the grid."""
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    mcfg = cfg.model
    spec = BACKBONES[mcfg.backbone]
    image = voc.load_image(root, image_id)
    label = voc.label_of(voc.load_cls_labels(root), image_id, voc.labels_path(root))
    gt = voc.load_mask(root, image_id) if voc.mask_path(root, image_id).is_file() else None

    views = scale_views(image, scale, spec.mean, spec.std, flip)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        out = infer_scale(model, views, ipe.label_mask(torch.from_numpy(label).to(device)), mcfg)
    finally:
        model.train(was_training)
    logits, semantic, hierarchical = out.features
    cam, (seeds, protos, maps) = out.cam, out.ipe
    return ImageAnalysis(
        image_id=image_id,
        scale=float(scale),
        image=image,
        gt=gt,
        label=label.copy(),
        logits=_numpy(logits[0]),
        cam=_numpy(cam[0]),
        semantic=_numpy(semantic[0]),
        hierarchical=_numpy(hierarchical[0]),
        seeds=_numpy(seeds[0]),
        prototypes=_numpy(protos[0]),
        is_cam=_numpy(maps[0]),
        classifier_weight=_numpy(model.classifier.weight[:, :, 0, 0]),
        seed_feature=mcfg.seed_feature_infer,
        prototype_feature=mcfg.prototype_feature,
        bg_scale=float(mcfg.bg_scale),
    )


def structure_map(feature: np.ndarray, pixel: Pixel) -> np.ndarray:
    """(h,w) structure map of `pixel` (y, x): ReLU(f_pixel . f_j), `sipe.method.ipe.structure_maps` of one pixel."""
    if feature.ndim != 3:
        raise ValueError(f"feature must be (D,h,w), got shape {feature.shape}")
    y, x = pixel
    h, w = feature.shape[1:]
    if not (0 <= y < h and 0 <= x < w):
        raise ValueError(f"pixel {pixel} is outside the {h}x{w} grid")
    f = torch.from_numpy(np.asarray(feature, dtype=np.float32))[None]
    return ipe.structure_maps(f, y * w + x, y * w + x + 1)[0, 0].reshape(h, w).numpy()


def structure_similarity(feature: np.ndarray, cam: np.ndarray, pixel: Pixel) -> np.ndarray:
    """(C,) IoU between the structure map of `pixel` and each CAM channel (C,h,w): `sipe.method.ipe.structure_iou`
    at that pixel."""
    if cam.shape[1:] != feature.shape[1:]:
        raise ValueError(f"cam {cam.shape} and feature grid {feature.shape[1:]} differ")
    f = torch.from_numpy(np.asarray(feature, dtype=np.float32))[None]
    iou = ipe.structure_iou(torch.from_numpy(np.asarray(cam, dtype=np.float32))[None], f)
    return iou[0, :, pixel[0], pixel[1]].numpy()


def cell_centres(grid: int, size: int) -> np.ndarray:
    """Image row (or column) index at the centre of each of `grid` cells spanning `size` pixels."""
    return np.minimum(((np.arange(grid) + 0.5) * size / grid).astype(np.int64), size - 1)


def grid_to_image(pixel: Pixel, grid_shape: tuple[int, int], image_shape: tuple[int, int]) -> Pixel:
    """The image pixel (row, col) at the centre of grid cell `pixel`."""
    (y, x), (h, w), (hh, ww) = pixel, grid_shape, image_shape[:2]
    return int(cell_centres(h, hh)[y]), int(cell_centres(w, ww)[x])


def grid_mask(analysis: ImageAnalysis) -> np.ndarray | None:
    """The GT mask sampled (nearest, at cell centres) on the feature grid: uint8 (h,w), or None without GT."""
    if analysis.gt is None:
        return None
    h, w = analysis.grid_shape
    hh, ww = analysis.gt.shape
    return analysis.gt[np.ix_(cell_centres(h, hh), cell_centres(w, ww))]


def _check_class(analysis: ImageAnalysis, class_index: int) -> None:
    c = analysis.cam.shape[0]
    if not 1 <= class_index < c:
        raise ValueError(f"class_index={class_index}: must be a foreground channel in 1..{c - 1} (0 is background)")


def pick_pixels(analysis: ImageAnalysis, class_index: int) -> tuple[Pixel, Pixel]:
    """(foreground, background) grid pixels (y, x) for the structure figure.

    Foreground: argmax of the class's CAM inside the class's GT region (anywhere without GT or region).
    Background: among GT-background cells, the one farthest from every non-background cell, ties broken by
    the lowest max foreground CAM; without GT background, the cell of lowest max foreground CAM.
    """
    from scipy.ndimage import distance_transform_edt

    _check_class(analysis, class_index)
    cam_c = analysis.cam[class_index]
    max_fg = analysis.cam[1:].max(axis=0)
    gm = grid_mask(analysis)
    region = gm == class_index if gm is not None else None
    if region is not None and region.any():
        fg_flat = int(np.argmax(np.where(region, cam_c, -np.inf)))
    else:
        fg_flat = int(np.argmax(cam_c))
    background = gm == 0 if gm is not None else None
    if background is not None and background.any() and not background.all():
        dist = distance_transform_edt(background)
        order = np.lexsort((max_fg.ravel(), -dist.ravel()))
        bg_flat = int(order[0])
    else:
        bg_flat = int(np.argmin(max_fg))
    w = cam_c.shape[1]
    return divmod(fg_flat, w), divmod(bg_flat, w)


class PixelFeatures(NamedTuple):
    """Features (P,D), CAM of the class (P,), grid coordinates (P,2) as (y, x), and 'gt' or 'seeds'."""

    features: np.ndarray
    cam: np.ndarray
    coords: np.ndarray
    source: str


def foreground_pixel_features(
    analysis: ImageAnalysis, class_index: int, feature: FeatureName = "semantic"
) -> PixelFeatures:
    """The feature vectors of the class's pixels: GT cells of the class, else the class's seed cells."""
    _check_class(analysis, class_index)
    gm = grid_mask(analysis)
    source = "gt"
    region = gm == class_index if gm is not None else None
    if region is None or not region.any():
        source = "seeds"
        region = analysis.seeds[class_index] > 0
    if not region.any():
        raise ValueError(
            f"image {analysis.image_id}: class {class_index} has no pixel on the {analysis.grid_shape} grid in the "
            "GT mask and no seed; pick a class present in the image (analysis.label) or a larger scale"
        )
    coords = np.argwhere(region)
    f = analysis.feature(feature)
    return PixelFeatures(
        features=f[:, coords[:, 0], coords[:, 1]].T.copy(),
        cam=analysis.cam[class_index][coords[:, 0], coords[:, 1]].copy(),
        coords=coords,
        source=source,
    )


def seed_prototype(analysis: ImageAnalysis, class_index: int, feature: FeatureName = "semantic") -> np.ndarray:
    """(D,) mean of `feature` over the class's seed cells (zeros when the class has no seed)."""
    _check_class(analysis, class_index)
    seeds = torch.from_numpy(analysis.seeds[class_index][None, None])
    f = torch.from_numpy(analysis.feature(feature)[None])
    return ipe.prototypes(seeds, f)[0, 0].numpy()


def cosine_to(features: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """(P,) cosine similarity of each row of `features` (P,D) with `vector` (D,)."""
    f = features / (np.linalg.norm(features, axis=1, keepdims=True) + 1e-12)
    v = vector / (np.linalg.norm(vector) + 1e-12)
    return f @ v


class ClassSample(NamedTuple):
    """What Fig. 1's t-SNE reads of one image and class: the class's pixels (`PixelFeatures` on `feature`), the
    class centre (classifier row, (D,)), the seed prototype ((D,), zeros without a seed), and the image's
    channel count (for the class's name)."""

    image_id: str
    class_index: int
    n_channels: int
    pixels: PixelFeatures
    centre: np.ndarray
    prototype: np.ndarray


def class_sample(analysis: ImageAnalysis, class_index: int, feature: FeatureName = "semantic") -> ClassSample:
    """The `ClassSample` of `class_index` in `analysis`."""
    return ClassSample(analysis.image_id, int(class_index), analysis.cam.shape[0],
                       foreground_pixel_features(analysis, class_index, feature),
                       analysis.classifier_weight[class_index - 1].copy(), seed_prototype(analysis, class_index, feature))


class StructureSample(NamedTuple):
    """What Fig. 3 reads of one image: the foreground and background grid `pixels` (2,2) as (y, x), their IoU
    with every CAM channel `iou` (2,C) and structure maps `structure` (2,h,w), the class's CAM and the
    background CAM `cams` (2,h,w), the background weight and the image (H,W,3)."""

    image_id: str
    class_index: int
    pixels: np.ndarray
    iou: np.ndarray
    structure: np.ndarray
    cams: np.ndarray
    bg_scale: float
    image: np.ndarray

    @property
    def grid_shape(self) -> tuple[int, int]:
        return tuple(self.cams.shape[1:])  # type: ignore[return-value]


def structure_sample(analysis: ImageAnalysis, fg_pixel: Pixel, bg_pixel: Pixel, class_index: int,
                     feature: FeatureName | None = None) -> StructureSample:
    """The `StructureSample` of two grid pixels on `feature` (default: the seed feature the analysis used)."""
    f = analysis.feature(feature or analysis.seed_feature)
    pixels = (fg_pixel, bg_pixel)
    return StructureSample(
        analysis.image_id, int(class_index), np.asarray(pixels, dtype=np.int64),
        np.stack([structure_similarity(f, analysis.cam, p) for p in pixels]),
        np.stack([structure_map(f, p) for p in pixels]),
        np.stack([analysis.cam[class_index], analysis.cam[0]]), analysis.bg_scale, analysis.image)


def pick_example_images(
    root: str | os.PathLike,
    ids: Sequence[str],
    class_names: Sequence[str] | None = None,
    n: int = 4,
    seed: int = 0,
    min_area: float = 0.1,
) -> pd.DataFrame:
    """Up to n images showing one large object class, chosen deterministically from `ids`.

    Candidates hold exactly one foreground class in the GT mask covering at least `min_area` of the image.
    Preferred classes (default cat, dog, horse, sheep, cow, person) are taken in turn, one image per class
    per round, each class's candidates in an order shuffled by `seed`; other classes, then smaller objects,
    fill what is left. Columns: id, class_index, class_name, area (object share of the image).
    """
    preferred = list(DEFAULT_EXAMPLE_CLASSES if class_names is None else class_names)
    unknown = [c for c in preferred if c not in voc.CLASS_NAMES[1:]]
    if unknown:
        raise ValueError(f"unknown class names {unknown}; valid names: {list(voc.CLASS_NAMES[1:])}")
    rows = []
    for image_id in ids:
        mask = voc.load_mask(root, image_id)
        present = [int(c) for c in np.unique(mask) if 0 < c < voc.IGNORE_INDEX]
        if len(present) == 1:
            rows.append((image_id, present[0], float((mask == present[0]).mean())))
    cands = pd.DataFrame(rows, columns=["id", "class_index", "area"])
    rng = np.random.default_rng(seed)
    large = cands[cands["area"] >= min_area]
    pref_idx = [voc.CLASS_NAMES.index(c) for c in preferred]
    queues = [list(rng.permutation(large.loc[large["class_index"] == c, "id"].to_numpy(copy=True))) for c in pref_idx]
    chosen: list[str] = []
    while len(chosen) < n and any(queues):
        for q in queues:
            if q and len(chosen) < n:
                chosen.append(str(q.pop(0)))
    others = large[~large["class_index"].isin(pref_idx)]
    chosen += [str(i) for i in rng.permutation(others["id"].to_numpy(copy=True))][: n - len(chosen)]
    rest = cands[~cands["id"].isin(chosen)].sort_values("area", ascending=False, kind="stable")
    chosen += rest["id"].tolist()[: n - len(chosen)]
    out = cands.set_index("id").loc[chosen].reset_index()
    out.insert(2, "class_name", [voc.CLASS_NAMES[c] for c in out["class_index"]])
    return out[["id", "class_index", "class_name", "area"]]


def prototype_vs_centre(model: SIPENet, cfg: ExperimentConfig, root: str | os.PathLike, ids: Sequence[str],
                        feature: FeatureName = "semantic") -> pd.DataFrame:
    """Fig. 1's statistic over many images: per (image, present class), the mean cosine of the class's
    pixels (GT cells) to the class centre (classifier weight), to the image-specific prototype (mean
    feature over the class's seeds) and to the class's feature centroid over the *other* images of `ids`
    (mean feature of their GT cells of the class; nan when no other image has the class), and the share of
    pixels closer to the prototype than to the centre. Classes without a seed are skipped. Columns: id,
    class_name, n_pixels, centre_mean, prototype_mean, centroid_mean, share_closer_to_prototype."""
    rows, pixels = [], []
    for image_id in ids:
        a = analyze_image(model, cfg, root, image_id)
        for k in np.flatnonzero(a.label > 0.5) + 1:
            prototype = seed_prototype(a, int(k), feature)
            gm = grid_mask(a)
            if not np.any(prototype) or gm is None or not (gm == k).any():
                continue
            pf = foreground_pixel_features(a, int(k), feature)
            cos_c = cosine_to(pf.features, a.classifier_weight[k - 1])
            cos_p = cosine_to(pf.features, prototype)
            rows.append({"id": image_id, "class_name": voc.CLASS_NAMES[k], "n_pixels": len(cos_c),
                         "centre_mean": float(cos_c.mean()), "prototype_mean": float(cos_p.mean()),
                         "share_closer_to_prototype": float((cos_p > cos_c).mean())})
            pixels.append(pf.features.astype(np.float64))
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for row, f in zip(rows, pixels):
        sums[row["class_name"]] = sums.get(row["class_name"], 0.0) + f.sum(0)
        counts[row["class_name"]] = counts.get(row["class_name"], 0) + len(f)
    for row, f in zip(rows, pixels):
        others = counts[row["class_name"]] - len(f)
        row["centroid_mean"] = (float(cosine_to(f, (sums[row["class_name"]] - f.sum(0)) / others).mean())
                                if others > 0 else float("nan"))
    return pd.DataFrame(rows, columns=["id", "class_name", "n_pixels", "centre_mean", "prototype_mean",
                                       "centroid_mean", "share_closer_to_prototype"])


VISUAL_KINDS = ("small object", "large object", "several classes", "crowded scene")


def pick_visual_examples(root: str | os.PathLike, ids: Sequence[str], per_kind: int = 1) -> pd.DataFrame:
    """Images for Figs. 5 and 7 by a fixed rule over the GT masks, `per_kind` of each kind in VISUAL_KINDS:
    the single-class image with the smallest object (area >= 2%), the one with the largest object, the
    image with the most classes (ties: largest foreground), and the image with the most connected regions
    of one class (ties: smaller ids first). An image is used once. Columns: kind, id, classes, area, regions."""
    from scipy.ndimage import label as connected

    rows = []
    for image_id in ids:
        mask = voc.load_mask(root, image_id)
        present = [int(c) for c in np.unique(mask) if 0 < c < voc.IGNORE_INDEX]
        if not present:
            continue
        area = float(np.isin(mask, present).mean())
        regions = max(int(connected(mask == c)[1]) for c in present)
        rows.append({"id": image_id, "classes": len(present), "area": area, "regions": regions,
                     "names": ", ".join(voc.CLASS_NAMES[c] for c in present)})
    cands = pd.DataFrame(rows)
    if cands.empty:
        raise ValueError("no image with a foreground class in the given ids")
    single = cands[cands["classes"] == 1]
    orders = {
        "small object": single[single["area"] >= 0.02].sort_values(["area", "id"]),
        "large object": single.sort_values(["area", "id"], ascending=[False, True]),
        "several classes": cands.sort_values(["classes", "area", "id"], ascending=[False, False, True]),
        "crowded scene": cands.sort_values(["regions", "id"], ascending=[False, True]),
    }
    chosen, used = [], set()
    for kind in VISUAL_KINDS:
        picked = [i for i in orders[kind]["id"] if i not in used][:per_kind]
        used.update(picked)
        chosen += [{"kind": kind, **cands.set_index("id").loc[i].to_dict(), "id": i} for i in picked]
    return pd.DataFrame(chosen)[["kind", "id", "names", "classes", "area", "regions"]]
