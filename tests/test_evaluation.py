from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sipe.stages.evaluation import (MapFileError, confusion_matrix, evaluate_maps, iou_from_confusion, iou_table,
    Scoring, labels_from_maps, load_map, miou, miou_result, threshold_labels)

QUIET = Scoring(progress=False)


def write_mask(root: Path, image_id: str, mask: np.ndarray) -> None:
    (root / "SegmentationClassAug").mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8)).save(root / "SegmentationClassAug" / f"{image_id}.png")


def write_maps(maps_dir: Path, image_id: str, keys, is_cam: np.ndarray, cam: np.ndarray | None = None) -> None:
    maps_dir.mkdir(parents=True, exist_ok=True)
    arrays = {"keys": np.asarray(keys, dtype=np.int64), "is_cam": is_cam.astype(np.float16)}
    if cam is not None:
        arrays["cam"] = cam.astype(np.float16)
    np.savez(maps_dir / f"{image_id}.npz", **arrays)


# gt / pred 2x3 with one ignored gt pixel and one void prediction
GT = np.array([[0, 1, 255], [1, 1, 0]])
PRED = np.array([[0, 1, 1], [0, 1, 255]])


def test_confusion_hand_computed_void_ignored():
    conf = confusion_matrix(PRED, GT, num_classes=3)
    np.testing.assert_array_equal(conf, [[1, 0, 0], [1, 2, 0], [0, 0, 0]])
    assert conf.dtype == np.int64


def test_confusion_void_as_background():
    conf = confusion_matrix(PRED, GT, num_classes=3, void_as=0)
    np.testing.assert_array_equal(conf, [[2, 0, 0], [1, 2, 0], [0, 0, 0]])


def test_confusion_rejects_out_of_range_values():
    with pytest.raises(ValueError, match="prediction holds values"):
        confusion_matrix(np.array([[0, 5]]), np.array([[0, 1]]), num_classes=3)
    with pytest.raises(ValueError, match="ground truth holds values"):
        confusion_matrix(np.array([[0, 1]]), np.array([[0, 7]]), num_classes=3)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), num_classes=3)


def test_iou_hand_computed():
    iou = iou_from_confusion(confusion_matrix(PRED, GT, num_classes=3))
    np.testing.assert_allclose(iou[:2], [1 / (1 + 2 - 1), 2 / (3 + 2 - 2)])
    assert np.isnan(iou[2])
    iou_void_bg = iou_from_confusion(confusion_matrix(PRED, GT, num_classes=3, void_as=0))
    np.testing.assert_allclose(iou_void_bg[:2], [2 / 3, 2 / 3])


def test_class_absent_from_gt_is_excluded_from_present_mean():
    gt = np.array([[0, 0, 1, 1]])
    pred = np.array([[0, 2, 1, 1]])
    conf = confusion_matrix(pred, gt, num_classes=3)
    names = ["background", "cat", "dog"]
    full = iou_table(conf, names)
    assert full.loc["dog", "iou"] == 0.0
    assert full.loc["background", "gt_pixels"] == 2 and full.loc["dog", "pred_pixels"] == 1
    assert miou(full) == pytest.approx((50 + 100 + 0) / 3)
    present = iou_table(conf, names, present_classes="gt")
    assert list(present.index) == ["background", "cat"]
    assert miou(present) == pytest.approx(75.0)
    chosen = iou_table(conf, names, present_classes=["cat"])
    assert miou(chosen) == pytest.approx(100.0)
    with pytest.raises(KeyError, match="valid names"):
        iou_table(conf, names, present_classes=["horse"])


def test_miou_result_note_names_classes_and_split():
    conf = confusion_matrix(np.array([[0, 2, 1, 1]]), np.array([[0, 0, 1, 1]]), num_classes=3)
    res = miou_result(conf, ["background", "cat", "dog"], "gt", split="train", n_images=4)
    assert res.miou == pytest.approx(75.0)
    assert res.classes == ["background", "cat"]
    assert "2 classes present in the ground truth of train (4 images)" in res.note
    assert "dog" in res.note
    res_all = miou_result(conf, ["background", "cat", "dog"], None)
    assert res_all.miou == pytest.approx(50.0)
    assert res_all.classes == ["background", "cat", "dog"]


KEYS = np.array([0, 8, 12])
MAPS = np.array([
    [[0.5, 0.1, 0.2]],
    [[0.3, 0.6, 0.1]],
    [[0.2, 0.4, 0.15]],
])


def test_labels_estimated():
    np.testing.assert_array_equal(labels_from_maps(MAPS, KEYS, "estimated"), [[0, 8, 0]])
    assert labels_from_maps(MAPS, KEYS).dtype == np.uint8


def test_labels_threshold_ignores_background_channel():
    np.testing.assert_array_equal(labels_from_maps(MAPS, KEYS, "threshold", 0.35), [[0, 8, 0]])
    np.testing.assert_array_equal(labels_from_maps(MAPS, KEYS, "threshold", 0.12), [[8, 8, 12]])
    np.testing.assert_array_equal(labels_from_maps(MAPS, KEYS, "threshold", 0.6), [[0, 0, 0]])
    only_bg = MAPS[:1]
    np.testing.assert_array_equal(labels_from_maps(only_bg, KEYS[:1], "threshold", 0.1), [[0, 0, 0]])
    with pytest.raises(ValueError, match="threshold"):
        labels_from_maps(MAPS, KEYS, "threshold")


def test_threshold_labels_match_argmax_over_padded_maps():
    rng = np.random.default_rng(0)
    maps = rng.random((4, 6, 7)).astype(np.float32)
    keys = np.array([0, 3, 9, 15])
    thresholds = [0.1, 0.5, 0.9]
    out = threshold_labels(maps, keys, thresholds)
    for t, labels in zip(thresholds, out):
        padded = np.concatenate([np.full((1, 6, 7), t, np.float32), maps[1:]])
        np.testing.assert_array_equal(labels, keys[padded.argmax(axis=0)])


def test_load_map_errors_name_the_file(tmp_path):
    with pytest.raises(MapFileError, match="a1.npz"):
        load_map(tmp_path, "a1")
    (tmp_path / "bad.npz").write_bytes(b"not a zip file")
    with pytest.raises(MapFileError, match="bad.npz"):
        load_map(tmp_path, "bad")
    write_maps(tmp_path, "nocam", [0, 8], np.zeros((2, 2, 2)))
    with pytest.raises(MapFileError, match="cam"):
        load_map(tmp_path, "nocam", which="cam")
    maps, keys = load_map(tmp_path, "nocam")
    assert maps.dtype == np.float32 and maps.shape == (2, 2, 2) and keys.tolist() == [0, 8]


@pytest.fixture
def tiny(tmp_path):
    """Three images: random GT in {0, 8, 12, 255}, maps over keys [0, 8, 12]."""
    rng = np.random.default_rng(1)
    root, maps_dir = tmp_path / "voc", tmp_path / "maps"
    ids = ["im0", "im1", "im2"]
    data = {}
    for i, image_id in enumerate(ids):
        h, w = 5 + i, 7
        gt = rng.choice(np.array([0, 8, 12, 255], dtype=np.uint8), size=(h, w), p=[0.4, 0.3, 0.2, 0.1])
        is_cam = rng.random((3, h, w))
        cam = rng.random((3, h, w))
        write_mask(root, image_id, gt)
        write_maps(maps_dir, image_id, [0, 8, 12], is_cam, cam)
        data[image_id] = (gt, is_cam.astype(np.float16).astype(np.float32), cam.astype(np.float16).astype(np.float32))
    return root, maps_dir, ids, data


def test_evaluate_maps_estimated_matches_direct_computation(tiny):
    root, maps_dir, ids, data = tiny
    keys = np.array([0, 8, 12])
    conf = sum(confusion_matrix(labels_from_maps(m, keys), gt) for gt, m, _ in data.values())
    res = evaluate_maps(maps_dir, root, ids, scoring=Scoring(split="tiny", progress=False))
    np.testing.assert_array_equal(res.confusion, conf)
    assert res.classes == ["background", "cat", "dog"]
    tp = np.diag(conf)[[0, 8, 12]]
    expected = 100 * tp / (conf.sum(1)[[0, 8, 12]] + conf.sum(0)[[0, 8, 12]] - tp)
    assert res.miou == pytest.approx(expected.mean())
    assert "3 classes present in the ground truth of tiny (3 images)" in res.note


def test_sweep_equals_separate_per_threshold_evaluation(tiny):
    root, maps_dir, ids, data = tiny
    keys = np.array([0, 8, 12])
    thresholds = (0.2, 0.4, 0.6, 0.8)
    sweep = evaluate_maps(maps_dir, root, ids, "cam", "threshold", thresholds, QUIET)
    separate = []
    for t in thresholds:
        conf = sum(confusion_matrix(labels_from_maps(c, keys, "threshold", t), gt) for gt, _, c in data.values())
        separate.append(miou_result(conf).miou)
    np.testing.assert_allclose(sweep.sweep["miou"], separate)
    assert sweep.sweep["threshold"].tolist() == list(thresholds)
    assert sweep.best_threshold == thresholds[int(np.argmax(separate))]
    assert sweep.best.miou == pytest.approx(max(separate))


def test_sweep_with_worker_processes_matches_serial(tiny):
    root, maps_dir, ids, _ = tiny
    serial = evaluate_maps(maps_dir, root, ids, mode="threshold", thresholds=(0.3, 0.7), scoring=QUIET)
    parallel = evaluate_maps(maps_dir, root, ids, mode="threshold", thresholds=(0.3, 0.7),
                             scoring=Scoring(workers=2, progress=False))
    np.testing.assert_array_equal(serial.best.confusion, parallel.best.confusion)
    np.testing.assert_allclose(serial.sweep["miou"], parallel.sweep["miou"])


def test_size_mismatch_names_the_image(tiny):
    root, maps_dir, ids, _ = tiny
    write_maps(maps_dir, "im0", [0, 8, 12], np.zeros((3, 2, 2)))
    with pytest.raises(ValueError, match="im0"):
        evaluate_maps(maps_dir, root, ids, scoring=QUIET)
