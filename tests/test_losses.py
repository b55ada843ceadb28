"""Tests for sipe.method.losses: multi-label classification loss and the GSC loss."""
from __future__ import annotations

import math

import pytest
import torch

from sipe.method.losses import classification_loss, gsc_loss

EPS = 1e-5


def test_classification_loss_by_hand():
    score = torch.tensor([[0.0, 2.0], [-1.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([[1, 0], [0, 1]], dtype=torch.uint8)

    def softplus(x: float) -> float:
        return math.log1p(math.exp(x))

    image0 = (softplus(-0.0) + softplus(2.0)) / 2
    image1 = (softplus(-1.0) + softplus(-0.0)) / 2
    expected = (image0 + image1) / 2
    assert classification_loss(score, labels).item() == pytest.approx(expected, rel=1e-12)


def test_gsc_loss_by_hand():
    cam = torch.tensor([[[[0.5, 1.0]], [[0.0, 0.2]]]], dtype=torch.float64)
    iscam = torch.tensor([[[[0.2, 0.4]], [[0.0, 0.1]]]], dtype=torch.float64)
    diffs = [
        abs(0.5 - 0.2 / (0.4 + EPS)),
        abs(1.0 - 0.4 / (0.4 + EPS)),
        0.0,
        abs(0.2 - 0.1 / (0.1 + EPS)),
    ]
    assert gsc_loss(cam, iscam).item() == pytest.approx(sum(diffs) / 4, rel=1e-12)
    assert gsc_loss(cam, iscam).item() == pytest.approx(0.2, abs=1e-4)


def test_gsc_loss_zero_is_cam_channel():
    cam = torch.tensor([[[[0.3, 0.1]], [[0.6, 1.0]]]], dtype=torch.float64)
    iscam = torch.tensor([[[[0.0, 0.0]], [[0.6, 1.0]]]], dtype=torch.float64)
    expected = (0.3 + 0.1 + abs(0.6 - 0.6 / (1 + EPS)) + abs(1.0 - 1.0 / (1 + EPS))) / 4
    assert gsc_loss(cam, iscam).item() == pytest.approx(expected, rel=1e-12)


def test_gsc_loss_normalises_is_cam_itself():
    g = torch.Generator().manual_seed(0)
    cam = torch.rand(2, 4, 5, 6, generator=g, dtype=torch.float64)
    iscam = torch.rand(2, 4, 5, 6, generator=g, dtype=torch.float64)
    base = gsc_loss(cam, iscam)
    for scale in (0.3, 7.0, 250.0):
        assert gsc_loss(cam, scale * iscam).item() == pytest.approx(base.item(), abs=1e-4)
    assert gsc_loss(cam, 0.3 * iscam).item() != pytest.approx(
        (cam - 0.3 * iscam).abs().mean().item(), abs=1e-3
    )


def test_gsc_loss_gradient_reaches_both_inputs():
    g = torch.Generator().manual_seed(1)
    cam = torch.rand(1, 3, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    iscam = torch.rand(1, 3, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    gsc_loss(cam, iscam).backward()
    assert cam.grad is not None and iscam.grad is not None
    assert cam.grad.abs().sum() > 0 and iscam.grad.abs().sum() > 0
    torch.testing.assert_close(cam.grad.abs(), torch.full_like(cam, 1 / cam.numel()))


def test_gsc_loss_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="one shape"):
        gsc_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 2, 4, 4))
