"""Typed experiment configuration and the three profiles (`smoke`, `subset`, `paper`).

Every hyper-parameter of the method lives here, grouped by pipeline stage. A config is a frozen
dataclass tree; `ExperimentConfig.stage_hash(stage)` identifies the inputs of one stage so that
finished stages (a trained model, a folder of maps) are reused when nothing they depend on changed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

from .errors import SipeError

FeatureName = Literal["semantic", "hierarchical"]
Precision = Literal["float32", "bfloat16"]
PRECISIONS = ("float32", "bfloat16")
PROFILES = ("smoke", "subset", "paper")
DATA_ROOT_ENV = "SIPE_DATA_ROOT"
WORK_DIR_ENV = "SIPE_WORK_DIR"


REPO_ROOT = Path(__file__).resolve().parents[2]


def default_work_dir(profile: str) -> Path:
    """Cache of a profile's runs and maps: `$SIPE_WORK_DIR/<profile>` when set, else `work/<profile>` in the repo."""
    base = os.environ.get(WORK_DIR_ENV, "")
    return (Path(base).expanduser() if base else REPO_ROOT / "work") / profile


class ConfigError(SipeError, ValueError):
    """A configuration value is invalid; the message names the field and the accepted values."""


@dataclass(frozen=True)
class DataConfig:
    """Where the data is and how training crops are made.

    root: VOCdevkit/VOC2012-style folder; empty means the `SIPE_DATA_ROOT` environment variable.
    max_images: keep only the first n ids of a split (None = all); used by the tiny profiles.
    """

    root: str = ""
    dataset: str = "voc"
    train_split: str = "train_aug"
    eval_split: str = "train"
    num_classes: int = 20
    resize_long: tuple[int, int] = (320, 640)
    crop_size: int = 512
    max_images: int | None = None
    num_workers: int = 0

    def resolved_root(self) -> Path:
        """The data root: `root` if set, else `$SIPE_DATA_ROOT`; raises ConfigError when neither is set."""
        root = self.root or os.environ.get(DATA_ROOT_ENV, "")
        if not root:
            raise ConfigError(
                f"no data root: set data.root or the environment variable {DATA_ROOT_ENV} to a folder in "
                "the VOCdevkit/VOC2012 layout (JPEGImages/, SegmentationClassAug/, ImageSets/Segmentation/, "
                "cls_labels_voc.npy); see data_prep/README.md for how to build one."
            )
        return Path(root).expanduser()


@dataclass(frozen=True)
class ModelConfig:
    """The network and the switches of the ablations.

    - seed_feature_train / seed_feature_infer: feature whose self-correlation gives the structure maps.
    - prototype_feature: feature the prototypes and IS-CAM are computed on (Table 5 rows).
    - background_prototype: background-aware prototype modelling (BPM, Table 5 columns); when off, the
      IS-CAM background channel is 1 - max over the foreground IS-CAM channels.
    - bg_scale: weight on the background IoU in seed locating (the implementation's 0.5).
    - gsc: train with the GSC loss; off = the CAM baseline trained with the classification loss only.
    - semantic_layer: which layer plays the semantic feature ("default" = the backbone's declared one).
    - weights: a file with ImageNet weights for the backbone ("" = the backbone's default source).
    """

    backbone: str = "resnet50"
    pretrained: bool = True
    weights: str = ""
    semantic_layer: str = "default"
    seed_feature_train: FeatureName = "semantic"
    seed_feature_infer: FeatureName = "hierarchical"
    prototype_feature: FeatureName = "hierarchical"
    background_prototype: bool = True
    bg_scale: float = 0.5
    gsc: bool = True
    seed_chunk_rows: int | None = None


@dataclass(frozen=True)
class OptimFields:
    """The optimiser settings of every section that trains a network (`train`, `irn`, `seg`), declared once: SGD
    at `lr` with `momentum` and `weight_decay`, polynomial decay (`poly_power`) over the steps of `epochs` epochs
    of full batches of `batch_size` (capped by `max_steps`), the epoch order seeded by `seed`. The defaults are
    SIPE's (`train`); `irn` and `seg` override the defaults that differ. `optim_settings` gives the training
    loop's `OptimSettings`."""

    batch_size: int = 16
    epochs: int = 5
    max_steps: int | None = None
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    seed: int = 15

    def check_optim(self, section: str) -> None:
        """ConfigError naming `section`.field when a batch size, epoch count, step cap or lr is not positive."""
        for name in ("batch_size", "epochs"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{section}.{name}={getattr(self, name)}; must be positive")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ConfigError(f"{section}.max_steps={self.max_steps}; must be positive or none")
        if not self.lr > 0:
            raise ConfigError(f"{section}.lr={self.lr}; must be positive")

    def optim_settings(self, **loop: Any) -> "OptimSettings":
        """These settings with the training loop's own (`OptimSettings`' other fields) as `OptimSettings`."""
        return OptimSettings(**{f.name: getattr(self, f.name) for f in fields(OptimFields)}, **loop)


@dataclass(frozen=True)
class OptimSettings(OptimFields):
    """What `sipe.stages.fit.fit` trains with, for every network trained here: the `OptimFields`, lr x
    `new_lr_mult` on the new layers, gradients clipped to the norm `clip` (None: not clipped), a checkpoint every
    epoch and every `checkpoint_every` steps, the metrics file flushed every `log_every` steps. Each section
    makes it with its `optim()`."""

    new_lr_mult: float = 1.0
    clip: float | None = None
    checkpoint_every: int | None = None
    log_every: int = 1


@dataclass(frozen=True)
class TrainConfig(OptimFields):
    """Optimisation of the classification network (`OptimFields`, SIPE's defaults). `momentum` 0.0 is what
    the authors' code effectively used (the paper says 0.9)."""

    new_layer_lr_mult: float = 10.0
    clip_grad_norm: float = 1.0
    log_every: int = 1
    checkpoint_every_steps: int | None = None

    def optim(self) -> OptimSettings:
        """The training loop's settings: new layers at lr x `new_layer_lr_mult`, gradients clipped to `clip_grad_norm`."""
        return self.optim_settings(new_lr_mult=self.new_layer_lr_mult, clip=self.clip_grad_norm,
                                   checkpoint_every=self.checkpoint_every_steps, log_every=self.log_every)


@dataclass(frozen=True)
class InferConfig:
    """Multi-scale + flip map generation.

    precision: 'float32' (as the paper), or 'bfloat16' (autocast around the model and the IPE operations; the
    maps are stored in float16 either way). It changes the maps, so it is part of the maps key.
    """

    split: str = "train"
    scales: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)
    flip: bool = True
    max_images: int | None = None
    save_cam: bool = True
    precision: Precision = "float32"


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation of localization maps; CRF parameters follow IRN's IR-label step.

    crf: evaluate the units of `study.crf_variants` with denseCRF too; present_classes_only: mIoU over the
    classes present in the evaluated ground truth (else over every class with ground truth or predictions).
    """

    thresholds: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))
    crf: bool = True
    crf_iterations: int = 10
    crf_gt_prob: float = 0.7
    crf_bg_scale: float = 0.5
    present_classes_only: bool = True


@dataclass(frozen=True)
class StudyConfig:
    """What the study runs, beyond one experiment: training seeds, variants, selection split, Fig. 8 sweep.

    - seeds: training seeds of the variants in `multi_seed`; every other variant runs with seeds[0].
    - selection_images: images of the selection split (train_aug outside train and val) where settings
      such as the background threshold are chosen.
    - crf_variants: variants whose maps are also evaluated with denseCRF (the expensive evaluation).

    None of these fields changes a stage's output, so none enters a stage hash.
    """

    seeds: tuple[int, ...] = (15, 16, 17)
    variants: tuple[str, ...] = ("sipe", "cam", "semantic_nobpm", "semantic_bpm", "hierarchical_nobpm",
                                 "sipe_bg05", "sccam")
    multi_seed: tuple[str, ...] = ("sipe", "cam", "sccam")
    selection_images: int | None = 300
    fig8_thresholds: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))
    fig8_alphas: tuple[float, ...] = (1.0,)
    crf_variants: tuple[str, ...] = ("sipe", "cam", "sccam")
    irn_threshold: float = 0.15


class StageSettings:
    """Mixin for the frozen dataclass of one later stage's settings (IRN, segmentation): `result_dict` (the
    settings a stage hash covers) and a checked `override`. Subclasses set `WHAT` (for messages) and
    `NON_RESULT_FIELDS`, and define `validate()`."""

    WHAT: ClassVar[str] = "stage"
    NON_RESULT_FIELDS: ClassVar[tuple[str, ...]] = ()

    def result_dict(self) -> dict[str, Any]:
        """The settings that can change a result (what the stage hash covers)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in self.NON_RESULT_FIELDS}

    def override(self, **values: Any):
        """A copy with `values` set, validated; ConfigError naming the unknown settings."""
        known = {f.name for f in fields(self)}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"unknown {self.WHAT} setting(s) {sorted(unknown)}; {type(self).__name__} has: {sorted(known)}")
        return replace(self, **values).validate()


@dataclass(frozen=True)
class IRNConfig(StageSettings, OptimFields):
    """IRN settings (`sipe.segmentation.irn`; the defaults are the paper profile's: IRN's / SIPE's released settings).

    backbone: registry name (frozen, ImageNet weights; checked against the registry by
    `sipe.method.backbones.check_backbone`); crop_size: training crops (multiple of 16), so the boundary grid
    is crop/4; train_radius / infer_radius: pair radius on that grid; beta, exp_times: the random walk
    (T^(2^exp_times)); infer_scale: image scale at which the boundary map is computed; rw_method: 'dense'
    (repeated squaring of the dense n x n transition matrix, IRN, for a GPU) or 'stencil' (2^exp_times steps
    with the banded transition weights: the same walk, linear memory, CPU); pseudo_split: the split whose
    images are pseudo-labelled and train IRN and the segmentation nets: '' = the data's training split
    (train_aug, the paper), else a split name (subset: 'train', the split the classification units already
    map, so their maps are reused).
    """

    WHAT: ClassVar[str] = "IRN"
    NON_RESULT_FIELDS: ClassVar[tuple[str, ...]] = ("checkpoint_every", "num_workers", "label_workers")

    backbone: str = "resnet50"
    pretrained: bool = True
    weights: str = ""
    crop_size: int = 512
    scale_range: tuple[float, float] = (0.5, 1.5)
    batch_size: int = 32
    epochs: int = 3
    train_radius: int = 10
    infer_radius: int = 5
    beta: float = 10.0
    exp_times: int = 8
    infer_scale: float = 1.0
    rw_method: Literal["dense", "stencil"] = "dense"
    crf_iterations: int = 10
    crf_gt_prob: float = 0.7
    pseudo_split: str = ""
    checkpoint_every: int | None = None
    num_workers: int = 0
    label_workers: int = 1

    def validate(self) -> "IRNConfig":
        self.check_optim("irn")
        if self.crop_size <= 0 or self.crop_size % 16:
            raise ConfigError(f"irn.crop_size={self.crop_size}; must be a positive multiple of 16")
        grid = self.crop_size // 4
        if self.train_radius < 2 or 2 * (self.train_radius - 1) >= grid:
            raise ConfigError(f"irn.train_radius={self.train_radius} needs 2*(radius-1) < crop/4 = {grid}")
        if self.infer_radius < 2:
            raise ConfigError(f"irn.infer_radius={self.infer_radius}; must be >= 2")
        if self.rw_method not in ("dense", "stencil"):
            raise ConfigError(f"irn.rw_method={self.rw_method!r}; use 'dense' or 'stencil'")
        if self.beta <= 0 or self.exp_times < 0 or self.infer_scale <= 0:
            raise ConfigError("irn.beta and irn.infer_scale must be positive, irn.exp_times >= 0")
        return self

    def optim(self) -> OptimSettings:
        """The training loop's settings: one group (the boundary branch; the backbone is frozen), no clipping."""
        return self.optim_settings(checkpoint_every=self.checkpoint_every)


DEEPLAB_R101 = "deeplab_r101"
"""SegConfig.backbone of DeepLab-v2's ResNet-101 at output stride 8 (not in the backbone registry)."""


@dataclass(frozen=True)
class SegConfig(StageSettings, OptimFields):
    """Segmentation settings (`sipe.segmentation.network`; the defaults are the paper profile's). backbone:
    'deeplab_r101' (DeepLab-v2 ResNet-101, OS 8) or a registry backbone name (its semantic stage at OS 16 feeds
    the ASPP head). CRF: deeplab-pytorch's (10 iterations, Gaussian sxy 1 compat 3, bilateral sxy 67 srgb 3 compat 4)."""

    WHAT: ClassVar[str] = "segmentation"
    NON_RESULT_FIELDS: ClassVar[tuple[str, ...]] = ("checkpoint_every", "num_workers")

    backbone: str = DEEPLAB_R101
    pretrained: bool = True
    weights: str = ""
    aspp_rates: tuple[int, ...] = (6, 12, 18, 24)
    crop_size: int = 321
    scale_range: tuple[float, float] = (0.5, 1.5)
    batch_size: int = 10
    epochs: int = 20
    max_steps: int | None = 20000
    lr: float = 2.5e-4
    head_lr_mult: float = 10.0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    eval_scales: tuple[float, ...] = (0.5, 0.75, 1.0)
    eval_flip: bool = True
    crf_iterations: int = 10
    crf_pos_xy: float = 1.0
    crf_pos_w: float = 3.0
    crf_bi_xy: float = 67.0
    crf_bi_rgb: float = 3.0
    crf_bi_w: float = 4.0
    max_eval_images: int | None = None
    seed: int = 0
    checkpoint_every: int | None = None
    num_workers: int = 0

    def validate(self) -> "SegConfig":
        self.check_optim("seg")
        if self.crop_size <= 0:
            raise ConfigError(f"seg.crop_size={self.crop_size}; must be positive")
        if not self.aspp_rates or not self.eval_scales:
            raise ConfigError("seg.aspp_rates and seg.eval_scales must not be empty")
        return self

    def optim(self) -> OptimSettings:
        """The training loop's settings: the ASPP head at lr x `head_lr_mult`, no clipping."""
        return self.optim_settings(new_lr_mult=self.head_lr_mult, checkpoint_every=self.checkpoint_every)


@dataclass(frozen=True)
class SCCAMConfig:
    """SC-CAM's settings (`sipe.baselines.sccam`; the paper's: k = 10 sub-categories per class, 3 rounds, sub-category
    loss weight 5). They change only the `sccam` units, whose identity adds `key()`; no stage hash holds them.

    - round0: where round 1's features come from: "cam" = a trained CAM-baseline model (the authors' code),
      "imagenet" = the ImageNet-initialised backbone.
    - feature_scale: the single scale at which whole images are fed for the clustering features.
    - l2_normalize: L2-normalise the pooled features before k-means (the authors' code does not).
    - n_init, max_iter: k-means restarts and iterations (scikit-learn; random_state = train.seed).
    """

    k: int = 10
    rounds: int = 3
    sub_weight: float = 5.0
    round0: Literal["cam", "imagenet"] = "cam"
    feature_scale: float = 1.0
    l2_normalize: bool = False
    n_init: int = 10
    max_iter: int = 300

    def validate(self) -> "SCCAMConfig":
        if self.k < 1 or self.rounds < 1 or self.n_init < 1 or self.max_iter < 1:
            raise ConfigError(f"sccam: k, rounds, n_init and max_iter must be >= 1, got {self}")
        if self.sub_weight < 0:
            raise ConfigError(f"sccam.sub_weight={self.sub_weight}; must be >= 0")
        if self.round0 not in ("cam", "imagenet"):
            raise ConfigError(f"sccam.round0={self.round0!r}; choose 'cam' or 'imagenet'")
        if self.feature_scale <= 0:
            raise ConfigError(f"sccam.feature_scale={self.feature_scale}; must be positive")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def key(self) -> str:
        """12-hex hash of these settings."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: a profile's settings, possibly overridden."""

    profile: str = "paper"
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    sccam: SCCAMConfig = field(default_factory=SCCAMConfig)
    irn: IRNConfig = field(default_factory=IRNConfig)
    seg: SegConfig = field(default_factory=SegConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ExperimentConfig":
        return _from_dict(cls, d, "config")

    def override(self, **dotted: Any) -> "ExperimentConfig":
        """A copy with `section.field=value` overrides, e.g. ``override(**{"model.gsc": False})``."""
        cfg = self
        for key, value in dotted.items():
            section, _, name = key.partition(".")
            if not name:
                if section not in {f.name for f in fields(self)} or is_dataclass(getattr(self, section)):
                    raise ConfigError(f"unknown config field {key!r}")
                cfg = replace(cfg, **{section: _coerce(cls_field_type(type(self), section), value, key)})
                continue
            if section not in {f.name for f in fields(self)} or not is_dataclass(getattr(cfg, section)):
                raise ConfigError(f"unknown config section {section!r} in {key!r}")
            sub = getattr(cfg, section)
            if name not in {f.name for f in fields(sub)}:
                valid = ", ".join(f.name for f in fields(sub))
                raise ConfigError(f"unknown config field {key!r}; {section} has: {valid}")
            value = _coerce(cls_field_type(type(sub), name), value, key)
            cfg = replace(cfg, **{section: replace(sub, **{name: value})})
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Check the settings' values and their combinations (the backbone's name and layers are checked
        against the registry by `sipe.method.backbones.check_model`)."""
        m = self.model
        for name in ("seed_feature_train", "seed_feature_infer", "prototype_feature"):
            if getattr(m, name) not in ("semantic", "hierarchical"):
                raise ConfigError(f"model.{name}={getattr(m, name)!r}; choose 'semantic' or 'hierarchical'")
        if not 0.0 < m.bg_scale <= 10.0:
            raise ConfigError(f"model.bg_scale={m.bg_scale}; must be in (0, 10]")
        classes = {"voc": 20, "coco": 80}
        if self.data.dataset not in classes:
            raise ConfigError(f"data.dataset={self.data.dataset!r}; choose one of {sorted(classes)}")
        if self.data.num_classes != classes[self.data.dataset]:
            raise ConfigError(f"data.num_classes={self.data.num_classes} but data.dataset={self.data.dataset!r} has "
                              f"{classes[self.data.dataset]} classes; set both together")
        if self.data.crop_size <= 0 or self.train.batch_size <= 0:
            raise ConfigError("data.crop_size and train.batch_size must be positive")
        lo, hi = self.data.resize_long
        if not 0 < lo <= hi:
            raise ConfigError(f"data.resize_long={self.data.resize_long}; need 0 < low <= high")
        if not self.infer.scales:
            raise ConfigError("infer.scales is empty")
        for name, ts in (("eval.thresholds", self.eval.thresholds), ("study.fig8_thresholds", self.study.fig8_thresholds)):
            if not ts or any(not 0.0 < t < 1.0 for t in ts) or any(a >= b for a, b in zip(ts, ts[1:])):
                raise ConfigError(f"{name}={tuple(ts)}; give increasing values in (0, 1), e.g. 0.05 0.1 ... 0.95 "
                                  "(a reading's threshold axis is stored and looked up in this order)")
        if self.infer.precision not in PRECISIONS:
            raise ConfigError(f"infer.precision={self.infer.precision!r}; choose one of {list(PRECISIONS)}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device={self.device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
        self.sccam.validate()
        self.irn.validate()
        self.seg.validate()

    def stage_hash(self, stage: Literal["train", "maps", "eval"], *inputs: str) -> str:
        """12-hex hash of the settings a stage's output depends on, plus `inputs` (data fingerprints,
        checkpoint digests). Settings that cannot change a result (NON_RESULT_FIELDS) stay out."""
        d = self.to_dict()
        sections = {"train": ("data", "model", "train"), "maps": ("data", "model", "train", "infer"),
                    "eval": ("data", "model", "train", "infer", "eval")}[stage]
        parts: dict[str, Any] = {
            s: {k: v for k, v in d[s].items()
                if k not in NON_RESULT_FIELDS.get(s, ()) and HASH_NEUTRAL.get(s, {}).get(k, _UNSET) != v}
            for s in sections}
        parts["inputs"] = list(inputs)
        blob = json.dumps(parts, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


NON_RESULT_FIELDS: dict[str, tuple[str, ...]] = {
    "data": ("root", "num_workers"),
    "model": ("seed_chunk_rows",),
    "train": ("log_every", "checkpoint_every_steps"),
}
"""Settings that change how a stage runs (paths, logging cadence, chunking, workers), never its output."""

_UNSET = object()
HASH_NEUTRAL: dict[str, dict[str, Any]] = {"infer": {"precision": "float32"}}
"""Settings added after results were published, with the value those results had: at that value they stay out
of the stage hash, so earlier results keep their keys."""


def cls_field_type(cls: type, name: str) -> Any:
    hints = {f.name: f.type for f in fields(cls)}
    return hints[name]


def _coerce(type_str: Any, value: Any, key: str) -> Any:
    """Turn a string/list (papermill, CLI) into the field's declared type."""
    t = str(type_str)
    if isinstance(value, str):
        low = value.strip().lower()
        if t.startswith("bool"):
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{key}={value!r}: expected a boolean (true/false)")
        if low in ("none", "null") and "None" in t:
            return None
        try:
            if t.startswith("int"):
                return int(value)
            if t.startswith("float"):
                return float(value)
            if t.startswith("tuple"):
                items = [v for v in value.replace("(", "").replace(")", "").split(",") if v.strip()]
                conv = str if "str" in t else int if "int" in t else float
                return tuple(conv(v.strip().strip("'\"")) for v in items)
        except ValueError as e:
            raise ConfigError(f"{key}={value!r}: expected {t}") from e
        return value
    if t.startswith("bool") and not isinstance(value, bool):
        if value in (0, 1):
            return bool(value)
        raise ConfigError(f"{key}={value!r}: expected a boolean")
    if t.startswith("int") and isinstance(value, float):
        if not value.is_integer():
            raise ConfigError(f"{key}={value!r}: expected an integer")
        return int(value)
    if t.startswith("tuple") and isinstance(value, (list, tuple)):
        return tuple(value)
    if t.startswith("float") and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _from_dict(cls: type, d: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = set(d) - set(known)
    if unknown:
        raise ConfigError(f"unknown field(s) {sorted(unknown)} in {where}")
    kwargs = {}
    for name, value in d.items():
        default = getattr(cls(), name) if name in known else None
        if is_dataclass(default):
            kwargs[name] = _from_dict(type(default), value, f"{where}.{name}")
        else:
            kwargs[name] = _coerce(known[name].type, value, f"{where}.{name}")
    return cls(**kwargs)


def _paper() -> ExperimentConfig:
    """The paper's settings; IRN/SIPE's released IRN settings (ResNet-50, crop 512, batch 32, 3 epochs, lr 0.1,
    radius 10/5, beta 10, 2^8 steps, dense random walk, pseudo labels for train_aug) and deeplab-pytorch's VOC
    recipe for the segmentation net."""
    return ExperimentConfig(profile="paper", study=StudyConfig(selection_images=1000))


def _subset() -> ExperimentConfig:
    """The real VOC subset on a 2-core CPU, with EfficientNet-Lite0 (see the book's 'our setting').

    IRN: crop 256, batch 8, stencil random walk at half image scale, pseudo labels for the 437 VOC train images
    whose maps the classification units make, 10 epochs (about the samples of 3 epochs of the 1,500 train_aug
    images). Segmentation: ASPP (rates 3/6/9/12 at OS 16, the paper's receptive field), crop 256, batch 8, 12
    epochs (about the samples of 4 epochs of train_aug), lr 1e-3 (head x10, momentum 0.9; at lr 0.01 the first
    subset run diverged, cross-entropy 4 -> 200 in 10 steps and 30-80 per epoch after, while 1e-3 fell from 3.9
    to ~0.6 in 60 steps on the same pseudo labels). CPU budget: `sipe.study.segresults.cpu_budget`."""
    return ExperimentConfig(
        profile="subset",
        data=DataConfig(resize_long=(256, 384), crop_size=256),
        model=ModelConfig(backbone="efficientnet_lite0", semantic_layer="conv_head", bg_scale=1.0),
        train=TrainConfig(batch_size=8, epochs=5, lr=0.01, momentum=0.9, log_every=5),
        infer=InferConfig(scales=(1.0, 0.5, 1.5), precision="bfloat16"),
        irn=IRNConfig(backbone="efficientnet_lite0", crop_size=256, batch_size=8, epochs=10, infer_scale=0.5,
                      rw_method="stencil", label_workers=2, pseudo_split="train"),
        seg=SegConfig(backbone="efficientnet_lite0", aspp_rates=(3, 6, 9, 12), crop_size=256, batch_size=8,
                      epochs=12, max_steps=None, lr=1e-3, weight_decay=1e-4),
    )


def _smoke() -> ExperimentConfig:
    """Seconds on a CPU: a handful of images at tiny size, every stage exercised."""
    return ExperimentConfig(
        profile="smoke",
        data=DataConfig(resize_long=(64, 96), crop_size=64, max_images=8),
        model=ModelConfig(backbone="efficientnet_lite0", semantic_layer="conv_head", bg_scale=1.0),
        train=TrainConfig(batch_size=4, epochs=1, max_steps=2, lr=0.01, momentum=0.9, seed=0),
        infer=InferConfig(scales=(0.5, 0.25), max_images=4),
        eval=EvalConfig(thresholds=(0.1, 0.2, 0.3, 0.4, 0.5), crf_iterations=2),
        study=StudyConfig(seeds=(0, 1), selection_images=4, fig8_thresholds=(0.1, 0.3, 0.5, 0.7, 0.9)),
        sccam=SCCAMConfig(k=2),
        irn=IRNConfig(backbone="efficientnet_lite0", crop_size=64, batch_size=2, epochs=1, max_steps=2,
                      train_radius=5, infer_radius=5, exp_times=4, infer_scale=0.5, rw_method="stencil",
                      crf_iterations=2, seed=0),
        seg=SegConfig(backbone="efficientnet_lite0", aspp_rates=(1, 2), crop_size=64, batch_size=2, epochs=1,
                      max_steps=2, lr=0.01, weight_decay=1e-4, eval_scales=(0.5, 1.0), crf_iterations=2,
                      max_eval_images=4),
    )


_PROFILE_FACTORIES = {"smoke": _smoke, "subset": _subset, "paper": _paper}


def get_profile(name: str, **overrides: Any) -> ExperimentConfig:
    """The named profile's config with `section.field` overrides applied and validated."""
    if name not in _PROFILE_FACTORIES:
        raise ConfigError(f"unknown profile {name!r}; choose one of {list(PROFILES)}")
    cfg = _PROFILE_FACTORIES[name]()
    return cfg.override(**overrides) if overrides else (cfg.validate() or cfg)


def load_config(path: str | os.PathLike) -> ExperimentConfig:
    """Read a config written by `save_config` (JSON)."""
    p = Path(path)
    try:
        d = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read config {p}: {e}") from e
    return ExperimentConfig.from_dict(d)


VARIANTS: dict[str, dict[str, Any]] = {
    "sipe": {},
    "cam": {"model.gsc": False},
    "semantic_nobpm": {"model.prototype_feature": "semantic", "model.background_prototype": False},
    "semantic_bpm": {"model.prototype_feature": "semantic"},
    "hierarchical_nobpm": {"model.background_prototype": False},
    "sipe_bg05": {"model.bg_scale": 0.5},
    "sccam": {"model.gsc": False},
}
"""Named model variants: SIPE (hierarchical feature, BPM, GSC), the CAM baseline, the Table 5 options,
SIPE with the authors' background weight 0.5 in seed locating (the background-weight ablation), and SC-CAM
(the CAM baseline's network and schedule plus a sub-category head, trained by `sipe.baselines.sccam`, see SCCAM)."""

SCCAM = "sccam"
"""The SC-CAM variant: its units are run by `sipe.study.units` (round 0 = the CAM unit of the same seed)."""

SELECTION_SPLIT = "train_aug-train-val"
"""Training images outside VOC train and val: where settings are chosen, never on the evaluated splits."""


def variant_config(cfg: ExperimentConfig, variant: str) -> ExperimentConfig:
    """`cfg` with the overrides of a named variant (see VARIANTS)."""
    if variant not in VARIANTS:
        raise ConfigError(f"unknown variant {variant!r}; choose one of {sorted(VARIANTS)}")
    return cfg.override(**VARIANTS[variant]) if VARIANTS[variant] else cfg
