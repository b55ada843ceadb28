"""The paper's reported numbers and paper-vs-ours tables.

`sipe/resources/paper_results.csv` holds one number per line: table, row, setting, metric, value, note.
"Ours" numbers are passed as nested dicts: {row: {metric: value}} for one table, and
{table: {row: {metric: value}}} for `claims`.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

import numpy as np
import pandas as pd

PAPER_CSV = "paper_results.csv"

RowValues = Mapping[str, Mapping[str, float]]


@dataclass(frozen=True)
class Claim:
    """A claim 'better improves over baseline': both are (row, metric) cells of `table`.

    in_paper: False for a claim the paper makes in words only (no number in its tables): its paper delta is nan.
    """

    claim: str
    table: str
    better: tuple[str, str]
    baseline: tuple[str, str]
    in_paper: bool = True


CLAIMS: tuple[Claim, ...] = (
    Claim("Table 4: IPE improves over the CAM baseline", "table4",
          ("CAM + IPE", "loc_maps_miou"), ("CAM", "loc_maps_miou")),
    Claim("Table 4: GSC improves over CAM + IPE", "table4",
          ("CAM + IPE + GSC", "loc_maps_miou"), ("CAM + IPE", "loc_maps_miou")),
    Claim("Table 5: hierarchical w/ BPM, estimated background beats the best threshold", "table5",
          ("Hierarchical w/ BPM", "estimated_miou"), ("Hierarchical w/ BPM", "threshold_miou")),
    Claim("Fig. 8: structure-aware seeds beat the best CAM threshold", "fig8",
          ("Structure-aware seeds", "loc_maps_miou"), ("CAM threshold (best over sweep)", "loc_maps_miou")),
    Claim("Table 1: denseCRF improves SIPE's localization maps", "table1",
          ("SIPE", "loc_maps_crf_miou"), ("SIPE", "loc_maps_miou")),
    Claim("Table 2 (IRN step): the random walk improves SIPE's pseudo labels", "pseudo_labels",
          ("SIPE", "rw_miou"), ("SIPE", "maps_miou"), in_paper=False),
    Claim("Table 2 (IRN step): after refinement SIPE's pseudo labels beat the CAM baseline's", "pseudo_labels",
          ("SIPE", "rw_miou"), ("CAM", "rw_miou"), in_paper=False),
)


def load_paper_results() -> pd.DataFrame:
    """DataFrame of the paper's numbers: columns table, row, setting, metric, value (float), note (str)."""
    with resources.files("sipe.resources").joinpath(PAPER_CSV).open("r", encoding="utf-8") as f:
        df = pd.read_csv(f, dtype={"table": str, "row": str, "setting": str, "metric": str, "note": str})
    df["value"] = df["value"].astype(float)
    df["note"] = df["note"].fillna("")
    return df


def _table_rows(table: str, results: pd.DataFrame) -> pd.DataFrame:
    rows = results[results["table"] == table]
    if rows.empty:
        raise KeyError(f"no paper table {table!r}; valid tables: {sorted(results['table'].unique())}")
    return rows


def _check_cell(rows: pd.DataFrame, table: str, row: str, metric: str) -> None:
    if row not in set(rows["row"]):
        raise KeyError(f"{table} has no row {row!r}; valid rows: {list(dict.fromkeys(rows['row']))}")
    metrics = rows.loc[rows["row"] == row, "metric"].tolist()
    if metric not in metrics:
        raise KeyError(f"{table} row {row!r} has no metric {metric!r}; valid metrics: {metrics}")


def paper_value(table: str, row: str, metric: str, results: pd.DataFrame | None = None) -> float:
    """The paper's number for (table, row, metric); KeyError naming the valid rows/metrics."""
    rows = _table_rows(table, load_paper_results() if results is None else results)
    _check_cell(rows, table, row, metric)
    return float(rows.loc[(rows["row"] == row) & (rows["metric"] == metric), "value"].iloc[0])


def compare_table(
    table: str, ours: RowValues, setting_note: str, results: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Every paper cell of `table` beside ours: columns row, metric, paper, ours, delta (ours - paper), setting.

    Cells we did not measure have ours = delta = nan; a row or metric of `ours` unknown to the paper
    table raises KeyError.
    """
    rows = _table_rows(table, load_paper_results() if results is None else results)
    for row, metrics in ours.items():
        for metric in metrics:
            _check_cell(rows, table, row, metric)
    ours_col = [float(ours.get(r, {}).get(m, np.nan)) for r, m in zip(rows["row"], rows["metric"])]
    out = pd.DataFrame({
        "row": rows["row"].to_numpy(),
        "metric": rows["metric"].to_numpy(),
        "paper": rows["value"].to_numpy(dtype=float),
        "ours": ours_col,
    })
    out["delta"] = out["ours"] - out["paper"]
    out["setting"] = setting_note
    return out


def _lookup(ours: Mapping[str, RowValues], table: str, cell: tuple[str, str]) -> float | None:
    value = ours.get(table, {}).get(cell[0], {}).get(cell[1])
    return None if value is None or np.isnan(value) else float(value)


def claims(
    ours: Mapping[str, RowValues], claim_list: tuple[Claim, ...] = CLAIMS, results: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Check each claim on our numbers {table: {row: {metric: value}}}.

    Columns: claim, paper_delta (better - baseline in the paper; nan for a claim with no number in the
    paper), our_delta (nan when a number is missing), holds (our_delta > 0, None when we have no number).
    """
    results = load_paper_results() if results is None else results
    records = []
    for c in claim_list:
        paper_delta = (paper_value(c.table, *c.better, results) - paper_value(c.table, *c.baseline, results)
                       if c.in_paper else np.nan)
        better, baseline = _lookup(ours, c.table, c.better), _lookup(ours, c.table, c.baseline)
        our_delta = None if better is None or baseline is None else better - baseline
        records.append({
            "claim": c.claim,
            "paper_delta": round(paper_delta, 6),
            "our_delta": np.nan if our_delta is None else our_delta,
            "holds": None if our_delta is None else bool(our_delta > 0),
        })
    out = pd.DataFrame.from_records(records, columns=["claim", "paper_delta", "our_delta", "holds"])
    out["holds"] = out["holds"].astype(object)
    return out


def styled(table: pd.DataFrame, precision: int = 1):
    """A `compare_table` for reading: one row per paper row, (paper, ours, delta) per metric, numbers
    rounded, '–' where we have no number, and the setting as the caption."""
    rows = list(dict.fromkeys(table["row"]))
    metrics = list(dict.fromkeys(table["metric"]))
    wide = table.pivot(index="row", columns="metric", values=["paper", "ours", "delta"]).reindex(rows)
    wide = wide.swaplevel(axis=1).reindex(columns=pd.MultiIndex.from_product([metrics, ["paper", "ours", "delta"]]))
    wide.index.name = None
    settings = list(dict.fromkeys(table["setting"]))
    return wide.style.format(precision=precision, na_rep="–").set_caption("Ours: " + " | ".join(settings))
