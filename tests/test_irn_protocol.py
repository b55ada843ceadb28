"""The CAM baseline under IRN's protocol: map fusion (sipe.method.cams.irn_cam) and the 0.30 / 0.05 confident-region CRF (sipe.stages.crf.crf_labels with backgrounds)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sipe.method.cams import irn_cam
from sipe.stages.crf import IRN_BACKGROUNDS, crf_labels, evaluate_crf
from sipe.stages.evaluation import Scoring

RED, BLUE, GREEN = (220, 40, 40), (40, 40, 220), (40, 200, 40)

QUIET = Scoring(progress=False)


def two_scales() -> list[torch.Tensor]:
    """Image 2 x 4, two classes. Scale A: 1 x 2 grid with its flipped view; scale B: 2 x 4 grid, no flip."""
    a = torch.tensor([
        [[[4.0, -2.0]], [[-1.0, 2.0]]],   # view 0 (image):   class 0, class 1
        [[[1.0, 3.0]], [[0.0, -5.0]]],    # view 1 (flipped): class 0, class 1
    ])
    b = torch.tensor([[
        [[1.0, -1.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0]],
        [[-3.0, -3.0, -3.0, -3.0], [1.0, 1.0, 1.0, 1.0]],
    ]])
    return [a, b]


def test_irn_cam_against_a_hand_computed_two_scale_example() -> None:
    # Scale A, class 0: ReLU -> view 0 [4, 0], view 1 [1, 3], flipped back [3, 1]; sum [7, 1] (ReLU after the
    # sum would give [7, 0]). Class 1: [0, 2] + flip([0, 0]) = [0, 2].
    # Bilinear 1x2 -> 2x4 (align_corners=False): columns sample x = -0.25 (clamped to 0), 0.25, 0.75, 1.25
    # (clamped to 1): [v0, 0.75 v0 + 0.25 v1, 0.25 v0 + 0.75 v1, v1], the same in both rows:
    #   class 0: [7, 5.5, 2.5, 1]; class 1: [0, 0.5, 1.5, 2].
    # Scale B is at image size, ReLU only: class 0 [[1, 0, 0, 2], [0, 0, 0, 0]]; class 1 [[0]*4, [1]*4].
    # Sum: class 0 [[8, 5.5, 2.5, 3], [7, 5.5, 2.5, 1]] (max 8); class 1 [[0, .5, 1.5, 2], [1, 1.5, 2.5, 3]] (max 3).
    expected = torch.tensor([
        [[8.0, 5.5, 2.5, 3.0], [7.0, 5.5, 2.5, 1.0]],
        [[0.0, 0.5, 1.5, 2.0], [1.0, 1.5, 2.5, 3.0]],
    ])
    expected = expected / (torch.tensor([8.0, 3.0])[:, None, None] + 1e-5)
    out = irn_cam(two_scales(), (2, 4))
    assert out.shape == (2, 2, 4)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_irn_cam_strided_upsampling_then_crop() -> None:
    # strided_up=4: each scale goes to (ceil(2/4)*4, ceil(4/4)*4) = (4, 4), then rows 0..1 are kept.
    # Scale A: height 1 -> 4 is constant, so unchanged. Scale B: rows sample y = -0.25 (-> row 0) and 0.25:
    # [r0, 0.75 r0 + 0.25 r1]: class 0 [[1, 0, 0, 2], [0.75, 0, 0, 1.5]]; class 1 [[0]*4, [0.25]*4].
    expected = torch.tensor([
        [[8.0, 5.5, 2.5, 3.0], [7.75, 5.5, 2.5, 2.5]],
        [[0.0, 0.5, 1.5, 2.0], [0.25, 0.75, 1.75, 2.25]],
    ])
    expected = expected / (torch.tensor([8.0, 2.25])[:, None, None] + 1e-5)
    torch.testing.assert_close(irn_cam(two_scales(), (2, 4), strided_up=4), expected, rtol=0, atol=1e-6)


def test_irn_cam_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="empty"):
        irn_cam([], (2, 2))
    with pytest.raises(ValueError, match="2 or 1"):
        irn_cam([torch.zeros(3, 1, 2, 2)], (2, 2))


def stripes(values: list[float], h: int = 16, w: int = 16) -> np.ndarray:
    return np.concatenate([np.full((h, w), v, np.float32) for v in values], axis=1)


def test_crf_labels_with_irn_constant_backgrounds() -> None:
    """Foreground CAM 0.02 / 0.15 / 0.60 on three flat stripes: above 0.30 only the last (foreground-confident),
    above 0.05 the last two (background-confident); combined: background, void, class."""
    img = np.concatenate([np.full((16, 16, 3), c, np.uint8) for c in (RED, GREEN, BLUE)], axis=1)
    maps = np.stack([stripes([0.99, 0.99, 0.99]), stripes([0.02, 0.15, 0.60])])  # channel 0 is ignored
    keys = np.array([0, 12])
    assert IRN_BACKGROUNDS == (0.30, 0.05)
    out = crf_labels(img, maps, keys, backgrounds=IRN_BACKGROUNDS)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :16], 0)
    np.testing.assert_array_equal(out[:, 16:32], 255)
    np.testing.assert_array_equal(out[:, 32:], 12)
    np.testing.assert_array_equal(crf_labels(img, maps, keys, backgrounds=(0.1, 0.01))[:, 16:], 12)
    with pytest.raises(ValueError, match="keys"):
        crf_labels(img, maps, np.array([1, 12]), backgrounds=IRN_BACKGROUNDS)


def test_evaluate_crf_with_irn_backgrounds(tmp_path: Path) -> None:
    img = np.concatenate([np.full((16, 16, 3), c, np.uint8) for c in (RED, GREEN, BLUE)], axis=1)
    maps = np.stack([stripes([0.0, 0.0, 0.0]), stripes([0.02, 0.15, 0.60])])
    root, maps_dir = tmp_path / "voc", tmp_path / "maps"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClassAug").mkdir(parents=True)
    maps_dir.mkdir()
    Image.fromarray(img).save(root / "JPEGImages" / "a.jpg", quality=100, subsampling=0)
    gt = np.zeros(img.shape[:2], np.uint8)
    gt[:, 16:] = 12
    Image.fromarray(gt).save(root / "SegmentationClassAug" / "a.png")
    np.savez(maps_dir / "a.npz", keys=np.array([0, 12]), cam=maps.astype(np.float16))
    res = evaluate_crf(maps_dir, root, ["a"], which="cam", backgrounds=IRN_BACKGROUNDS, scoring=QUIET)
    assert res.void_ignored.miou == pytest.approx(100.0)
    assert res.void_fraction == pytest.approx(1 / 3)
    assert "IRN backgrounds 0.3 / 0.05" in res.void_as_background.note
