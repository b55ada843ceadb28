"""Tests for sipe.infra.divergence: a run whose loss explodes stops with a message naming the run and the fix."""
from __future__ import annotations

import math

import pytest

from sipe.infra.config import get_profile
from sipe.segmentation import network as seg
from sipe.data import voc
from sipe.infra.divergence import DivergenceError, DivergenceGuard, chain


def feed(guard: DivergenceGuard, losses: list[float]) -> int:
    """Steps fed before the guard raised (len(losses) when it never did)."""
    for step, loss in enumerate(losses, 1):
        try:
            guard(step, {"loss": loss})
        except DivergenceError:
            return step
    return len(losses)


def test_the_guard_stops_the_first_subset_runs_explosion_and_names_run_and_setting(tmp_path):
    losses = [3.9, 3.5, 3.2, 3.0] + [200.0, 120.0, 80.0, 60.0] * 3
    guard = DivergenceGuard(tmp_path / "segnet", "segmentation lr", factor=4.0, window=4)
    with pytest.raises(DivergenceError, match=r"segnet: the training loss diverged: .* lower the segmentation lr, then delete"):
        for step, loss in enumerate(losses, 1):
            guard(step, {"loss": loss})
    assert feed(DivergenceGuard(tmp_path, "lr", factor=4.0, window=4), losses) == 8  # first full window after the start


def test_the_guard_lets_a_falling_or_noisy_loss_train_on(tmp_path):
    falling = [3.9 * 0.97 ** i for i in range(200)]
    noisy = [0.4 + (0.35 if i % 7 == 0 else -0.1) * (i % 3) for i in range(200)]
    spike = [1.0] * 20 + [30.0] + [1.0] * 50  # one bad batch is not a divergence
    for losses in (falling, noisy, spike):
        assert feed(DivergenceGuard(tmp_path, "lr", factor=4.0, window=20), losses) == len(losses)
    with pytest.raises(ValueError):
        DivergenceGuard(tmp_path, "lr", factor=1.0)


def test_chain_calls_every_callback_in_order_and_skips_none():
    seen = []
    chain(None, lambda s, r: seen.append(("a", s)), lambda s, r: seen.append(("b", r["loss"])))(3, {"loss": 1.5})
    assert seen == [("a", 3), ("b", 1.5)]


def test_a_segmentation_run_whose_loss_explodes_stops_with_divergence_error(synthetic_root, tmp_path):
    """At lr 0.5 the tiny net's loss goes 3.4 -> ~1e4 -> ~1e5 and stays finite: without the guard the run
    trains to its end, with it the run stops at the first window past the start."""
    cfg = get_profile("smoke").seg.override(pretrained=False, crop_size=64, batch_size=2, epochs=10, max_steps=10,
                                                 lr=0.5)
    ids = voc.read_split(synthetic_root, "train_aug")[:4]
    unguarded = seg.train_segmentation(cfg, synthetic_root, ids, "gt", 21, tmp_path / "unguarded", device="cpu",
                                       progress=False, divergence_factor=None)
    losses = [float(line.split(",")[2]) for line in unguarded.metrics.read_text().splitlines()[1:]]
    assert unguarded.steps == 10 and all(math.isfinite(x) for x in losses) and max(losses) > 100 * losses[0]
    with pytest.raises(DivergenceError, match=r"run: the training loss diverged: its mean over steps 2-2 .* lower the "
                                              r"segmentation lr"):
        seg.train_segmentation(cfg, synthetic_root, ids, "gt", 21, tmp_path / "run", device="cpu", progress=False,
                               divergence_factor=4.0, divergence_window=1)
    assert not (tmp_path / "run" / "final.pt").exists()
