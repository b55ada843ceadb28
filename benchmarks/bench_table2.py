"""Time the Table 2 stages of a profile on real data: IR labels, IRN training, random walk, segmentation
training and prediction; prints per-image / per-step figures and the implied cost of one pass over the
profile's pseudo-labelled images (`sipe.segmentation.irn.IRNConfig.pseudo_split`: train_aug, or VOC train in the subset
profile) and over val. The figures go into `irn.SUBSET_CPU_SECONDS` / `segmentation.SUBSET_CPU_SECONDS`.

    python benchmarks/bench_table2.py --data-root ../shared/data/voc2012_subset --maps DIR [--profile subset]
        [--images 8] [--steps 10] [--out /tmp/bench_table2]

--maps: a maps folder (`<id>.npz`, e.g. study.maps('sipe')) of training images; its first --images ids are
used for the per-image stages. Training throughput is measured over --steps steps on the ground-truth masks
of the pseudo-labelled images (the cost of a step does not depend on the labels) and extrapolated to one epoch.
Run it with OMP_NUM_THREADS=1 on a shared machine: the process CPU seconds of one thread are then not
inflated by OpenMP threads spinning while they wait for a core.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from sipe.segmentation import irn, network as segmentation
from sipe.data import voc
from sipe.infra.config import get_profile
from sipe.stages.evaluation import map_ids


CPU = {}


def timed(fn):
    """(result, wall seconds); the process CPU seconds (all threads) of the call go to CPU['last']."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    CPU["last"] = time.process_time() - c0
    return out, time.perf_counter() - t0


def cpu(n: int, unit: str) -> str:
    return f" [CPU {CPU['last'] / n:.2f} s/{unit}]"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", required=True, type=Path)
    p.add_argument("--maps", required=True, type=Path)
    p.add_argument("--profile", default="subset")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--out", type=Path, default=Path("/tmp/bench_table2"))
    a = p.parse_args()
    root, out = a.data_root, a.out
    icfg = get_profile(a.profile).irn.override(label_workers=1)
    split = icfg.pseudo_split or "train_aug"
    train_ids = voc.read_split(root, split)
    n_train, n_val = len(train_ids), len(voc.read_split(root, "val"))
    print(f"# wall-clock figures; [CPU ...] = process CPU seconds (both threads), independent of other jobs' load")
    print(f"# bench_table2 {time.strftime('%Y-%m-%d %H:%M')}: profile {a.profile}, torch threads {torch.get_num_threads()}, "
          f"load avg {os.getloadavg()[0]:.1f}")
    scfg = get_profile(a.profile).seg
    ids = map_ids(a.maps)[: a.images]
    proto = irn.PROTOCOLS["sipe"]

    _, dt = timed(lambda: irn.make_ir_labels(a.maps, root, ids, out / "ir", proto, icfg, progress=False))
    print(f"IR labels (2 denseCRF runs, {icfg.crf_iterations} it.): {dt / len(ids):.2f} s/img -> {split} "
          f"{n_train * dt / len(ids) / 60:.1f} min on one core" + cpu(len(ids), "img"))

    steps = a.steps
    labels = _gt_labels(root, train_ids, out / "ir_gt")
    run, dt = timed(lambda: irn.train_irn(icfg.override(max_steps=steps, epochs=1), root, train_ids, labels, out / "irn_run",
                                          "cpu", progress=False))
    rate = steps * icfg.batch_size / dt
    print(f"IRN training (crop {icfg.crop_size}, batch {icfg.batch_size}): {rate:.1f} img/s -> one epoch of "
          f"{n_train} images {n_train / rate / 60:.1f} min, {icfg.epochs} epochs {icfg.epochs * n_train / rate / 60:.1f} min"
          + cpu(steps * icfg.batch_size, "img"))

    _, dt = timed(lambda: irn.make_pseudo_labels(run.checkpoint, a.maps, root, ids, out / "pseudo", proto, icfg,
                                                 "cpu", progress=False))
    print(f"random walk ({icfg.rw_method}, radius {icfg.infer_radius}, 2^{icfg.exp_times} steps, scale "
          f"{icfg.infer_scale}): {dt / len(ids):.2f} s/img -> {split} {n_train * dt / len(ids) / 60:.1f} min" + cpu(len(ids), "img"))

    srun, dt = timed(lambda: segmentation.train_segmentation(scfg.override(max_steps=steps, epochs=1), root, train_ids, "gt",
                                                            21, out / "seg_run", "cpu", progress=False))
    rate = steps * scfg.batch_size / dt
    print(f"segmentation training ({scfg.backbone}, crop {scfg.crop_size}, batch {scfg.batch_size}): {rate:.1f} img/s "
          f"-> one epoch {n_train / rate / 60:.1f} min, {scfg.epochs} epochs {scfg.epochs * n_train / rate / 60:.1f} min"
          + cpu(steps * scfg.batch_size, "img"))

    val = voc.read_split(root, "val")[: a.images]
    for mode in segmentation.MODES:
        _, dt = timed(lambda: segmentation.predict(srun.checkpoint, root, val, out / "pred", (mode,), "cpu", False))
        print(f"prediction {mode}: {dt / len(val):.2f} s/img -> val ({n_val}) {n_val * dt / len(val) / 60:.1f} min" + cpu(len(val), "img"))


def _gt_labels(root: Path, ids, folder: Path) -> Path:
    """Ground-truth masks copied as a label folder (stand-in IR labels for timing IRN training)."""
    from sipe.stages.labelled import save_label_atomic

    for i in ids:
        if not (folder / f"{i}.png").exists():
            save_label_atomic(folder / f"{i}.png", voc.load_mask(root, i))
    return folder


if __name__ == "__main__":
    main()
