"""Tables 2 and 3 and Fig. 6 for the notebooks: maps -> (IRN) pseudo labels -> segmentation network -> val mIoU.

`Table2(study)` runs, for a `sipe.study.Study`, every cached stage of the segmentation path:

- maps on the training split (train_aug: the pseudo labels must cover the training images), through
  `study.on_split(...).maps(variant)`;
- per variant ('sipe' with SIPE's protocol, 'cam' with IRN's) IR labels, IRN, random-walk pseudo labels
  (`sipe.irn`), with the pseudo labels' mIoU on the training images that have ground truth in the
  evaluated split (VOC train), before and after the random walk;
- the segmentation network (`sipe.segmentation`) trained on SIPE's pseudo labels and, once, on the
  ground-truth masks of the same images, evaluated on val single-scale and multi-scale + flip + denseCRF.

Stages live under `<work_dir>/segmentation/` keyed by their inputs and settings, and resume when
interrupted. `Table3` runs the same path on a COCO root without the IRN step, as the paper does.
"""
from __future__ import annotations

import csv
import hashlib
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from . import irn, segmentation
from .data import coco, voc
from .data.labelled import GROUND_TRUTH, evaluate_label_dir, load_label
from .evaluation import evaluate_maps
from .runtime import atomic_write_text

VARIANT_PROTOCOLS: dict[str, str] = {"sipe": "sipe", "cam": "irn"}
"""The variants refined for the pseudo-label table and the label protocol of each (sipe.irn.PROTOCOLS)."""
ROW_NAMES = {"sipe": "SIPE", "cam": "CAM"}
PAPER_ROW = "SIPE (ResNet101)"
MODE_NAMES = {"ss": "single scale", "ms": "multi-scale + flip", "ms_crf": "multi-scale + flip + denseCRF"}
FULL_VAL = {"voc": 1449, "coco": 40137}


def _relative(path: Path, base: Path) -> str:
    """`path` relative to `base` when inside it (stage folders are identified without the work dir's location)."""
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path)


def _digest(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Refined:
    """One variant's refinement: the maps, IR labels, IRN run and pseudo-label folders, and the ids."""

    variant: str
    protocol: irn.LabelProtocol
    maps_dir: Path
    ir_labels: Path
    irn_checkpoint: Path | None
    pseudo: Path
    ids: tuple[str, ...]


class _SegmentationPath:
    """What Table 2 and Table 3 share: settings, folders, training and evaluating the segmentation net."""

    def __init__(self, study: Any, irn_cfg: irn.IRNConfig | None = None, seg_cfg: segmentation.SegConfig | None = None):
        self.study = study
        profile, seed = study.cfg.profile, study.cfg.train.seed
        self.irn_cfg = irn_cfg or irn.profile_settings(profile).override(seed=seed)
        self.seg_cfg = seg_cfg or segmentation.profile_settings(profile).override(seed=seed)
        self.dataset = study.cfg.data.dataset
        k, self.class_names = coco.dataset_info(self.dataset)
        self.num_classes = k + 1
        self.train = study.on_split(study.cfg.data.train_split, study.cfg.infer.max_images)

    @property
    def work(self) -> Path:
        return Path(self.study.work_dir) / "segmentation"

    @property
    def root(self) -> Path:
        return self.study.root

    @property
    def progress(self) -> bool:
        return self.study.progress

    @property
    def device(self) -> str:
        return self.study.cfg.device

    @property
    def seed(self) -> int:
        return self.study.cfg.train.seed

    def train_ids(self) -> list[str]:
        """The images the pseudo labels are made for and the segmentation net trains on."""
        return self.train.eval_ids()

    def val_ids(self) -> list[str]:
        return voc.read_split(self.root, "val")[: self.seg_cfg.max_eval_images]

    def segmentation_run(self, labels: str | Path, name: str) -> dict[str, Any]:
        """Train on `labels` ('gt' or a pseudo-label folder) and evaluate on val: {mode: MIoUResult, 'run': FitResult}."""
        ids = self.train_ids()
        labels_id = GROUND_TRUTH if str(labels) == GROUND_TRUTH else _relative(Path(labels), self.work)
        key = irn.stage_key(self.seg_cfg.result_dict(), labels_id, _digest(ids), self.num_classes, self.dataset)
        base = self.work / "seg" / f"{name}-{key}"
        run = segmentation.train_segmentation(self.seg_cfg, self.root, ids, labels, self.num_classes, base / "run",
                                              self.device, self.progress)
        val = self.val_ids()
        preds = segmentation.predict(run.checkpoint, self.root, val, base / "pred", device=self.device,
                                     progress=self.progress)
        out: dict[str, Any] = {"run": run, "pred": preds}
        for mode, d in preds.items():
            out[mode] = evaluate_label_dir(d, self.root, val, self.num_classes, self.class_names, split="val")
        return out

    def setting(self) -> str:
        i, s = self.irn_cfg, self.seg_cfg
        seg_net = "DeepLab-v2 ResNet-101 (ImageNet init)" if s.backbone == segmentation.DEEPLAB_R101 else \
            f"ASPP on {s.backbone} (paper: DeepLab-v2 ResNet-101)"
        steps = f"{s.max_steps} steps" if s.max_steps else f"{s.epochs} epochs"
        n_val = len(self.val_ids())
        full = FULL_VAL.get(self.dataset)
        return (f"{self.study.setting()}; IRN on {i.backbone}, crop {i.crop_size}, {i.epochs} epochs; "
                f"segmentation: {seg_net}, crop {s.crop_size}, {steps}, trained on {len(self.train_ids())} images; "
                f"val {n_val} images" + (f" of {full:,}" if full else ""))


class Table2(_SegmentationPath):
    """Table 2 (VOC): pseudo labels of SIPE and of the CAM baseline, and the segmentation net on val."""

    def eval_train_ids(self) -> list[str]:
        """The pseudo-labelled images that are in the evaluated split (VOC train); all of them if none is."""
        split = self.study.cfg.infer.split
        wanted = set(voc.read_split(self.root, split)) if voc.split_path(self.root, split).is_file() else set()
        ids = [i for i in self.train_ids() if i in wanted]
        return ids or self.train_ids()

    def refine(self, variant: str = "sipe") -> Refined:
        """IR labels, IRN and random-walk pseudo labels of a variant's maps on the training split."""
        protocol = irn.PROTOCOLS[VARIANT_PROTOCOLS[variant]]
        maps_dir = Path(self.train.maps(variant))
        ids = self.train_ids()
        c = self.irn_cfg
        ir_key = irn.stage_key(maps_dir.name, asdict(protocol), c.crf_iterations, c.crf_gt_prob, _digest(ids))
        base = self.work / "irn" / f"{variant}-{ir_key}"
        ir_labels = irn.make_ir_labels(maps_dir, self.root, ids, base / "ir_labels", protocol, c, self.progress)
        stage = base / f"irn-{irn.stage_key(c.result_dict())}"
        run = irn.train_irn(c, self.root, ids, ir_labels, stage / "run", self.device, self.progress)
        pseudo = irn.make_pseudo_labels(run.checkpoint, maps_dir, self.root, ids, stage / "pseudo", protocol, c,
                                        self.device, self.progress)
        return Refined(variant, protocol, maps_dir, ir_labels, run.checkpoint, pseudo, tuple(ids))

    def pseudo_label_table(self, variants: Sequence[str] = tuple(VARIANT_PROTOCOLS)) -> pd.DataFrame:
        """mIoU (%) of each variant's labels on the evaluated training images: the maps (before the random
        walk), the IR labels (confident regions; void ignored, with the share of void pixels) and the
        random-walk pseudo labels. Columns: variant, protocol, stage, miou, void_fraction, images, note."""
        ids = self.eval_train_ids()
        rows = []
        for variant in variants:
            r = self.refine(variant)
            p = r.protocol
            if p.background == "maps":
                before = evaluate_maps(r.maps_dir, self.root, ids, p.which, "estimated", num_classes=self.num_classes,
                                       class_names=self.class_names, progress=self.progress)
            else:
                before = evaluate_maps(r.maps_dir, self.root, ids, p.which, "threshold", (p.eval_threshold,),
                                       num_classes=self.num_classes, class_names=self.class_names,
                                       progress=self.progress).best
            ir_ignored = evaluate_label_dir(r.ir_labels, self.root, ids, self.num_classes, self.class_names)
            ir_bg = evaluate_label_dir(r.ir_labels, self.root, ids, self.num_classes, self.class_names, True)
            void = 1.0 - ir_ignored.confusion.sum() / max(1, ir_bg.confusion.sum())
            rw = evaluate_label_dir(r.pseudo, self.root, ids, self.num_classes, self.class_names)
            name = ROW_NAMES.get(variant, variant)
            proto = VARIANT_PROTOCOLS[variant]
            rows += [
                {"variant": name, "protocol": proto, "stage": "maps", "miou": before.miou, "void_fraction": 0.0,
                 "images": len(ids), "note": before.note},
                {"variant": name, "protocol": proto, "stage": "IR labels", "miou": ir_ignored.miou,
                 "void_fraction": float(void), "images": len(ids), "note": ir_ignored.note},
                {"variant": name, "protocol": proto, "stage": "random walk", "miou": rw.miou, "void_fraction": 0.0,
                 "images": len(ids), "note": rw.note},
            ]
        return pd.DataFrame(rows)

    def segmentation_table(self) -> pd.DataFrame:
        """val mIoU (%) of the net trained on SIPE's pseudo labels and on ground truth, per mode, and their ratio.
        Columns: labels, mode, miou."""
        pseudo = self.segmentation_run(self.refine("sipe").pseudo, "sipe_pseudo")
        full = self.segmentation_run(GROUND_TRUTH, "ground_truth")
        rows = []
        for mode in segmentation.MODES:
            rows.append({"labels": "SIPE pseudo labels", "mode": MODE_NAMES[mode], "miou": pseudo[mode].miou})
            rows.append({"labels": "ground truth (same images)", "mode": MODE_NAMES[mode], "miou": full[mode].miou})
            rows.append({"labels": "ratio pseudo / ground truth", "mode": MODE_NAMES[mode],
                         "miou": pseudo[mode].miou / full[mode].miou if full[mode].miou else math.nan})
        self._pred = {"pseudo": pseudo["pred"], "gt": full["pred"]}
        return pd.DataFrame(rows)

    def predictions(self) -> dict[str, dict[str, Path]]:
        """{'pseudo'|'gt': {mode: folder of val predictions}} (runs the segmentation stages if needed)."""
        if not hasattr(self, "_pred"):
            self.segmentation_table()
        return self._pred

    def save(self, pseudo: pd.DataFrame, models: pd.DataFrame) -> dict[str, Path]:
        """Write `<work_dir>/results/table2.csv` and `pseudo_labels.csv` (with seed and setting) and record the
        numbers for the claims page; returns the paths."""
        results = Path(self.study.work_dir) / "results"
        setting = self.setting()
        meta = {"seed": self.seed, "profile": self.study.cfg.profile, "setting": setting}
        t2 = models.assign(table="table2", **meta)
        p = pseudo.assign(table="pseudo_labels", **meta)
        paths = {"table2": results / "table2.csv", "pseudo_labels": results / "pseudo_labels.csv"}
        for frame, path in ((t2, paths["table2"]), (p, paths["pseudo_labels"])):
            atomic_write_text(path, _upsert_csv(path, frame, ["table", "seed", "profile"]))
        self.study.record("table2", {"table2": self.ours(models), "pseudo_labels": _pseudo_record(pseudo),
                                     "segmentation": _segmentation_record(models)})
        return paths

    @staticmethod
    def ours(models: pd.DataFrame) -> dict[str, dict[str, float]]:
        """Our number in the paper's Table 2 (the paper's SIPE row is multi-scale + denseCRF on val)."""
        row = models[(models["labels"] == "SIPE pseudo labels") & (models["mode"] == MODE_NAMES["ms_crf"])]
        return {PAPER_ROW: {"val_miou": float(row["miou"].iloc[0])}}

    def figure_ids(self, n: int = 4) -> list[str]:
        return pick_figure_images(self.root, self.val_ids(), n)

    @staticmethod
    def claims(pseudo: pd.DataFrame) -> pd.DataFrame:
        """The claims about the refinement (sipe.results.CLAIMS on table 'pseudo_labels') on our numbers."""
        from .results import CLAIMS, claims

        return claims({"pseudo_labels": _pseudo_record(pseudo)}, tuple(c for c in CLAIMS if c.table == "pseudo_labels"))

    @staticmethod
    def summary(pseudo: pd.DataFrame, models: pd.DataFrame) -> str:
        """One sentence reading the two tables: what the random walk did, and the pseudo/ground-truth ratio."""
        rec = _pseudo_record(pseudo)
        parts = []
        for name, r in rec.items():
            if "maps_miou" in r and "rw_miou" in r:
                parts.append(f"{name} {r['maps_miou']:.1f} -> {r['rw_miou']:.1f}")
        ratio = models[(models["labels"] == "ratio pseudo / ground truth") & (models["mode"] == MODE_NAMES["ms_crf"])]
        from .results import paper_value

        paper = paper_value("table2", PAPER_ROW, "val_miou")
        text = "Random walk (pseudo-label mIoU on the evaluated training images, maps -> refined): " + ", ".join(parts)
        if len(ratio):
            text += (f". The net trained on SIPE's pseudo labels reaches {100 * float(ratio['miou'].iloc[0]):.0f}% of the "
                     f"same net trained on ground truth (multi-scale + denseCRF); the paper's SIPE reaches {paper} val "
                     "mIoU but reports no fully supervised model, so its ratio cannot be formed from the paper alone.")
        return text


class Table3(_SegmentationPath):
    """Table 3 (COCO 2014): the segmentation path on a COCO root, with pseudo labels straight from the maps
    (the paper skips IRN on COCO)."""

    def pseudo_labels(self) -> Path:
        protocol = irn.PROTOCOLS["sipe"]
        maps_dir = Path(self.train.maps("sipe"))
        ids = self.train_ids()
        key = irn.stage_key(maps_dir.name, asdict(protocol), _digest(ids))
        return irn.map_labels(maps_dir, self.root, ids, self.work / "map_labels" / f"sipe-{key}", protocol,
                              self.progress)

    def segmentation_table(self) -> pd.DataFrame:
        res = self.segmentation_run(self.pseudo_labels(), "coco_sipe_pseudo")
        return pd.DataFrame([{"labels": "SIPE pseudo labels (no IRN)", "mode": MODE_NAMES[m], "miou": res[m].miou}
                             for m in segmentation.MODES])

    @staticmethod
    def ours(models: pd.DataFrame) -> dict[str, dict[str, float]]:
        row = models[models["mode"] == MODE_NAMES["ms_crf"]]
        return {PAPER_ROW: {"val_miou": float(row["miou"].iloc[0])}}


def coco_study(profile: str, coco_root: str | Path, work_dir: str | Path, seed: int | None = None,
               device: str = "auto", progress: bool = False):
    """A `sipe.study.Study` on a COCO root made by data_prep.make_coco (work under `<work_dir>/coco`)."""
    import sipe.study

    overrides = {k: v for k, v in coco.config_overrides(coco_root).items() if k != "data.root"}
    return sipe.study.setup(profile, str(coco_root), str(Path(work_dir) / "coco"), seed, device, progress, **overrides)


def pick_figure_images(root: str | Path, ids: Sequence[str], n: int = 4) -> list[str]:
    """Up to n ids chosen deterministically for a qualitative figure: in id order, each image that shows a
    class not shown yet, preferring images with two or more classes; then the first remaining ids."""
    masks = {i: set(int(c) for c in np.unique(voc.load_mask(root, i)) if 0 < c < voc.IGNORE_INDEX) for i in ids}
    chosen: list[str] = []
    seen: set[int] = set()
    for min_classes in (2, 1):
        for i in sorted(ids):
            if len(chosen) < n and i not in chosen and len(masks[i]) >= min_classes and masks[i] - seen:
                chosen.append(i)
                seen |= masks[i]
    chosen += [i for i in sorted(ids) if i not in chosen][: n - len(chosen)]
    return chosen


def _pseudo_record(pseudo: pd.DataFrame) -> dict[str, dict[str, float]]:
    key = {"maps": "maps_miou", "IR labels": "ir_label_miou", "random walk": "rw_miou"}
    out: dict[str, dict[str, float]] = {}
    for r in pseudo.itertuples():
        out.setdefault(r.variant, {})[key[r.stage]] = float(r.miou)
    return out


def _segmentation_record(models: pd.DataFrame) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for r in models.itertuples():
        out.setdefault(r.labels, {})[r.mode] = float(r.miou)
    return out


def _upsert_csv(path: Path, frame: pd.DataFrame, keys: Sequence[str]) -> str:
    """CSV text of `path`'s rows with the rows of `frame` replacing those that share its `keys` values."""
    if path.exists():
        old = pd.read_csv(path)
        mask = np.ones(len(old), dtype=bool)
        for k in keys:
            mask &= old[k].astype(str).isin(set(frame[k].astype(str)))
        frame = pd.concat([old[~mask], frame], ignore_index=True)
    return frame.to_csv(index=False, quoting=csv.QUOTE_MINIMAL)
