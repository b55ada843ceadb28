"""Tests for sipe.segmentation.irn: pair indexing, relation labels, the random walk, the IRN stages and resuming."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sipe.infra.config import ConfigError, get_profile
from sipe.segmentation import irn
from sipe.data import voc
from sipe.stages.labelled import load_label
from sipe.infra.runtime import atomic_savez

R2_DIRECTIONS = [[0, 1], [1, -1], [1, 0], [1, 1]]


def test_relation_labels_from_a_hand_made_label_map():
    label = np.array([[0, 0, 1, 1],
                      [0, 255, 1, 2],
                      [0, 0, 2, 2]], dtype=np.uint8)
    index = irn.PathIndex.of(2)
    assert index.directions.tolist() == R2_DIRECTIONS
    rel = index.relation_labels(label)
    assert rel.shape == (3, 4, 2, 2)  # (bg+, fg+, neg) x directions x sources (rows 0-1, columns 1-2)
    bg, fg, neg = rel
    # sources: (0,1)=0 (0,2)=1 / (1,1)=void (1,2)=1
    np.testing.assert_array_equal(bg, [[[0, 0], [0, 0]], [[1, 0], [0, 0]], [[0, 0], [0, 0]], [[0, 0], [0, 0]]])
    np.testing.assert_array_equal(fg, [[[0, 1], [0, 0]], [[0, 0], [0, 0]], [[0, 1], [0, 0]], [[0, 0], [0, 0]]])
    np.testing.assert_array_equal(neg, [[[1, 0], [0, 1]], [[0, 0], [0, 1]], [[0, 0], [0, 1]], [[1, 1], [0, 1]]])


def test_affinity_is_one_minus_the_largest_boundary_on_the_path():
    boundary = torch.zeros(1, 3, 4)
    boundary[0, 1, 2] = 0.8
    aff = irn.PathIndex.of(2).affinities(boundary)[0]
    # per direction, sources (0,1) (0,2) / (1,1) (1,2); (1,1)->(0,1) paths also cross the side pixels
    expected = [[[1, 1], [0.2, 0.2]], [[1, 0.2], [1, 0.2]], [[1, 0.2], [1, 0.2]], [[0.2, 0.2], [0.2, 0.2]]]
    torch.testing.assert_close(aff, torch.tensor(expected))


def test_transition_rows_sum_to_one():
    torch.manual_seed(0)
    boundary = torch.rand(6, 7)
    a = irn.affinity_matrix(boundary, 3)
    dense = a.to_dense()
    torch.testing.assert_close(dense, dense.T)
    torch.testing.assert_close(torch.diagonal(dense), torch.ones(42))
    assert ((dense > 0).sum(1) > 1).all()
    for t in (irn.transition_matrix(a, 10.0).to_dense(), irn.transition_matrix(dense, 10.0)):
        torch.testing.assert_close(t.sum(1), torch.ones(42))
        assert (t >= 0).all()
    offsets, banded = irn.banded_affinity(boundary, 3)
    torch.testing.assert_close(irn.banded_transition(banded, 10.0).sum(0), torch.ones(6, 7))


def test_one_hot_map_stays_one_hot_under_identity_affinity():
    boundary = torch.ones(5, 6)  # every path touches a boundary: no affinity between distinct pixels
    a = irn.affinity_matrix(boundary, 3).to_dense()
    torch.testing.assert_close(a, torch.eye(30))
    labels = torch.arange(30) % 3
    one_hot = torch.nn.functional.one_hot(labels, 3).T.float()  # (C,n)
    out = irn.random_walk(one_hot, irn.transition_matrix(a, 10.0), exp_times=8)
    torch.testing.assert_close(out, one_hot)
    offsets, banded = irn.banded_affinity(boundary, 3)
    out = irn.banded_walk(one_hot.reshape(3, 5, 6), offsets, irn.banded_transition(banded, 10.0), 256)
    torch.testing.assert_close(out, one_hot.reshape(3, 5, 6))


def test_random_walk_spreads_within_regions_not_across_a_boundary():
    boundary = torch.zeros(8, 10)
    boundary[:, 5] = 1.0
    maps = torch.zeros(2, 8, 10)
    maps[0, 2, 1] = 1.0  # a seed left of the boundary
    maps[1, 4, 8] = 1.0  # a seed right of it
    dense = irn.propagate(maps, boundary, radius=3, beta=10.0, exp_times=5, method="dense")
    stencil = irn.propagate(maps, boundary, radius=3, beta=10.0, exp_times=5, method="stencil")
    torch.testing.assert_close(dense, stencil, atol=1e-6, rtol=1e-4)
    assert (dense[0, :, 5:] == 0).all() and (dense[1, :, :6] == 0).all()
    assert (dense[0, :, :5] > 0).all() and (dense[1, :, 6:] > 0).all()


def test_pseudo_label_background_rules():
    keys = np.array([0, 7])
    maps = np.zeros((2, 16, 16), np.float32)
    maps[0] = 0.6
    maps[1, :, 8:] = 1.0
    boundary = torch.zeros(4, 4)  # the 16x16 image's stride-4 grid; a boundary column between the halves
    boundary[:, 2] = 1.0
    cfg = get_profile("smoke").irn.override(infer_scale=1.0)
    sipe = irn.pseudo_label(maps, keys, boundary, irn.PROTOCOLS["sipe"], cfg)
    assert sipe.shape == (16, 16) and set(np.unique(sipe)) <= {0, 7}
    assert (sipe[:, :4] == 0).all() and (sipe[:, 12:] == 7).all()
    # IRN protocol: only the foreground is propagated; a constant 0.25 background below the normalised maximum
    thr = irn.pseudo_label(maps, keys, boundary, irn.PROTOCOLS["irn"], cfg)
    assert (thr[:, 12:] == 7).all() and (thr[:, :4] == 0).all()


# ----------------------------------------------------------------------------------------------- stages


def maps_from_masks(root: Path, ids: list[str], out: Path) -> Path:
    """Map files (keys, is_cam, cam) that are softened one-hot ground truth: a stand-in for a maps stage."""
    labels = voc.load_cls_labels(root)
    for i in ids:
        mask = voc.load_mask(root, i)
        keys = np.concatenate([[0], np.flatnonzero(labels[i]) + 1]).astype(np.int64)
        m = np.stack([(mask == k).astype(np.float32) * 0.8 + 0.1 for k in keys])
        atomic_savez(out / f"{i}.npz", keys=keys, is_cam=m.astype(np.float16), cam=m.astype(np.float16))
    return out


def tiny_cfg(**kw) -> irn.IRNConfig:
    base = dict(pretrained=False, crop_size=64, batch_size=2, epochs=2, max_steps=None, train_radius=5,
                crf_iterations=2, seed=3)
    return get_profile("smoke").irn.override(**{**base, **kw})


class Interrupt(RuntimeError):
    pass


def test_irn_stages_write_labels_and_training_resumes_from_checkpoint(synthetic_root: Path, tmp_path: Path):
    ids = voc.read_split(synthetic_root, "train_aug")[:4]
    maps_dir = maps_from_masks(synthetic_root, ids, tmp_path / "maps")
    cfg = tiny_cfg()
    ir_dir = irn.make_ir_labels(maps_dir, synthetic_root, ids, tmp_path / "ir", irn.PROTOCOLS["sipe"], cfg,
                                progress=False)
    assert (ir_dir / "DONE").exists()
    for i in ids:
        ir = load_label(synthetic_root, ir_dir, i)
        assert ir.shape == voc.load_mask(synthetic_root, i).shape
        assert set(np.unique(ir)) <= {0, 255, *np.unique(voc.load_mask(synthetic_root, i)).tolist()}

    whole = irn.train_irn(cfg, synthetic_root, ids, ir_dir, tmp_path / "whole", device="cpu", progress=False)
    assert whole.steps == 4 and not whole.reused

    def stop(step, row):
        if step == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        irn.train_irn(cfg, synthetic_root, ids, ir_dir, tmp_path / "resumed", device="cpu", progress=False, on_step=stop)
    assert not (tmp_path / "resumed" / "final.pt").exists()
    resumed = irn.train_irn(cfg, synthetic_root, ids, ir_dir, tmp_path / "resumed", device="cpu", progress=False)
    a = torch.load(whole.checkpoint, weights_only=True)["model"]
    b = torch.load(resumed.checkpoint, weights_only=True)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)
    with resumed.metrics.open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert all(math.isfinite(float(r["loss"])) for r in rows)
    assert irn.train_irn(cfg, synthetic_root, ids, ir_dir, tmp_path / "whole", device="cpu", progress=False).reused
    from sipe.stages.train import ConfigMismatchError

    with pytest.raises(ConfigMismatchError, match="differing"):
        irn.train_irn(tiny_cfg(lr=0.5), synthetic_root, ids, ir_dir, tmp_path / "whole", device="cpu", progress=False)

    out = irn.make_pseudo_labels(whole.checkpoint, maps_dir, synthetic_root, ids, tmp_path / "pseudo",
                                 irn.PROTOCOLS["sipe"], cfg, device="cpu", progress=False)
    for i in ids:
        pseudo = load_label(synthetic_root, out, i)
        assert pseudo.shape == voc.load_mask(synthetic_root, i).shape
        assert set(np.unique(pseudo)) <= set(np.load(maps_dir / f"{i}.npz")["keys"].tolist())


def test_maps_of_the_wrong_size_name_the_file(synthetic_root: Path, tmp_path: Path):
    image_id = voc.read_split(synthetic_root, "train_aug")[0]
    atomic_savez(tmp_path / "maps" / f"{image_id}.npz", keys=np.array([0, 1]),
                 is_cam=np.zeros((2, 10, 10), np.float16))
    with pytest.raises(voc.DataError, match=rf"maps.{image_id}\.npz is 10x10 but its image .*{image_id}\.jpg"):
        irn.make_ir_labels(tmp_path / "maps", synthetic_root, [image_id], tmp_path / "ir", irn.PROTOCOLS["sipe"],
                           tiny_cfg(), progress=False)


def test_profiles_resolve_and_bad_settings_are_named():
    paper = get_profile("paper").irn
    assert (paper.backbone, paper.crop_size, paper.batch_size, paper.epochs, paper.train_radius, paper.infer_radius,
            paper.beta, paper.exp_times, paper.rw_method) == ("resnet50", 512, 32, 3, 10, 5, 10.0, 8, "dense")
    with pytest.raises(ConfigError, match="train_radius"):
        paper.override(crop_size=64)
    with pytest.raises(ConfigError, match="unknown IRN setting"):
        paper.override(radius=3)
