"""How the chapters show text and tables in the book: notes as Markdown, tables never truncated.

`configure_display()` (called by `sipe.study.chapters.setup`) sets pandas' display options so no cell, row or
column of a table is cut to "..."; the book's stylesheet (`book/_static/wrap.css`) wraps long cells. `note(text)`
turns a note of `sipe.study.results` (one or several lines of plain text) into Markdown the book wraps.
"""
from __future__ import annotations

import pandas as pd
from IPython.display import Markdown

DISPLAY_OPTIONS: dict[str, object] = {
    "display.max_colwidth": None,
    "display.max_columns": None,
    "display.max_rows": None,
    "display.width": None,
}
"""pandas options of every chapter: no cell, column or row is truncated."""


def configure_display() -> None:
    """Set `DISPLAY_OPTIONS` in this process (a notebook's kernel)."""
    for key, value in DISPLAY_OPTIONS.items():
        pd.set_option(key, value)


def note_markdown(text: str, title: str = "") -> str:
    """A note as Markdown: one line is a paragraph, several lines a bulleted list (each line an item; a line
    already starting with '- ' stays one), under a bold `title` when given."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    body = "" if not lines else lines[0] if len(lines) == 1 else "\n".join(line if line.startswith("- ") else f"- {line}" for line in lines)
    if title:
        return f"**{title}** {body}" if len(lines) == 1 else f"**{title}**\n\n{body}"
    return body


def note(text: str, title: str = "") -> Markdown:
    """`note_markdown` as a displayable Markdown object (the last line of a cell, or `display(note(...))`)."""
    return Markdown(note_markdown(text, title))


def setting_note(setting: str) -> Markdown:
    """The study's setting line (`Study.setting()`: parts separated by '; ') as a bulleted list."""
    return note("\n".join(setting.split("; ")), "Setting:")


__all__ = ["DISPLAY_OPTIONS", "configure_display", "note", "note_markdown", "setting_note"]
