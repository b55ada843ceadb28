"""Figures: palette, layout (axes per figure), and that each figure plots the data it is given."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from sipe.study import analysis as A
from sipe.study import figures as F
from sipe.infra.config import get_profile
from sipe.data import voc
from sipe.stages.evaluation import labels_from_maps
from sipe.method.network import SIPENet

SMOKE_RESNET = {"model.pretrained": False, "model.backbone": "resnet50", "model.semantic_layer": "default"}


@pytest.fixture(scope="module")
def ids(synthetic_root):
    return voc.read_split(synthetic_root, "train_aug")


@pytest.fixture(scope="module")
def analysis(synthetic_root, ids):
    cfg = get_profile("smoke", **SMOKE_RESNET)
    torch.manual_seed(0)
    model = SIPENet(cfg.model, cfg.data.num_classes).eval()
    return A.analyze_image(model, cfg, synthetic_root, ids[0])


def main_class(analysis: A.ImageAnalysis) -> int:
    gm = A.grid_mask(analysis)
    classes, counts = np.unique(gm[(gm > 0) & (gm < 255)], return_counts=True)
    return int(classes[counts.argmax()])


def test_voc_colormap_and_colorize():
    cmap = F.voc_colormap()
    assert cmap.shape == (256, 3) and cmap.dtype == np.uint8
    assert tuple(cmap[0]) == (0, 0, 0)
    assert tuple(cmap[1]) == (128, 0, 0)
    assert tuple(cmap[15]) == (192, 128, 128)
    assert tuple(cmap[255]) == (224, 224, 192)
    rgb = F.colorize(np.array([[0, 1], [15, 255]], np.uint8))
    assert rgb.shape == (2, 2, 3)
    assert tuple(rgb[0, 1]) == (128, 0, 0) and tuple(rgb[1, 0]) == (192, 128, 128)
    with pytest.raises(ValueError, match="0..255"):
        F.colorize(np.array([[256]]))


def test_class_histogram():
    counts = pd.DataFrame({"split": ["train", "train", "val", "val"], "class": ["cat", "dog", "cat", "dog"],
                           "images": [5, 3, 2, 7]})
    fig = F.class_histogram(counts)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    heights = sorted(p.get_height() for c in fig.axes[0].containers for p in c)
    assert heights == [2, 3, 5, 7]
    with pytest.raises(ValueError, match="images"):
        F.class_histogram(counts.drop(columns="images"))


def test_sample_grid(synthetic_root, ids):
    fig = F.sample_grid(synthetic_root, ids, n=3)
    assert isinstance(fig, Figure) and len(fig.axes) == 6
    mask = voc.load_mask(synthetic_root, ids[0])
    np.testing.assert_array_equal(fig.axes[3].images[0].get_array(), F.colorize(mask))


def test_loss_curves_rolling_mean_and_panels():
    sipe = pd.DataFrame({"step": [1, 2, 3, 4], "loss": [0.0, 2.0, 0.0, 2.0], "loss_cls": [1.0] * 4,
                         "loss_gsc": [0.5] * 4, "seed_fg_share": [0.2, 0.3, 0.4, 0.5]})
    cam = pd.DataFrame({"step": [1, 2, 3, 4], "loss": [1.0] * 4, "loss_cls": [1.0] * 4,
                        "loss_gsc": [np.nan] * 4, "seed_fg_share": [np.nan] * 4})
    fig = F.loss_curves({"sipe": sipe, "cam": cam}, window=2)
    assert isinstance(fig, Figure) and len(fig.axes) == 4
    loss_ax, _, gsc_ax, _ = fig.axes
    np.testing.assert_allclose(loss_ax.lines[0].get_ydata(), [0.0, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(loss_ax.lines[1].get_ydata(), [1.0] * 4)
    assert len([ln for ln in gsc_ax.lines if len(ln.get_xdata()) == 4]) == 1
    fig = F.loss_curves({"cam": cam, "sipe": sipe}, window=2)
    loss_ax, _, gsc_ax, _ = fig.axes
    sipe_line = next(ln for ln in loss_ax.lines if np.allclose(ln.get_ydata(), [0.0, 1.0, 1.0, 1.0]))
    gsc_lines = [ln for ln in gsc_ax.lines if len(ln.get_xdata()) == 4]
    assert len(gsc_lines) == 1 and gsc_lines[0].get_color() == sipe_line.get_color()
    fig = F.loss_curves({"cam": cam.drop(columns="seed_fg_share")})
    assert len(fig.axes) == 3


def test_tsne_figure(analysis):
    c = main_class(analysis)
    fig, df = F.tsne_figure(analysis, c, seed=0)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert (df["kind"] == "centre").sum() == 1 and (df["kind"] == "prototype").sum() == 1
    pf = A.foreground_pixel_features(analysis, c)
    assert (df["kind"] == "pixel").sum() == len(pf.features)
    assert df[["x", "y"]].notna().all().all()
    pixels = df[df["kind"] == "pixel"]
    assert pixels["cam"].between(0, 1).all()
    cos = df.attrs["cosine"]
    assert cos["n_pixels"] == len(pf.features)
    centre = analysis.classifier_weight[c - 1]
    expected = np.mean(pf.features @ centre / np.linalg.norm(pf.features, axis=1) / np.linalg.norm(centre))
    assert cos["centre_mean"] == pytest.approx(expected, rel=1e-4)
    seeds = analysis.seeds[c] > 0  # the prototype, computed here by hand: mean semantic feature over the seeds
    proto = analysis.semantic[:, seeds].mean(axis=1) if seeds.any() else pf.features.mean(axis=0)
    unit = pf.features / np.linalg.norm(pf.features, axis=1, keepdims=True)
    to_proto, to_centre = unit @ (proto / np.linalg.norm(proto)), unit @ (centre / np.linalg.norm(centre))
    assert cos["prototype_mean"] == pytest.approx(to_proto.mean(), rel=1e-4)
    assert cos["share_closer_to_prototype"] == pytest.approx((to_proto > to_centre).mean())
    fig, small = F.tsne_figure(analysis, c, seed=0, max_points=3)
    assert (small["kind"] == "pixel").sum() == 3 and len(small) == 5
    _, again = F.tsne_figure(analysis, c, seed=0, max_points=3)
    pd.testing.assert_frame_equal(small, again)
    _, from_sample = F.tsne_figure(A.class_sample(analysis, c), c, seed=0, max_points=3)
    pd.testing.assert_frame_equal(small, from_sample)
    assert from_sample.attrs == small.attrs
    with pytest.raises(ValueError, match="not 0"):
        F.tsne_figure(A.class_sample(analysis, c), 0)


def test_structure_figure(analysis):
    c = main_class(analysis)
    fg, bg = A.pick_pixels(analysis, c)
    fig, table = F.structure_figure(analysis, fg, bg, c)
    assert isinstance(fig, Figure) and len(fig.axes) == 5
    iou = A.structure_similarity(analysis.hierarchical, analysis.cam, fg)
    assert table.loc["foreground", "iou_class"] == pytest.approx(iou[c])
    assert table.loc["foreground", "iou_background_scaled"] == pytest.approx(iou[0] * analysis.bg_scale)
    assert f"{iou[c]:.2f}" in fig.axes[1].get_title()
    np.testing.assert_allclose(fig.axes[1].images[1].get_array(), A.structure_map(analysis.hierarchical, fg))
    _, from_sample = F.structure_figure(A.structure_sample(analysis, fg, bg, c))
    pd.testing.assert_frame_equal(table, from_sample)


def write_maps(maps_dir, image_id, shape, seed):
    rng = np.random.default_rng(seed)
    keys = np.array([0, 3, 8], np.int64)
    is_cam = rng.uniform(size=(3, *shape)).astype(np.float16)
    np.savez(maps_dir / f"{image_id}.npz", keys=keys, is_cam=is_cam, cam=(is_cam / 2).astype(np.float16))
    return keys, is_cam.astype(np.float32)


def test_comparison_grid(synthetic_root, ids, tmp_path):
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    chosen = ids[:2]
    stored = {}
    for k, image_id in enumerate(chosen):
        shape = voc.load_mask(synthetic_root, image_id).shape
        stored[image_id] = write_maps(a_dir, image_id, shape, k)
        write_maps(b_dir, image_id, shape, 10 + k)
    panels = [("CAM", a_dir, "cam"), ("IS-CAM", a_dir, "is_cam"), ("other", b_dir, "is_cam")]
    fig = F.comparison_grid(synthetic_root, chosen, panels, label_panel=1)
    assert isinstance(fig, Figure) and len(fig.axes) == 2 * (2 + 3 + 1)
    keys, is_cam = stored[chosen[1]]
    row = fig.axes[6:12]
    np.testing.assert_allclose(row[3].images[1].get_array(), is_cam[1:].max(0))
    np.testing.assert_allclose(row[2].images[1].get_array(), (is_cam / 2).astype(np.float16)[1:].max(0), rtol=1e-3)
    np.testing.assert_array_equal(row[5].images[0].get_array(), F.colorize(labels_from_maps(is_cam, keys)))
    fig = F.comparison_grid(synthetic_root, chosen[:1], panels[:1])
    assert len(fig.axes) == 3
    with pytest.raises(ValueError, match="label_panel"):
        F.comparison_grid(synthetic_root, chosen, panels, label_panel=3)


def test_seed_curves_sets_each_seeds_gap_to_its_best_threshold_beside_the_papers():
    rows = []
    for seed, curve, argmax, structure in ((15, {0.3: 30.0, 0.5: 34.0}, 33.0, 36.0), (16, {0.3: 32.0, 0.5: 31.0}, 31.5, 30.0)):
        rows += [{"row": f"CAM threshold t = {t:g}", "seed": seed, "value": v} for t, v in curve.items()]
        rows += [{"row": "CAM argmax", "seed": seed, "value": argmax}, {"row": "Structure-aware seeds", "seed": seed, "value": structure}]
    paper = {"CAM threshold (best over sweep)": 53.3, "CAM argmax": 53.7, "Structure-aware seeds": 58.6}
    fig = F.seed_curves(pd.DataFrame(rows), paper=paper)
    curves, gap = fig.axes[:2]
    assert len(curves.lines) == 2 + 1 + 2 * 2
    dots = {round(float(x)): sorted(np.round(line.get_ydata(), 6).tolist()) for line in gap.lines
            if line.get_marker() == "o" for x in line.get_xdata()[:1]}
    assert dots == {0: [-1.0, -0.5], 1: [-2.0, 2.0]}
    diamonds = [(float(line.get_xdata()[0]), float(line.get_ydata()[0])) for line in gap.lines if line.get_marker() == "D"]
    assert diamonds == [(0.0, pytest.approx(0.4)), (1.0, pytest.approx(5.3))]
    assert max(curves.get_ylim()) < 40


def _legends_inside(fig: Figure) -> None:
    fig.canvas.draw()
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend() is not None)]
    assert legends
    box = fig.bbox
    for legend in legends:
        e = legend.get_window_extent()
        assert box.x0 - 1 <= e.x0 and e.x1 <= box.x1 + 1 and box.y0 - 1 <= e.y0 and e.y1 <= box.y1 + 1, legend


def test_every_legend_lies_inside_its_figure():
    """No legend is anchored outside its figure (it would run over the page's margin)."""
    import inspect
    import re

    assert not re.search(r"bbox_to_anchor=\(\s*(-|1\.0*[1-9])", inspect.getsource(F))
    table = pd.DataFrame({"row": ["a", "a", "b", "b"], "quantity": "q", "seed": [15, 16, 15, 16], "value": [1.0, 2.0, 3.0, 4.0]})
    _legends_inside(F.per_seed_points(table, "q"))
    times = pd.DataFrame({"unit": ["sipe-s15", "sipe-s15", "cam-s15"], "stage": ["train", "maps_eval", "train"],
                          "seconds": [600.0, 120.0, 500.0]})
    fig = F.stage_times(times)
    assert isinstance(fig, Figure)
    _legends_inside(fig)
    rows = [{"row": f"CAM threshold t = {t:g}", "seed": 15, "value": v} for t, v in {0.3: 30.0, 0.5: 34.0}.items()]
    rows += [{"row": "CAM argmax", "seed": 15, "value": 33.0}, {"row": "Structure-aware seeds", "seed": 15, "value": 36.0}]
    _legends_inside(F.seed_curves(pd.DataFrame(rows), paper={"CAM threshold (best over sweep)": 53.3, "CAM argmax": 53.7,
                                                             "Structure-aware seeds": 58.6}))
