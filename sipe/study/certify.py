"""Certify that a change of stage code moves no number: recompute units with the new code, compare them
with the same units recomputed with the old code on the same machine, and re-stamp the published records.

`compare(before, after, names)` reads two results folders and says, per unit, whether its per-step training
log (every column but the timings), its per-image confusions (every array) and its result rows are
identical (a checkpoint's digest is not compared: the file holds its run's wall time). `restamp(results_dir, names, certificate)` then records, in each named
record, the stage code hashes of the current code and the certificate (revision, certifying units, their
comparison, machine), so that the record stays current for this code (`sipe.study.loading.code_changes`).
A later, uncertified change of stage code still flags every unit it touches.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..infra import provenance as prov
from ..infra.errors import SipeError
from ..infra.runtime import atomic_write_json, read_json
from .pipeline import Unit
from .plan import kind_of
from .records import certificates, training_log_path, unit_paths

TIMING_COLUMNS = ("images_per_s", "seconds")
"""Training-log columns that measure wall time, not the computation: left out of the comparison."""


class CertificationError(SipeError, RuntimeError):
    """The units compared are not identical, or a record to re-stamp is missing."""


def _same_frames(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    return list(a.columns) == list(b.columns) and a.shape == b.shape and a.equals(b)


def _same_npz(a: Path, b: Path) -> tuple[bool, int]:
    with np.load(a) as x, np.load(b) as y:
        keys = sorted(x.files)
        return keys == sorted(y.files) and all(np.array_equal(x[k], y[k]) for k in keys), len(keys)


def _require(name: str, paths: Sequence[Path]) -> None:
    """CertificationError naming the files of unit `name` among `paths` that do not exist."""
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise CertificationError(f"{name}: results files missing ({', '.join(missing)}); compute the unit into both folders")


def _training_logs(before: str | Path, after: str | Path, name: str) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """Unit `name`'s training logs in results folders `before` and `after` without the timing columns; None
    when either folder keeps none."""
    paths = [training_log_path(d, name) for d in (before, after)]
    if not all(p.exists() for p in paths):
        return None
    a, b = (pd.read_csv(p).drop(columns=list(TIMING_COLUMNS), errors="ignore") for p in paths)
    return a, b


def compare_unit(before: str | Path, after: str | Path, name: str) -> dict[str, Any]:
    """How unit `name` computed into results folders `before` and `after` compares: training log (but the
    timing columns), confusions and result rows, each True when identical."""
    old, new = unit_paths(before, name), unit_paths(after, name)
    _require(name, [*old.values(), *new.values()])
    out: dict[str, Any] = {"unit": name}
    logs = _training_logs(before, after, name)
    if logs is not None:
        a, b = logs
        out["log_steps"] = len(b)
        out["training_log"] = _same_frames(a, b)
    out["confusions"], out["confusion_arrays"] = _same_npz(old["npz"], new["npz"])
    out["rows"] = _same_frames(pd.read_csv(old["csv"]), pd.read_csv(new["csv"]))
    ra, rb = read_json(old["json"]), read_json(new["json"])
    out["revisions"] = f"{ra.get('git_revision', '')[:7]} -> {rb.get('git_revision', '')[:7]}"
    out["identical"] = all(out[k] for k in ("training_log", "confusions", "rows") if k in out)
    return out


def compare(before: str | Path, after: str | Path, names: Sequence[str]) -> pd.DataFrame:
    """`compare_unit` for every unit of `names`, one row each."""
    return pd.DataFrame([compare_unit(before, after, n) for n in names])


def _first_difference(a: pd.DataFrame, b: pd.DataFrame) -> int:
    """The number of leading rows two frames share to the last bit (every column of both)."""
    if list(a.columns) != list(b.columns):
        return 0
    n = min(len(a), len(b))
    x, y = a.iloc[:n].reset_index(drop=True), b.iloc[:n].reset_index(drop=True)
    same = (x == y) | (x.isna() & y.isna())
    differs = np.flatnonzero(~same.all(axis=1).to_numpy())
    return int(differs[0]) if len(differs) else n


def drift(before: str | Path, after: str | Path, name: str) -> dict[str, Any]:
    """How far two computations of unit `name` lie apart (results folders `before` and `after`, e.g. the same
    settings on two kinds of machine): each record's machine (`machine_before`, `machine_after`), whether their
    configuration hashes and stage code hashes are equal (`same_settings`, `same_code`), the training
    steps whose logs agree to the last bit before the first difference (`same_steps`, timings aside; in the
    total loss alone, `same_loss_steps`) of `log_steps`, and over the `readings` mIoU readings of the evaluated
    split (every map, background and threshold) the largest and the median absolute difference (`max_abs`,
    `median_abs`, points)."""
    old, new = unit_paths(before, name), unit_paths(after, name)
    _require(name, [old["csv"], old["json"], new["csv"], new["json"]])
    ra, rb = read_json(old["json"]), read_json(new["json"])
    out: dict[str, Any] = {"unit": name, "machine_before": prov.machine_text(ra.get("machine")),
                           "machine_after": prov.machine_text(rb.get("machine")),
                           "same_settings": bool(ra.get("config_hash"))
                           and ra.get("config_hash") == rb.get("config_hash"),
                           "same_code": bool(ra.get("code")) and ra.get("code") == rb.get("code")}
    logs = _training_logs(before, after, name)
    if logs is not None:
        a, b = logs
        out["same_steps"], out["log_steps"] = _first_difference(a, b), len(b)
        if "loss" in a.columns and "loss" in b.columns:
            out["same_loss_steps"] = _first_difference(a[["loss"]], b[["loss"]])
    split = rb.get("config", {}).get("data", {}).get("eval_split")
    keys = ["reading", "background", "threshold", "split"]
    rows = [pd.read_csv(p["csv"]) for p in (old, new)]
    rows = [r[(r["quantity"] == "miou") & ((r["split"] == split) if split else True)] for r in rows]
    both = rows[0].merge(rows[1], on=keys, suffixes=("_before", "_after"), validate="one_to_one")
    if both.empty:
        raise CertificationError(f"{name}: no mIoU reading in both {before} and {after}")
    gap = (both["value_after"] - both["value_before"]).abs()
    out.update(readings=len(both), max_abs=float(gap.max()), median_abs=float(gap.median()))
    return out


def certificate(comparison: pd.DataFrame, after: str | Path) -> dict[str, Any]:
    """What a re-stamped record keeps of a certification: the revision whose code was certified (the one the
    units in `after` were computed at), the units that certified it with their comparison, the machine and
    the date. CertificationError unless every unit compared identical at one committed revision."""
    if comparison.empty or not comparison["identical"].all():
        bad = ", ".join(comparison.loc[~comparison["identical"], "unit"]) if not comparison.empty else "none compared"
        raise CertificationError(f"not certified: units that differ: {bad}")
    revisions = {str(read_json(unit_paths(after, n)["json"]).get("git_revision", "")) for n in comparison["unit"]}
    rev = revisions.pop() if len(revisions) == 1 else ""
    if not rev or rev.endswith("-dirty") or rev == "unknown":
        raise CertificationError(f"the units in {after} were computed at {sorted(revisions | {rev})}: certify units "
                                 "computed at one committed revision")
    return {"revision": rev, "units": list(comparison["unit"]), "date": prov.utc_now(), "machine": prov.machine(),
            "comparison": comparison.drop(columns=["unit"]).to_dict(orient="records")}


def restamp(results_dir: str | Path, names: Sequence[str], cert: dict[str, Any],
            stages: Sequence[str] = prov.STAGES, own_code_evidence: str = "") -> list[Path]:
    """Give each record of `names` in `results_dir` the current code hashes of `stages` and `cert` (its
    previous hashes and code revision are kept in `certified`). With `own_code_evidence` (what shows that a
    unit kind's own code, e.g. SC-CAM's rounds, moved no number), each record also gets its kind's own code
    hash. A record's earlier certificate moves to its `certified_before` list, oldest first. CertificationError
    when the code of today differs (docstrings and layout aside) from the certified revision's; the records
    written."""
    kinds = {name: kind_of(Unit(name.rsplit("-s", 1)[0], int(name.rsplit("-s", 1)[1]))) for name in names}
    own = sorted({src for k in kinds.values() for src in k.sources}) if own_code_evidence else []
    changed = prov.code_changes(cert["revision"], list(stages))
    if changed is not None and own:
        changed += prov.source_code_changes(cert["revision"], own) or []
    if changed is None or changed:
        raise CertificationError(f"the stage code differs from the certified revision {cert['revision'][:12]} "
                                 f"({', '.join(changed or ['git cannot tell'])}): certify the code of today")
    now = prov.stage_code_hashes()
    written = []
    for name in names:
        path = unit_paths(results_dir, name)["json"]
        if not path.exists():
            raise CertificationError(f"{path}: no record to re-stamp; compute {name} first")
        record = read_json(path)
        previous = dict(record.get("code", {}))
        own_hash = {k: v for k, v in kinds[name].code_hashes().items() if k == record.get("variant")}
        record["code"] = {**previous, **{s: now[s] for s in stages}, **(own_hash if own_code_evidence else {})}
        record["code_revisions"] = {**record.get("code_revisions", {}),
                                    **{part: cert["revision"] for part in [*stages, *(own_hash if own_code_evidence else {})]}}
        if record.get("certified"):
            record["certified_before"] = certificates(record)
        record["certified"] = {**cert, "stages": list(stages), "previous_code": previous,
                               "previous_revision": record.get("certified", {}).get("revision", record.get("git_revision")),
                               **({"own_code_evidence": own_code_evidence} if own_code_evidence else {})}
        atomic_write_json(path, record)
        written.append(path)
    return written
