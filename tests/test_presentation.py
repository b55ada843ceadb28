"""How the book shows the chapters: code folded behind its output (sipe.study.celltags), tables never truncated and
notes as Markdown (sipe.study.rendering)."""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from sipe.reproduce import NOTEBOOKS
from sipe.study import celltags, rendering

REPO = Path(__file__).resolve().parents[1]
PRINTED_NOTE = re.compile(r"\bprint\((study|results|segresults|ladderresults)\.")


@pytest.mark.parametrize("folder", ["notebooks", "book/executed"])
def test_every_code_cell_of_every_chapter_is_folded(folder: str):
    """Fails on a code cell without hide-input (or the parameters cells' tags): run `python -m sipe.study.celltags`."""
    missing = {nb.name: celltags.untagged(nbformat.read(REPO / folder / nb.path, as_version=4)) for nb in NOTEBOOKS}
    assert not {k: v for k, v in missing.items() if v}, "run: python -m sipe.study.celltags"
    for nb in NOTEBOOKS:
        cells = nbformat.read(REPO / "notebooks" / nb.path, as_version=4).cells
        (parameters,) = [c for c in cells if "parameters" in c.metadata.get("tags", [])]
        assert "remove-cell" in parameters.metadata["tags"], nb.name


def test_tagging_folds_each_code_cell_once_and_check_reports_the_rest(tmp_path: Path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# t"), nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("# Parameters", metadata={"tags": ["injected-parameters"]}),
                nbformat.v4.new_code_cell("x"), nbformat.v4.new_code_cell("y", metadata={"tags": ["remove-input"]})]
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, path)
    assert celltags.untagged(nb) == [1, 2, 3]
    assert celltags.main(["--check", str(path)]) == 1
    assert celltags.tag_file(path) and not celltags.tag_file(path)
    tagged = nbformat.read(path, as_version=4)
    assert [c.metadata.get("tags", []) for c in tagged.cells] == [
        [], ["parameters", "remove-cell"], ["injected-parameters", "hide-cell"], ["hide-input"], ["remove-input"]]
    assert celltags.main(["--check", str(path)]) == 0


def test_no_chapter_prints_a_note():
    """Notes are shown as Markdown (`rendering.note`), which the book wraps, not printed as long lines."""
    for nb in NOTEBOOKS:
        for cell in nbformat.read(REPO / "notebooks" / nb.path, as_version=4).cells:
            if cell.cell_type == "code":
                assert not PRINTED_NOTE.search(cell.source), (nb.name, cell.source)


def test_setup_disables_truncation_of_tables(synthetic_root: Path, tmp_path: Path):
    from sipe.study import chapters

    with pd.option_context("display.max_colwidth", 50, "display.max_rows", 60):
        study = chapters.setup("smoke", data_root=str(synthetic_root), work_dir=str(tmp_path / "work"), compute=False)
        for key, value in rendering.DISPLAY_OPTIONS.items():
            assert pd.get_option(key) == value, key
        long = "SIPE beats the CAM baseline with denseCRF (void as background), " * 3
        html = pd.DataFrame({"claim": [long] * 80})._repr_html_()
        assert long.strip() in html and "..." not in html and html.count("<tr") == 81
        assert study._repr_markdown_().startswith("**Setting:**\n\n- profile smoke\n- ")
        from IPython.lib.pretty import pretty

        assert pretty(study) == str(study) and str(tmp_path) not in pretty(study)


def test_notes_become_paragraphs_or_lists():
    assert rendering.note_markdown("one line.") == "one line."
    assert rendering.note_markdown("a / q: v - r\nb / q: v - r", "Readings:") == "**Readings:**\n\n- a / q: v - r\n- b / q: v - r"
    assert rendering.note_markdown("then:\n  - a file\n  python -m x") == "- then:\n- a file\n- python -m x"
    assert rendering.setting_note("profile subset; crop 256").data == "**Setting:**\n\n- profile subset\n- crop 256"
    assert rendering.note_markdown("") == ""
