"""Tests for sipe.method.ipe: CAM with background, structure-aware seeds, prototypes, IS-CAM, explore."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sipe.method.ipe import (cam_with_background, explore, is_cam, locate_seeds, max_normalize, prototypes,
    structure_iou)

EPS = 1e-5
R = 1 / math.sqrt(2)


def naive_iou(cam: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
    """The direct formulation of method-notes: (N,1,hw,hw) correlation x (N,C,1,hw) CAM, no chunking."""
    n, c, h, w = cam.shape
    f = feature.reshape(n, -1, h * w)
    f = f / (f.norm(dim=1, keepdim=True) + EPS)
    corr = F.relu(f.transpose(2, 1) @ f).unsqueeze(1)
    cam_flat = cam.reshape(n, c, 1, h * w)
    inter = (corr * cam_flat).sum(-1)
    union = corr.sum(-1) + cam_flat.sum(-1) - inter
    return (inter / union).reshape(n, c, h, w)


def naive_seeds(cam: torch.Tensor, feature: torch.Tensor, label_mask=None, bg_scale: float = 0.5) -> torch.Tensor:
    """Seeds the way the authors' code builds them: scaled background IoU, argmax, one-hot, x labels."""
    n, c, h, w = cam.shape
    iou = naive_iou(cam, feature)
    iou[:, 0] = iou[:, 0] * bg_scale
    belonging = iou.argmax(1)
    seeds = torch.zeros(n, h, w, c, dtype=cam.dtype).scatter_(-1, belonging.unsqueeze(-1), 1.0)
    seeds = seeds.permute(0, 3, 1, 2)
    if label_mask is not None:
        seeds = seeds * label_mask
    return seeds


def grid_case() -> tuple[torch.Tensor, torch.Tensor]:
    """2x2 grid, pixels p0..p3 (row-major) with features (1,0), (1,0), (0,1), (1,1); C = 3.

    ReLU(F^T F) (ignoring the 1e-5 of the normalisation), r = 1/sqrt(2):
        [[1, 1, 0, r], [1, 1, 0, r], [0, 0, 1, r], [r, r, r, 1]]
    """
    feature = torch.tensor([[1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 1.0, 1.0]], dtype=torch.float64).reshape(1, 2, 2, 2)
    cam = torch.tensor(
        [[0.8, 0.6, 0.1, 0.2], [0.2, 0.4, 0.0, 0.1], [0.0, 0.1, 0.9, 0.7]], dtype=torch.float64
    ).reshape(1, 3, 2, 2)
    return cam, feature


def random_case(n: int, c: int, d: int, h: int, w: int, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c - 1, h, w, generator=g, dtype=dtype)
    cam = cam_with_background(logits)
    feature = torch.randn(n, d, h, w, generator=g, dtype=dtype)
    return cam, feature


# ---------------------------------------------------------------- CAM with background


def test_cam_with_background_by_hand():
    logits = torch.tensor(
        [
            [[2.0, -1.0]],
            [[1.0, 4.0]],
            [[-3.0, -0.5]],
            [[0.5, 8.0]],
        ],
        dtype=torch.float64,
    ).unsqueeze(0)
    cam = cam_with_background(logits)
    ch1 = [2 / (2 + EPS), 0.0]
    ch2 = [1 / (4 + EPS), 4 / (4 + EPS)]
    ch3 = [0.0, 0.0]
    ch4 = [0.5 / (8 + EPS), 8 / (8 + EPS)]
    bg = [1 - ch1[0], 1 - ch4[1]]
    expected = torch.tensor([[bg], [ch1], [ch2], [ch3], [ch4]], dtype=torch.float64).unsqueeze(0)
    assert cam.shape == (1, 5, 1, 2)
    torch.testing.assert_close(cam, expected, rtol=0, atol=1e-12)


def test_cam_background_counts_every_class_channel():
    """Background is 1 - max over all K channels: it does not depend on which classes are present."""
    logits = torch.tensor([[[[0.0, 3.0]], [[5.0, 1.0]]]])
    cam = cam_with_background(logits)
    torch.testing.assert_close(cam[0, 0, 0], torch.tensor([1 - 5 / (5 + EPS), 1 - 3 / (3 + EPS)]))
    assert (cam[:, 1:] >= 0).all() and (cam[:, 1:] <= 1).all()


# ---------------------------------------------------------------- structure-aware seeds


def test_structure_iou_by_hand():
    cam, feature = grid_case()
    iou = structure_iou(cam, feature)[0].reshape(3, 4)
    row_sum = [2 + R, 2 + R, 1 + R, 1 + 3 * R]
    cam_sum = [1.7, 0.7, 1.7]
    inter = {
        (0, 0): 0.8 + 0.6 + 0.2 * R,
        (1, 0): 0.2 + 0.4 + 0.1 * R,
        (2, 0): 0.1 + 0.7 * R,
        (0, 2): 0.1 + 0.2 * R,
        (2, 2): 0.9 + 0.7 * R,
        (0, 3): R * (0.8 + 0.6 + 0.1) + 0.2,
        (2, 3): R * (0.0 + 0.1 + 0.9) + 0.7,
    }
    for (c, i), value in inter.items():
        expected = value / (row_sum[i] + cam_sum[c] - value)
        assert iou[c, i].item() == pytest.approx(expected, abs=1e-4), (c, i)
    torch.testing.assert_close(iou[:, 0], iou[:, 1])
    assert iou[0, 0].item() == pytest.approx(0.53789, abs=1e-4)
    assert iou[1, 0].item() == pytest.approx(0.24511, abs=1e-4)


def test_locate_seeds_by_hand_and_bg_scale_flip():
    cam, feature = grid_case()
    seeds = locate_seeds(cam, feature)
    expected = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1]], dtype=torch.float64).reshape(1, 3, 2, 2)
    assert torch.equal(seeds, expected)

    seeds_low_bg = locate_seeds(cam, feature, bg_scale=0.4)
    expected_low_bg = torch.tensor([[0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1]], dtype=torch.float64)
    assert torch.equal(seeds_low_bg, expected_low_bg.reshape(1, 3, 2, 2))

    seeds_full_bg = locate_seeds(cam, feature, bg_scale=1.0)
    assert torch.equal(seeds_full_bg, expected)


def test_locate_seeds_are_one_hot():
    cam, feature = random_case(2, 5, 8, 6, 7)
    seeds = locate_seeds(cam, feature)
    assert seeds.shape == cam.shape
    assert torch.equal(seeds.sum(1), torch.ones(2, 6, 7, dtype=seeds.dtype))
    assert set(seeds.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("shape", [(1, 3, 4, 1, 1), (1, 21, 16, 5, 5), (2, 4, 7, 3, 8), (3, 6, 32, 9, 6)])
def test_locate_seeds_matches_naive_reference(shape):
    n, c, d, h, w = shape
    cam, feature = random_case(n, c, d, h, w, seed=sum(shape))
    torch.testing.assert_close(structure_iou(cam, feature), naive_iou(cam, feature), rtol=1e-12, atol=1e-12)
    for bg_scale in (0.5, 1.0, 0.2):
        assert torch.equal(locate_seeds(cam, feature, bg_scale=bg_scale), naive_seeds(cam, feature, bg_scale=bg_scale))


def test_locate_seeds_matches_naive_reference_float32():
    cam, feature = random_case(2, 21, 64, 8, 8, seed=3, dtype=torch.float32)
    torch.testing.assert_close(structure_iou(cam, feature), naive_iou(cam, feature), rtol=1e-5, atol=1e-6)
    assert locate_seeds(cam, feature).dtype == torch.float32


@pytest.mark.parametrize("chunk_rows", [1, 3, 7, 1000])
def test_chunked_seeds_equal_unchunked(chunk_rows):
    cam, feature = random_case(2, 6, 12, 5, 7, seed=11)
    full_iou = structure_iou(cam, feature, chunk_rows=None)
    torch.testing.assert_close(structure_iou(cam, feature, chunk_rows=chunk_rows), full_iou, rtol=1e-13, atol=0)
    assert torch.equal(locate_seeds(cam, feature, chunk_rows=chunk_rows), locate_seeds(cam, feature))


@pytest.mark.parametrize("max_bytes", [1, 2 * 35 * 8 * 3, 2 * 35 * 8 * 10])
def test_memory_budget_seeds_equal_unchunked(max_bytes):
    cam, feature = random_case(2, 6, 12, 5, 7, seed=12)
    torch.testing.assert_close(
        structure_iou(cam, feature, max_bytes=max_bytes), structure_iou(cam, feature), rtol=1e-13, atol=0
    )
    assert torch.equal(locate_seeds(cam, feature, max_bytes=max_bytes), naive_seeds(cam, feature))


def test_structure_iou_rejects_bad_input():
    cam, feature = random_case(1, 3, 4, 4, 4)
    with pytest.raises(ValueError, match="differ"):
        structure_iou(cam, feature[:, :, :3])
    with pytest.raises(ValueError, match="differ"):
        structure_iou(cam, torch.cat([feature, feature]))
    with pytest.raises(ValueError, match="chunk_rows"):
        structure_iou(cam, feature, chunk_rows=0)


# ---------------------------------------------------------------- label masking


def test_label_mask_zeroes_absent_classes_keeps_background():
    cam, feature = random_case(2, 5, 8, 6, 6, seed=5)
    unmasked = locate_seeds(cam, feature)
    label = torch.tensor([[1, 1, 0, 1, 0], [1, 0, 1, 0, 0]], dtype=cam.dtype)[:, :, None, None]
    masked = locate_seeds(cam, feature, label_mask=label)
    for i in range(2):
        for c in range(5):
            if label[i, c, 0, 0] == 0:
                assert masked[i, c].abs().sum() == 0
            else:
                assert torch.equal(masked[i, c], unmasked[i, c])
    assert torch.equal(masked[:, 0], unmasked[:, 0])


def test_label_mask_absent_winner_gets_no_seed():
    """At a pixel won by an absent class, masking leaves no seed at all (it is not reassigned)."""
    cam, feature = grid_case()
    label = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)[None, :, None, None]
    seeds = locate_seeds(cam, feature, label_mask=label)
    assert torch.equal(seeds.sum(1)[0], torch.tensor([[1.0, 1.0], [0.0, 0.0]], dtype=torch.float64))


def test_pixel_validity_mask_zeroes_padding():
    cam, feature = random_case(1, 4, 8, 5, 6, seed=6)
    valid = torch.ones(1, 1, 5, 6, dtype=cam.dtype)
    valid[..., 3:, :] = 0
    valid[..., :, 4:] = 0
    label = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=cam.dtype)[None, :, None, None]
    seeds = locate_seeds(cam, feature, label_mask=valid * label)
    assert seeds[..., 3:, :].abs().sum() == 0
    assert seeds[..., :, 4:].abs().sum() == 0
    assert seeds[:, 3].abs().sum() == 0
    unmasked = locate_seeds(cam, feature)
    assert torch.equal(seeds[:, :3, :3, :4], unmasked[:, :3, :3, :4])


# ---------------------------------------------------------------- prototypes


def test_prototypes_mean_over_seed_pixels_by_hand():
    feature = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=torch.float64).reshape(1, 2, 1, 3)
    seeds = torch.tensor([[1, 0, 0], [0, 1, 1], [0, 0, 0]], dtype=torch.float64).reshape(1, 3, 1, 3)
    protos = prototypes(seeds, feature)
    expected = torch.tensor([[[1.0, 4.0], [2.5, 5.5], [0.0, 0.0]]], dtype=torch.float64)
    torch.testing.assert_close(protos, expected, rtol=0, atol=1e-15)
    torch.testing.assert_close(prototypes(seeds, feature, reduce="sum"), expected * torch.tensor([[1.0], [2.0], [0.0]]))
    torch.testing.assert_close(prototypes(seeds, feature, reduce="hw"), expected * torch.tensor([[1.0], [2.0], [0.0]]) / 3)


def test_prototypes_resize_seeds_nearest():
    feature = torch.arange(2 * 4 * 4, dtype=torch.float64).reshape(1, 2, 4, 4)
    seeds = torch.zeros(1, 2, 2, 2, dtype=torch.float64)
    seeds[0, 0] = 1.0
    seeds[0, 0, 0, 0] = 0.0
    seeds[0, 1, 0, 0] = 1.0
    protos = prototypes(seeds, feature)
    block = feature[0, :, :2, :2].reshape(2, -1).mean(-1)
    rest = (feature[0].reshape(2, -1).sum(-1) - feature[0, :, :2, :2].reshape(2, -1).sum(-1)) / 12
    torch.testing.assert_close(protos[0, 1], block)
    torch.testing.assert_close(protos[0, 0], rest)

    big_seeds = torch.zeros(1, 2, 8, 8, dtype=torch.float64)
    big_seeds[0, 1, 0, 0] = 1.0
    big_seeds[0, 0, 2, 2] = 1.0
    down = prototypes(big_seeds, feature)
    torch.testing.assert_close(down[0, 1], feature[0, :, 0, 0])
    torch.testing.assert_close(down[0, 0], feature[0, :, 1, 1])


def test_prototype_reductions_give_same_is_cam():
    cam, feature = random_case(2, 6, 10, 6, 5, seed=9)
    seeds = locate_seeds(cam, feature)
    maps = {r: is_cam(feature, prototypes(seeds, feature, reduce=r)) for r in ("mean", "sum", "hw")}
    torch.testing.assert_close(maps["sum"], maps["mean"])
    torch.testing.assert_close(maps["hw"], maps["mean"])


def test_prototypes_reject_unknown_reduce():
    cam, feature = random_case(1, 3, 4, 3, 3)
    with pytest.raises(ValueError, match="reduce"):
        prototypes(locate_seeds(cam, feature), feature, reduce="median")


# ---------------------------------------------------------------- IS-CAM


def test_is_cam_equals_relu_cosine():
    g = torch.Generator().manual_seed(4)
    feature = torch.randn(2, 7, 5, 4, generator=g, dtype=torch.float64)
    protos = torch.randn(2, 3, 7, generator=g, dtype=torch.float64)
    expected = F.relu(F.cosine_similarity(feature.unsqueeze(1), protos[:, :, :, None, None], dim=2))
    maps = is_cam(feature, protos)
    torch.testing.assert_close(maps, expected)
    assert (maps >= 0).all() and (maps <= 1 + 1e-12).all()
    assert (maps == 0).any() and (maps > 0).any()


def test_is_cam_by_hand_and_zero_prototype():
    feature = torch.tensor([[3.0, 0.0, -1.0, 1.0], [0.0, 2.0, 0.0, 1.0]], dtype=torch.float64).reshape(1, 2, 2, 2)
    protos = torch.tensor([[[2.0, 0.0], [0.0, 0.0], [1.0, 1.0]]], dtype=torch.float64)
    maps = is_cam(feature, protos)
    expected = torch.tensor(
        [[1.0, 0.0, 0.0, R], [0.0, 0.0, 0.0, 0.0], [R, R, 0.0, 1.0]], dtype=torch.float64
    ).reshape(1, 3, 2, 2)
    torch.testing.assert_close(maps, expected)


# ---------------------------------------------------------------- explore


def test_explore_pipeline_and_no_background_prototype():
    cam, feature = random_case(2, 5, 8, 6, 6, seed=21)
    proto_feature = torch.rand(2, 12, 6, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    label = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 1, 1]], dtype=cam.dtype)[:, :, None, None]
    out = explore(cam, feature, proto_feature, label_mask=label)
    assert torch.equal(out.seeds, locate_seeds(cam, feature, label_mask=label))
    torch.testing.assert_close(out.prototypes, prototypes(out.seeds, proto_feature))
    torch.testing.assert_close(out.is_cam, is_cam(proto_feature, out.prototypes))

    no_bpm = explore(cam, feature, proto_feature, label_mask=label, background_prototype=False)
    torch.testing.assert_close(no_bpm.is_cam[:, 0], 1 - no_bpm.is_cam[:, 1:].amax(1))
    torch.testing.assert_close(no_bpm.is_cam[:, 1:], out.is_cam[:, 1:])


def test_max_normalize():
    maps = torch.tensor([[[[0.0, 2.0], [1.0, 0.5]], [[0.0, 0.0], [0.0, 0.0]]]], dtype=torch.float64)
    out = max_normalize(maps)
    expected = torch.tensor([[[[0.0, 2.0], [1.0, 0.5]], [[0.0, 0.0], [0.0, 0.0]]]], dtype=torch.float64)
    expected[0, 0] /= 2 + EPS
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-15)


# ---------------------------------------------------------------- gradients


def test_prototypes_keep_gradient_seeds_carry_none():
    cam, feature = random_case(1, 4, 6, 5, 5, seed=8)
    cam = cam.clone().requires_grad_(True)
    feature = feature.clone().requires_grad_(True)
    proto_feature = torch.rand(1, 6, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    proto_feature.requires_grad_(True)

    out = explore(cam, feature, proto_feature)
    assert not out.seeds.requires_grad
    assert out.prototypes.requires_grad

    (grad_with,) = torch.autograd.grad(out.is_cam.sum(), proto_feature, retain_graph=True)
    detached = is_cam(proto_feature, out.prototypes.detach())
    (grad_detached,) = torch.autograd.grad(detached.sum(), proto_feature)
    assert grad_with.abs().sum() > 0
    assert not torch.allclose(grad_with, grad_detached)

    (grad_proto,) = torch.autograd.grad(out.prototypes.sum(), proto_feature)
    seed_any = out.seeds.sum(1, keepdim=True).expand_as(proto_feature) > 0
    assert (grad_proto[seed_any] != 0).all()


def test_seeds_do_not_route_gradient_to_cam_or_seed_feature():
    cam, feature = random_case(1, 4, 6, 5, 5, seed=10)
    cam = cam.clone().requires_grad_(True)
    feature = feature.clone().requires_grad_(True)
    out = explore(cam, feature, feature)
    out.is_cam.sum().backward()
    assert cam.grad is None
    assert feature.grad is not None and feature.grad.abs().sum() > 0


def test_structure_iou_is_differentiable_when_chunked():
    g = torch.Generator().manual_seed(13)
    cam = torch.rand(1, 3, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    feature = torch.randn(1, 5, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c, f: structure_iou(c, f, chunk_rows=5), (cam, feature))
