from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sipe.stages.crf import combine_confident, crf_inference_label, crf_labels, evaluate_crf, score_crf
from sipe.stages.evaluation import Scoring

RED, BLUE, GREEN = (220, 40, 40), (40, 40, 220), (40, 200, 40)


def striped_image(widths, colours, h=24) -> np.ndarray:
    """uint8 (h, sum(widths), 3): vertical flat-colour stripes."""
    return np.concatenate([np.full((h, w, 3), c, np.uint8) for w, c in zip(widths, colours)], axis=1)


def test_crf_removes_label_noise_inside_flat_regions():
    img = striped_image([24, 24], [RED, BLUE])
    clean = np.zeros(img.shape[:2], np.int64)
    clean[:, 24:] = 1
    rng = np.random.default_rng(0)
    flip = rng.random(clean.shape) < 0.15
    noisy = np.where(flip, 1 - clean, clean)
    assert (noisy != clean).sum() > 20
    out = crf_inference_label(img, noisy, n_labels=2)
    np.testing.assert_array_equal(out, clean)


def test_crf_single_label_and_bad_input():
    img = striped_image([8], [RED])
    np.testing.assert_array_equal(crf_inference_label(img, np.zeros((24, 8), int), 1), 0)
    with pytest.raises(ValueError, match="labels span"):
        crf_inference_label(img, np.full((24, 8), 3), 2)
    with pytest.raises(ValueError, match="uint8"):
        crf_inference_label(img.astype(np.float32), np.zeros((24, 8), int), 2)


def test_combine_confident_irn_rule_and_strict():
    fg = np.array([0, 0, 8, 8, 8, 0])
    bg = np.array([0, 8, 8, 12, 0, 12])
    np.testing.assert_array_equal(combine_confident(fg, bg), [0, 255, 8, 8, 8, 255])
    np.testing.assert_array_equal(combine_confident(fg, bg, strict=True), [0, 255, 8, 255, 255, 255])


def three_region_case():
    """Stripes bg / uncertain / fg: the middle is background for argmax, foreground once bg is halved."""
    widths = [16, 16, 16]
    img = striped_image(widths, [RED, GREEN, BLUE])
    bg_vals, fg_vals = [1.0, 0.6, 0.2], [0.1, 0.4, 0.9]
    maps = np.stack([
        np.concatenate([np.full((24, w), v) for w, v in zip(widths, bg_vals)], axis=1),
        np.concatenate([np.full((24, w), v) for w, v in zip(widths, fg_vals)], axis=1),
    ]).astype(np.float32)
    return img, maps, np.array([0, 12]), widths


def test_crf_labels_marks_disagreement_void():
    img, maps, keys, _ = three_region_case()
    out = crf_labels(img, maps, keys)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :16], 0)
    np.testing.assert_array_equal(out[:, 16:32], 255)
    np.testing.assert_array_equal(out[:, 32:], 12)
    np.testing.assert_array_equal(crf_labels(img, maps, keys, bg_scale=1.0)[:, 16:32], 0)


def write_three_region_case(tmp_path: Path, dog: slice) -> tuple[Path, Path]:
    """(data root, maps folder) of image 'a' of `three_region_case`, its ground truth dog (12) on the columns
    `dog` and background elsewhere."""
    img, maps, keys, _ = three_region_case()
    root, maps_dir = tmp_path / "voc", tmp_path / "maps"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClassAug").mkdir(parents=True)
    maps_dir.mkdir()
    Image.fromarray(img).save(root / "JPEGImages" / "a.jpg", quality=100, subsampling=0)
    gt = np.zeros(img.shape[:2], np.uint8)
    gt[:, dog] = 12
    Image.fromarray(gt).save(root / "SegmentationClassAug" / "a.png")
    np.savez(maps_dir / "a.npz", keys=keys, is_cam=maps.astype(np.float16), cam=maps.astype(np.float16))
    return root, maps_dir


def test_evaluate_crf_void_conventions(tmp_path: Path):
    w1, w2, w3 = three_region_case()[3]
    root, maps_dir = write_three_region_case(tmp_path, slice(w1, None))
    res = evaluate_crf(maps_dir, root, ["a"], scoring=Scoring(progress=False))
    assert res.void_as_background.classes == ["background", "dog"]
    expected_bg = 100 * w1 / (w1 + w2)
    expected_dog = 100 * w3 / (w2 + w3)
    assert res.void_as_background.miou == pytest.approx((expected_bg + expected_dog) / 2)
    assert res.void_ignored.miou == pytest.approx(100.0)
    assert res.void_fraction == pytest.approx(w2 / (w1 + w2 + w3))
    assert "void counted as background" in res.void_as_background.note


def test_void_ignored_averages_over_the_classes_of_the_ground_truth():
    """A class whose every pixel the CRF leaves void stays in the void-ignored mean with IoU 0: both readings
    average over the classes present in the ground truth (rows: ground truth; classes bg, cat, dog)."""
    as_bg = np.array([[50, 0, 0],
                      [5, 15, 0],
                      [10, 0, 0]])       # every dog pixel is void, counted as background here
    ignored = np.array([[40, 0, 0],
                        [0, 15, 0],
                        [0, 0, 0]])      # ... and absent when void is ignored
    res = score_crf(np.stack([as_bg, ignored]), ["background", "cat", "dog"])
    assert res.void_as_background.classes == res.void_ignored.classes == ["background", "cat", "dog"]
    assert res.void_ignored.per_class.loc["dog", "iou"] == 0.0
    assert res.void_ignored.miou == pytest.approx((100.0 + 100.0 + 0.0) / 3)
    assert res.void_as_background.miou == pytest.approx((100 * 50 / 65 + 100 * 15 / 20 + 0.0) / 3)
    assert res.void_fraction == pytest.approx(25 / 80)
    predicted = ignored.copy()
    predicted[0, 2] = 8                 # dog predicted on background pixels: IoU 0 in either definition
    assert score_crf(np.stack([as_bg, predicted]), ["background", "cat", "dog"]).void_ignored.miou == \
        pytest.approx((100 * 40 / 48 + 100.0 + 0.0) / 3)
    absent = np.zeros((2, 3, 3), int)
    absent[:, :2, :2] = as_bg[:2, :2]
    assert score_crf(absent, ["background", "cat", "dog"]).void_ignored.classes == ["background", "cat"]
    with pytest.raises(ValueError, match=r"\(2,C,C\)"):
        score_crf(as_bg)


def test_evaluate_crf_keeps_a_class_left_all_void(tmp_path: Path):
    w1, w2, w3 = three_region_case()[3]
    root, maps_dir = write_three_region_case(tmp_path, slice(w1, w1 + w2))   # the dog: the stripe left void
    res = evaluate_crf(maps_dir, root, ["a"], scoring=Scoring(progress=False))
    assert res.void_ignored.classes == ["background", "dog"]
    assert res.void_ignored.per_class.loc["dog", "iou"] == 0.0
    assert res.void_ignored.miou == pytest.approx((100 * w1 / (w1 + w3) + 0.0) / 2)
