"""The book's figures: dataset overview, training curves, Fig. 1 (t-SNE), Fig. 3 (structure), Fig. 5/7 (maps), Fig. 8.

Every function builds a `matplotlib.figure.Figure` outside pyplot (nothing is shown or kept open; a notebook
displays the returned figure), and writes a file only when given a path. seaborn and scikit-learn's t-SNE are
imported by the functions that draw with them (0.9 s and 0.2 s at import, in chapters that mostly do not).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from . import analysis as A
from ..data import voc
from ..stages.evaluation import labels_from_maps, load_map

FG_COLOUR = "limegreen"
BG_COLOUR = "red"
HEATMAP = "jet"
EXACT_TSNE_MAX = 1000


def voc_colormap() -> np.ndarray:
    """uint8 (256,3): the standard PASCAL VOC palette (0 black, 1 (128,0,0), ..., 255 (224,224,192))."""
    return np.asarray(voc.voc_palette(), dtype=np.uint8).reshape(256, 3)


def colorize(label_map: np.ndarray) -> np.ndarray:
    """uint8 (H,W,3) VOC colours of an (H,W) map of class indices 0..255."""
    label_map = np.asarray(label_map)
    if label_map.ndim != 2:
        raise ValueError(f"label_map must be (H,W), got shape {label_map.shape}")
    if label_map.size and (label_map.min() < 0 or label_map.max() > 255):
        raise ValueError(f"label_map values must be in 0..255, got {label_map.min()}..{label_map.max()}")
    return voc_colormap()[label_map.astype(np.int64)]


def _save(fig: Figure, path: str | os.PathLike | None) -> Figure:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=150, bbox_inches="tight")
    return fig


def _class_name(index: int, n_channels: int) -> str:
    return voc.CLASS_NAMES[index] if n_channels == len(voc.CLASS_NAMES) else f"class {index}"


def _blank(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def class_histogram(counts: pd.DataFrame, path: str | os.PathLike | None = None) -> Figure:
    """Bar plot of images per class and split; `counts` has columns split, class, images."""
    import seaborn as sns
    missing = {"split", "class", "images"} - set(counts.columns)
    if missing:
        raise ValueError(f"counts lacks columns {sorted(missing)}; needs split, class, images")
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax = fig.subplots()
    sns.barplot(data=counts, x="class", y="images", hue="split", ax=ax)
    ax.tick_params(axis="x", labelrotation=60)
    ax.set_xlabel("")
    ax.set_ylabel("images containing the class")
    return _save(fig, path)


def sample_grid(
    root: str | os.PathLike, ids: Sequence[str], n: int = 6, path: str | os.PathLike | None = None
) -> Figure:
    """Images (top row) and their colourised GT masks (bottom row) for the first n ids."""
    ids = list(ids)[:n]
    if not ids:
        raise ValueError("sample_grid needs at least one image id")
    fig = Figure(figsize=(2.4 * len(ids), 4.2), layout="constrained")
    axes = fig.subplots(2, len(ids), squeeze=False)
    for j, image_id in enumerate(ids):
        mask = voc.load_mask(root, image_id)
        axes[0, j].imshow(voc.load_image(root, image_id))
        axes[1, j].imshow(colorize(mask), interpolation="nearest")
        present = [voc.CLASS_NAMES[c] for c in np.unique(mask) if 0 < c < voc.IGNORE_INDEX]
        axes[0, j].set_title(image_id, fontsize=8)
        axes[1, j].set_title(", ".join(present) or "background", fontsize=8)
        _blank(axes[0, j])
        _blank(axes[1, j])
    return _save(fig, path)


def loss_curves(
    metrics: Mapping[str, pd.DataFrame], window: int | None = None, path: str | os.PathLike | None = None
) -> Figure:
    """Per-variant rolling means of loss, loss_cls, loss_gsc (and seed_fg_share when logged) over steps.

    metrics: variant -> training log with a `step` column (as `metrics.csv`); window: rolling-mean length
    (default: a twentieth of the longest log). Metrics a variant does not log (e.g. loss_gsc of the CAM
    baseline) are left out of its curves.
    """
    import seaborn as sns
    if not metrics:
        raise ValueError("loss_curves needs at least one variant's metrics")
    for name, df in metrics.items():
        if "step" not in df.columns:
            raise ValueError(f"metrics of {name!r} lack a 'step' column (columns: {list(df.columns)})")
    columns = ["loss", "loss_cls", "loss_gsc"]
    if any("seed_fg_share" in df and pd.to_numeric(df["seed_fg_share"], errors="coerce").notna().any()
           for df in metrics.values()):
        columns.append("seed_fg_share")
    longest = max(len(df) for df in metrics.values())
    window = window or max(1, longest // 20)
    frames = []
    for name, df in metrics.items():
        for col in columns:
            if col not in df:
                continue
            values = pd.to_numeric(df[col], errors="coerce")
            if values.notna().any():
                smooth = values.rolling(window, min_periods=1).mean()
                frames.append(pd.DataFrame({"variant": name, "metric": col, "step": df["step"], "value": smooth}))
    long = pd.concat(frames, ignore_index=True)
    fig = Figure(figsize=(3.6 * len(columns), 3.2), layout="constrained")
    axes = fig.subplots(1, len(columns), squeeze=False)[0]
    variants = list(metrics)
    palette = dict(zip(variants, sns.color_palette(n_colors=len(variants))))
    for ax, col in zip(axes, columns):
        part = long[long["metric"] == col]
        if len(part):
            sns.lineplot(data=part, x="step", y="value", hue="variant", hue_order=variants, palette=palette,
                         estimator=None, errorbar=None, ax=ax, legend=ax is axes[0])
        ax.set_title(f"{col} (rolling mean over {window} step{'s' if window > 1 else ''})", fontsize=9)
        ax.set_ylabel("")
    return _save(fig, path)


def _perplexity(n_points: int) -> float:
    return float(min(30.0, max(2.0, (n_points - 1) / 3.0)))


def tsne_figure(
    analysis: A.ImageAnalysis | A.ClassSample,
    class_index: int,
    seed: int = 0,
    max_points: int = 400,
    path: str | os.PathLike | None = None,
) -> tuple[Figure, pd.DataFrame]:
    """Fig. 1: t-SNE of the class's foreground semantic features, shaded by CAM, with the class centre
    (classifier weight) and the image-specific prototype embedded in the same map.

    Features, centre and prototype are L2-normalised before t-SNE (init 'pca', perplexity min(30, (n-1)/3),
    random_state=seed, exact gradients up to 1000 points), so distances follow the cosine that CAM and IS-CAM use. The prototype is the mean
    semantic feature over the class's structure-aware seeds, or over the class's pixels when it has no seed.
    Returns the figure and a DataFrame with columns x, y, cam, kind ('pixel', 'centre', 'prototype'),
    grid_y, grid_x, cos_centre, cos_prototype; `attrs['cosine']` holds, over all the class's pixels, the
    mean cosine to the centre and to the prototype and the share of pixels closer to the prototype.
    `analysis` may be the class's `analysis.ClassSample` (of `class_index`, on the semantic feature).
    """
    from sklearn.manifold import TSNE
    sample = analysis if isinstance(analysis, A.ClassSample) else A.class_sample(analysis, class_index, "semantic")
    if sample.class_index != class_index:
        raise ValueError(f"the sample of {sample.image_id} holds class {sample.class_index}, not {class_index}")
    pf, centre, prototype = sample.pixels, sample.centre, sample.prototype
    prototype_source = "seeds"
    if not np.any(prototype):
        prototype = pf.features.mean(axis=0)
        prototype_source = f"mean of the class's {pf.source} pixels (no seed)"
    cos_c = A.cosine_to(pf.features, centre)
    cos_p = A.cosine_to(pf.features, prototype)

    keep = np.arange(len(pf.features))
    if len(keep) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(keep), max_points, replace=False))
    points = np.vstack([pf.features[keep], centre[None], prototype[None]]).astype(np.float64)
    points /= np.linalg.norm(points, axis=1, keepdims=True) + 1e-12
    emb = TSNE(n_components=2, init="pca", perplexity=_perplexity(len(points)), random_state=seed,
               learning_rate="auto", method="exact" if len(points) <= EXACT_TSNE_MAX else "barnes_hut",
               ).fit_transform(points)

    n = len(keep)
    nan = [np.nan, np.nan]
    df = pd.DataFrame({
        "x": emb[:, 0],
        "y": emb[:, 1],
        "cam": np.concatenate([pf.cam[keep], nan]),
        "kind": ["pixel"] * n + ["centre", "prototype"],
        "grid_y": np.concatenate([pf.coords[keep, 0], nan]),
        "grid_x": np.concatenate([pf.coords[keep, 1], nan]),
        "cos_centre": np.concatenate([cos_c[keep], [1.0, A.cosine_to(prototype[None], centre)[0]]]),
        "cos_prototype": np.concatenate([cos_p[keep], [A.cosine_to(centre[None], prototype)[0], 1.0]]),
    })
    df.attrs["cosine"] = {
        "n_pixels": int(len(pf.features)),
        "pixels_from": pf.source,
        "prototype_from": prototype_source,
        "centre_mean": float(cos_c.mean()),
        "prototype_mean": float(cos_p.mean()),
        "share_closer_to_prototype": float((cos_p > cos_c).mean()),
    }

    name = _class_name(class_index, sample.n_channels)
    fig = Figure(figsize=(6, 5), layout="constrained")
    ax = fig.subplots()
    px = df[df["kind"] == "pixel"]
    sc = ax.scatter(px["x"], px["y"], c=px["cam"], cmap="viridis", vmin=0, vmax=1, s=18, alpha=0.85,
                    edgecolors="none", label=f"{name} pixels")
    ctr = df[df["kind"] == "centre"]
    pro = df[df["kind"] == "prototype"]
    ax.scatter(ctr["x"], ctr["y"], marker="X", s=220, c="black", edgecolors="white", label="class centre (classifier weight)")
    ax.scatter(pro["x"], pro["y"], marker="*", s=380, c="magenta", edgecolors="black", label="image-specific prototype")
    fig.colorbar(sc, ax=ax, label=f"CAM activation ({name})")
    c = df.attrs["cosine"]
    ax.set_title(f"{sample.image_id}, {name}: mean cosine of pixels to centre {c['centre_mean']:.2f}, "
                 f"to prototype {c['prototype_mean']:.2f}", fontsize=9)
    ax.legend(fontsize=8, loc="best")
    _blank(ax)
    return _save(fig, path), df


def _overlay(ax, image: np.ndarray, heat: np.ndarray, alpha: float = 0.5, vmax: float | None = 1.0) -> None:
    h, w = image.shape[:2]
    ax.imshow(image)
    ax.imshow(heat, cmap=HEATMAP, alpha=alpha, vmin=0, vmax=vmax, extent=(0, w, h, 0), interpolation="bilinear")
    _blank(ax)


def structure_figure(
    analysis: A.ImageAnalysis | A.StructureSample,
    fg_pixel: A.Pixel | None = None,
    bg_pixel: A.Pixel | None = None,
    class_index: int | None = None,
    feature: str | None = None,
    path: str | os.PathLike | None = None,
) -> tuple[Figure, pd.DataFrame]:
    """Fig. 3: the image with a foreground and a background pixel, their structure maps on `feature`
    (default: the seed feature the analysis used), the class CAM and the background CAM.

    Returns the figure and a table (rows foreground, background) of each pixel's IoU with the class and the
    background CAM, the background IoU x bg_scale, and the channel that wins the pixel's seed (unmasked).
    `analysis` may be an `analysis.StructureSample` (then the pixels, class and feature are its own).
    """
    sample = analysis if isinstance(analysis, A.StructureSample) else \
        A.structure_sample(analysis, fg_pixel, bg_pixel, class_index, feature)  # type: ignore[arg-type]
    class_index = sample.class_index
    n_ch = sample.iou.shape[1]
    name = _class_name(class_index, n_ch)
    rows = {}
    maps = {}
    for i, kind in enumerate(("foreground", "background")):
        iou = sample.iou[i]
        scaled = iou.copy()
        scaled[0] *= sample.bg_scale
        maps[kind] = sample.structure[i]
        rows[kind] = {"grid_y": int(sample.pixels[i][0]), "grid_x": int(sample.pixels[i][1]),
                      "iou_class": float(iou[class_index]), "iou_background": float(iou[0]),
                      "iou_background_scaled": float(scaled[0]), "seed_winner": _class_name(int(scaled.argmax()), n_ch)}
    table = pd.DataFrame.from_dict(rows, orient="index")

    image = sample.image
    fig = Figure(figsize=(15, 3.0 * image.shape[0] / image.shape[1] + 0.9), layout="constrained")
    axes = fig.subplots(1, 5)
    axes[0].imshow(image)
    for kind, colour in (("foreground", FG_COLOUR), ("background", BG_COLOUR)):
        iy, ix = A.grid_to_image((rows[kind]["grid_y"], rows[kind]["grid_x"]), sample.grid_shape, image.shape)
        axes[0].scatter([ix], [iy], marker="*", s=300, c=colour, edgecolors="white", label=f"{kind} pixel")
    axes[0].legend(fontsize=7, loc="lower right")
    axes[0].set_title(sample.image_id, fontsize=9)
    _blank(axes[0])
    for ax, kind in zip(axes[1:3], ("foreground", "background")):
        _overlay(ax, image, maps[kind])
        r = rows[kind]
        ax.set_title(f"structure map, {kind} pixel\nIoU {name} {r['iou_class']:.2f} | background "
                     f"{r['iou_background']:.2f} (x{sample.bg_scale:g} = {r['iou_background_scaled']:.2f})",
                     fontsize=8)
    _overlay(axes[3], image, sample.cams[0])
    axes[3].set_title(f"CAM {name}", fontsize=9)
    _overlay(axes[4], image, sample.cams[1])
    axes[4].set_title("CAM background (1 - max)", fontsize=9)
    return _save(fig, path), table


def comparison_grid(
    root: str | os.PathLike,
    ids: Sequence[str],
    panels: Sequence[tuple[str, str | os.PathLike, str]],
    label_panel: int | None = None,
    threshold: float | None = None,
    alpha: float = 0.5,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Fig. 5/7: one row per image: the image, its GT, then per (title, maps_dir, key) panel the foreground
    map (max over the stored foreground channels of `key`, 'is_cam' or 'cam') as a heatmap over the image;
    a key ending in ':background' shows the map's background channel instead (Fig. 7).

    label_panel: index into `panels` of a map whose label map is added as a last column (estimated
    background, or background threshold `threshold`).
    """
    ids = list(ids)
    if not ids or not panels:
        raise ValueError("comparison_grid needs at least one image id and one panel")
    if label_panel is not None and not 0 <= label_panel < len(panels):
        raise ValueError(f"label_panel={label_panel} is not an index into the {len(panels)} panels")
    n_cols = 2 + len(panels) + (label_panel is not None)
    fig = Figure(figsize=(2.3 * n_cols, 2.0 * len(ids) + 0.4), layout="constrained")
    axes = fig.subplots(len(ids), n_cols, squeeze=False)
    for i, image_id in enumerate(ids):
        image = voc.load_image(root, image_id)
        row = axes[i]
        row[0].imshow(image)
        row[0].set_ylabel(image_id, fontsize=8)
        row[1].imshow(colorize(voc.load_mask(root, image_id)), interpolation="nearest")
        loaded = []
        for j, (_, maps_dir, key) in enumerate(panels):
            name, _, channel = key.partition(":")
            maps, keys = load_map(maps_dir, image_id, name)
            loaded.append((maps, keys))
            if channel == "background":
                heat = maps[0]
            else:
                heat = maps[1:].max(axis=0) if len(maps) > 1 else np.zeros(maps.shape[1:], np.float32)
            _overlay(row[2 + j], image, heat, alpha=alpha)
        if label_panel is not None:
            maps, keys = loaded[label_panel]
            mode = "estimated" if threshold is None else "threshold"
            row[-1].imshow(colorize(labels_from_maps(maps, keys, mode, threshold)), interpolation="nearest")
        for ax in row:
            _blank(ax)
    titles = ["image", "ground truth"] + [t for t, _, _ in panels]
    if label_panel is not None:
        how = "estimated bg" if threshold is None else f"bg threshold {threshold:g}"
        titles.append(f"labels: {panels[label_panel][0]} ({how})")
    for ax, title in zip(axes[0], titles):
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def seed_curves(fig8: pd.DataFrame, paper: Mapping[str, float] | None = None,
                path: str | os.PathLike | None = None) -> Figure:
    """Fig. 8 from the tidy table (`sipe.study.tables.tidy('fig8')`). Left: per seed, mIoU of IS-CAM from
    CAM-threshold seeds against t (thin lines; their mean bold), and the CAM-argmax and structure-aware seeds
    as horizontal lines (mean over seeds, each seed as a tick at the right). Right: each of the two against the
    best threshold of its seed's sweep (mIoU points; one dot per seed), beside the paper's same difference
    (`paper`: row -> mIoU, with FIG8_BEST's row), so both studies are compared on one scale."""
    curve = fig8[fig8["row"].str.startswith("CAM threshold t = ")].copy()
    if curve.empty:
        raise ValueError("the fig8 table has no 'CAM threshold t = ...' rows")
    curve["t"] = curve["row"].str.removeprefix("CAM threshold t = ").astype(float)
    fig = Figure(figsize=(9, 4), layout="constrained")
    ax, gap = fig.subplots(1, 2, width_ratios=(3, 1.2))
    for seed, part in curve.groupby("seed"):
        part = part.sort_values("t")
        ax.plot(part["t"], part["value"], "-", color="tab:blue", lw=0.8, alpha=0.5)
    mean = curve.groupby("t")["value"].mean()
    ax.plot(mean.index, mean.to_numpy(), "o-", color="tab:blue", lw=2,
            label=f"CAM threshold seeds (mean of {curve['seed'].nunique()} seed(s), thin: each seed)")
    best = curve.groupby("seed")["value"].max()
    others = (("CAM argmax", "tab:orange", "--"), ("Structure-aware seeds", "tab:green", "-"))
    for i, (row, colour, ls) in enumerate(others):
        values = fig8[fig8["row"] == row].set_index("seed")["value"]
        if len(values):
            ax.axhline(values.mean(), color=colour, ls=ls, label=f"{row} ({values.mean():.1f})")
            ax.plot([1.0] * len(values), values.to_numpy(), "_", color=colour, ms=12, mew=2, clip_on=False)
            diff = (values - best.reindex(values.index)).dropna()
            gap.plot([i] * len(diff), diff.to_numpy(), "o", color=colour, alpha=0.7,
                     label="ours, each seed" if i == len(others) - 1 else None)
            gap.plot([i - 0.25, i + 0.25], [diff.mean()] * 2, "-", color=colour, lw=2)
        if paper and row in paper and "CAM threshold (best over sweep)" in paper:
            gap.plot(i, paper[row] - paper["CAM threshold (best over sweep)"], "D", mfc="none", mec="black", ms=8,
                     label="paper" if i == len(others) - 1 else None)
    ax.set_xlim(0, 1.0)
    ax.set_xlabel("CAM threshold t for seeds")
    ax.set_ylabel("mIoU (%)")
    ax.legend(fontsize=7, loc="lower center")
    gap.axhline(0.0, color="grey", lw=0.8)
    gap.set_xticks(range(len(others)), ["CAM\nargmax", "structure-\naware"])
    gap.set_xlim(-0.6, len(others) - 0.4)
    gap.set_ylabel("gain over the best threshold (mIoU points)")
    gap.legend(fontsize=7, loc="upper left")
    return _save(fig, path)


def per_seed_points(table: pd.DataFrame, quantity: str, path: str | os.PathLike | None = None) -> Figure:
    """One point per seed for each row of a tidy table (one quantity), with the mean as a bar."""
    import seaborn as sns
    part = table[table["quantity"] == quantity]
    if part.empty:
        raise ValueError(f"no rows with quantity {quantity!r}")
    order = list(dict.fromkeys(part["row"]))
    fig = Figure(figsize=(7, 0.5 + 0.45 * len(order)), layout="constrained")
    ax = fig.subplots()
    means = part.groupby("row")["value"].mean().reindex(order)
    ax.barh(range(len(order)), means.to_numpy(), color="lightgrey", label="mean over seeds")
    seeds = sorted(part["seed"].unique())
    colours = dict(zip(seeds, sns.color_palette(n_colors=len(seeds))))
    for seed in seeds:
        sel = part[part["seed"] == seed]
        ax.plot(sel["value"], [order.index(r) for r in sel["row"]], "o", color=colours[seed], label=f"seed {seed}")
    ax.set_yticks(range(len(order)), order)
    ax.invert_yaxis()
    ax.set_xlabel(f"{quantity} (%)")
    fig.legend(fontsize=7, loc="outside right center")
    return _save(fig, path)


def stage_times(times: pd.DataFrame, path: str | os.PathLike | None = None) -> Figure:
    """Stacked horizontal bars: minutes per stage for each unit (columns unit, stage, seconds)."""
    wide = times.pivot_table(index="unit", columns="stage", values="seconds", aggfunc="sum").fillna(0.0) / 60.0
    fig = Figure(figsize=(8, 0.5 + 0.35 * len(wide)), layout="constrained")
    ax = fig.subplots()
    wide.plot.barh(stacked=True, ax=ax, legend=False)
    ax.set_xlabel("wall time (min)")
    ax.set_ylabel("")
    fig.legend(fontsize=7, loc="outside right center")
    return _save(fig, path)


def segmentation_grid(
    root: str | os.PathLike,
    ids: Sequence[str],
    panels: Sequence[tuple[str, str | os.PathLike]],
    path: str | os.PathLike | None = None,
) -> Figure:
    """Fig. 6: one row per image: the image, its ground truth, then per (title, folder) panel the label map
    `<folder>/<id>.png` (e.g. a segmentation net's val predictions), in VOC colours."""
    from ..stages.labelled import load_label

    ids = list(ids)
    if not ids or not panels:
        raise ValueError("segmentation_grid needs at least one image id and one panel")
    n_cols = 2 + len(panels)
    fig = Figure(figsize=(2.3 * n_cols, 2.0 * len(ids) + 0.4), layout="constrained")
    axes = fig.subplots(len(ids), n_cols, squeeze=False)
    for i, image_id in enumerate(ids):
        row = axes[i]
        row[0].imshow(voc.load_image(root, image_id))
        row[0].set_ylabel(image_id, fontsize=8)
        row[1].imshow(colorize(voc.load_mask(root, image_id)), interpolation="nearest")
        for j, (_, folder) in enumerate(panels):
            row[2 + j].imshow(colorize(load_label(root, folder, image_id)), interpolation="nearest")
        for ax in row:
            _blank(ax)
    for ax, title in zip(axes[0], ["image", "ground truth", *(t for t, _ in panels)]):
        ax.set_title(title, fontsize=9)
    return _save(fig, path)
