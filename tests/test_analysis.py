"""Single-image analysis: shapes, agreement with the map pipeline and sipe.method.ipe, pixel and example picking."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from sipe.study import analysis as A
from sipe.infra.config import get_profile
from sipe.data import voc
from sipe.method.network import SIPENet

SMOKE_RESNET = {"model.pretrained": False, "model.backbone": "resnet50", "model.semantic_layer": "default"}


@pytest.fixture(scope="module")
def cfg():
    return get_profile("smoke", **SMOKE_RESNET)


@pytest.fixture(scope="module")
def model(cfg):
    torch.manual_seed(0)
    return SIPENet(cfg.model, cfg.data.num_classes).eval()


@pytest.fixture(scope="module")
def image_id(synthetic_root):
    return voc.read_split(synthetic_root, "train_aug")[0]


@pytest.fixture(scope="module")
def analysis(model, cfg, synthetic_root, image_id):
    return A.analyze_image(model, cfg, synthetic_root, image_id)


def toy_analysis(gt: np.ndarray | None, cam: np.ndarray, feature: np.ndarray, seeds: np.ndarray) -> A.ImageAnalysis:
    """A hand-built analysis on a grid the size of `cam` (image = grid, so grid cells are image pixels)."""
    c, h, w = cam.shape
    return A.ImageAnalysis(
        image_id="toy", scale=1.0, image=np.zeros((h, w, 3), np.uint8), gt=gt, label=np.zeros(c - 1, np.float32),
        logits=cam[1:], cam=cam, semantic=feature, hierarchical=feature, seeds=seeds,
        prototypes=np.zeros((c, feature.shape[0]), np.float32), is_cam=cam,
        classifier_weight=np.ones((c - 1, feature.shape[0]), np.float32),
    )


def test_analyze_image_shapes_and_seed_rule(analysis, synthetic_root, image_id):
    h, w = 96 // 16, 128 // 16
    assert analysis.image.shape == (96, 128, 3) and analysis.image.dtype == np.uint8
    assert analysis.gt is not None and analysis.gt.shape == (96, 128) and analysis.gt.dtype == np.uint8
    assert analysis.label.shape == (20,)
    assert analysis.logits.shape == (20, h, w)
    assert analysis.cam.shape == (21, h, w)
    assert analysis.semantic.shape == (2048, h, w)
    assert analysis.hierarchical.shape == (768, h, w)
    assert analysis.seeds.shape == (21, h, w)
    assert analysis.prototypes.shape == (21, 768)
    assert analysis.is_cam.shape == (21, h, w)
    assert analysis.classifier_weight.shape == (20, 2048)
    assert all(isinstance(getattr(analysis, k), np.ndarray) for k in ("cam", "seeds", "is_cam", "prototypes"))
    absent = np.flatnonzero(analysis.label == 0) + 1
    assert not analysis.seeds[absent].any()
    assert set(np.unique(analysis.seeds)) <= {0.0, 1.0}
    assert analysis.seeds.sum(0).max() <= 1.0
    np.testing.assert_allclose(analysis.cam[0], 1 - analysis.cam[1:].max(0), atol=1e-6)
    np.testing.assert_array_equal(analysis.label, voc.load_cls_labels(synthetic_root)[image_id])


def test_structure_map_hand_computed():
    feature = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], np.float32)[:, None, :]
    s = A.structure_map(feature, (0, 0))
    np.testing.assert_allclose(s[0], [1.0, 0.0, 1 / np.sqrt(2)], atol=1e-4)
    cam = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], np.float32)[:, None, :]
    iou = A.structure_similarity(feature, cam, (0, 0))
    s0 = 1 / np.sqrt(2)
    np.testing.assert_allclose(iou, [1 / (1 + s0), s0 / (1 + s0 + 2 - s0)], atol=1e-4)


def test_structure_map_is_one_at_query_and_in_unit_range():
    rng = np.random.default_rng(0)
    feature = rng.normal(size=(16, 5, 7)).astype(np.float32)
    for pixel in [(0, 0), (2, 3), (4, 6)]:
        s = A.structure_map(feature, pixel)
        assert s.shape == (5, 7)
        assert s[pixel] == pytest.approx(1.0, abs=1e-4)
        assert s.min() >= 0.0 and s.max() <= 1.0 + 1e-6
        assert (s == 0).any()
    with pytest.raises(ValueError, match="outside"):
        A.structure_map(feature, (5, 0))


def test_pick_pixels_on_synthetic_image(analysis):
    gm = A.grid_mask(analysis)
    classes, counts = np.unique(gm[(gm > 0) & (gm < 255)], return_counts=True)
    c = int(classes[counts.argmax()])
    fg, bg = A.pick_pixels(analysis, c)
    assert analysis.gt[A.grid_to_image(fg, analysis.grid_shape, analysis.gt.shape)] == c
    assert analysis.gt[A.grid_to_image(bg, analysis.grid_shape, analysis.gt.shape)] == 0
    assert analysis.cam[c][fg] == analysis.cam[c][gm == c].max()


def test_pick_pixels_hand_built():
    gt = np.zeros((4, 6), np.uint8)
    gt[1:3, 0:2] = 3
    cam = np.zeros((4, 4, 6), np.float32)
    cam[3] = np.arange(24, dtype=np.float32).reshape(4, 6) / 24
    cam[3, 0, 5] = 1.0
    cam[3, 3, 5] = 0.0
    cam[1, 1:3, 5] = 0.9
    cam[0] = 1 - cam[1:].max(0)
    a = toy_analysis(gt, cam, np.ones((2, 4, 6), np.float32), np.zeros_like(cam))
    fg, bg = A.pick_pixels(a, 3)
    assert fg == (2, 1)
    assert bg == (3, 5)
    fg, bg = A.pick_pixels(replace(a, gt=None), 3)
    assert fg == (0, 5)
    assert bg == (0, 0)


def test_foreground_pixel_features_gt_then_seeds():
    gt = np.zeros((3, 4), np.uint8)
    gt[0, 1] = gt[2, 3] = 5
    cam = np.random.default_rng(1).uniform(size=(6, 3, 4)).astype(np.float32)
    feature = np.arange(2 * 12, dtype=np.float32).reshape(2, 3, 4)
    seeds = np.zeros_like(cam)
    seeds[5, 1, 1] = 1
    a = toy_analysis(gt, cam, feature, seeds)
    pf = A.foreground_pixel_features(a, 5)
    assert pf.source == "gt"
    np.testing.assert_array_equal(pf.coords, [[0, 1], [2, 3]])
    np.testing.assert_array_equal(pf.features, [[1, 13], [11, 23]])
    np.testing.assert_array_equal(pf.cam, [cam[5, 0, 1], cam[5, 2, 3]])
    pf = A.foreground_pixel_features(replace(a, gt=None), 5)
    assert pf.source == "seeds"
    np.testing.assert_array_equal(pf.coords, [[1, 1]])
    with pytest.raises(ValueError, match="no pixel"):
        A.foreground_pixel_features(replace(a, gt=None), 2)
    with pytest.raises(ValueError, match="foreground channel"):
        A.foreground_pixel_features(a, 0)


def test_seed_prototype_is_mean_over_seed_cells():
    feature = np.arange(2 * 6, dtype=np.float32).reshape(2, 2, 3)
    seeds = np.zeros((3, 2, 3), np.float32)
    seeds[2, 0, 0] = seeds[2, 1, 2] = 1
    a = toy_analysis(None, np.zeros((3, 2, 3), np.float32), feature, seeds)
    np.testing.assert_allclose(A.seed_prototype(a, 2), [(0 + 5) / 2, (6 + 11) / 2])
    assert not A.seed_prototype(a, 1).any()


def single_class_images(root, ids):
    out = {}
    for i in ids:
        m = voc.load_mask(root, i)
        present = [int(c) for c in np.unique(m) if 0 < c < 255]
        if len(present) == 1:
            out[i] = (present[0], float((m == present[0]).mean()))
    return out


def test_pick_example_images(synthetic_root):
    ids = voc.read_split(synthetic_root, "train_aug")
    singles = single_class_images(synthetic_root, ids)
    assert singles, "the synthetic fixture should hold single-class images"
    first_id, (cls, _) = next(iter(singles.items()))
    name = voc.CLASS_NAMES[cls]
    picked = A.pick_example_images(synthetic_root, ids, class_names=[name], n=3, seed=0, min_area=0.0)
    assert list(picked.columns) == ["id", "class_index", "class_name", "area"]
    assert len(picked) == min(3, len(singles))
    assert picked["id"].is_unique
    assert picked.loc[0, "class_index"] == cls and picked.loc[0, "class_name"] == name
    for row in picked.itertuples():
        assert singles[row.id] == (row.class_index, pytest.approx(row.area))
    again = A.pick_example_images(synthetic_root, ids, class_names=[name], n=3, seed=0, min_area=0.0)
    assert again.equals(picked)
    with pytest.raises(ValueError, match="unknown class names"):
        A.pick_example_images(synthetic_root, ids, class_names=["kitten"])


def test_prototype_vs_centre_compares_with_the_class_centroid_of_the_other_images(monkeypatch):
    """Two images of class 1 with orthogonal features: each prototype matches its own pixels (cosine 1), the
    centroid of the other image is orthogonal to them (0), the classifier weight (1, 1) is at 45 degrees; a
    class seen in one image only has no centroid."""
    def toy(direction: list[float], cls: int) -> A.ImageAnalysis:
        feature = np.asarray(direction, np.float32)[:, None, None] * np.ones((2, 1, 2), np.float32)
        seeds = np.zeros((3, 1, 2), np.float32)
        seeds[cls] = 1
        a = toy_analysis(np.full((1, 2), cls, np.uint8), np.zeros((3, 1, 2), np.float32), feature, seeds)
        label = np.zeros(2, np.float32)
        label[cls - 1] = 1
        return replace(a, label=label)

    images = {"a": toy([1.0, 0.0], 1), "b": toy([0.0, 2.0], 1), "c": toy([1.0, 1.0], 2)}
    monkeypatch.setattr(A, "analyze_image", lambda model, cfg, root, image_id: images[image_id])
    out = A.prototype_vs_centre(None, None, "", ["a", "b", "c"]).set_index("id")
    np.testing.assert_allclose(out.loc[["a", "b"], "prototype_mean"], [1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(out.loc[["a", "b"], "centroid_mean"], [0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(out.loc[["a", "b"], "centre_mean"], [2 ** -0.5] * 2, atol=1e-6)
    assert np.isnan(out.loc["c", "centroid_mean"]) and out.loc["c", "prototype_mean"] == pytest.approx(1.0)
