"""Tests for COCO 2014: masks and labels from a hand-made instance-annotation file, bad input, 80 classes
through the datasets and the whole SIPE path (train, maps, evaluation, pseudo labels, segmentation)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep import download_coco, make_coco
from sipe.data import coco, voc

H, W = 48, 64
PERSON, DOG, SHEEP, CAT, TOOTHBRUSH = 1, 18, 20, 17, 90  # COCO category ids
TRAIN = ["COCO_train2014_000000000001", "COCO_train2014_000000000002", "COCO_train2014_000000000003"]
VAL = ["COCO_val2014_000000000004"]


def rect(x0, y0, x1, y1):
    """A polygon covering pixels x0 <= x < x1, y0 <= y < y1 (pycocotools' fill rule)."""
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def write_raw(raw: Path, train_anns: list[dict] | None = None, image_sizes: dict[str, tuple[int, int]] | None = None) -> Path:
    """train2014/, val2014/ JPEGs and annotations/instances_*.json: image 1 has a person, a dog on top of it and
    a crowd toothbrush (RLE), image 2 has no annotation, image 3 a sheep; the val image a cat."""
    rng = np.random.default_rng(0)
    sizes = image_sizes or {}
    for folder, names in (("train2014", TRAIN), ("val2014", VAL)):
        (raw / folder).mkdir(parents=True, exist_ok=True)
        for n in names:
            h, w = sizes.get(n, (H, W))
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(raw / folder / f"{n}.jpg")
    cats = [{"id": c, "name": coco.CLASS_NAMES[coco.CLASS_INDEX[c]]} for c in (PERSON, CAT, DOG, SHEEP, TOOTHBRUSH)]
    toothbrush_rle = {"counts": [60 * H, 2 * H, 2 * H], "size": [H, W]}  # column-major: columns 60-61 set
    anns = train_anns if train_anns is not None else [
        {"id": 1, "image_id": 1, "category_id": PERSON, "segmentation": rect(4, 8, 20, 40), "area": 512.0, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": DOG, "segmentation": rect(10, 20, 30, 30), "area": 200.0, "iscrowd": 0},
        {"id": 3, "image_id": 1, "category_id": TOOTHBRUSH, "segmentation": toothbrush_rle, "area": 96.0, "iscrowd": 1},
        {"id": 4, "image_id": 3, "category_id": SHEEP, "segmentation": rect(0, 0, 32, 24), "area": 768.0, "iscrowd": 0},
    ]
    images = [{"id": k + 1, "file_name": f"{n}.jpg", "height": H, "width": W} for k, n in enumerate(TRAIN)]
    (raw / "annotations").mkdir(exist_ok=True)
    (raw / "annotations" / "instances_train2014.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats}))
    val_images = [{"id": 4, "file_name": f"{VAL[0]}.jpg", "height": H, "width": W}]
    val_anns = [{"id": 5, "image_id": 4, "category_id": CAT, "segmentation": rect(16, 8, 48, 40), "area": 1024.0,
                 "iscrowd": 0}]
    (raw / "annotations" / "instances_val2014.json").write_text(
        json.dumps({"images": val_images, "annotations": val_anns, "categories": cats}))
    return raw


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    raw = write_raw(tmp_path_factory.mktemp("coco_raw"))
    return make_coco.build(raw, tmp_path_factory.mktemp("coco_sipe"), progress=False)


def test_the_coco_label_file_is_read_by_the_one_label_reader(tmp_path):
    with pytest.raises(voc.DataError, match="make_coco") as e:
        coco.load_cls_labels(tmp_path)
    assert str(coco.labels_path(tmp_path)) in str(e.value)
    np.save(coco.labels_path(tmp_path), np.array({"x": np.ones(20, np.float32)}, dtype=object), allow_pickle=True)
    with pytest.raises(voc.DataError, match=r"has shape \(20,\), expected \(80,\).*make_coco"):
        coco.load_cls_labels(tmp_path)


def test_masks_and_labels_from_a_hand_made_annotation_file(coco_root):
    expected = np.zeros((H, W), np.uint8)
    expected[8:40, 4:20] = 1          # person
    expected[20:30, 10:30] = 17       # dog (smaller, painted on top)
    expected[:, 60:62] = 80           # crowd toothbrush
    np.testing.assert_array_equal(voc.load_mask(coco_root, TRAIN[0]), expected)
    sheep = np.zeros((H, W), np.uint8)
    sheep[0:24, 0:32] = 19
    np.testing.assert_array_equal(voc.load_mask(coco_root, TRAIN[2]), sheep)
    cat = np.zeros((H, W), np.uint8)
    cat[8:40, 16:48] = 16
    np.testing.assert_array_equal(voc.load_mask(coco_root, VAL[0]), cat)
    assert voc.read_split(coco_root, "train") == [TRAIN[0], TRAIN[2]]  # the image without annotation is left out
    assert voc.read_split(coco_root, "val") == VAL
    labels = coco.load_cls_labels(coco_root)
    assert set(labels) == {TRAIN[0], TRAIN[2], VAL[0]}
    assert np.flatnonzero(labels[TRAIN[0]]).tolist() == [0, 16, 79]
    assert np.flatnonzero(labels[VAL[0]]).tolist() == [15]
    assert voc.load_image(coco_root, TRAIN[0]).shape == (H, W, 3)
    assert coco.detect_dataset(coco_root) == "coco" and coco.coco_root(coco_root) == coco_root


def test_bad_input_names_the_file(tmp_path):
    raw = write_raw(tmp_path / "raw")
    ann_file = raw / "annotations" / "instances_train2014.json"
    with pytest.raises(voc.DataError, match=rf"{TRAIN[1]}.* has no annotation in .*instances_train2014\.json"):
        make_coco.build_split(raw, tmp_path / "out", "train", "train2014", ids=[TRAIN[1]], progress=False)
    bad_rle = [{"id": 7, "image_id": 1, "category_id": DOG, "segmentation": {"counts": [100], "size": [10, 10]},
                "area": 1.0, "iscrowd": 1}]
    write_raw(raw, train_anns=bad_rle)
    with pytest.raises(voc.DataError, match=rf"annotation 7 in .*instances_train2014\.json has a 10x10 mask but its "
                                            rf"image {TRAIN[0]}\.jpg is 48x64"):
        make_coco.build_split(raw, tmp_path / "out", "train", "train2014", progress=False)
    write_raw(raw, image_sizes={TRAIN[0]: (40, 64)})
    with pytest.raises(voc.DataError, match=rf"image .*train2014.{TRAIN[0]}\.jpg is 40x64 but .*instances_train2014"):
        make_coco.build_split(raw, tmp_path / "out", "train", "train2014", progress=False)
    ann_file.unlink()
    with pytest.raises(voc.DataError, match=r"annotation file .*instances_train2014\.json not found.*annotations_trainval2014\.zip"):
        make_coco.build(raw, tmp_path / "out", progress=False)


def test_download_helper_says_what_to_fetch_and_where(tmp_path, capsys):
    assert download_coco.main(["--out", str(tmp_path / "coco2014"), "--print-only"]) == 0
    text = capsys.readouterr().out
    for name in ("train2014.zip", "val2014.zip", "annotations_trainval2014.zip"):
        assert name in text
    assert f"{tmp_path / 'coco2014'}/" in text and "python -m data_prep.make_coco" in text


def test_datasets_give_80_class_labels(coco_root):
    from sipe.data.datasets import InferenceDataset, TrainDataset

    ds = TrainDataset(coco_root, "train", (48, 64), 32, (0.5,) * 3, (0.5,) * 3)
    assert ds.dataset == "coco" and ds[0]["label"].shape == (80,)
    inf = InferenceDataset(coco_root, "val", (1.0,), (0.5,) * 3, (0.5,) * 3, dataset="coco")
    assert inf[0]["label"].tolist() == [1.0 if k == 15 else 0.0 for k in range(80)]


def test_the_whole_sipe_path_runs_with_80_classes(coco_root, tmp_path):
    from sipe.segmentation import irn, network as segmentation
    from sipe.infra.config import get_profile
    from sipe.stages.labelled import evaluate_label_dir
    from sipe.stages.evaluation import Scoring, evaluate_maps
    from sipe.stages.maps import make_maps
    from sipe.stages.train import train

    overrides = {**coco.config_overrides(coco_root), "train.batch_size": 2, "model.pretrained": False,
                 "device": "cpu", "data.max_images": None, "infer.max_images": None}
    cfg = get_profile("smoke", **overrides)
    run = train(cfg, tmp_path / "run", progress=False)
    maps = make_maps(cfg, run.checkpoint, tmp_path / "maps", progress=False).maps_dir
    ids = voc.read_split(coco_root, "train")
    result = evaluate_maps(maps, coco_root, ids, scoring=Scoring(81, coco.CLASS_NAMES, progress=False))
    assert 0.0 <= result.miou <= 100.0 and "person" in result.per_class.index
    pseudo = irn.map_labels(maps, coco_root, ids, tmp_path / "pseudo", irn.PROTOCOLS["sipe"], progress=False)
    seg_cfg = get_profile("smoke").seg.override(pretrained=False, batch_size=2)
    seg_run = segmentation.train_segmentation(seg_cfg, coco_root, ids, pseudo, 81, tmp_path / "seg", "cpu", False)
    preds = segmentation.predict(seg_run.checkpoint, coco_root, voc.read_split(coco_root, "val"), tmp_path / "pred",
                                 modes=("ss",), device="cpu", progress=False)
    val = evaluate_label_dir(preds["ss"], coco_root, voc.read_split(coco_root, "val"), 81, coco.CLASS_NAMES)
    assert 0.0 <= val.miou <= 100.0 and val.classes == ["background", "cat"]
