"""The package's layout: imports point down the layers only, and no module imports itself through others."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from sipe.infra import provenance

PACKAGE = Path(__file__).resolve().parents[1] / "sipe"
LAYERS = ("infra", "data", "method", "stages", "baselines|segmentation", "study", "__main__|reproduce")
"""From the bottom up; modules of a layer import from their own layer and those below (`sipe/__init__`,
`sipe/resources` hold no code of a layer)."""


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """{module: the package's modules it imports anywhere in its code (inside functions too)}."""
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = name.split(".") if is_package else name.split(".")[:-1]
                stem = ".".join(base[: len(base) - (node.level - 1)] + ([node.module] if node.module else [])) \
                    if node.level else (node.module or "")
                targets = [stem, *(f"{stem}.{a.name}" for a in node.names)]
            else:
                continue
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != name and t != "sipe" and not name.startswith(t + "."):
                    graph[name].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2 or parts[1] == "resources":
        return None
    return next(i for i, layer in enumerate(LAYERS) if parts[1] in layer.split("|"))


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_cycle() -> None:
    assert cycles(import_graph()) == []


def test_imports_point_down_the_layers() -> None:
    upward = [(m, t) for m, targets in import_graph().items() for t in targets
              if layer_of(m) is not None and layer_of(t) is not None and layer_of(t) > layer_of(m)]
    assert upward == []


def test_every_module_has_a_layer() -> None:
    assert {m.split(".")[1] for m in modules() if "." in m} <= {p for layer in LAYERS for p in layer.split("|")} | {"resources"}


@pytest.mark.parametrize("stage", provenance.STAGES)
def test_stage_sources_are_what_the_stage_imports_but_the_number_neutral_modules(stage: str) -> None:
    files = set(provenance.stage_files(stage))
    graph = import_graph()
    reach, todo = set(), [provenance.STAGE_ENTRIES[stage]]
    while todo:
        m = todo.pop()
        if m not in reach:
            reach.add(m)
            todo += graph[m]
            todo += [".".join(m.split(".")[:k]) for k in range(1, m.count(".") + 1)]
    reached = {modules()[m].relative_to(PACKAGE.parent).as_posix() for m in reach if m in modules()}
    assert files == reached - set(provenance.NUMBER_NEUTRAL)
    assert {"sipe/infra/runtime.py", "sipe/data/voc.py"} <= files


def test_number_neutral_modules_are_imported_by_a_stage_and_nothing_else_is_left_out() -> None:
    everything = set().union(*(provenance.imported_modules(provenance.STAGE_ENTRIES[s]) for s in provenance.STAGES))
    paths = {modules()[m].relative_to(PACKAGE.parent).as_posix() for m in everything}
    assert set(provenance.NUMBER_NEUTRAL) <= paths
    assert "sipe/method/cams.py" in provenance.stage_files("maps")
    assert set(provenance.stage_files("train")) <= set(provenance.stage_files("eval"))


def test_a_new_setting_and_a_new_unit_kind_are_one_declaration_each(synthetic_root: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/architecture.md's worked example: a variant in VARIANTS, a UnitKind in plan.KINDS."""
    import json
    from dataclasses import replace

    import pandas as pd

    from sipe.data import voc
    from sipe.infra import config
    from sipe.study import loading, plan, records
    from sipe.study.pipeline import Unit

    monkeypatch.setitem(config.VARIANTS, "sipe_bg03", {"model.bg_scale": 0.3})
    cfg = config.get_profile("smoke", **{"data.root": str(synthetic_root), "study.variants": ("sipe", "sipe_bg03"),
                                         "study.seeds": (0,)})
    names = [u.name for u in plan.plan(cfg)]
    assert "sipe_bg03-s0" in names and "sipe-s0" in names
    ids = {n: plan.unit_identity(cfg, Unit(*n.split("-s")[:1], 0)) for n in ("sipe-s0", "sipe_bg03-s0")}
    assert ids["sipe-s0"]["config_hash"] != ids["sipe_bg03-s0"]["config_hash"]
    assert ids["sipe-s0"]["data_train"] == ids["sipe_bg03-s0"]["data_train"]

    def identity(cfg: config.ExperimentConfig, unit: Unit) -> dict[str, str]:
        return {"config_hash": cfg.stage_hash("eval"), "data_eval": voc.fingerprint(synthetic_root, cfg.infer.split)}

    def count_images(cfg, work_dir, unit, results_dir, progress) -> Path:
        paths = records.unit_paths(results_dir, unit.name)
        n = len(voc.read_split(synthetic_root, cfg.infer.split))
        row = {"quantity": "n_images", "reading": "", "background": "", "threshold": None, "class": "",
               "variant": unit.variant, "seed": unit.seed, "split": cfg.infer.split, "value": n, "n_images": n}
        paths["csv"].parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame([row], columns=list(records.RESULT_COLUMNS)).to_csv(paths["csv"], index=False)
        paths["json"].write_text(json.dumps({**identity(cfg, unit), "variant": unit.variant, "code": {}}))
        return paths["csv"]

    monkeypatch.setitem(plan.KINDS, "count", replace(plan.CLASSIFICATION, name="count", identity=identity,
                                                      run=count_images))
    unit = Unit("count", 0)
    assert plan.run_plan(cfg, tmp_path / "work", tmp_path / "results", [unit], progress=False) == \
        [records.unit_paths(tmp_path / "results", "count-s0")["csv"]]
    assert plan.has_results(cfg, tmp_path / "results", unit)
    loaded = loading.load(cfg, tmp_path / "results", [unit])
    assert loaded.units["count-s0"]["code_changed"] == [] and loaded.rows["value"].tolist() == [4]
    other = cfg.override(**{"infer.split": "val"})
    assert loading.load(other, tmp_path / "results", [unit]).stale == ["count-s0"]
