"""Sphinx extension: the numbers of the prose pages, computed (`sipe.study.booknumbers`, written by the runner to
book/executed/numbers.json), as MyST substitutions: ``{{ core_hours }}`` in a page shows that number. Reads the
JSON file only, so the Pages build needs nothing of the package."""
from __future__ import annotations

import json
from pathlib import Path

NUMBERS = Path("book") / "executed" / "numbers.json"


def add_numbers(app, config) -> None:
    path = Path(app.srcdir) / NUMBERS
    numbers = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    config.myst_substitutions = {**numbers, **config.myst_substitutions}


def setup(app):
    app.connect("config-inited", add_numbers)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
