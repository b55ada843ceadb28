"""Bootstrap intervals of a claim's delta over seeds and the items of each seed (images, or (image, class) pairs).

A seed's `Evidence` is its items and the delta they give under item weights; `bootstrap_claim` resamples seeds
and, within each, items, so that the interval is wide when the seeds disagree and when a few items carry the
effect.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_SAMPLES = 2000
"""Draws of a bootstrap interval."""


def _miou_of_counts(tp: np.ndarray, gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """mIoU (percent, (...)) over the classes present in the ground truth, from the true-positive, ground-truth
    and predicted pixel counts (...,C)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(gt > 0, tp / (gt + pred - tp), np.nan)
    return 100.0 * np.nanmean(iou, axis=-1)


@dataclass(frozen=True)
class Evidence:
    """One seed's per-item evidence of a claim's delta: `size` items (images, or (image, class) pairs) and
    `delta(weights)`, the delta (S,) with the items weighted by weights (S, size): the counts of S resamples,
    or ones for the seed's own delta."""

    size: int
    delta: Callable[[np.ndarray], np.ndarray]


def confusion_evidence(a: np.ndarray, b: np.ndarray) -> Evidence:
    """Evidence of mIoU(a) - mIoU(b) from the per-image confusions (N,C,C) of two readings of the same N images."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"confusions differ in shape: {a.shape} vs {b.shape}")

    def counts(c: np.ndarray) -> np.ndarray:
        c = c.astype(np.float64)
        return np.stack([np.diagonal(c, axis1=-2, axis2=-1), c.sum(-1), c.sum(-2)])

    ca, cb = counts(a), counts(b)
    return Evidence(a.shape[0], lambda w: _miou_of_counts(*(w @ ca)) - _miou_of_counts(*(w @ cb)))


def paired_evidence(a: np.ndarray, b: np.ndarray) -> Evidence:
    """Evidence of mean(a - b) over paired items (N,)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape or len(a) == 0:
        raise ValueError(f"need two equal-length 1-d samples, got shapes {a.shape} and {b.shape}")
    d = a - b
    return Evidence(len(d), lambda w: (w @ d) / w.sum(-1))


def _resample_counts(rng: np.random.Generator, n: int, samples: int) -> np.ndarray:
    """float64 (samples, n): how often each of n items is drawn in each of `samples` resamples of n with replacement."""
    return np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(samples)]).astype(np.float64)


def bootstrap_claim(evidence: Sequence[Evidence], samples: int = BOOTSTRAP_SAMPLES, seed: int = 0,
                    level: float = 0.95) -> tuple[float, float, float]:
    """(delta, low, high): the mean over seeds of each seed's delta, and its percentile interval under a
    bootstrap over seeds and items: each draw picks as many seeds as there are, with replacement, resamples
    each picked seed's items with replacement and averages the picked seeds' deltas. So the interval is wide
    when the seeds disagree and when a few items carry the effect. One seed: the bootstrap over its items."""
    if not evidence:
        raise ValueError("no seed's evidence to bootstrap")
    rng = np.random.default_rng(seed)
    k = len(evidence)
    picks = np.zeros((samples, k), dtype=np.int64) if k == 1 else rng.integers(0, k, (samples, k))
    draws = np.empty((samples, k))
    for s, ev in enumerate(evidence):
        where = picks == s
        if where.any():
            draws[where] = ev.delta(_resample_counts(rng, ev.size, int(where.sum())))
    delta = float(np.mean([ev.delta(np.ones((1, ev.size)))[0] for ev in evidence]))
    lo, hi = np.percentile(draws.mean(1), [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return delta, float(lo), float(hi)
