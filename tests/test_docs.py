"""The book's method page and API reference stay in step with the code."""
from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pytest
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
    assert rows[5] == ["sipe.method.ipe.locate_seeds"] and rows[10] == ["sipe.method.losses.gsc_loss"]


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


def rst_problems(docstring: str) -> list[str]:
    """Warnings and errors docutils reports on a Google-style docstring as napoleon turns it into
    reStructuredText (Sphinx-only roles and directives, unknown to plain docutils, are not counted), and its
    substitution references (``|x|``): a docstring defines none, so Sphinx reports each as undefined."""
    import io

    import docutils.frontend
    import docutils.nodes
    import docutils.parsers.rst
    import docutils.utils
    from sphinx.ext.napoleon import Config, GoogleDocstring

    config = yaml.safe_load((REPO / "_config.yml").read_text())["sphinx"]["config"]
    rst = str(GoogleDocstring(docstring, Config(napoleon_google_docstring=config["napoleon_google_docstring"],
                                                napoleon_numpy_docstring=config["napoleon_numpy_docstring"])))
    settings = docutils.frontend.get_default_settings(docutils.parsers.rst.Parser)
    settings.report_level, settings.halt_level, settings.warning_stream = 2, 5, io.StringIO()
    doc = docutils.utils.new_document("<docstring>", settings)
    docutils.parsers.rst.Parser().parse(rst, doc)
    sphinx_only = ("Unknown interpreted text role", "Unknown directive type")
    undefined = [f'Undefined substitution referenced: "{ref.astext()}".'
                 for ref in doc.findall(docutils.nodes.substitution_reference)]
    return [m.astext() for m in doc.findall(docutils.nodes.system_message)
            if m["level"] >= 2 and not any(s in m.astext() for s in sphinx_only)] + undefined


def documented_objects(module_name: str):
    """(qualified name, object) for the module and its public functions, classes, methods and properties."""
    import inspect

    module = importlib.import_module(module_name)
    objects = [(module_name, module)]
    for name, obj in vars(module).items():
        if not name.startswith("_") and getattr(obj, "__module__", None) == module_name and \
                (inspect.isfunction(obj) or inspect.isclass(obj)):
            objects.append((f"{module_name}.{name}", obj))
            if inspect.isclass(obj):
                objects += [(f"{module_name}.{name}.{k}", v) for k, v in vars(obj).items()
                            if not k.startswith("_") and (inspect.isfunction(v) or isinstance(v, property))]
    return objects


def test_rst_check_catches_a_broken_docstring():
    assert rst_problems("Title.\n\nArgs:\n    x: the input.\n") == []
    assert rst_problems("Title.\n\nsome line\n    an indented line\nback\n")
    assert rst_problems("The move |a - b| in points.") == ['Undefined substitution referenced: "a - b".']
    assert rst_problems("The move ``|a - b|`` in points.") == []


def test_api_docstrings_render_without_rst_warnings():
    import inspect

    listed = re.findall(r"^\.\. automodule:: ([\w.]+)\s*$", API.read_text(), flags=re.M)
    problems = [f"{name}: {msg.splitlines()[0]}" for module in listed for name, obj in documented_objects(module)
                if inspect.getdoc(obj) for msg in rst_problems(inspect.getdoc(obj))]
    assert not problems, "docstrings that the API page renders with warnings:\n" + "\n".join(problems)


EQUATION = re.compile(r"Eqs?\. (\d+)(?:-(\d+))?")


def test_each_equations_function_names_the_books_equation_number_in_its_docstring():
    for number, names in equation_rows().items():
        doc = resolve(names[0]).__doc__ or ""
        named = {n for a, b in EQUATION.findall(doc) for n in range(int(a), int(b or a) + 1)}
        assert number in named, f"{names[0]} computes Eq. {number} of book/method.md; its docstring names {sorted(named)}"


DOC_PAGES = (METHOD, REPO / "docs" / "architecture.md")
CODE_SPAN = re.compile(r"`([^`\n]+)`")


def named_things(text: str) -> tuple[set[str], set[str]]:
    """(repository paths, optionally with ::test, named in code spans; dotted sipe names named in code spans)."""
    paths, dotted = set(), set()
    for span in CODE_SPAN.findall(text):
        token = span.split("(")[0].strip()
        if re.fullmatch(r"(sipe|tests|data_prep|benchmarks|notebooks|book|docs)/[\w/.]+(::\w+)?", token):
            paths.add(token)
        elif re.fullmatch(r"sipe(\.\w+)+", token):
            dotted.add(token)
    return paths, dotted


def test_every_file_function_and_test_the_docs_name_exists():
    missing = []
    for page in DOC_PAGES:
        paths, dotted = named_things(page.read_text())
        for token in sorted(paths):
            path, _, test = token.partition("::")
            if not list(REPO.glob(path)):
                missing.append(f"{page.name}: {path}")
            elif test and f"def {test}(" not in (REPO / path).read_text():
                missing.append(f"{page.name}: {token}")
        for name in sorted(dotted):
            try:
                resolve(name)
            except (ModuleNotFoundError, AttributeError):
                missing.append(f"{page.name}: {name}")
    assert not missing, "named in the docs but not in the repository:\n" + "\n".join(missing)


def test_the_docs_check_sees_a_missing_file_and_function():
    paths, dotted = named_things("see `tests/test_nothing.py::test_x`, `sipe.method.ipe.no_such` and `sipe.method.ipe.is_cam(x)`")
    assert paths == {"tests/test_nothing.py::test_x"} and dotted == {"sipe.method.ipe.no_such", "sipe.method.ipe.is_cam"}
    assert not list(REPO.glob("tests/test_nothing.py"))
    with pytest.raises(AttributeError):
        resolve("sipe.method.ipe.no_such")
