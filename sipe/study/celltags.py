"""Findings first: every code cell of a chapter notebook is hidden behind its output in the book.

Jupyter Book's cell tags: a code cell gets `hide-input` (its output shows, its code folds), the parameters cell
keeps `remove-cell`, and the parameters papermill injects get `hide-cell` (folded, readable on a click). Run

    python -m sipe.study.celltags [NOTEBOOK ...] [--check]

to tag the study's notebooks (default: `notebooks/*.ipynb`) after a merge or a new cell; `--check` changes
nothing and exits 1 naming every code cell left untagged. The runner tags each executed copy the same way.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import nbformat

from ..infra.provenance import REPO_ROOT

HIDE_INPUT = "hide-input"
PARAMETER_TAGS: dict[str, str] = {"parameters": "remove-cell", "injected-parameters": "hide-cell"}
"""A parameters cell's tag -> the visibility tag it gets."""
HIDDEN = frozenset({"hide-input", "remove-input", "hide-cell", "remove-cell"})
"""Tags under which a code cell's source does not show unfolded."""


def wanted(cell: nbformat.NotebookNode) -> str | None:
    """The visibility tag a cell needs (None for Markdown and raw cells)."""
    if cell.cell_type != "code":
        return None
    tags = cell.metadata.get("tags", [])
    return next((v for k, v in PARAMETER_TAGS.items() if k in tags), HIDE_INPUT)


def untagged(nb: nbformat.NotebookNode) -> list[int]:
    """Indices of the code cells whose source would show: no tag of `HIDDEN`, or a parameters cell without its
    `PARAMETER_TAGS` tag."""
    out = []
    for i, cell in enumerate(nb.cells):
        need = wanted(cell)
        tags = set(cell.metadata.get("tags", []))
        if need is not None and (need not in tags if need != HIDE_INPUT else not tags & HIDDEN):
            out.append(i)
    return out


def tag(nb: nbformat.NotebookNode) -> bool:
    """Give every cell of `untagged` its `wanted` tag, in place; whether anything changed."""
    todo = untagged(nb)
    for i in todo:
        cell = nb.cells[i]
        cell.metadata["tags"] = [*cell.metadata.get("tags", []), wanted(cell)]
    return bool(todo)


def tag_file(path: str | Path) -> bool:
    """`tag` a notebook file, rewriting it only when a tag was added."""
    nb = nbformat.read(path, as_version=4)
    if tag(nb):
        nbformat.write(nb, path)
        return True
    return False


def study_notebooks() -> list[Path]:
    return sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sipe.study.celltags", description=__doc__.split("\n\n")[0])
    p.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 when a code cell is untagged")
    args = p.parse_args(argv)
    paths = args.notebooks or study_notebooks()
    if args.check:
        missing = {str(path): untagged(nbformat.read(path, as_version=4)) for path in paths}
        missing = {k: v for k, v in missing.items() if v}
        for path, cells in missing.items():
            print(f"{path}: code cells {', '.join(str(i + 1) for i in cells)} lack their visibility tag", file=sys.stderr)
        return 1 if missing else 0
    for path in paths:
        if tag_file(path):
            print(f"tagged {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
