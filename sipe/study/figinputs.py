"""The inputs of the chapters that show trained models (Figs. 1, 3, 5 and 7), kept beside the results.

Chapters 07-09 read features and maps of a few images from the work folder, which is not published. `write`
saves what they read under `<results_dir>/figures/`, so that they re-execute on any clone:

- `fig1.npz` (float32: the example class's pixel features, CAM values and grid cells, the class centre and the
  seed prototype: Fig. 1's t-SNE) and `fig1_per_seed.csv` (`analysis.prototype_vs_centre` per CAM seed);
- `fig3.npz` (float32: the two pixels, their IoU with every CAM channel, their structure maps, the class and
  background CAMs: Fig. 3);
- `maps/<unit>/<id>.npz`: the shown images' `cam` and `is_cam` maps, copied from the units' maps folders
  (float16, as the maps stage stores them): Figs. 1, 5 and 7;
- `<figure>.json`, written last: the parameters, the units (identity and checkpoint of their results
  record, revision), where each part came from, and the digest of every file.

`load` returns a figure's inputs from these files when they are current (same parameters, units unchanged,
files intact), else computes them from the work folder, so a figure and its numbers are the same either way.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from . import analysis as A
from ..data import voc
from ..infra import provenance as prov
from ..infra.errors import SipeError, UnitNotComputedError
from ..infra.runtime import atomic_savez, atomic_write_json, atomic_write_text, file_digest, read_json
from .pipeline import Unit
from .plan import has_results
from .records import unit_paths

FIGURES = ("fig1", "fig3", "fig5")
DEFAULTS: dict[str, dict[str, int]] = {"fig1": {"example_seed": 0, "n_images": 20}, "fig3": {"example_seed": 0},
                                       "fig5": {}}
MAP_KEYS = ("keys", "cam", "is_cam")
PUBLISHED_PAIRS = "fig1_pairs.csv"
FIX = "python -m sipe figure-inputs --profile {profile}"


class FigureInputsError(SipeError, RuntimeError):
    """A figure's inputs are neither kept (current) nor computable from the work folder."""


@dataclass(frozen=True)
class Fig1Inputs:
    """Fig. 1: the example (id, class_index, class_name, area), its class's `analysis.ClassSample` on the first
    CAM seed, `analysis.prototype_vs_centre` per CAM seed over the listed images, the example's maps folder."""

    example: pd.Series
    sample: A.ClassSample
    per_seed: dict[int, pd.DataFrame]
    maps: Path


@dataclass(frozen=True)
class Fig3Inputs:
    """Fig. 3: the example (id, class_index, class_name, area) and its `analysis.StructureSample` (first SIPE seed)."""

    example: pd.Series
    sample: A.StructureSample


@dataclass(frozen=True)
class Fig5Inputs:
    """Figs. 5 and 7: the images (`analysis.pick_visual_examples`) and the maps folder of each variant ('cam',
    'sipe'; first seed) holding them."""

    examples: pd.DataFrame
    maps: dict[str, Path]


def figures_dir(results_dir: str | os.PathLike) -> Path:
    return Path(results_dir) / "figures"


def record_path(results_dir: str | os.PathLike, name: str) -> Path:
    return figures_dir(results_dir) / f"{name}.json"


def parameters(name: str, **given: Any) -> dict[str, int]:
    """The figure's parameters: its DEFAULTS with `given` over them (unknown names are an error)."""
    if name not in DEFAULTS:
        raise ValueError(f"figure {name!r}: the figures with kept inputs are {list(FIGURES)}")
    unknown = sorted(set(given) - set(DEFAULTS[name]))
    if unknown:
        raise ValueError(f"figure {name}: unknown parameters {unknown}; it takes {sorted(DEFAULTS[name])}")
    return {k: int(given.get(k, v)) for k, v in DEFAULTS[name].items()}


def figure_units(study: Any, name: str) -> list[Unit]:
    """The units figure `name` reads: every CAM seed (Fig. 1), the first SIPE seed (Fig. 3), the first CAM and
    SIPE seeds (Figs. 5, 7)."""
    first = study.cfg.study.seeds[0]
    if name == "fig1":
        return [Unit("cam", s) for s in study.cfg.study.seeds]
    return [Unit("sipe", first)] if name == "fig3" else [Unit("cam", first), Unit("sipe", first)]


def _unit_entry(study: Any, unit: Unit) -> dict[str, Any] | None:
    """What the unit's results record says of it (identity, checkpoint, revision), or None without a current one."""
    if not has_results(study.cfg, study.results_dir, unit):
        return None
    record = read_json(unit_paths(study.results_dir, unit.name)["json"])
    return {k: record.get(k) for k in ("config_hash", "checkpoint_digest", "maps", "git_revision")}


def _model(study: Any, unit: Unit):
    from ..stages import checkpoint

    return checkpoint.load_trained(study.trained(unit.variant, unit.seed).checkpoint)[0]


def _example(study: Any, example_seed: int) -> pd.Series:
    return A.pick_example_images(study.root, study.eval_ids(), n=1, seed=example_seed).iloc[0]


def compute_fig1(study: Any, example_seed: int = 0, n_images: int = 20,
                 kept_per_seed: dict[int, pd.DataFrame] | None = None) -> Fig1Inputs:
    """Fig. 1's inputs from the CAM units' weights and maps in the work folder; a seed whose weights are not
    there takes its frame from `kept_per_seed` when given."""
    units = figure_units(study, "fig1")
    example = _example(study, example_seed)
    ids = A.pick_example_images(study.root, study.eval_ids(), n=n_images, seed=example_seed, min_area=0.0)["id"].tolist()
    cfg = study.config("cam")
    per_seed: dict[int, pd.DataFrame] = {}
    sample = None
    for unit in units:
        try:
            model = _model(study, unit)
        except UnitNotComputedError:
            if unit == units[0] or kept_per_seed is None or unit.seed not in kept_per_seed:
                raise
            per_seed[unit.seed] = kept_per_seed[unit.seed]
            continue
        if sample is None:
            sample = A.class_sample(A.analyze_image(model, cfg, study.root, example["id"]), int(example["class_index"]))
        per_seed[unit.seed] = A.prototype_vs_centre(model, cfg, study.root, ids)
    assert sample is not None
    return Fig1Inputs(example, sample, per_seed, study.maps("cam", seed=units[0].seed))


def compute_fig3(study: Any, example_seed: int = 0) -> Fig3Inputs:
    """Fig. 3's inputs from the first SIPE unit's weights in the work folder."""
    unit = figure_units(study, "fig3")[0]
    example = _example(study, example_seed)
    a = A.analyze_image(_model(study, unit), study.config("sipe"), study.root, example["id"])
    cls = int(example["class_index"])
    fg, bg = A.pick_pixels(a, cls)
    return Fig3Inputs(example, A.structure_sample(a, fg, bg, cls))


def compute_fig5(study: Any) -> Fig5Inputs:
    """Figs. 5 and 7's inputs: the chosen images and the first CAM and SIPE units' maps folders."""
    examples = A.pick_visual_examples(study.root, study.eval_ids())
    return Fig5Inputs(examples, {u.variant: study.maps(u.variant, seed=u.seed) for u in figure_units(study, "fig5")})


COMPUTE: dict[str, Callable[..., Any]] = {"fig1": compute_fig1, "fig3": compute_fig3, "fig5": compute_fig5}


def _copy_maps(src: Path, dest: Path, ids: list[str]) -> list[Path]:
    out = []
    for image_id in ids:
        with np.load(src / f"{image_id}.npz") as data:
            arrays = {k: data[k] for k in MAP_KEYS}
        out.append(atomic_savez(dest / f"{image_id}.npz", **arrays))
    return out


def _save(study: Any, name: str, inputs: Any) -> tuple[list[Path], dict[str, Any]]:
    """Write a figure's files (not its record); returns them and what the record says of their content."""
    d = figures_dir(study.results_dir)
    units = figure_units(study, name)
    if name == "fig1":
        s = inputs.sample
        pf = s.pixels
        files = [atomic_savez(d / "fig1.npz", features=pf.features, cam=pf.cam, coords=pf.coords, centre=s.centre,
                              prototype=s.prototype)]
        pairs = pd.concat([f.assign(seed=seed) for seed, f in inputs.per_seed.items()], ignore_index=True)
        files.append(atomic_write_text(d / "fig1_per_seed.csv", pairs.to_csv(index=False)))
        files += _copy_maps(inputs.maps, d / "maps" / units[0].name, [str(inputs.example["id"])])
        content = {"example": _rows(inputs.example.to_frame().T), "n_channels": s.n_channels, "pixels_from": pf.source,
                   "seeds": [int(seed) for seed in inputs.per_seed]}
    elif name == "fig3":
        s = inputs.sample
        files = [atomic_savez(d / "fig3.npz", pixels=s.pixels, iou=s.iou, structure=s.structure, cams=s.cams)]
        content = {"example": _rows(inputs.example.to_frame().T), "bg_scale": s.bg_scale}
    else:
        ids = inputs.examples["id"].tolist()
        files = [p for u in units for p in _copy_maps(inputs.maps[u.variant], d / "maps" / u.name, ids)]
        content = {"examples": _rows(inputs.examples)}
    return files, content


def _rows(frame: pd.DataFrame) -> dict[str, list]:
    """A small frame as JSON values, its columns in order (read back by `_frame`)."""
    return {"columns": [str(c) for c in frame.columns],
            "rows": [[v.item() if isinstance(v, np.generic) else v for v in row] for row in frame.itertuples(index=False)]}


def _frame(rows: dict[str, list]) -> pd.DataFrame:
    return pd.DataFrame(rows["rows"], columns=rows["columns"]).infer_objects()


def _read(study: Any, name: str, record: dict[str, Any]) -> Any:
    d = figures_dir(study.results_dir)
    content = record["content"]
    units = figure_units(study, name)
    if name == "fig5":
        return Fig5Inputs(_frame(content["examples"]), {u.variant: d / "maps" / u.name for u in units})
    example = _frame(content["example"]).iloc[0]
    cls = int(example["class_index"])
    if name == "fig3":
        with np.load(d / "fig3.npz") as z:
            sample = A.StructureSample(str(example["id"]), cls, z["pixels"], z["iou"], z["structure"], z["cams"],
                                       float(content["bg_scale"]), voc.load_image(study.root, str(example["id"])))
        return Fig3Inputs(example, sample)
    with np.load(d / "fig1.npz") as z:
        pf = A.PixelFeatures(z["features"], z["cam"], z["coords"], content["pixels_from"])
        sample = A.ClassSample(str(example["id"]), cls, int(content["n_channels"]), pf, z["centre"], z["prototype"])
    pairs = pd.read_csv(d / "fig1_per_seed.csv", dtype={"id": str})
    per_seed = {seed: pairs[pairs["seed"] == seed].drop(columns="seed").reset_index(drop=True)
                for seed in content["seeds"]}
    return Fig1Inputs(example, sample, per_seed, d / "maps" / units[0].name)


def current_record(study: Any, name: str, params: dict[str, int]) -> dict[str, Any] | None:
    """The figure's record when its kept inputs are current: same parameters, the same units with their results
    records unchanged, every file present with its digest. None otherwise."""
    path = record_path(study.results_dir, name)
    if not path.is_file():
        return None
    try:
        record = read_json(path)
    except ValueError:
        return None
    units = figure_units(study, name)
    if record.get("parameters") != params or list(record.get("units", {})) != [u.name for u in units]:
        return None
    for unit in units:
        entry = _unit_entry(study, unit)
        kept = record["units"][unit.name]
        if entry is None or any(entry[k] != kept.get(k) for k in ("config_hash", "checkpoint_digest", "maps")):
            return None
    d = figures_dir(study.results_dir)
    for rel, digest in record.get("files", {}).items():
        if not (d / rel).is_file() or file_digest(d / rel) != digest:
            return None
    return record


def load(study: Any, name: str, **given: Any) -> Any:
    """Figure `name`'s inputs: the kept ones when current (`current_record`), else computed from the work folder
    (a unit not computed there is an error naming the kept record and the command that writes it)."""
    params = parameters(name, **given)
    record = current_record(study, name, params)
    if record is not None:
        return _read(study, name, record)
    try:
        return COMPUTE[name](study, **params)
    except UnitNotComputedError as e:
        path = record_path(study.results_dir, name)
        why = "is missing" if not path.exists() else "is not current (other parameters or units, or a file changed)"
        raise FigureInputsError(
            f"the inputs of {name} ({path}) {why}, and the work folder cannot make them: {e}; on the machine that "
            f"computed the units, write them with `{FIX.format(profile=study.cfg.profile)}`") from e


def _published_pairs(study: Any) -> dict[int, pd.DataFrame] | None:
    path = Path(study.results_dir) / PUBLISHED_PAIRS
    if not path.is_file():
        return None
    pairs = pd.read_csv(path, dtype={"id": str})
    return {int(s): f.drop(columns="seed").reset_index(drop=True) for s, f in pairs.groupby("seed", sort=False)}


def write(study: Any, name: str, **given: Any) -> str:
    """Write figure `name`'s inputs under `<results_dir>/figures/` unless current: 'reused', 'written', or
    'waiting: ...' when a unit it reads has no current results yet. Fig. 1's statistics of a CAM seed whose weights
    are not in the work folder are taken from the chapter's published `fig1_pairs.csv` (the record says so)."""
    params = parameters(name, **given)
    if current_record(study, name, params) is not None:
        return "reused"
    units = figure_units(study, name)
    entries = {u.name: _unit_entry(study, u) for u in units}
    missing = [n for n, e in entries.items() if e is None]
    if missing:
        return f"waiting: no current results of {', '.join(missing)}"
    kept = _published_pairs(study) if name == "fig1" else None
    try:
        inputs = compute_fig1(study, **params, kept_per_seed=kept) if name == "fig1" else COMPUTE[name](study, **params)
    except UnitNotComputedError as e:
        return f"waiting: {e}"
    files, content = _save(study, name, inputs)
    d = figures_dir(study.results_dir)
    sources = {u.name: _source(study, u) for u in units}
    maps = {units[0].name: inputs.maps} if name == "fig1" else \
        {u.name: inputs.maps[u.variant] for u in units} if name == "fig5" else {}
    for unit_name, folder in maps.items():
        sources[unit_name]["maps"] = Path(folder).name
    record = {"figure": name, "parameters": params, "profile": study.cfg.profile,
              "units": entries, "sources": sources, "content": content,
              "files": {str(p.relative_to(d)): file_digest(p) for p in files},
              "git_revision": prov.git_revision(), "written": prov.utc_now()}
    atomic_write_json(record_path(study.results_dir, name), record)
    return "written"


def _source(study: Any, unit: Unit) -> dict[str, str]:
    """Where a unit's part of the inputs came from: its checkpoint in the work folder (run folder, file digest),
    else (Fig. 1's statistics) its rows of the chapter's published table."""
    try:
        checkpoint = Path(study.trained(unit.variant, unit.seed).checkpoint)
    except UnitNotComputedError:
        return {"rows_of": f"{PUBLISHED_PAIRS} (chapter 07 as published)"}
    return {"checkpoint": f"{checkpoint.parent.name}/{checkpoint.name}", "checkpoint_file_digest": file_digest(checkpoint)}


def write_all(study: Any, names: tuple[str, ...] = FIGURES) -> dict[str, str]:
    """`write` of each figure with its default parameters: {figure: outcome}."""
    return {name: write(study, name) for name in names}
