"""The paper's reported numbers (`sipe/resources/paper_results.csv`) and the paper's setting.

One number per line: table, row, setting, metric, value, note.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources

import pandas as pd

PAPER_CSV = "paper_results.csv"
FULL_VOC_SIZES = {"train": 1464, "val": 1449, "train_aug": 10582}
PAPER_BACKBONE = "resnet50"
PAPER_BG_SCALE = 0.5
PAPER_MOMENTUM = 0.9
"""The SGD momentum the paper states (the authors' code trains without momentum; the `paper` profile follows it)."""
PAPER_SCALES = (1.0, 0.5, 1.5, 2.0)
"""The paper's inference scales (with flips)."""


@lru_cache(maxsize=1)
def _paper_table() -> pd.DataFrame:
    with resources.files("sipe.resources").joinpath(PAPER_CSV).open("r", encoding="utf-8") as f:
        df = pd.read_csv(f, dtype={"table": str, "row": str, "setting": str, "metric": str, "note": str})
    df["value"] = df["value"].astype(float)
    df["note"] = df["note"].fillna("")
    return df


def load_paper_results() -> pd.DataFrame:
    """DataFrame of the paper's numbers: columns table, row, setting, metric, value (float), note (str); the
    packaged file is read once per process, and each call gets its own copy."""
    return _paper_table().copy()


def paper_rows(table: str, results: pd.DataFrame | None = None) -> pd.DataFrame:
    """The paper's rows of one table; KeyError naming the valid tables."""
    results = load_paper_results() if results is None else results
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
    rows = paper_rows(table, load_paper_results() if results is None else results)
    _check_cell(rows, table, row, metric)
    return float(rows.loc[(rows["row"] == row) & (rows["metric"] == metric), "value"].iloc[0])
