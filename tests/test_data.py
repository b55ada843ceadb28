"""Data layer: VOC files, transforms, datasets, synthetic data, and clear errors on broken datasets."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from torch.utils.data import DataLoader

from sipe.data import transforms as T
from sipe.data.datasets import InferenceDataset, TrainDataset, collate_single, collate_train
from sipe.data.synthetic import make_synthetic_voc
from sipe.data.voc import (CLASS_NAMES, FIX_LABELS, IGNORE_INDEX, NUM_CLASSES, DataError, fingerprint, image_path,
    label_of, labels_path, load_cls_labels, load_image, load_mask, mask_path, read_label_file, read_split, save_mask,
    scan_dataset)

HALF = (0.5, 0.5, 0.5)


def mask_classes(mask: np.ndarray) -> set[int]:
    return {int(v) for v in np.unique(mask) if 1 <= v <= NUM_CLASSES}


def label_classes(label: np.ndarray) -> set[int]:
    return {int(i) + 1 for i in np.flatnonzero(np.asarray(label))}


# --- VOC files ---------------------------------------------------------------------------------------

def test_class_names_follow_voc_order():
    assert len(CLASS_NAMES) == NUM_CLASSES + 1 == 21
    assert CLASS_NAMES[0] == "background"
    assert CLASS_NAMES[1] == "aeroplane" and CLASS_NAMES[15] == "person" and CLASS_NAMES[20] == "tvmonitor"


def test_synthetic_splits_labels_and_masks(synthetic_root):
    train_aug, train, val = (read_split(synthetic_root, s) for s in ("train_aug", "train", "val"))
    assert len(train_aug) == 8 and len(train) == 4 and len(val) == 4
    assert set(train) < set(train_aug) and not set(val) & set(train_aug)
    labels = load_cls_labels(synthetic_root)
    assert set(labels) == set(train_aug) | set(val)
    for image_id in train_aug + val:
        img, mask = load_image(synthetic_root, image_id), load_mask(synthetic_root, image_id)
        assert img.shape == (96, 128, 3) and img.dtype == np.uint8
        assert mask.shape == (96, 128) and mask.dtype == np.uint8
        assert set(np.unique(mask).tolist()) <= set(range(21)) | {IGNORE_INDEX}
        assert IGNORE_INDEX in mask and 0 in mask
        label = label_of(labels, image_id)
        assert label.shape == (20,) and label.dtype == np.float32
        assert label_classes(label) == mask_classes(mask) != set()


def test_synthetic_covers_every_class_with_its_own_colour(synthetic_root):
    labels = load_cls_labels(synthetic_root)
    assert np.stack(list(labels.values())).sum(0).min() >= 1
    means: dict[int, list[np.ndarray]] = {}
    for image_id in labels:
        img, mask = load_image(synthetic_root, image_id), load_mask(synthetic_root, image_id)
        for c in mask_classes(mask):
            means.setdefault(c, []).append(img[mask == c].reshape(-1, 3).mean(0))
    centres = np.stack([np.mean(means[c], axis=0) for c in sorted(means)])
    distances = np.linalg.norm(centres[:, None] - centres[None], axis=-1) + np.eye(len(centres)) * 1e9
    assert distances.min() > 20


def test_synthetic_is_deterministic(tmp_path):
    a = make_synthetic_voc(tmp_path / "a", n_images=4, size=(48, 64), seed=3)
    b = make_synthetic_voc(tmp_path / "b", n_images=4, size=(48, 64), seed=3)
    c = make_synthetic_voc(tmp_path / "c", n_images=4, size=(48, 64), seed=4)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 4 * 2 + 3 + 1
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files if f.suffix == ".jpg")


def test_synthetic_objects_per_image_and_their_size(tmp_path):
    def object_shares(root: Path) -> list[float]:
        masks = [load_mask(root, i) for i in read_split(root, "train_aug") + read_split(root, "val")]
        assert all(len(mask_classes(m)) == 1 for m in masks)
        return [float(np.mean((m != 0) & (m != IGNORE_INDEX))) for m in masks]

    common = {"n_images": 9, "size": (64, 80), "seed": 2, "objects": (1, 1)}
    full = object_shares(make_synthetic_voc(tmp_path / "full", **common))
    small = object_shares(make_synthetic_voc(tmp_path / "small", object_scale=0.5, **common))
    assert max(small) <= 0.6 * 0.5 * 0.5 ** 2 and np.mean(small) < 0.5 * np.mean(full)
    for bad in ({"objects": (0, 1)}, {"objects": (2, 1)}, {"object_scale": 0.0}, {"object_scale": 1.5}):
        with pytest.raises(ValueError):
            make_synthetic_voc(tmp_path / "bad", n_images=3, size=(48, 64), **bad)


def test_save_mask_roundtrip_keeps_indices(tmp_path):
    mask = np.arange(256, dtype=np.uint8).reshape(16, 16)
    save_mask(tmp_path / "m.png", mask)
    assert Image.open(tmp_path / "m.png").mode == "P"
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "m.png")), mask)


def test_scan_finds_nothing_on_synthetic(synthetic_root):
    report = scan_dataset(synthetic_root, "train_aug")
    assert report.ok and report.n_checked == 8 and report.problems == []


# --- transforms --------------------------------------------------------------------------------------

def test_normalize_hand_values():
    img = np.array([[[0, 255, 51]]], dtype=np.uint8)
    out = T.normalize(img, mean=(0.5, 0.5, 0.2), std=(0.5, 0.25, 0.1))
    np.testing.assert_allclose(out[0, 0], [-1.0, 2.0, 0.0], atol=1e-6)
    assert out.dtype == np.float32


def test_scaled_size_rounds_like_irn():
    assert T.scaled_size((96, 128), 0.5) == (48, 64)
    assert T.scaled_size((375, 500), 1.5) == (562, 750)
    assert T.scaled_size((375, 500), 0.7) == (262, 350)


@pytest.mark.parametrize("seed", range(5))
def test_random_resize_long_keeps_aspect_within_range(seed):
    img = np.zeros((60, 80, 3), dtype=np.uint8)
    out = T.random_resize_long(img, 100, 120, np.random.default_rng(seed))
    h, w = out.shape[:2]
    assert 100 <= w <= 120 and h == round(60 * w / 80)


def test_random_resize_long_fixed_target():
    out = T.random_resize_long(np.zeros((30, 20, 3), np.uint8), 45, 45, np.random.default_rng(0))
    assert out.shape == (45, 30, 3)


def test_random_crop_pads_small_image_and_marks_it():
    img = np.full((3, 5, 2), 7.0, dtype=np.float32)
    for seed in range(10):
        crop, valid = T.random_crop(img, 8, np.random.default_rng(seed))
        assert crop.shape == (8, 8, 2) and valid.shape == (8, 8) and valid.dtype == np.float32
        rows, cols = np.flatnonzero(valid.any(1)), np.flatnonzero(valid.any(0))
        assert len(rows) == 3 and len(cols) == 5 and rows[-1] - rows[0] == 2 and cols[-1] - cols[0] == 4
        assert valid.sum() == 15
        np.testing.assert_array_equal(crop[..., 0] == 7.0, valid == 1)
        assert (crop[valid == 0] == 0).all()


def test_random_crop_offsets_cover_every_placement():
    img = np.ones((6, 6), dtype=np.float32)
    tops = {int(np.flatnonzero(T.random_crop(img, 8, np.random.default_rng(s))[1].any(1))[0]) for s in range(200)}
    assert tops == {0, 1, 2}


def test_random_crop_of_large_image_is_a_window():
    img = np.arange(10 * 12, dtype=np.float32).reshape(10, 12)
    for seed in range(10):
        crop, valid = T.random_crop(img, 4, np.random.default_rng(seed))
        assert valid.min() == 1
        top, left = np.argwhere(img == crop[0, 0])[0]
        np.testing.assert_array_equal(crop, img[top:top + 4, left:left + 4])


def test_random_crop_mixed_axes():
    img = np.arange(1, 3 * 12 + 1, dtype=np.float32).reshape(3, 12)
    crop, valid = T.random_crop(img, 8, np.random.default_rng(1))
    assert valid.sum() == 3 * 8
    rows = np.flatnonzero(valid.any(1))
    window = crop[rows]
    left = int(window[0, 0]) - 1
    np.testing.assert_array_equal(window, img[:, left:left + 8])


def test_hflip_mirrors_columns():
    img = np.arange(6).reshape(1, 3, 2)
    np.testing.assert_array_equal(T.hflip(img)[0, :, 0], [4, 2, 0])


# --- datasets ----------------------------------------------------------------------------------------

def test_train_sample_shapes_and_label(synthetic_root):
    ds = TrainDataset(synthetic_root, "train_aug", (64, 96), 80, HALF, HALF, seed=0)
    labels = load_cls_labels(synthetic_root)
    assert len(ds) == 8
    item = ds[3]
    assert item["id"] == read_split(synthetic_root, "train_aug")[3]
    assert item["img"].shape == (3, 80, 80) and item["img"].dtype == torch.float32
    assert item["valid_mask"].shape == (80, 80) and item["valid_mask"].dtype == torch.float32
    assert item["label"].dtype == torch.float32
    np.testing.assert_array_equal(item["label"].numpy(), labels[item["id"]])


@pytest.mark.parametrize("index", range(4))
def test_valid_mask_marks_exactly_the_pasted_image(synthetic_root, index):
    ds = TrainDataset(synthetic_root, "train", (64, 96), 100, HALF, HALF, seed=index)
    item = ds[index]
    valid = item["valid_mask"].numpy()
    real = (item["img"].numpy() != 0).any(0)
    np.testing.assert_array_equal(real, valid == 1)
    rows, cols = np.flatnonzero(valid.any(1)), np.flatnonzero(valid.any(0))
    h, w = len(rows), len(cols)
    assert valid.sum() == h * w and 64 <= w <= 96 and h == round(96 * w / 128)


def test_large_image_crop_is_all_valid(synthetic_root):
    ds = TrainDataset(synthetic_root, "train", (100, 120), 48, HALF, HALF)
    assert ds[0]["valid_mask"].min() == 1


def test_train_flip_and_placement(synthetic_root):
    ds = TrainDataset(synthetic_root, "train", (128, 128), 128, HALF, HALF, seed=7)
    original = T.hwc_to_chw(T.normalize(load_image(synthetic_root, ds.ids[0]), HALF, HALF))
    flipped_seen = set()
    for epoch in range(8):
        ds.set_epoch(epoch)
        item = ds[0]
        rows = np.flatnonzero(item["valid_mask"].numpy().any(1))
        window = item["img"].numpy()[:, rows]
        assert len(rows) == 96
        is_flipped = np.array_equal(window, original[:, :, ::-1])
        assert is_flipped or np.array_equal(window, original)
        flipped_seen.add(is_flipped)
    assert flipped_seen == {True, False}


def test_train_augmentation_reproducible(synthetic_root):
    make = lambda seed: TrainDataset(synthetic_root, "train_aug", (64, 96), 64, HALF, HALF, seed=seed)  # noqa: E731
    a, b, c = make(1), make(1), make(2)
    for i in range(4):
        torch.testing.assert_close(a[i]["img"], b[i]["img"], rtol=0, atol=0)
        torch.testing.assert_close(a[i]["valid_mask"], b[i]["valid_mask"], rtol=0, atol=0)
    assert any(not torch.equal(a[i]["img"], c[i]["img"]) for i in range(4))
    first = [a[i]["img"] for i in range(4)]
    a.set_epoch(1)
    assert any(not torch.equal(first[i], a[i]["img"]) for i in range(4))
    a.set_epoch(0)
    assert all(torch.equal(first[i], a[i]["img"]) for i in range(4))


def test_train_loader_batches(synthetic_root):
    ds = TrainDataset(synthetic_root, "train_aug", (64, 96), 64, HALF, HALF, max_images=5)
    assert len(ds) == 5 and ds.ids == read_split(synthetic_root, "train_aug")[:5]
    batch = next(iter(DataLoader(ds, batch_size=4, collate_fn=collate_train)))
    assert batch["img"].shape == (4, 3, 64, 64) and batch["label"].shape == (4, 20)
    assert batch["valid_mask"].shape == (4, 64, 64) and batch["id"] == ds.ids[:4]


def test_inference_scales_and_flip(synthetic_root):
    ds = InferenceDataset(synthetic_root, "val", (1.0, 0.5, 1.5), HALF, HALF, max_images=2)
    assert len(ds) == 2
    item = ds[1]
    assert item["id"] == read_split(synthetic_root, "val")[1] and item["size"] == (96, 128)
    assert [tuple(x.shape) for x in item["images"]] == [(2, 3, 96, 128), (2, 3, 48, 64), (2, 3, 144, 192)]
    for x in item["images"]:
        assert x.dtype == torch.float32
        torch.testing.assert_close(x[1], x[0].flip(-1), rtol=0, atol=0)
    expected = T.hwc_to_chw(T.normalize(load_image(synthetic_root, item["id"]), HALF, HALF))
    np.testing.assert_array_equal(item["images"][0][0].numpy(), expected)
    np.testing.assert_array_equal(item["label"].numpy(), load_cls_labels(synthetic_root)[item["id"]])


def test_inference_without_flip_and_loader(synthetic_root):
    ds = InferenceDataset(synthetic_root, "val", (0.75,), HALF, HALF, flip=False)
    item = next(iter(DataLoader(ds, batch_size=1, collate_fn=collate_single)))
    assert [tuple(x.shape) for x in item["images"]] == [(1, 3, 72, 96)]
    with pytest.raises(ValueError, match="batch_size=1"):
        collate_single([ds[0], ds[1]])


# --- broken datasets ---------------------------------------------------------------------------------

@pytest.fixture
def broken_root(synthetic_root, tmp_path) -> Path:
    """A private copy of the synthetic set that a test may damage."""
    return Path(shutil.copytree(synthetic_root, tmp_path / "voc"))


def make_train(root: Path, split: str = "train") -> TrainDataset:
    return TrainDataset(root, split, (64, 96), 64, HALF, HALF)


def test_missing_root(tmp_path):
    missing = tmp_path / "no_such_root"
    with pytest.raises(DataError, match="SIPE_DATA_ROOT") as e:
        make_train(missing)
    assert str(missing) in str(e.value)
    with pytest.raises(DataError, match="no_such_root"):
        scan_dataset(missing, "train")


def test_missing_list(broken_root):
    with pytest.raises(DataError) as e:
        read_split(broken_root, "trainval")
    assert str(broken_root / "ImageSets" / "Segmentation" / "trainval.txt") in str(e.value)
    assert "train_aug" in str(e.value)


def test_missing_label_file(broken_root):
    labels_path(broken_root).unlink()
    with pytest.raises(DataError, match="make_cls_labels") as e:
        InferenceDataset(broken_root, "val", (1.0,), HALF, HALF)
    assert str(labels_path(broken_root)) in str(e.value)


def test_missing_image(broken_root):
    victim = read_split(broken_root, "train")[2]
    image_path(broken_root, victim).unlink()
    with pytest.raises(DataError) as e:
        make_train(broken_root)
    assert str(image_path(broken_root, victim)) in str(e.value)
    report = scan_dataset(broken_root, "train")
    assert [(p.kind, p.image_id) for p in report.problems] == [("missing image", victim)]
    with pytest.raises(DataError, match=victim):
        load_image(broken_root, victim)


def test_image_removed_after_construction_fails_in_getitem(broken_root):
    ds = make_train(broken_root)
    image_path(broken_root, ds.ids[1]).unlink()
    with pytest.raises(DataError) as e:
        list(DataLoader(ds, batch_size=2, num_workers=0))
    assert str(image_path(broken_root, ds.ids[1])) in str(e.value)


def test_truncated_jpeg(broken_root):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    victim = read_split(broken_root, "train")[1]
    path = image_path(broken_root, victim)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    ds = make_train(broken_root)
    with pytest.raises(DataError, match="truncated") as e:
        ds[1]
    assert str(path) in str(e.value)
    report = scan_dataset(broken_root, "train")
    assert [(p.kind, p.path) for p in report.problems] == [("unreadable image", path)]
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_mask_of_wrong_size(broken_root):
    victim = read_split(broken_root, "val")[0]
    save_mask(mask_path(broken_root, victim), np.zeros((50, 60), dtype=np.uint8))
    report = scan_dataset(broken_root, "val")
    assert not report.ok
    assert [(p.kind, p.path) for p in report.problems] == [("mask size", mask_path(broken_root, victim))]
    assert "50x60" in str(report.problems[0]) and "96x128" in str(report.problems[0])
    assert str(mask_path(broken_root, victim)) in report.summary()
    assert scan_dataset(broken_root, "val", check_masks=False).ok


def test_missing_mask_and_bad_mask_values(broken_root):
    ids = read_split(broken_root, "train")
    mask_path(broken_root, ids[0]).unlink()
    bad = load_mask(broken_root, ids[3])
    bad[0, 0] = 42
    save_mask(mask_path(broken_root, ids[3]), bad)
    report = scan_dataset(broken_root, "train")
    assert [(p.kind, p.image_id) for p in report.problems] == [("missing mask", ids[0]), ("mask values", ids[3])]
    assert "42" in str(report.problems[1])
    assert str(mask_path(broken_root, ids[0])) in report.summary() and str(mask_path(broken_root, ids[3])) in report.summary()


def test_id_without_label(broken_root):
    labels = load_cls_labels(broken_root)
    victim = read_split(broken_root, "val")[3]
    del labels[victim]
    np.save(labels_path(broken_root), labels, allow_pickle=True)
    with pytest.raises(DataError) as e:
        InferenceDataset(broken_root, "val", (1.0,), HALF, HALF)
    assert victim in str(e.value) and str(labels_path(broken_root)) in str(e.value)
    make_train(broken_root, "train")
    report = scan_dataset(broken_root, "val")
    assert [(p.kind, p.image_id) for p in report.problems] == [("no label", victim)]
    with pytest.raises(DataError, match="make_cls_labels"):
        label_of(labels, victim, labels_path(broken_root))


@pytest.mark.parametrize("content, message", [
    (None, "not found"),
    (b"not a numpy file", "cannot read label file"),
    (np.array("labels"), "holds a str, expected a dict"),
    ({"a": np.ones(4, np.float32)}, r"label of 'a' in .* has shape \(4,\), expected \(3,\)"),
    ({"a": np.array([0, 1, 2], np.float32)}, "labels must be 0 or 1, but 1 id"),
])
def test_a_malformed_label_file_is_named_with_its_fix(tmp_path, content, message):
    path = tmp_path / "labels.npy"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        np.save(path, np.array(content, dtype=object) if isinstance(content, dict) else content, allow_pickle=True)
    with pytest.raises(DataError, match=message) as e:
        read_label_file(path, 3, FIX_LABELS)
    assert str(path) in str(e.value) and FIX_LABELS in str(e.value)


def test_the_label_file_reader_keys_ids_as_strings_and_labels_as_float32(tmp_path):
    path = tmp_path / "labels.npy"
    np.save(path, np.array({"a": [0, 1, 1], 7: np.array([1, 0, 0], np.uint8)}, dtype=object), allow_pickle=True)
    labels = read_label_file(path, 3, FIX_LABELS)
    assert list(labels) == ["a", "7"] and all(v.dtype == np.float32 for v in labels.values())
    np.testing.assert_array_equal(labels["a"], [0.0, 1.0, 1.0])


# --- the real VOC subset -----------------------------------------------------------------------------

def test_real_fingerprints_and_labels_are_pinned(real_root):
    """What the published units were computed from: the fingerprints of the splits and the labels read."""
    assert {s: fingerprint(real_root, s) for s in ("train_aug", "train", "val")} == \
        {"train_aug": "0389b6a7dbb95fda", "train": "9b2f89c10cd4b2c6", "val": "9e91435c25ed7906"}
    labels = load_cls_labels(real_root)
    digest = hashlib.sha256()
    for image_id, label in labels.items():
        digest.update(image_id.encode() + label.tobytes() + str(label.dtype).encode())
    assert (len(labels), digest.hexdigest()[:16]) == (1945, "7528dc9fc685ce6a")


def test_real_split_sizes(real_root):
    train_aug, train, val = (read_split(real_root, s) for s in ("train_aug", "train", "val"))
    assert (len(train_aug), len(train), len(val)) == (1500, 437, 445)
    assert len(set(train_aug)) == 1500
    assert set(train) <= set(train_aug) and not set(val) & set(train_aug)


def test_real_labels(real_root):
    labels = load_cls_labels(real_root)
    for split in ("train_aug", "train", "val"):
        for image_id in read_split(real_root, split):
            label = label_of(labels, image_id)
            assert label.shape == (20,) and label.dtype == np.float32
            assert set(np.unique(label).tolist()) <= {0.0, 1.0} and label.sum() >= 1


def test_real_train_labels_match_masks(real_root):
    labels = load_cls_labels(real_root)
    for image_id in read_split(real_root, "train"):
        assert label_classes(labels[image_id]) == mask_classes(load_mask(real_root, image_id)), image_id


def test_real_scan_train_split(real_root):
    report = scan_dataset(real_root, "train")
    assert report.n_checked == 437
    assert report.ok, report.summary()


def test_real_datasets(real_root):
    mean, std = T.IMAGENET_MEAN, T.IMAGENET_STD
    train = TrainDataset(real_root, "train_aug", (320, 640), 512, mean, std, max_images=2)
    item = train[0]
    valid = item["valid_mask"].numpy()
    assert item["img"].shape == (3, 512, 512) and valid.shape == (512, 512)
    assert max(valid.any(0).sum(), valid.any(1).sum()) >= 320
    np.testing.assert_array_equal((item["img"].numpy() != 0).any(0), valid == 1)
    infer = InferenceDataset(real_root, "val", (1.0, 0.5), mean, std, max_images=1)
    item = infer[0]
    h, w = load_image(real_root, item["id"]).shape[:2]
    assert item["size"] == (h, w)
    assert [tuple(x.shape) for x in item["images"]] == [(2, 3, h, w), (2, 3, round(h / 2), round(w / 2))]


def test_split_difference_keeps_order_and_excludes_the_other_lists(synthetic_root):
    from sipe.data.voc import DataError, read_split

    all_ids = read_split(synthetic_root, "train_aug")
    excluded = set(read_split(synthetic_root, "train"))
    selection = read_split(synthetic_root, "train_aug-train")
    assert selection == [i for i in all_ids if i not in excluded]
    assert selection and not excluded & set(selection)
    with pytest.raises(DataError, match="empty"):
        read_split(synthetic_root, "train-train_aug")


def test_selection_split_of_the_real_subset_is_disjoint_from_train_and_val(real_root):
    from sipe.infra.config import SELECTION_SPLIT
    from sipe.data.voc import read_split

    selection = set(read_split(real_root, SELECTION_SPLIT))
    assert len(selection) == 1500 - 437
    assert not selection & (set(read_split(real_root, "train")) | set(read_split(real_root, "val")))
