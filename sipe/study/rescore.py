"""Rescore published readings from the committed per-image confusions, without computing a unit again.

Only the void-ignored readings are rescored, with today's aggregation (`sipe.stages.crf.score_crf`,
`sipe.stages.evaluation.miou_result`): a classification unit's denseCRF rows `crf_void_ignored` (miou and
per-class iou), from `confusions/<unit>.npz` key `<split>/<map key>/crf` (N,2,C,C: [:, 0] void as background,
[:, 1] void ignored, as `sipe.study.pipeline._crf_rows` wrote them); a segmentation unit's IR-label row
`pseudo/ir_labels` (miou), from `<split>/<variant>/pseudo/ir_labels` with the ground truth's classes from
`<split>/<variant>/pseudo/maps` (a reading with no void, over the same images).

`rescore_unit` first checks that the same confusions reproduce the unit's published void-as-background (or
maps) row to the last bit, then rewrites the rescored rows of `runs/<unit>.csv` in place, every other line kept
byte for byte (atomically), and records in `runs/<unit>.json` what it rescored (`rescored`) and the current
`code.eval` hash (the previous one kept). The confusions are not touched.

    python -m sipe.study.rescore --results-dir results/subset [--units cam-s17 sccam-s15 ...]
"""
from __future__ import annotations

import argparse
import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..infra import provenance as prov
from ..infra.config import get_profile
from ..infra.errors import SipeError, cli_entry
from ..infra.runtime import atomic_write_json, atomic_write_text, read_json
from ..stages.crf import score_crf
from ..stages.evaluation import MIoUResult, default_class_names, miou_result
from .pipeline import Unit
from .plan import kind_of
from .records import unit_paths

REASON = ("void-ignored mIoU over the classes present in the ground truth of the evaluated images (the same "
          "classes as every other reading): a class whose pixels are all left void scores IoU 0 instead of "
          "dropping out of the mean")
CONFUSIONS_UNCHANGED = ("the per-image confusions are unchanged: only their aggregation into mIoU was computed "
                        "again, by the code of `revision`")


class RescoreError(SipeError, RuntimeError):
    """A unit cannot be rescored: files missing, confusions that do not reproduce its rows, uncommitted code."""


@dataclass(frozen=True)
class Rescored:
    """One rescored reading of a unit: its confusions key, the rows it replaces (`match`: column -> value),
    the result computed again, and the check row (`check`: the same confusions' reading with no void) with
    the value it must reproduce."""

    key: str
    match: dict[str, str]
    result: MIoUResult
    per_class: bool
    check: dict[str, str]
    check_value: float


def _present(record: dict[str, Any]) -> str | None:
    cfg = record.get("config", {}).get("eval", {})
    only = cfg.get("present_classes_only", get_profile(record["profile"]).eval.present_classes_only)
    return "gt" if only else None


def readings(confusions: Any, record: dict[str, Any]) -> list[Rescored]:
    """The void-ignored readings of a unit's confusions (an open npz), computed again."""
    present = _present(record)
    out = []
    for key in confusions.files:
        parts = key.split("/")
        if len(parts) == 3 and parts[2] == "crf":
            split, map_key = parts[0], parts[1]
            total = confusions[key].astype(np.int64).sum(0)
            names = default_class_names(total.shape[-1])
            res = score_crf(total, names, present)
            common = {"reading": map_key, "split": split}
            out.append(Rescored(key, {**common, "background": "crf_void_ignored"}, res.void_ignored, True,
                               {**common, "background": "crf_void_bg", "quantity": "miou"}, res.void_as_background.miou))
        elif len(parts) == 4 and parts[2:] == ["pseudo", "ir_labels"]:
            split, variant = parts[0], parts[1]
            maps = confusions[f"{split}/{variant}/pseudo/maps"].astype(np.int64).sum(0)
            ir = confusions[key].astype(np.int64).sum(0)
            names = default_class_names(ir.shape[-1])
            res = miou_result(ir, names, present, gt_pixels=maps.sum(1))
            common = {"variant": variant, "split": split}
            out.append(Rescored(key, {**common, "reading": "pseudo/ir_labels", "background": "void_ignored"}, res, False,
                               {**common, "reading": "pseudo/maps", "quantity": "miou"},
                               miou_result(maps, names, present).miou))
    return out


def _fmt(value: float) -> str:
    return "" if np.isnan(value) else repr(float(value))


def _rows(text: str) -> tuple[list[str], list[str], list[dict[str, str]]]:
    """(header columns, lines with their endings, rows as strings) of a results CSV."""
    lines = text.splitlines(keepends=True)
    parsed = list(csv.reader(io.StringIO(text)))
    if not parsed or len(parsed) != len(lines):
        raise RescoreError("a results CSV with one row per line is needed (quoted line breaks are not)")
    header = parsed[0]
    return header, lines, [dict(zip(header, r)) for r in parsed[1:]]


def _line(header: list[str], row: dict[str, str], ending: str) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator=ending).writerow([row[c] for c in header])
    return buf.getvalue()


def _matches(row: dict[str, str], match: dict[str, str]) -> bool:
    return all(row.get(k) == v for k, v in match.items())


def rescore_text(text: str, found: Sequence[Rescored], unit: str = "unit") -> tuple[str, list[dict[str, Any]]]:
    """The results CSV `text` with the rows of each reading of `found` computed again (every other line as it
    was) and, per reading, what changed. RescoreError when a check row is missing or not reproduced."""
    header, lines, rows = _rows(text)
    changes = []
    for r in found:
        checked = [row for row in rows if _matches(row, r.check)]
        if len(checked) != 1 or float(checked[0]["value"]) != r.check_value:
            raise RescoreError(
                f"{unit}: the confusions {r.key} do not reproduce the published row {r.check} "
                f"({[row['value'] for row in checked]} vs {r.check_value!r}); rescore only from the unit's own confusions")
        block = [i for i, row in enumerate(rows) if _matches(row, r.match) and row["quantity"] in ("miou", "iou")]
        if not block or block != list(range(block[0], block[-1] + 1)) or rows[block[0]]["quantity"] != "miou":
            raise RescoreError(f"{unit}: the rows {r.match} are not one block led by its miou row, as the pipeline "
                               "writes them")
        old_rows, template = rows[block[0]: block[-1] + 1], rows[block[0]]
        new = [{**template, "quantity": "miou", "class": "", "value": _fmt(r.result.miou)}]
        if r.per_class:
            new += [{**template, "quantity": "iou", "class": name, "value": _fmt(v)}
                    for name, v in r.result.per_class["iou"].items()]
        first = lines[block[0] + 1]
        ending = first[len(first.rstrip("\r\n")):] or "\n"
        old_lines = lines[block[0] + 1: block[-1] + 2]
        new_lines = [_line(header, row, ending) for row in new]
        lines[block[0] + 1: block[-1] + 2] = new_lines
        rows[block[0]: block[-1] + 1] = new
        changes.append({"key": r.key, "rows": dict(r.match), "miou_before": float(template["value"]),
                        "miou_after": float(r.result.miou), "classes_after": len(r.result.classes),
                        "classes_before": sum(row["quantity"] == "iou" for row in old_rows) if r.per_class else None,
                        "rows_changed": old_lines != new_lines})
    return "".join(lines), changes


def rescore_unit(results_dir: str | Path, name: str, reason: str = REASON, revision: str | None = None) -> list[dict[str, Any]]:
    """Rescore the void-ignored readings of unit `name` in `results_dir` (see the module doc); per reading, what
    changed. The record is written when a row changed or its `code.eval` is not the current hash."""
    paths = unit_paths(results_dir, name)
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise RescoreError(f"{name}: results files missing ({', '.join(missing)})")
    rev = revision or prov.git_revision()
    if rev.endswith("-dirty") or rev == "unknown":
        raise RescoreError(f"revision {rev!r}: rescore with committed code (commit, then run again)")
    record = read_json(paths["json"])
    with np.load(paths["npz"]) as confusions:
        found = readings(confusions, record)
    text = paths["csv"].read_text()
    if found:
        new_text, changes = rescore_text(text, found, name)
    else:
        with np.load(paths["npz"]) as confusions:
            checked = reproduced(confusions, record, text, name)
        new_text, changes = text, [{"key": "", "verified_rows": checked}]
    variant = str(record.get("variant", ""))
    stamped = {"eval": prov.stage_code_hashes()["eval"]}
    if variant in record.get("code", {}):
        stamped[variant] = kind_of(Unit(variant, int(record.get("seed", 0)))).code_hashes()[variant]
    previous = dict(record.get("code", {}))
    if new_text == text and all(previous.get(k) == v for k, v in stamped.items()):
        return changes
    record["rescored"] = {
        "revision": rev, "date": prov.utc_now(), "reason": reason, "confusions": CONFUSIONS_UNCHANGED,
        "readings": changes, "previous_code": previous,
        **({"previous": record["rescored"]} if "rescored" in record else {}),
    }
    record["code"] = {**previous, **stamped}
    record["code_revisions"] = {**record.get("code_revisions", {}), **{part: rev for part in stamped}}
    if new_text != text:
        atomic_write_text(paths["csv"], new_text)
    atomic_write_json(paths["json"], record)
    return changes


def reproduced(confusions: Any, record: dict[str, Any], text: str, unit: str = "unit") -> int:
    """How many of a unit's estimated-background mIoU rows today's aggregation computes again, to the last
    bit, from its confusions (keys `<split>/<map key>/estimated`); RescoreError naming the first that differs,
    or when none can be checked."""
    present = _present(record)
    rows = _rows(text)[2]
    checked = 0
    for key in confusions.files:
        parts = key.split("/")
        if len(parts) != 3 or parts[2] != "estimated":
            continue
        total = confusions[key].astype(np.int64).sum(0).reshape(-1, *confusions[key].shape[-2:])[0]
        value = miou_result(total, default_class_names(total.shape[-1]), present).miou
        match = {"quantity": "miou", "reading": parts[1], "background": "estimated", "split": parts[0], "threshold": ""}
        published = [r for r in rows if _matches(r, match)]
        if len(published) != 1 or float(published[0]["value"]) != value:
            raise RescoreError(f"{unit}: {key} gives {value!r}, the published row says "
                               f"{[r['value'] for r in published]}; rescore only from the unit's own confusions")
        checked += 1
    if not checked:
        raise RescoreError(f"{unit}: no reading to rescore or check in its confusions")
    return checked


def rescorable_units(results_dir: str | Path) -> list[str]:
    """The units of `results_dir` whose confusions hold a void-ignored reading."""
    out = []
    for path in sorted((Path(results_dir) / "confusions").glob("*.npz")):
        with np.load(path) as data:
            if any(k.endswith("/crf") or k.endswith("/pseudo/ir_labels") for k in data.files):
                out.append(path.stem)
    return out


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sipe.study.rescore", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results-dir", required=True, type=Path)
    parser.add_argument("--units", nargs="*", help="default: every unit with a void-ignored reading; a unit "
                        "without one is checked (its estimated-background rows computed again) and re-stamped")
    parser.add_argument("--reason", default=REASON)
    args = parser.parse_args(argv)
    names = args.units or rescorable_units(args.results_dir)
    table = pd.DataFrame([{"unit": n, **c} for n in names for c in rescore_unit(args.results_dir, n, args.reason)])
    print(table.drop(columns=["rows"], errors="ignore").to_string(index=False) if not table.empty else "nothing to rescore")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
