"""The study's segmentation unit (Table 2, Fig. 6) and the COCO path (Table 3).

A unit `segmentation-s<seed>` runs after the classification units of `sipe.study.pipeline.plan` (`plan`;
the study's whole plan is `sipe.study.plan.plan`). For SIPE and the CAM baseline (each with its label protocol, `sipe.segmentation.irn.PROTOCOLS`): maps
of the pseudo-labelled images (`pseudo_images`: train_aug in the paper; VOC train in the subset profile,
where the classification units' maps of train are refined), IR labels (denseCRF confident regions), IRN,
random-walk pseudo labels, each evaluated on the pseudo-labelled images of the evaluated split (VOC train);
then the segmentation net trained on SIPE's pseudo labels and once on the ground truth of the same images,
evaluated on val single scale, multi-scale + flip, and + denseCRF. `cpu_budget` estimates the subset
profile's CPU time of a unit from measured per-image costs.

Every stage is a folder `<work_dir>/segmentation/<stage>/<name>-s<seed>-<key>` keyed by its inputs and
settings, locked while written, resumed when interrupted, with its wall time in `wall.json`. A finished
unit writes `runs/segmentation-s<seed>.csv` (rows of `sipe.study.pipeline.RESULT_COLUMNS`), `.json`
(provenance, stage folders, wall time per stage) and `confusions/segmentation-s<seed>.npz` (per-image
confusions) into the results folder; a rerun skips it while its configuration and data are unchanged.
`sipe.study.segresults` reads them into the chapter's tables, claims and notes.
"""
from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..segmentation import irn, network as segmentation
from . import pipeline
from ..infra import provenance as prov
from ..infra.config import DEEPLAB_R101, ConfigError, ExperimentConfig, get_profile, variant_config
from ..data import coco, voc
from ..stages.labelled import GROUND_TRUTH, LabelDirLabeler
from ..stages.evaluation import Reading, accumulate_confusion, evaluate_readings, miou_result
from ..infra.locks import folder_lock
from ..method.backbones import check_backbone
from ..stages.maps import STRUCTURE
from ..infra.runtime import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json, resolve_device
from ..infra.errors import UnitNotComputedError
from .records import RESULT_COLUMNS, has_record, TIDY_COLUMNS, results_dir_for, unit_paths, write_table

UNIT_VARIANT = "segmentation"
REFINED: dict[str, str] = {"sipe": "sipe", "cam": "irn"}
"""The variants refined into pseudo labels and the label protocol of each (`sipe.segmentation.irn.PROTOCOLS`)."""
GT_LABELS = "ground_truth"
VAL_SPLIT = "val"
MODE_NAMES = {"ss": "single scale", "ms": "multi-scale + flip", "ms_crf": "multi-scale + flip + denseCRF"}
PAPER_ROW = "SIPE (ResNet101)"
CODE_SOURCES = ("sipe/study/segstudy.py", "sipe/segmentation/irn.py", "sipe/segmentation/network.py", "sipe/stages/labelled.py")
WALL_FILE = "wall.json"
WALL_HEARTBEAT_S = 60.0
"""How often a running stage rewrites its `wall.json`: a killed session loses at most this much of its wall time."""


def refined_variants(cfg: ExperimentConfig) -> list[str]:
    return [v for v in REFINED if v in cfg.study.variants]


def plan(cfg: ExperimentConfig) -> list[pipeline.Unit]:
    """The segmentation units: one per seed of the study when SIPE and the CAM baseline are multi-seed, else
    the first seed only; none without SIPE in the study's variants."""
    st = cfg.study
    if "sipe" not in st.variants:
        return []
    multi = all(v in st.multi_seed for v in refined_variants(cfg))
    return [pipeline.Unit(UNIT_VARIANT, s) for s in (st.seeds if multi else st.seeds[:1])]


def prepare_maps(cfg: ExperimentConfig, work_dir: str | Path, units: Sequence[pipeline.Unit], progress: bool) -> None:
    """The maps the segmentation `units` refine, made on every rank (under torchrun each process makes its
    share) before rank 0 alone runs their single-process stages."""
    for u in units:
        for variant in refined_variants(cfg):
            pipeline.maps(maps_config(cfg, u.seed), work_dir, variant, map_readings(cfg, variant), progress)


def settings(cfg: ExperimentConfig, seed: int) -> tuple[irn.IRNConfig, segmentation.SegConfig]:
    """The configuration's IRN and segmentation settings (`cfg.irn`, `cfg.seg`) with the unit's seed."""
    check_backbone("irn.backbone", cfg.irn.backbone)
    check_backbone("seg.backbone", cfg.seg.backbone, (DEEPLAB_R101,))
    return cfg.irn.override(seed=seed), cfg.seg.override(seed=seed)


def pseudo_images(cfg: ExperimentConfig) -> tuple[str, int | None]:
    """(split, image cap) of the images pseudo-labelled, which train IRN and the segmentation nets: the IRN
    setting `irn.pseudo_split` ('' = data.train_split); the training split is capped by data.max_images, the
    evaluated split (infer.split) by the classification units' infer.max_images, so that their maps of it are
    the maps refined."""
    split = cfg.irn.pseudo_split or cfg.data.train_split
    if split == cfg.data.train_split:
        return split, cfg.data.max_images
    return split, cfg.infer.max_images if split == cfg.infer.split else None


def reuses_unit_maps(cfg: ExperimentConfig) -> bool:
    """True when the pseudo-labelled images are the classification units' evaluated split and not their
    training split (COCO's Table 3 maps its training split itself): their maps are refined, none are made."""
    split = pseudo_images(cfg)[0]
    return split != cfg.data.train_split and split == cfg.infer.split


def map_readings(cfg: ExperimentConfig, variant: str) -> tuple[str, ...]:
    """The seed methods of the refined maps: the classification unit's (so its maps folder is the one
    refined) when `reuses_unit_maps`, else structure-aware seeds only."""
    return pipeline.unit_seed_methods(cfg, variant) if reuses_unit_maps(cfg) else (STRUCTURE,)


def maps_config(cfg: ExperimentConfig, seed: int) -> ExperimentConfig:
    """`cfg` with the seed, making maps of the pseudo-labelled images (`pseudo_images`)."""
    return pipeline.on_split(cfg.override(**{"train.seed": seed}), *pseudo_images(cfg))


def code_hashes() -> dict[str, str]:
    """The stage code hashes of `sipe.infra.provenance` plus 'segmentation' over the code of CODE_SOURCES (their
    docstrings, comments and layout left out)."""
    h = hashlib.sha256()
    for path in sorted(p for pattern in CODE_SOURCES for p in prov.REPO_ROOT.glob(pattern)):
        h.update(path.relative_to(prov.REPO_ROOT).as_posix().encode())
        h.update(prov.normalized_source(path.read_text()).encode())
    return {**prov.stage_code_hashes(), UNIT_VARIANT: h.hexdigest()[:12]}


def unit_identity(cfg: ExperimentConfig, seed: int) -> dict[str, str]:
    """What a segmentation unit's results must match to be reused or published: the maps' settings of the
    refined variants, the IRN and segmentation settings, and the fingerprints of the data read."""
    irn_cfg, seg_cfg = settings(cfg, seed)
    root = cfg.data.resolved_root()
    upstream = {v: (variant_config(maps_config(cfg, seed), v).stage_hash("maps"), asdict(irn.PROTOCOLS[REFINED[v]]),
                    map_readings(cfg, v)) for v in refined_variants(cfg)}
    return {
        "config_hash": irn.stage_key(upstream, irn_cfg.result_dict(), seg_cfg.result_dict(),
                                     cfg.eval.present_classes_only),
        "data_train": voc.fingerprint(root, *pseudo_images(cfg)),
        "data_eval": voc.fingerprint(root, cfg.infer.split),
        "data_val": voc.fingerprint(root, VAL_SPLIT, seg_cfg.max_eval_images),
    }


def _digest(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def _row(quantity: str, reading: str, variant: str, seed: int, split: str, value: float, n: int | None,
         background: str = "estimated", threshold: float | None = None, cls: str = "") -> dict[str, Any]:
    return {"quantity": quantity, "reading": reading, "background": background, "threshold": threshold,
            "class": cls, "variant": variant, "seed": seed, "split": split, "value": float(value), "n_images": n}


class _Heartbeat:
    """A context calling `beat()` every `period` seconds from a daemon thread while its block runs (None: nothing)."""

    def __init__(self, beat: Callable[[], None] | None, period: float) -> None:
        self.beat, self.period = beat, period
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.period):
            self.beat()

    def __enter__(self) -> "_Heartbeat":
        if self.beat is not None:
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()


class _Stages:
    """The cached stages of one seed: folders, wall times and the results rows and confusions they give."""

    def __init__(self, cfg: ExperimentConfig, work_dir: str | Path, seed: int, progress: bool = True,
                 work_name: str = UNIT_VARIANT) -> None:
        self.cfg, self.seed, self.progress = cfg, seed, progress
        self.work = Path(work_dir)
        self.base = self.work / work_name
        self.irn_cfg, self.seg_cfg = settings(cfg, seed)
        self.root = cfg.data.resolved_root()
        k, self.class_names = coco.dataset_info(cfg.data.dataset)
        self.num_classes = k + 1
        self.present = "gt" if cfg.eval.present_classes_only else None
        self.wall: dict[str, float] = {}
        self.folders: dict[str, str] = {}
        self.rows: list[dict[str, Any]] = []
        self.store: dict[str, np.ndarray] = {}

    @property
    def device(self) -> str:
        return self.cfg.device

    def train_ids(self) -> list[str]:
        """The images the pseudo labels are made for and the segmentation net trains on (`pseudo_images`)."""
        split, cap = pseudo_images(self.cfg)
        return voc.read_split(self.root, split)[:cap]

    def eval_ids(self) -> list[str]:
        """The pseudo-labelled images in the evaluated split (VOC train): where the pseudo labels are scored."""
        split = self.cfg.infer.split
        wanted = set(voc.read_split(self.root, split))
        ids = [i for i in self.train_ids() if i in wanted]
        if not ids:
            raise voc.DataError(f"none of the {pseudo_images(self.cfg)[0]} images is listed in "
                                f"{voc.split_path(self.root, split)}; the pseudo labels are scored on the training "
                                f"images that have {split} ground truth: rebuild the split lists (data_prep)")
        return ids

    def val_ids(self) -> list[str]:
        return voc.read_split(self.root, VAL_SPLIT)[: self.seg_cfg.max_eval_images]

    def stage(self, kind: str, name: str, key_parts: Sequence[Any], fn: Callable[[Path], Any]) -> Any:
        """fn(folder) in the locked folder `<base>/<kind>/<name>-s<seed>-<key>`; its wall time summed over
        the sessions that computed it (`wall.json`) goes to `self.wall['<kind>_<name>']`."""
        folder = self.base / kind / f"{name}-s{self.seed}-{irn.stage_key(*key_parts)}"
        record = folder / WALL_FILE
        with folder_lock(folder):
            before = read_json(record) if record.exists() else {"seconds": 0.0, "finished": False}
            t0, finished = time.perf_counter(), False

            def write() -> None:
                atomic_write_json(record, {"seconds": before["seconds"] + time.perf_counter() - t0, "finished": finished})

            try:
                with _Heartbeat(write if not before["finished"] else None, WALL_HEARTBEAT_S):
                    out = fn(folder)
                finished = True
            finally:
                if not before["finished"]:
                    write()
        self.wall[f"{kind}_{name}"] = float(read_json(record)["seconds"])
        self.folders[f"{kind}_{name}"] = str(folder.relative_to(self.work))
        return out

    def confusions(self, source: str | Path, ids: Sequence[str], void_as: int | None = None) -> np.ndarray:
        """int64 (N,C,C) per-image confusions of the label maps of `source` ('gt' or a folder of PNGs)."""
        return accumulate_confusion(ids, LabelDirLabeler(str(self.root), str(source)), self.root, self.num_classes,
                                    void_as=void_as, progress=self.progress, desc=f"evaluating {Path(source).name}",
                                    per_image=True)[:, 0]

    def score(self, conf: np.ndarray, variant: str, reading: str, split: str, background: str = "estimated",
              threshold: float | None = None, per_class: bool = False, gt_pixels: np.ndarray | None = None) -> float:
        """Add the rows (mIoU, per-class IoU) and the confusions of one reading; returns the mIoU (gt_pixels:
        the ground truth's pixels per class when `conf` ignores void predictions, as in `miou_result`)."""
        n = conf.shape[0]
        r = miou_result(conf.sum(0), self.class_names, self.present, split, n, gt_pixels=gt_pixels)
        self.rows.append(_row("miou", reading, variant, self.seed, split, r.miou, n, background, threshold))
        if per_class:
            self.rows += [_row("iou", reading, variant, self.seed, split, v, n, background, threshold, name)
                          for name, v in r.per_class["iou"].items()]
        self.store[f"{split}/{variant}/{reading}"] = conf.astype(np.int32)
        return r.miou

    def loss_row(self, metrics: Path, reading: str, variant: str) -> None:
        m = pd.read_csv(metrics)
        tail = m["loss"].tail(max(1, len(m) // 10))
        self.rows.append(_row("train_loss_last10pct", reading, variant, self.seed, pseudo_images(self.cfg)[0],
                              tail.mean(), None, ""))

    def maps(self, variant: str) -> Path:
        """The variant's finished maps of the pseudo-labelled images (the classification unit's folder, its
        wall time not counted again, when `reuses_unit_maps`; trained and mapped now if needed; found without
        touching the training stage when finished, so rank 0 alone can read them under torchrun)."""
        t0 = time.perf_counter()
        mcfg = maps_config(self.cfg, self.seed)
        vcfg, readings = variant_config(mcfg, variant), map_readings(self.cfg, variant)
        final = pipeline.run_dir_for(vcfg, self.work, variant) / "final.pt"
        out = pipeline.maps_dir_for(vcfg, self.work, variant, pipeline.checkpoint_digest(final), readings) \
            if final.exists() else None
        if out is None or not (out / "DONE").exists():
            out = pipeline.maps(mcfg, self.work, variant, readings, self.progress)
        if not reuses_unit_maps(self.cfg):
            self.wall[f"maps_{variant}"] = float(read_json(out / "DONE").get("seconds") or time.perf_counter() - t0)
        self.folders[f"maps_{variant}"] = str(out.relative_to(self.work))
        return out

    def refine(self, variant: str) -> Path:
        """Maps -> IR labels -> IRN -> random-walk pseudo labels of a variant, each scored on `eval_ids`;
        the pseudo-label folder."""
        protocol = irn.PROTOCOLS[REFINED[variant]]
        c, ids, root = self.irn_cfg, self.train_ids(), self.root
        maps_dir = self.maps(variant)
        ir = self.stage("ir_labels", variant, (maps_dir.name, asdict(protocol), c.crf_iterations, c.crf_gt_prob, _digest(ids)),
                        lambda out: irn.make_ir_labels(maps_dir, root, ids, out, protocol, c, self.progress))
        run = self.stage("irn", variant, (irn.folder_id(ir), c.result_dict(), _digest(ids)),
                         lambda out: irn.train_irn(c, root, ids, ir, out, self.device, self.progress))
        pseudo = self.stage("random_walk", variant, (run.run_dir.name, maps_dir.name, asdict(protocol), c.result_dict()),
                            lambda out: irn.make_pseudo_labels(run.checkpoint, maps_dir, root, ids, out, protocol, c,
                                                               self.device, self.progress))
        t0 = time.perf_counter()
        split, scored = self.cfg.infer.split, self.eval_ids()
        if protocol.background == "maps":
            reading, bg, t = Reading(protocol.which), "estimated", None
        else:
            reading, bg, t = Reading(protocol.which, (protocol.eval_threshold,)), "threshold", protocol.eval_threshold
        maps_conf = evaluate_readings(maps_dir, root, scored, [reading], self.num_classes, progress=self.progress)[0]
        self.score(maps_conf[:, 0], variant, "pseudo/maps", split, bg, t, per_class=True)
        ir_conf = self.confusions(ir, scored)
        counted = self.confusions(ir, scored, void_as=0)
        self.score(ir_conf, variant, "pseudo/ir_labels", split, "void_ignored", gt_pixels=counted.sum((0, 2)))
        self.rows.append(_row("void_pct", "pseudo/ir_labels", variant, self.seed, split,
                              100.0 * (1.0 - ir_conf.sum() / max(1, counted.sum())), len(scored), "void_ignored"))
        rw_bg, rw_t = ("estimated", None) if protocol.background == "maps" else ("threshold", protocol.rw_bg_threshold)
        self.score(self.confusions(pseudo, scored), variant, "pseudo/random_walk", split, rw_bg, rw_t, per_class=True)
        self.loss_row(run.metrics, "irn", variant)
        self.wall[f"eval_pseudo_{variant}"] = time.perf_counter() - t0
        return pseudo

    def segnet(self, name: str, labels: str | Path) -> dict[str, Path]:
        """Train the segmentation net on `labels` ('gt' or a folder) of `train_ids`, predict val in every
        mode and score it; {mode: folder of val predictions}."""
        s, ids, root = self.seg_cfg, self.train_ids(), self.root
        labels_id = GROUND_TRUTH if str(labels) == GROUND_TRUTH else irn.folder_id(labels)
        run = self.stage("segnet", name, (s.result_dict(), labels_id, _digest(ids), self.num_classes, self.cfg.data.dataset),
                         lambda out: segmentation.train_segmentation(s, root, ids, labels, self.num_classes, out,
                                                                     self.device, self.progress))
        val = self.val_ids()
        preds = self.stage("predict", name, (run.run_dir.name, _digest(val), segmentation.MODES),
                           lambda out: segmentation.predict(run.checkpoint, root, val, out, device=self.device,
                                                            progress=self.progress))
        t0 = time.perf_counter()
        for mode, folder in preds.items():
            self.score(self.confusions(folder, val), name, f"segnet/{mode}", VAL_SPLIT, per_class=mode == "ms_crf")
        self.loss_row(run.metrics, "segnet", name)
        self.wall[f"eval_val_{name}"] = time.perf_counter() - t0
        return preds


def run_unit(cfg: ExperimentConfig, work_dir: str | Path, unit: pipeline.Unit, results_dir: str | Path | None = None,
             progress: bool = True) -> Path:
    """Run one segmentation unit (see the module doc) and write its results files atomically; returns the
    CSV path. Returns at once when its results exist for the same configuration and data."""
    if unit.variant != UNIT_VARIANT:
        raise ValueError(f"{unit.name} is not a segmentation unit; run it with sipe.study.plan.run_unit")
    if "sipe" not in cfg.study.variants:
        raise ConfigError(f"{unit.name} refines SIPE's maps but study.variants={cfg.study.variants} has no 'sipe'")
    results_dir = Path(results_dir) if results_dir is not None else results_dir_for(cfg.profile, work_dir)
    paths = unit_paths(results_dir, unit.name)
    identity = unit_identity(cfg, unit.seed)
    with folder_lock(Path(work_dir) / "evals" / unit.name):
        if has_record(results_dir, unit.name, identity):
            return paths["csv"]
        st = _Stages(cfg, work_dir, unit.seed, progress)
        pseudo = {v: st.refine(v) for v in refined_variants(cfg)}
        st.segnet("sipe", pseudo["sipe"])
        st.segnet(GT_LABELS, GROUND_TRUTH)
        st.store[f"{cfg.infer.split}/ids"] = np.asarray(st.eval_ids())
        st.store[f"{VAL_SPLIT}/ids"] = np.asarray(st.val_ids())
        buf = io.BytesIO()
        np.savez_compressed(buf, **st.store)
        atomic_write_bytes(paths["npz"], buf.getvalue())
        atomic_write_json(paths["json"], {
            **identity, "unit": unit.name, "variant": UNIT_VARIANT, "seed": unit.seed, "profile": cfg.profile,
            "refined": list(pseudo), "git_revision": prov.git_revision(), "code": code_hashes(),
            "stages": st.folders, "irn": st.irn_cfg.result_dict(), "segmentation": st.seg_cfg.result_dict(),
            "device": str(resolve_device(cfg.device)), "machine": prov.machine(),
            "packages": prov.package_versions(),
            "wall_seconds": {k: round(v, 1) for k, v in st.wall.items()},
            "config": cfg.override(**{"train.seed": unit.seed}).to_dict(), "finished": prov.utc_now(),
        })
        atomic_write_text(paths["csv"], pd.DataFrame(st.rows, columns=list(RESULT_COLUMNS)).to_csv(index=False))
    return paths["csv"]


# --- Table 3: COCO 2014 ---------------------------------------------------------------------------------

def coco_root(value: str | Path = "") -> Path | None:
    """The COCO layout made by data_prep.make_coco: `value`, else $SIPE_COCO_ROOT (a relative path is taken
    from the repository root); None when unset or not built."""
    raw = str(value) or os.environ.get(coco.COCO_ROOT_ENV, "")
    if not raw:
        return None
    path = Path(raw).expanduser()
    return coco.coco_root(path if path.is_absolute() else prov.REPO_ROOT / path)


def coco_config(profile: str, coco_root: str | Path, seed: int | None = None, device: str = "auto") -> ExperimentConfig:
    """The profile's config on a COCO root made by data_prep.make_coco (SIPE only, pseudo-labelled split 'train')."""
    sets: dict[str, Any] = {**coco.config_overrides(coco_root), "device": device, "study.variants": ("sipe",)}
    if seed is not None and int(seed) >= 0:
        sets["study.seeds"] = (int(seed),)
    cfg = get_profile(profile, **sets)
    return cfg.override(**{"train.seed": cfg.study.seeds[0]})


def table3(cfg: ExperimentConfig, work_dir: str | Path, results_dir: str | Path, compute: bool = True,
           progress: bool = False) -> pd.DataFrame:
    """Table 3 on a COCO config (`coco_config`): SIPE's maps of COCO train -> pseudo labels straight from the
    maps (the paper skips IRN on COCO) -> segmentation net -> val mIoU; tidy rows written to
    `<results_dir>/table3.csv`. compute=False reads that file only (UnitNotComputedError when absent)."""
    out = Path(results_dir) / "table3.csv"
    if not compute:
        if not out.exists():
            raise UnitNotComputedError(f"Table 3 is not computed yet ({out} missing) and this study reads finished "
                                       "results only (compute=False); run the notebook with compute=True on the COCO root")
        return pd.read_csv(out)
    seed = cfg.train.seed
    st = _Stages(cfg, work_dir, seed, progress, work_name="coco")
    protocol = irn.PROTOCOLS["sipe"]
    maps_dir, ids = st.maps("sipe"), st.train_ids()
    pseudo = st.stage("map_labels", "sipe", (maps_dir.name, asdict(protocol), _digest(ids)),
                      lambda folder: irn.map_labels(maps_dir, st.root, ids, folder, protocol, progress))
    st.segnet("sipe", pseudo)
    records = []
    for r in st.rows:
        mode = MODE_NAMES.get(r["reading"].removeprefix("segnet/"))
        if r["quantity"] == "miou" and mode:
            records.append({"row": PAPER_ROW if mode == MODE_NAMES["ms_crf"] else f"SIPE pseudo labels (no IRN), {mode}",
                            "quantity": "val_miou", "variant": "sipe", "seed": seed, "split": VAL_SPLIT,
                            "reading": f"segmentation net on the labels of SIPE's maps, {mode}", "value": r["value"]})
    table = pd.DataFrame(records, columns=TIDY_COLUMNS)
    write_table(results_dir, "table3", table)
    return table
