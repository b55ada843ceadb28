"""Tests for sipe.infra.config: profiles, string overrides, stage hashes, variants; the paper profile trains one step."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from sipe.infra.config import (PROFILES, VARIANTS, ConfigError, ExperimentConfig, get_profile, load_config,
    variant_config)
from sipe.stages.train import train


@pytest.mark.parametrize("name", PROFILES)
def test_profiles_resolve_and_round_trip(name: str, tmp_path: Path) -> None:
    cfg = get_profile(name)
    assert cfg.profile == name
    cfg.validate()
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg.to_dict()))
    assert load_config(path) == cfg


def test_unknown_profile_is_rejected() -> None:
    with pytest.raises(ConfigError, match="tiny"):
        get_profile("tiny")


def test_paper_profile_has_the_paper_settings() -> None:
    cfg = get_profile("paper")
    m, d, t, i = cfg.model, cfg.data, cfg.train, cfg.infer
    assert (m.backbone, m.pretrained, m.semantic_layer) == ("resnet50", True, "default")
    assert (m.seed_feature_train, m.seed_feature_infer, m.prototype_feature) == ("semantic", "hierarchical", "hierarchical")
    assert m.background_prototype and m.gsc and m.bg_scale == 0.5
    assert d.crop_size == 512 and d.resize_long == (320, 640) and d.train_split == "train_aug"
    assert d.eval_split == "train" and d.max_images is None and d.num_classes == 20
    assert t.batch_size == 16 and t.epochs == 5 and t.max_steps is None
    assert t.lr == 0.1 and t.lr * t.new_layer_lr_mult == pytest.approx(1.0)
    assert t.weight_decay == 1e-4 and t.poly_power == 0.9 and t.clip_grad_norm == 1.0 and t.seed == 15
    assert i.scales == (1.0, 0.5, 1.5, 2.0) and i.flip and i.split == "train"


def test_paper_profile_trains_one_step_at_tiny_size(synthetic_root: Path, tmp_path: Path) -> None:
    cfg = get_profile(
        "paper",
        **{
            "data.root": str(synthetic_root), "data.crop_size": 64, "data.resize_long": (64, 96),
            "train.batch_size": 2, "train.max_steps": 1, "model.pretrained": False, "device": "cpu",
        },
    )
    result = train(cfg, tmp_path / "run", progress=False)
    assert not result.reused and result.checkpoint.name == "final.pt"
    state = torch.load(result.checkpoint, map_location="cpu", weights_only=False)
    assert state["steps"] == 1
    assert ExperimentConfig.from_dict(state["config"]) == cfg
    with result.metrics.open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1]
    assert math.isfinite(float(rows[0]["loss"])) and math.isfinite(float(rows[0]["loss_gsc"]))
    assert float(rows[0]["lr_backbone"]) == pytest.approx(0.1)
    assert float(rows[0]["lr_new"]) == pytest.approx(1.0)


def test_string_overrides_are_coerced() -> None:
    cfg = get_profile(
        "smoke",
        **{
            "train.batch_size": "3", "train.lr": "0.05", "model.gsc": "false", "model.background_prototype": "No",
            "data.resize_long": "(48, 80)", "infer.scales": "1.0, 0.5, 1.5", "train.max_steps": "none",
            "data.max_images": "5", "model.bg_scale": "1", "infer.flip": "TRUE", "device": "cpu",
        },
    )
    assert cfg.train.batch_size == 3 and isinstance(cfg.train.batch_size, int)
    assert cfg.train.lr == 0.05
    assert cfg.model.gsc is False and cfg.model.background_prototype is False
    assert cfg.data.resize_long == (48, 80) and all(isinstance(v, int) for v in cfg.data.resize_long)
    assert cfg.infer.scales == (1.0, 0.5, 1.5)
    assert cfg.train.max_steps is None and cfg.data.max_images == 5
    assert cfg.model.bg_scale == 1.0 and isinstance(cfg.model.bg_scale, float)
    assert cfg.infer.flip is True and cfg.device == "cpu"


def test_list_overrides_become_tuples() -> None:
    cfg = get_profile("smoke", **{"infer.scales": [1.0, 2.0], "data.resize_long": [32, 64]})
    assert cfg.infer.scales == (1.0, 2.0) and cfg.data.resize_long == (32, 64)
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "key, value",
    [
        ("model.no_such_field", "1"),
        ("nosection.lr", "1"),
        ("train.batch_size", "four"),
        ("train.lr", "fast"),
        ("model.gsc", "maybe"),
        ("model.bg_scale", "0"),
        ("model.prototype_feature", "pixels"),
        ("data.resize_long", "(96, 64)"),
        ("data.crop_size", "0"),
        ("device", "tpu"),
        ("infer.precision", "float16"),
        ("eval.thresholds", "(0.3, 0.2)"),
        ("eval.thresholds", "(0.2, 0.2)"),
        ("eval.thresholds", "(0.0, 0.5)"),
        ("study.fig8_thresholds", "(0.5, 1.0)"),
    ],
)
def test_bad_overrides_raise_config_error_naming_the_field(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        get_profile("smoke", **{key: value})


def test_from_dict_rejects_unknown_fields() -> None:
    d = get_profile("smoke").to_dict()
    d["train"]["learning_rate"] = 0.1
    with pytest.raises(ConfigError, match="learning_rate"):
        ExperimentConfig.from_dict(d)


def test_stage_hash_tracks_model_settings_not_data_root() -> None:
    base = get_profile("smoke")
    moved = base.override(**{"data.root": "/elsewhere", "data.num_workers": 2})
    assert moved.stage_hash("train") == base.stage_hash("train")
    assert moved.stage_hash("maps") == base.stage_hash("maps")
    changes = [{"model.bg_scale": 0.5}, {"model.gsc": False}, {"model.semantic_layer": "blocks6"},
               {"model.backbone": "resnet50", "model.semantic_layer": "default"}, {"train.lr": 0.02},
               {"data.crop_size": 96}]
    for change in changes:
        changed = base.override(**change)
        assert changed.stage_hash("train") != base.stage_hash("train"), change
        assert changed.stage_hash("maps") != base.stage_hash("maps"), change
    scales = base.override(**{"infer.scales": (1.0,)})
    assert scales.stage_hash("train") == base.stage_hash("train")
    assert scales.stage_hash("maps") != base.stage_hash("maps")
    thresholds = base.override(**{"eval.thresholds": (0.2,)})
    assert thresholds.stage_hash("maps") == base.stage_hash("maps")
    assert thresholds.stage_hash("eval") != base.stage_hash("eval")
    assert len(base.stage_hash("train")) == 12


def test_maps_precision_enters_the_maps_hash_and_float32_keeps_earlier_keys() -> None:
    import hashlib
    import json

    from sipe.infra.config import NON_RESULT_FIELDS

    base = get_profile("smoke")
    assert base.infer.precision == "float32" and get_profile("paper").infer.precision == "float32"
    assert get_profile("subset").infer.precision == "bfloat16"
    bf16 = base.override(**{"infer.precision": "bfloat16"})
    assert bf16.stage_hash("train") == base.stage_hash("train")
    assert bf16.stage_hash("maps") != base.stage_hash("maps")
    d = base.to_dict()
    del d["infer"]["precision"]
    parts = {s: {k: v for k, v in d[s].items() if k not in NON_RESULT_FIELDS.get(s, ())}
             for s in ("data", "model", "train", "infer", "eval")}
    parts["inputs"] = ["x"]
    before = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]
    assert base.stage_hash("eval", "x") == before


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variants_validate_and_differ(profile: str, variant: str) -> None:
    base = get_profile(profile)
    cfg = variant_config(base, variant)
    cfg.validate()
    changed = False
    for key, value in VARIANTS[variant].items():
        section, name = key.split(".")
        assert getattr(getattr(cfg, section), name) == value
        changed |= getattr(getattr(base, section), name) != value
    assert (cfg.stage_hash("train") == base.stage_hash("train")) == (not changed)


def test_unknown_variant_is_rejected() -> None:
    with pytest.raises(ConfigError, match="nosuch"):
        variant_config(get_profile("smoke"), "nosuch")


def test_missing_data_root_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIPE_DATA_ROOT", raising=False)
    with pytest.raises(ConfigError, match="SIPE_DATA_ROOT"):
        get_profile("smoke").data.resolved_root()
    monkeypatch.setenv("SIPE_DATA_ROOT", "/some/where")
    assert get_profile("smoke").data.resolved_root() == Path("/some/where")


def test_numeric_json_values_coerce_to_declared_types():
    from sipe.infra.config import ConfigError, get_profile

    cfg = get_profile("smoke", **{"train.batch_size": 2.0, "model.gsc": 0})
    assert cfg.train.batch_size == 2 and isinstance(cfg.train.batch_size, int)
    assert cfg.model.gsc is False
    with pytest.raises(ConfigError, match="train.batch_size"):
        get_profile("smoke", **{"train.batch_size": 2.5})
    with pytest.raises(ConfigError, match="model.gsc"):
        get_profile("smoke", **{"model.gsc": 3})


def test_default_work_dir_follows_the_environment(monkeypatch, tmp_path) -> None:
    from sipe.infra.config import REPO_ROOT, WORK_DIR_ENV, default_work_dir

    monkeypatch.delenv(WORK_DIR_ENV, raising=False)
    assert default_work_dir("subset") == REPO_ROOT / "work" / "subset"
    monkeypatch.setenv(WORK_DIR_ENV, str(tmp_path))
    assert default_work_dir("smoke") == tmp_path / "smoke"


def test_dataset_and_class_count_are_checked_together() -> None:
    from sipe.infra.config import ConfigError, get_profile

    assert get_profile("smoke", **{"data.dataset": "coco", "data.num_classes": 80}).data.num_classes == 80
    with pytest.raises(ConfigError, match="num_classes=20 but data.dataset='coco' has 80"):
        get_profile("smoke", **{"data.dataset": "coco"})
    with pytest.raises(ConfigError, match="data.dataset='ade'"):
        get_profile("smoke", **{"data.dataset": "ade"})
