"""The ladder of settings from the `subset` profile toward the paper's: each rung one change of one axis away
from the base profile (or the combined rung), declared here as `section.field` overrides with its own plan
(variants, seeds), computed by the study's stages (`python -m sipe stages --profile subset --rung NAME`) into
its own results folder (`results/ladder/<rung>/`), and priced before it runs (`budget`).

A rung's units are the base study's units under other settings: their configuration hashes, run and maps
folders differ from the base study's wherever a setting that enters a stage hash differs, so they share the
base profile's work folder (a rung that changes only the maps, `scales4`, reuses the base study's trained
models). `python -m sipe ladder` prints the rungs with their estimated cost.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..infra.config import VARIANTS, ConfigError, ExperimentConfig, get_profile
from ..infra.provenance import REPO_ROOT
from ..method.backbones import check_model
from ..stages.train import plan_steps
from .paper import PAPER_SCALES
from .pipeline import Unit, plan, unit_config
from .records import RESULTS_ENV, training_log_path, unit_paths

LADDER_PROFILES = ("smoke", "subset")
"""The profiles a rung applies to: `subset` (the ladder of the study) and `smoke` (tests)."""
LADDER_VARIANTS = ("sipe", "cam")
BUDGET_HOURS = 12.0
"""The CPU budget of the whole ladder (hours of stage time on the 2-core machine of the subset study)."""


@dataclass(frozen=True)
class Rung:
    """One setting of the ladder: `overrides` (`section.field` -> value) applied to the base profile, on
    `axis`, with the units `variants` x `seeds` (every variant with every seed)."""

    name: str
    axis: str
    overrides: Mapping[str, Any]
    seeds: tuple[int, ...] = (15,)
    variants: tuple[str, ...] = LADDER_VARIANTS
    title: str = ""

    def plan_overrides(self) -> dict[str, Any]:
        """The study settings that make the base profile's plan this rung's units."""
        return {"study.variants": self.variants, "study.seeds": self.seeds, "study.multi_seed": self.variants}

    @property
    def units(self) -> list[Unit]:
        """The rung's units in run order (every variant with the first seed, then the other seeds)."""
        return [Unit(v, s) for s in self.seeds for v in self.variants]

    def describe(self) -> str:
        """The overrides as `section.field=value` words."""
        return ", ".join(f"{k}={_shown(v)}" for k, v in self.overrides.items())


def _shown(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in value)
    return str(value)


FOUR_SCALES = tuple(float(s) for s in PAPER_SCALES)

RUNGS: tuple[Rung, ...] = (
    Rung("data375", "data", {"data.max_images": 375, "train.epochs": 21, "train.max_steps": 935},
         title="375 training images (the first 375 train_aug ids), 935 steps of 8 as the subset study"),
    Rung("data750", "data", {"data.max_images": 750, "train.epochs": 11, "train.max_steps": 935},
         title="750 training images (the first 750 train_aug ids), 935 steps of 8 as the subset study"),
    Rung("epochs10", "length", {"train.epochs": 10}, title="10 epochs: twice the samples seen"),
    Rung("epochs20", "length", {"train.epochs": 20}, title="20 epochs: four times the samples seen"),
    Rung("lite2", "backbone", {"model.backbone": "efficientnet_lite2"},
         title="EfficientNet-Lite2 (its conv_head as the semantic feature, as Lite0's)"),
    Rung("crop352", "crop", {"data.crop_size": 352, "data.resize_long": (352, 528)},
         title="crops of 352 from images resized to a long side of 352-528 (both x 1.375)"),
    Rung("scales4", "scales", {"infer.scales": FOUR_SCALES},
         title="the paper's four map scales (adds 2.0); training shared with the subset study"),
    Rung("combined", "combined", {"model.backbone": "efficientnet_lite2", "infer.scales": FOUR_SCALES},
         seeds=(15, 16, 17), title="Lite2 and the four map scales, three training seeds (seed 15's training "
         "shared with the lite2 rung)"),
)
"""The ladder, in run order. The two data rungs keep the samples seen at the subset study's 935 steps x 8
(epochs enough to reach them, capped by train.max_steps)."""


def get_rung(name: str) -> Rung:
    """The rung called `name`; ConfigError naming the rungs otherwise."""
    by_name = {r.name: r for r in RUNGS}
    if name not in by_name:
        raise ConfigError(f"unknown rung {name!r}; choose one of {list(by_name)} (sipe/study/ladder.py RUNGS)")
    return by_name[name]


def rung_config(rung: Rung, base: ExperimentConfig) -> ExperimentConfig:
    """`base` (a profile of LADDER_PROFILES, with any overrides of its own) with the rung's overrides and plan,
    validated: every override a field that changes the base's value, known variants, a registered backbone."""
    if base.profile not in LADDER_PROFILES:
        raise ConfigError(f"rung {rung.name!r} applies to the profiles {list(LADDER_PROFILES)}, not {base.profile!r}")
    unknown = [v for v in rung.variants if v not in VARIANTS]
    if unknown or not rung.seeds:
        raise ConfigError(f"rung {rung.name!r}: variants {list(rung.variants)} and seeds {list(rung.seeds)}; "
                          f"variants must be among {sorted(VARIANTS)} and seeds non-empty")
    cfg = base.override(**rung.overrides)
    for key in rung.overrides:
        section, _, name = key.partition(".")
        if getattr(getattr(cfg, section), name) == getattr(getattr(base, section), name):
            raise ConfigError(f"rung {rung.name!r}: {key}={_shown(rung.overrides[key])} is the base profile's "
                              "value already; a rung's override must change a setting")
    cfg = cfg.override(**rung.plan_overrides())
    check_model(cfg.model)
    return cfg


def rung_results_dir(profile: str, work_dir: str | Path, rung: str) -> Path:
    """Where a rung's results files go: `$SIPE_RESULTS_DIR/ladder/<rung>` when set, else
    `results/ladder/<rung>` in the repository for `subset`, else `<work_dir>/results/ladder/<rung>`."""
    env = os.environ.get(RESULTS_ENV, "")
    if env:
        return Path(env).expanduser() / "ladder" / rung
    if profile == "subset":
        return REPO_ROOT / "results" / "ladder" / rung
    return Path(work_dir) / "results" / "ladder" / rung


def rung_command(rung: Rung, profile: str = "subset") -> str:
    """The command line that computes the rung's units."""
    return f"python -m sipe stages --profile {profile} --rung {rung.name}"


@dataclass(frozen=True)
class BackboneCost:
    """FLOPs of one backbone (torch's FlopCounterMode, `measure_backbone_flops`): a training step's forward and
    backward of one 256x256 crop with the GSC loss, and the maps of one 500x375 image at scales 1, 0.5, 1.5 with
    its flip (seed locating and IS-CAM included)."""

    train_gflops: float
    maps_gflops: float


BACKBONE_COSTS: dict[str, BackboneCost] = {
    "efficientnet_lite0": BackboneCost(85.7, 51.5),
    "efficientnet_lite2": BackboneCost(129.5, 69.5),
}
"""Measured on 2026-12-06 with `measure_backbone_flops` (torch 2.14, one thread). The crop and the map scales
scale these with their pixels within 1% (a 352 crop: x1.89 for (352/256)^2 = 1.89) and 3-7% (scale 2 costs
4.6x scale 1 where its pixels are 4x), so the estimate counts pixels."""


def measure_backbone_flops(backbone: str, crop: int = 256, image: tuple[int, int] = (375, 500),
                           scales: Sequence[float] = (1.0, 0.5, 1.5)) -> BackboneCost:
    """The FLOPs of `backbone` in SIPE (the subset profile's model otherwise, untrained weights): one training
    crop forward and backward, and one image's maps at `scales` with flips."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ..method import ipe
    from ..method.network import build_model
    from ..stages.maps import infer_scale

    cfg = get_profile("subset", **{"model.backbone": backbone, "model.pretrained": False})
    model = build_model(cfg.model, cfg.data.num_classes)
    labels = torch.zeros(1, cfg.data.num_classes)
    labels[0, 7] = 1.0
    mask = ipe.label_mask(labels, torch.ones(1, crop, crop))
    with FlopCounterMode(display=False) as train_count:
        out = model.train()(torch.randn(1, 3, crop, crop), mask, with_ipe=True)
        (out["cam"].sum() + out["is_cam"].sum()).backward()
    kept = torch.zeros(1, cfg.data.num_classes + 1, 1, 1)
    kept[0, 0] = kept[0, 8] = 1.0
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as maps_count:
        for s in scales:
            views = torch.randn(2, 3, round(image[0] * s), round(image[1] * s))
            infer_scale(model, views, kept, cfg.model)
    return BackboneCost(train_count.get_total_flops() / 1e9, maps_count.get_total_flops() / 1e9)


STAGES = ("train", "maps", "eval")


def measured_seconds(results_dir: str | Path, variants: Sequence[str] = LADDER_VARIANTS) -> pd.DataFrame:
    """Per variant, the median over its units' records in `results_dir` of each stage's wall time (s): train,
    maps (evaluated + selection split), eval (every reading of both), and the steps per epoch and steps of its
    training (from its kept training log); index variant. ConfigError when a variant has no record."""
    rows = []
    for variant in variants:
        records = sorted(Path(results_dir, "runs").glob(f"{variant}-s*.json"))
        records = [p for p in records if p.stem.rsplit("-s", 1)[0] == variant]
        if not records:
            raise ConfigError(f"no measured unit of {variant!r} in {results_dir}/runs: the estimate scales the "
                              "stage times of the base study's units; compute one first")
        per_unit = []
        for path in records:
            w = json.loads(path.read_text()).get("wall_seconds", {})
            log = pd.read_csv(training_log_path(results_dir, path.stem), usecols=["step", "epoch"])
            per_unit.append({"train": w["train"], "maps": w["maps_eval"] + w["maps_selection"],
                             "eval": w["eval_eval"] + w["eval_selection"],
                             "steps_per_epoch": int((log["epoch"] == 0).sum()), "steps": int(log["step"].max())})
        frame = pd.DataFrame(per_unit)
        rows.append({"variant": variant, **frame[list(STAGES)].median().to_dict(),
                     "steps_per_epoch": int(frame["steps_per_epoch"].median()), "steps": int(frame["steps"].median()),
                     "units": len(per_unit)})
    return pd.DataFrame(rows).set_index("variant")


def _map_pixels(cfg: ExperimentConfig) -> float:
    return float(sum(s * s for s in cfg.infer.scales))


def _backbone_cost(cfg: ExperimentConfig) -> BackboneCost:
    if cfg.model.backbone not in BACKBONE_COSTS:
        raise ConfigError(f"no measured cost of model.backbone={cfg.model.backbone!r}; measure it with "
                          f"sipe.study.ladder.measure_backbone_flops and add it to BACKBONE_COSTS")
    return BACKBONE_COSTS[cfg.model.backbone]


def cost_factors(unit_cfg: ExperimentConfig, measured_cfg: ExperimentConfig, measured_steps_per_epoch: int) -> dict[str, float]:
    """How much a unit under `unit_cfg` costs per stage relative to the measured unit under `measured_cfg`:
    train = steps x crop pixels x the backbone's training FLOPs, maps = map pixels (sum of squared scales) x
    the backbone's map FLOPs, eval = 1 (the readings are of the images at their size). The steps are planned as
    `plan_steps` plans them, with the measured run's images (steps per epoch x batch)."""
    n_base = measured_steps_per_epoch * measured_cfg.train.batch_size
    n_unit = min(n_base, unit_cfg.data.max_images) if unit_cfg.data.max_images else n_base
    steps = plan_steps(n_unit, unit_cfg)[1] / plan_steps(n_base, measured_cfg)[1]
    crop = (unit_cfg.data.crop_size / measured_cfg.data.crop_size) ** 2
    b_unit, b_base = _backbone_cost(unit_cfg), _backbone_cost(measured_cfg)
    return {"train": steps * crop * b_unit.train_gflops / b_base.train_gflops,
            "maps": _map_pixels(unit_cfg) / _map_pixels(measured_cfg) * b_unit.maps_gflops / b_base.maps_gflops,
            "eval": 1.0}


def unit_budget(rungs: Sequence[Rung] = RUNGS, measured_dir: str | Path | None = None,
                profile: str = "subset") -> pd.DataFrame:
    """Per unit of each rung, its estimated stage time (hours): the base study's measured stage times of its
    variant (`measured_seconds`, default `results/<profile>`) x `cost_factors`. A unit whose training settings
    equal a base study's unit's or an earlier unit's (in rung order) reuses that training and costs none. Columns
    rung, unit, train_h, maps_h, eval_h, total_h."""
    measured_dir = Path(measured_dir) if measured_dir is not None else REPO_ROOT / "results" / profile
    variants = sorted({v for r in rungs for v in r.variants})
    measured = measured_seconds(measured_dir, variants)
    base = get_profile(profile)
    trained = {unit_config(base, u).stage_hash("train") for u in plan(base)}
    rows = []
    for rung in rungs:
        cfg = rung_config(rung, base)
        for unit in rung.units:
            ucfg = unit_config(cfg, unit)
            m = measured.loc[unit.variant]
            factors = cost_factors(ucfg, unit_config(base, unit), int(m["steps_per_epoch"]))
            key = ucfg.stage_hash("train")
            hours = {f"{stage}_h": 0.0 if stage == "train" and key in trained else m[stage] * factors[stage] / 3600.0
                     for stage in STAGES}
            trained.add(key)
            rows.append({"rung": rung.name, "unit": unit.name, **hours, "total_h": sum(hours.values())})
    return pd.DataFrame(rows, columns=["rung", "unit", *(f"{s}_h" for s in STAGES), "total_h"])


def budget(rungs: Sequence[Rung] = RUNGS, measured_dir: str | Path | None = None, profile: str = "subset") -> pd.DataFrame:
    """Per rung, the estimated stage time of its units (hours): `unit_budget` summed over the rung's units.
    Columns rung, axis, overrides, units, train_h, maps_h, eval_h, total_h."""
    per_unit = unit_budget(rungs, measured_dir, profile)
    hours = per_unit.drop(columns="unit").groupby("rung", sort=False).sum()
    return pd.DataFrame([{"rung": r.name, "axis": r.axis, "overrides": r.describe(),
                          "units": " ".join(u.name for u in r.units), **hours.loc[r.name].to_dict()} for r in rungs])


def seed_hours(names: Sequence[str], seeds: tuple[int, ...] = (15, 16, 17), rungs: Sequence[Rung] = RUNGS,
               measured_dir: str | Path | None = None, profile: str = "subset") -> dict[str, float]:
    """{rung: the estimated hours that running it with `seeds` instead of its declared seeds would add to the
    ladder}, for the rungs `names` of `rungs`: the `budget` total of the ladder with that rung alone reseeded minus
    the declared ladder's (a training another rung also needs, e.g. the combined rung's Lite2 seeds, is paid once)."""
    declared = float(budget(rungs, measured_dir, profile)["total_h"].sum())
    return {name: float(budget([dataclasses.replace(r, seeds=seeds) if r.name == name else r for r in rungs],
                               measured_dir, profile)["total_h"].sum()) - declared
            for name in names}


def _unit_hours(record: Mapping[str, Any], with_train: bool) -> float:
    w = record.get("wall_seconds", {})
    stages = ["maps_eval", "maps_selection", "eval_eval", "eval_selection"] + (["train"] if with_train else [])
    return sum(float(w.get(k, 0.0)) for k in stages) / 3600.0


def slow_step_seconds(log: pd.DataFrame) -> float:
    """The seconds a training log's steps took beyond its median step's pace: sum(seconds) - steps x median.
    On an idle machine under a tenth of the training; where tests or benchmarks shared the cores, up to most of it."""
    seconds = log["seconds"].astype(float)
    return float(seconds.sum() - len(seconds) * seconds.median()) if len(seconds) else 0.0


def measured_unit_hours(rungs: Sequence[Rung] = RUNGS, results_root: str | Path | None = None,
                        profile: str = "subset") -> pd.DataFrame:
    """Per unit of each rung, the stage time its record gives (hours, from `results_root/ladder/<rung>/runs/`,
    default the repository's `results/`): maps and readings always, training once per training folder (a unit
    whose training the base study or an earlier unit made costs none, as in `unit_budget`); and of that training,
    the hours its kept log's steps took beyond their median pace (`slow_step_seconds`). Columns rung, unit,
    measured_h, slow_train_h (NaN while the unit is not computed)."""
    root = Path(results_root) if results_root is not None else REPO_ROOT / "results"
    trained = {json.loads(p.read_text()).get("train_key") for p in sorted((root / profile / "runs").glob("*.json"))}
    rows = []
    for rung in rungs:
        for unit in rung.units:
            folder = root / "ladder" / rung.name
            path = folder / "runs" / f"{unit.name}.json"
            hours = slow = math.nan
            if path.exists():
                record = json.loads(path.read_text())
                own_training = record.get("train_key") not in trained
                hours = _unit_hours(record, own_training)
                log = training_log_path(folder, unit.name)
                slow = slow_step_seconds(pd.read_csv(log, usecols=["seconds"])) / 3600.0 \
                    if own_training and log.exists() else 0.0
                trained.add(record.get("train_key"))
            rows.append({"rung": rung.name, "unit": unit.name, "measured_h": hours, "slow_train_h": slow})
    return pd.DataFrame(rows, columns=["rung", "unit", "measured_h", "slow_train_h"])


def measured_hours(rungs: Sequence[Rung] = RUNGS, results_root: str | Path | None = None,
                   profile: str = "subset") -> pd.DataFrame:
    """Per rung, the stage time its computed units recorded (hours; `measured_unit_hours` summed). Columns rung,
    units_done, units, measured_h (NaN while no unit is computed)."""
    per_unit = measured_unit_hours(rungs, results_root, profile)
    rows = []
    for rung in rungs:
        done = per_unit.loc[(per_unit["rung"] == rung.name) & per_unit["measured_h"].notna(), "measured_h"]
        rows.append({"rung": rung.name, "units_done": len(done), "units": len(rung.units),
                     "measured_h": float(done.sum()) if len(done) else math.nan})
    return pd.DataFrame(rows)


def projection(estimated: pd.DataFrame, measured: pd.DataFrame) -> dict[str, float]:
    """The ladder's cost as its computed units project it, from `unit_budget` (`estimated`) and
    `measured_unit_hours` (`measured`): measured_h (the computed units' recorded hours), estimated_done_h (their
    estimate), ratio (measured / estimated), remaining_h (the estimate of the units still to compute),
    projected_h = measured_h + ratio x remaining_h; and the same without the training steps slower than their
    unit's median pace: slow_h, paced_ratio, paced_projected_h (NaN ratios and projections while nothing is
    computed)."""
    both = estimated.merge(measured, on=["rung", "unit"], how="left", validate="one_to_one")
    done = both["measured_h"].notna()
    measured_h, estimated_done_h = float(both.loc[done, "measured_h"].sum()), float(both.loc[done, "total_h"].sum())
    slow_h = float(both.loc[done, "slow_train_h"].sum())
    ratio, paced = ((h / estimated_done_h if estimated_done_h > 0 else math.nan) for h in (measured_h, measured_h - slow_h))
    remaining_h = float(both.loc[~done, "total_h"].sum())
    return {"measured_h": measured_h, "estimated_done_h": estimated_done_h, "ratio": ratio,
            "remaining_h": remaining_h, "projected_h": measured_h + ratio * remaining_h, "slow_h": slow_h,
            "paced_ratio": paced, "paced_projected_h": measured_h - slow_h + paced * remaining_h}


def budget_markdown(table: pd.DataFrame, budget_hours: float = BUDGET_HOURS,
                    measured: pd.DataFrame | None = None, projected: Mapping[str, float] | None = None) -> str:
    """A `budget` table as a Markdown table with its total and the budget it is checked against; with
    `measured` (`measured_hours`) a column of the hours each rung's computed units took, and with `projected`
    (`projection`) the whole ladder's cost at the computed units' measured-to-estimated ratio."""
    shown = pd.DataFrame({
        "rung": [f"`{r}`" for r in table["rung"]], "axis": table["axis"],
        "overrides": [f"`{o}`" for o in table["overrides"]], "units": table["units"],
        "estimated hours": [f"{h:.1f}" for h in table["total_h"]]})
    if measured is not None:
        by_rung = measured.set_index("rung")
        shown["measured hours"] = [
            "not yet computed" if not by_rung.loc[r, "units_done"] else
            f"{by_rung.loc[r, 'measured_h']:.1f}" + ("" if by_rung.loc[r, "units_done"] == by_rung.loc[r, "units"]
                                                      else f" ({by_rung.loc[r, 'units_done']} of {by_rung.loc[r, 'units']} units)")
            for r in table["rung"]]
    total = float(table["total_h"].sum())
    text = (shown.to_markdown(index=False) + f"\n\nTotal: {total:.1f} hours of stage time, "
            f"{_against(total, budget_hours)} the {budget_hours:g}-hour budget.")
    if projected is not None and math.isfinite(projected["ratio"]):
        text += " " + projection_note(projected, budget_hours)
    return text + "\n"


def _against(hours: float, budget_hours: float) -> str:
    """'within' or 'over': where `hours` stand against `budget_hours`."""
    return "within" if hours <= budget_hours else "over"


def projection_note(p: Mapping[str, float], budget_hours: float = BUDGET_HOURS) -> str:
    """Sentences on a `projection`: the computed units' measured against estimated hours, and the whole
    ladder's hours at that ratio (or, once every unit is computed, as measured) against `budget_hours`
    ("" while nothing is computed)."""
    if not math.isfinite(p["ratio"]):
        return ""
    slow = f"{p['slow_h']:.1f} were training steps beyond their unit's median pace (other work sharing the two cores)"
    if p["remaining_h"] <= 0:
        return (f"All units are computed: they took {p['measured_h']:.1f} hours where {p['estimated_done_h']:.1f} "
                f"were estimated ({p['ratio']:.2f}x), {_against(p['measured_h'], budget_hours)} the budget. "
                f"Of these, {slow}; without them the ladder would have taken {p['paced_projected_h']:.1f} hours "
                f"({p['paced_ratio']:.2f}x), {_against(p['paced_projected_h'], budget_hours)} the budget.")
    return (f"The computed units took {p['measured_h']:.1f} hours where {p['estimated_done_h']:.1f} were "
            f"estimated ({p['ratio']:.2f}x); at that ratio the {p['remaining_h']:.1f} estimated hours still to "
            f"compute take {p['ratio'] * p['remaining_h']:.1f}, and the whole ladder {p['projected_h']:.1f} hours, "
            f"{_against(p['projected_h'], budget_hours)} the budget. Of the measured hours, {slow}; without them the "
            f"ratio is {p['paced_ratio']:.2f}x and the whole ladder {p['paced_projected_h']:.1f} hours, "
            f"{_against(p['paced_projected_h'], budget_hours)} the budget.")


def check_fits(table: pd.DataFrame, budget_hours: float = BUDGET_HOURS) -> float:
    """The total estimated hours of a `budget` table; ConfigError when it exceeds `budget_hours`."""
    total = float(table["total_h"].sum())
    if not math.isfinite(total) or total > budget_hours:
        raise ConfigError(f"the ladder's estimated {total:.1f} hours exceed its {budget_hours:g}-hour budget; "
                          "drop rungs or seeds in sipe/study/ladder.py RUNGS")
    return total


__all__ = ["BUDGET_HOURS", "BackboneCost", "LADDER_PROFILES", "LADDER_VARIANTS", "RUNGS", "Rung", "budget",
           "budget_markdown", "check_fits", "cost_factors", "get_rung", "measure_backbone_flops", "measured_hours",
           "measured_seconds", "measured_unit_hours", "projection", "projection_note", "seed_hours", "slow_step_seconds", "unit_budget",
           "rung_command", "rung_config", "rung_results_dir"]
