"""Stopping a training run whose loss explodes, with a message that says what to change.

A loss that becomes non-finite is caught by the training loops themselves; a loss that stays finite but
explodes (the first subset segmentation net went from 4 to 200 in ten steps at lr 0.01, then trained on for
an hour at 30-80) is caught here: `DivergenceGuard` is an `on_step` callback of the training loop `sipe.stages.fit.fit`.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable
from pathlib import Path

from .errors import SipeError

StepCallback = Callable[[int, dict[str, float]], None]

DIVERGENCE_FACTOR = 4.0
"""The default: a run stops when its loss's recent mean is 4x where it started."""
DIVERGENCE_WINDOW = 20


class DivergenceError(SipeError):
    """A training loss rose far above where it started: the run stops instead of training on."""


class DivergenceGuard:
    """`on_step(step, row)` callback: raises DivergenceError when the mean of `row[key]` over the last
    `window` steps exceeds `factor` x its mean over the first `window` steps this process saw.

    run_dir names the run in the message; setting names what to lower (e.g. 'segmentation lr').
    A run resumed from a checkpoint takes its reference from the steps after the resume.
    """

    def __init__(self, run_dir: str | Path, setting: str, factor: float = DIVERGENCE_FACTOR,
                 window: int = DIVERGENCE_WINDOW, key: str = "loss") -> None:
        if factor <= 1 or window < 1:
            raise ValueError(f"factor must be > 1 and window >= 1, got factor={factor}, window={window}")
        self.run_dir, self.setting, self.factor, self.window, self.key = Path(run_dir), setting, factor, window, key
        self.first: list[float] = []
        self.recent: deque[float] = deque(maxlen=window)

    def __call__(self, step: int, row: dict[str, float]) -> None:
        value = float(row[self.key])
        if len(self.first) < self.window:
            self.first.append(value)
            return
        self.recent.append(value)
        if len(self.recent) < self.window:
            return
        start, now = sum(self.first) / self.window, sum(self.recent) / self.window
        if now > self.factor * start:
            raise DivergenceError(
                f"{self.run_dir}: the training {self.key} diverged: its mean over steps {step - self.window + 1}-{step} "
                f"is {now:.3g}, {now / start:.1f}x its mean over the first {self.window} steps ({start:.3g}); "
                f"lower the {self.setting}, then delete {self.run_dir} (its checkpoint holds the diverged weights) "
                "and rerun")


def chain(*callbacks: StepCallback | None) -> StepCallback:
    """One `on_step` callback calling each of `callbacks` (None skipped) in order."""
    todo = [c for c in callbacks if c is not None]

    def call(step: int, row: dict[str, float]) -> None:
        for c in todo:
            c(step, row)

    return call


def guarded(on_step: StepCallback | None, run_dir: str | Path, setting: str, factor: float | None = DIVERGENCE_FACTOR,
            window: int = DIVERGENCE_WINDOW) -> StepCallback:
    """`on_step` preceded by a `DivergenceGuard` over `run_dir` (none when `factor` is None)."""
    guard = None if factor is None else DivergenceGuard(run_dir, setting, factor, window)
    return chain(guard, on_step)
