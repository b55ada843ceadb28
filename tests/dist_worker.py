"""One rank of the distributed tests, started by torchrun: `python tests/dist_worker.py train|maps ...`.

train ROOT RUN_DIR [--crash-rank R --crash-step S] [--set k=v ...]: `sipe.stages.train.train` of `tiny_config`.
maps ROOT CHECKPOINT OUT_DIR [--crash-rank R --crash-after K] [--set k=v ...]: `sipe.stages.maps.make_maps`; rank R
raises after writing K map files.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sipe.infra import distributed
from sipe.infra.config import ExperimentConfig, get_profile


class Crash(RuntimeError):
    pass


def tiny_config(root: str | Path, **overrides) -> ExperimentConfig:
    """Smoke profile on synthetic data: 8 images, global batch 4, 2 epochs (4 steps), checkpoint every 2 steps,
    maps of 4 `train` images at scales (0.5, 0.25)."""
    return get_profile("smoke", **{
        "data.root": str(root), "data.max_images": 8, "train.batch_size": 4, "train.epochs": 2,
        "train.max_steps": None, "train.checkpoint_every_steps": 2, "model.pretrained": False, "device": "cpu",
        "infer.split": "train", **overrides})


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["train", "maps"])
    p.add_argument("paths", nargs="+")
    p.add_argument("--crash-rank", type=int, default=-1)
    p.add_argument("--crash-step", type=int, default=0)
    p.add_argument("--crash-after", type=int, default=0)
    p.add_argument("--set", action="append", default=[])
    a = p.parse_args(argv)
    cfg = tiny_config(a.paths[0], **dict(s.split("=", 1) for s in a.set))
    crashing = distributed.rank() == a.crash_rank
    if a.mode == "train":
        from sipe.stages.train import train

        def on_step(step: int, row: dict) -> None:
            if crashing and step == a.crash_step:
                raise Crash(f"rank {distributed.rank()} crashes at step {step}")

        train(cfg, a.paths[1], progress=False, on_step=on_step)
        return 0
    import sipe.stages.maps as maps

    if crashing:
        written = []
        real = maps.atomic_savez

        def savez(path, **arrays):
            real(path, **arrays)
            written.append(path)
            if len(written) >= a.crash_after:
                raise Crash(f"rank {distributed.rank()} crashes after {len(written)} map file(s)")

        maps.atomic_savez = savez
    maps.make_maps(cfg, a.paths[1], a.paths[2], progress=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
