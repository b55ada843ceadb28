"""The book's method page and API reference stay in step with the code."""
from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import yaml

import sipe

REPO = Path(__file__).resolve().parents[1]
METHOD = REPO / "book" / "method.md"
API = REPO / "book" / "api.md"
ROLE = re.compile(r"\{py:(?:func|meth|class|mod)\}`~?([\w.]+)`")


def resolve(dotted: str):
    """The object named `package.module.attr[.attr]`: the longest importable module prefix, then getattr."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ModuleNotFoundError(dotted)


def equation_rows() -> dict[int, list[str]]:
    """{equation number: functions named in its row} of the method page's table whose first column is 'Eq.'."""
    rows: dict[int, list[str]] = {}
    in_table = False
    for line in METHOD.read_text().splitlines():
        if line.startswith("| Eq."):
            in_table = True
            continue
        if in_table and not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        if in_table and cells[0].isdigit():
            rows[int(cells[0])] = ROLE.findall(cells[2])
    return rows


def test_method_page_maps_every_equation_to_one_existing_function():
    rows = equation_rows()
    assert sorted(rows) == list(range(1, 11)), "the paper numbers Eqs. 1-10"
    for number, names in rows.items():
        assert len(names) == 1, f"Eq. {number} must name exactly one function, got {names}"
        obj = resolve(names[0])
        assert callable(obj), f"Eq. {number}: {names[0]} is not a function"
        assert obj.__doc__, f"Eq. {number}: {names[0]} has no docstring for the API page"
    assert rows[5] == ["sipe.ipe.locate_seeds"] and rows[10] == ["sipe.losses.gsc_loss"]


def test_every_function_the_method_page_links_exists():
    names = ROLE.findall(METHOD.read_text())
    assert len(names) >= 10
    for name in names:
        assert callable(resolve(name)), name


def test_method_page_numbers_the_equations_as_the_paper():
    tags = [int(t) for t in re.findall(r"\\tag\{(\d+)\}", METHOD.read_text())]
    assert tags == list(range(1, 11))


def public_modules() -> set[str]:
    names = {"sipe"}
    for info in pkgutil.walk_packages(sipe.__path__, "sipe."):
        if not any(part.startswith("_") and part != "__main__" for part in info.name.split(".")):
            names.add(info.name)
    return names


def test_api_page_lists_every_public_module():
    listed = re.findall(r"^\.\. automodule:: ([\w.]+)\s*$", API.read_text(), flags=re.M)
    assert len(listed) == len(set(listed)), "a module is listed twice"
    assert set(listed) == public_modules()


def test_book_config_builds_the_api_with_autodoc_and_lists_the_pages():
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    assert {"sphinx.ext.autodoc", "sphinx.ext.napoleon"} <= set(config["sphinx"]["extra_extensions"])
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    files = [ch["file"] for part in toc["parts"] for ch in part["chapters"]]
    assert files.index("book/method") == files.index("book/setting") + 1
    assert "book/api" in files
