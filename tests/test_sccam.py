"""Tests for sipe.baselines.sccam (SC-CAM baseline): sub-category clustering, the loss, and the rounds end to end."""
from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from sipe.infra.config import get_profile, variant_config
from sipe.baselines.sccam import (FewImagesWarning, SCCAMConfig, SCCAMNet, build_sccam_model, cluster_subcategories,
    feature_dataset, image_features, load_assignment, sccam_losses, train_sccam)
from sipe.stages.checkpoint import load_trained
from sipe.stages.train import ConfigMismatchError, make_train_dataset, train

N_IMAGES, BATCH, EPOCHS = 6, 2, 2
TOTAL = (N_IMAGES // BATCH) * EPOCHS


class Interrupt(RuntimeError):
    pass


def tiny_cfg(root: Path, **overrides):
    """The CAM baseline's smoke config on synthetic data: 6 images, batch 2, 2 epochs, checkpoint every 2 steps."""
    cfg = get_profile("smoke", **{
        "data.root": str(root), "data.max_images": N_IMAGES, "train.batch_size": BATCH, "train.epochs": EPOCHS,
        "train.max_steps": None, "train.checkpoint_every_steps": 2, "model.pretrained": False, "device": "cpu",
        **overrides,
    })
    return variant_config(cfg, "cam")


def blobs(n_per: int, centres: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([c + 0.01 * rng.standard_normal((n_per, centres.shape[1])) for c in centres])


# ----------------------------------------------------------------------------- clustering


def test_sub_labels_belong_to_parent_labels_and_k_clusters_per_class() -> None:
    rng = np.random.default_rng(0)
    n, kc, k = 60, 4, 3
    labels = (rng.random((n, kc)) < 0.5).astype(np.float32)
    labels[np.arange(n), rng.integers(0, kc, n)] = 1.0
    features = rng.standard_normal((n, 8)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FewImagesWarning)
        a = cluster_subcategories(features, labels, k=k, seed=0)
    sub = a.sub_labels
    assert sub.shape == (n, kc * k) and set(np.unique(sub)) <= {0.0, 1.0}
    parent_of_sub = sub.reshape(n, kc, k).max(axis=2)
    np.testing.assert_array_equal(parent_of_sub, labels)          # a sub-label only under a held parent
    np.testing.assert_array_equal(sub.reshape(n, kc, k).sum(2), labels)  # exactly one sub-label per held parent
    np.testing.assert_array_equal(a.counts, [k] * kc)
    for c in range(kc):
        held = labels[:, c] > 0
        assert set(a.clusters[held, c]) == set(range(k))
        assert (a.clusters[~held, c] == -1).all()


def test_clusters_follow_the_feature_groups() -> None:
    centres = np.array([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0]])
    features = blobs(4, centres)
    labels = np.ones((12, 1), np.float32)
    a = cluster_subcategories(features, labels, k=3, seed=0)
    groups = a.clusters[:, 0].reshape(3, 4)
    assert all(len(set(g)) == 1 for g in groups) and len({g[0] for g in groups}) == 3


def test_fewer_images_than_k_get_fewer_clusters_with_a_warning_naming_them() -> None:
    labels = np.zeros((7, 20), np.float32)
    labels[:, 14] = 1          # person: 7 images
    labels[:2, 0] = 1          # aeroplane: 2 images
    features = np.random.default_rng(1).standard_normal((7, 4))
    with pytest.warns(FewImagesWarning) as record:
        a = cluster_subcategories(features, labels, k=3, seed=0)
    msg = str(record[0].message)
    assert "aeroplane (2 images -> 2 clusters)" in msg and "bicycle (0 images -> 0 clusters)" in msg
    assert "person" not in msg
    assert a.counts[14] == 3 and a.counts[0] == 2 and a.counts[1] == 0
    assert sorted(a.clusters[:2, 0]) == [0, 1]
    assert a.sub_labels[:, 1 * 3:2 * 3].sum() == 0


def test_clustering_is_deterministic_and_l2_option() -> None:
    rng = np.random.default_rng(2)
    features, labels = rng.standard_normal((30, 5)), np.ones((30, 2))
    a, b = (cluster_subcategories(features, labels, k=4, seed=3) for _ in range(2))
    np.testing.assert_array_equal(a.clusters, b.clusters)
    # Scaling an image's feature moves it under raw k-means but not once features are L2-normalised.
    centres = np.array([[1.0, 0.0], [0.0, 1.0]])
    feats = blobs(3, centres) * np.array([1, 1, 10, 1, 1, 10])[:, None]
    raw = cluster_subcategories(feats, np.ones((6, 1)), k=2, seed=0).clusters[:, 0]
    unit = cluster_subcategories(feats, np.ones((6, 1)), k=2, seed=0, l2_normalize=True).clusters[:, 0]
    assert len(set(unit[:3])) == 1 and len(set(unit[3:])) == 1 and unit[0] != unit[3]
    assert not (len(set(raw[:3])) == 1 and len(set(raw[3:])) == 1)


# ----------------------------------------------------------------------------- loss and model


def test_sccam_loss_against_a_hand_computation() -> None:
    """MLSM(x, y) = mean_i -[y log s(x) + (1-y) log(1-s(x))]; with x = 0: log 2 per entry; x = ln 3 -> s = 3/4."""
    ln3 = math.log(3.0)
    parent = torch.tensor([[0.0, ln3]])            # labels (1, 0)
    sub = torch.tensor([[ln3, 0.0, 0.0, -ln3]])    # labels (1, 0, 0, 0): sub-category 0 of class 0
    labels, sub_labels = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    # parent: -(log 1/2 + log 1/4)/2 = (ln2 + 2 ln2)/2 = 1.5 ln2
    # sub: -(log 3/4 + log 1/2 + log 1/2 + log 3/4)/4 = (2 ln(4/3) + 2 ln2)/4
    parent_loss = 1.5 * math.log(2.0)
    sub_loss = (2 * math.log(4 / 3) + 2 * math.log(2.0)) / 4
    assert sccam_losses(parent, sub, labels, sub_labels, weight=5.0)["loss"].item() == pytest.approx(parent_loss + 5 * sub_loss, rel=1e-6)
    parts = sccam_losses(parent, sub, labels, sub_labels, weight=2.0)
    assert parts["loss_cls"].item() == pytest.approx(parent_loss, rel=1e-6)
    assert parts["loss_sub"].item() == pytest.approx(sub_loss, rel=1e-6)
    assert parts["loss"].item() == pytest.approx(parent_loss + 2 * sub_loss, rel=1e-6)


def test_two_head_model_shapes_and_parameter_groups(synthetic_root: Path) -> None:
    cfg = tiny_cfg(synthetic_root)
    model = build_sccam_model(cfg, k=3)
    assert isinstance(model, SCCAMNet)
    out = model(torch.zeros(2, 3, 64, 64))
    assert out["score"].shape == (2, 20) and out["sub_score"].shape == (2, 60)
    backbone, new = model.param_groups()
    assert {id(p) for p in new} == {id(model.net.classifier.weight), id(model.sub_classifier.weight)}
    assert not {id(p) for p in model.net.sides.parameters()} & {id(p) for p in backbone + new}
    x = torch.randn(1, 3, 64, 64)
    model.eval()
    torch.testing.assert_close(model(x)["score"], model.net.extract(x).logits.mean(dim=(2, 3)))


def test_image_features_are_pooled_semantic_features(synthetic_root: Path) -> None:
    cfg = tiny_cfg(synthetic_root)
    torch.manual_seed(0)
    net = build_sccam_model(cfg, 2).net
    ds = feature_dataset(cfg)
    assert ds.ids == make_train_dataset(cfg).ids
    feats = image_features(net, ds, progress=False)
    assert feats.shape == (N_IMAGES, 1280) and feats.dtype == np.float32
    x = ds[0]["images"][0]
    assert x.shape[0] == 1 and tuple(x.shape[2:]) == ds[0]["size"]
    expected = net.extract(x).semantic.mean(dim=(2, 3))[0].detach().numpy()
    np.testing.assert_allclose(feats[0], expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- rounds end to end


@pytest.fixture(scope="module")
def cam_baseline(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(tiny_cfg(synthetic_root), tmp_path_factory.mktemp("cam"), progress=False).checkpoint


SC = SCCAMConfig(k=2, rounds=3)


@pytest.fixture(scope="module")
def run_a(synthetic_root: Path, cam_baseline: Path, tmp_path_factory: pytest.TempPathFactory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FewImagesWarning)
        return train_sccam(tiny_cfg(synthetic_root), tmp_path_factory.mktemp("sccam_a"), SC, cam_baseline, progress=False)


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_three_rounds_end_to_end(run_a, synthetic_root: Path) -> None:
    cfg = tiny_cfg(synthetic_root)
    assert not run_a.reused and run_a.checkpoint == run_a.run_dir / "final.pt"
    labels = np.stack([make_train_dataset(cfg).label(i) for i in range(N_IMAGES)])
    assert [d.name for d in run_a.round_dirs] == ["round1", "round2", "round3"]
    for rdir in run_a.round_dirs:
        assert {"features.npy", "assignments.npz", "assignments.csv", "metrics.csv", "final.pt"} <= {p.name for p in rdir.iterdir()}
        a, ids = load_assignment(rdir)
        assert ids == make_train_dataset(cfg).ids
        np.testing.assert_array_equal(a.sub_labels.reshape(N_IMAGES, 20, 2).max(2), labels)
        np.testing.assert_array_equal(a.counts, np.minimum(labels.sum(0), 2))
        rows = read_rows(rdir / "assignments.csv")
        assert len(rows) == int(labels.sum())
        assert all(labels[ids.index(r["image_id"]), int(r["class_index"])] == 1 for r in rows)
        metrics = read_rows(rdir / "metrics.csv")
        assert [int(r["step"]) for r in metrics] == list(range(1, TOTAL + 1))
        for r in metrics:
            assert float(r["loss"]) == pytest.approx(float(r["loss_cls"]) + 5 * float(r["loss_sub"]), rel=1e-5)
    # each round's features come from the previous round's model (round 1: the CAM baseline)
    f1, f2 = (np.load(d / "features.npy") for d in run_a.round_dirs[:2])
    assert not np.allclose(f1, f2)
    model, loaded_cfg = load_trained(run_a.checkpoint)
    assert loaded_cfg == cfg
    last = torch.load(run_a.round_dirs[-1] / "final.pt", weights_only=False)
    assert last["round"] == 3 and last["sub_classifier"]["weight"].shape == (40, 1280, 1, 1)
    assert all(torch.equal(v, last["model"][k]) for k, v in model.state_dict().items())


def test_round1_features_come_from_the_cam_baseline(run_a, cam_baseline: Path, synthetic_root: Path) -> None:
    cfg = tiny_cfg(synthetic_root)
    net, _ = load_trained(cam_baseline)
    expected = image_features(net, feature_dataset(cfg), progress=False)
    np.testing.assert_allclose(np.load(run_a.round_dirs[0] / "features.npy"), expected, rtol=1e-5, atol=1e-6)


def test_interrupted_run_resumes_to_the_same_final_weights(run_a, synthetic_root: Path, cam_baseline: Path,
                                                           tmp_path: Path) -> None:
    cfg = tiny_cfg(synthetic_root)

    def stop(rnd: int, step: int, row: dict) -> None:
        if (rnd, step) == (2, 5):
            raise Interrupt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FewImagesWarning)
        with pytest.raises(Interrupt):
            train_sccam(cfg, tmp_path, SC, cam_baseline, progress=False, on_step=stop)
        assert (tmp_path / "round1" / "final.pt").exists() and not (tmp_path / "round2" / "final.pt").exists()
        assert torch.load(tmp_path / "round2" / "checkpoint.pt", weights_only=False)["step"] == 4
        r1_mtime = (tmp_path / "round1" / "final.pt").stat().st_mtime_ns
        seen: list[tuple[int, int]] = []
        resumed = train_sccam(cfg, tmp_path, SC, cam_baseline, progress=False, on_step=lambda r, s, row: seen.append((r, s)))
    assert (tmp_path / "round1" / "final.pt").stat().st_mtime_ns == r1_mtime        # a finished round is not redone
    assert seen == [(2, s) for s in range(5, TOTAL + 1)] + [(3, s) for s in range(1, TOTAL + 1)]
    a = torch.load(run_a.checkpoint, weights_only=False)
    b = torch.load(resumed.checkpoint, weights_only=False)
    for key in ("model", "sub_classifier"):
        assert a[key].keys() == b[key].keys() and all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    for rdir_a, rdir_b in zip(run_a.round_dirs, resumed.round_dirs):
        np.testing.assert_array_equal(load_assignment(rdir_a)[0].clusters, load_assignment(rdir_b)[0].clusters)
        assert [r["loss"] for r in read_rows(rdir_a / "metrics.csv")] == [r["loss"] for r in read_rows(rdir_b / "metrics.csv")]


def test_finished_run_is_reused_and_other_settings_are_refused(run_a, synthetic_root: Path, cam_baseline: Path) -> None:
    cfg = tiny_cfg(synthetic_root)
    again = train_sccam(cfg, run_a.run_dir, SC, cam_baseline, progress=False,
                        on_step=lambda *a: pytest.fail("trained again"))
    assert again.reused
    with pytest.raises(ConfigMismatchError):
        train_sccam(cfg, run_a.run_dir, SCCAMConfig(k=3, rounds=3), cam_baseline, progress=False)
    with pytest.raises(ValueError, match="round0_checkpoint"):
        train_sccam(cfg, run_a.run_dir, SC, None, progress=False)


def test_imagenet_round0_and_gsc_refused(synthetic_root: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(synthetic_root, **{"train.epochs": 1, "train.max_steps": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FewImagesWarning)
        res = train_sccam(cfg, tmp_path, SCCAMConfig(k=2, rounds=1, round0="imagenet"), progress=False)
    assert res.checkpoint.exists() and len(res.round_dirs) == 1
    with pytest.raises(Exception, match="GSC"):
        train_sccam(cfg.override(**{"model.gsc": True}), tmp_path / "x", SCCAMConfig(round0="imagenet"), progress=False)


def test_profiles() -> None:
    assert get_profile("paper").sccam == SCCAMConfig(k=10, rounds=3, sub_weight=5.0)
    assert get_profile("subset").sccam == get_profile("paper").sccam
    smoke = get_profile("smoke").sccam
    assert smoke.k == 2 and smoke.rounds in (2, 3)
    assert get_profile("smoke", **{"sccam.k": 3}).sccam.k == 3
    with pytest.raises(ValueError):
        get_profile("smoke", **{"sccam.rounds": 0})
