"""The book as its readers get it: every chapter re-executed from the committed outputs on a copy of the checkout
(what a fresh clone can do), built here and as the Pages workflow builds it (a fresh environment with only what
the workflow installs), and the pages as headless Chromium renders them. The tests that need a built book are
marked slow (minutes); the smoke path (every notebook computing its units) is tests/test_smoke_path.py."""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import nbformat
import numpy as np
import pytest
import yaml
from bs4 import BeautifulSoup
from PIL import Image

from sipe.infra.provenance import provenance_table
from sipe.reproduce import NOTEBOOKS
from sipe.study.figinputs import FIGURES, record_path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS_DIR = REPO / "notebooks"
TABLE1_PAGE = "book/executed/03_table1_localization"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1200,1600", "--virtual-time-budget=5000"]
NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?%?$")


WORKFLOW = REPO / ".github" / "workflows" / "book.yml"
OURS = re.compile(r"^[+-]?\d+\.\d( ± \d+\.\d)? \(n=\d+\)$")


def workflow_steps() -> list[dict]:
    """The steps of the GitHub Pages workflow's build job."""
    return yaml.safe_load(WORKFLOW.read_text())["jobs"]["build"]["steps"]


def workflow_build_command() -> str:
    """The `run` command of the GitHub Pages workflow's build step (the book is built exactly as it is online)."""
    (step,) = [s for s in workflow_steps() if s.get("id") == "build"]
    return step["run"]


def workflow_install_commands() -> list[str]:
    """The `run` commands of the workflow's steps before its build step: everything it installs."""
    steps = workflow_steps()
    build = next(i for i, s in enumerate(steps) if s.get("id") == "build")
    return [s["run"] for s in steps[:build] if "run" in s]


def test_workflow_builds_from_committed_outputs_and_deploys_pages():
    flow = yaml.safe_load(WORKFLOW.read_text())
    steps = flow["jobs"]["build"]["steps"]
    runs = " ".join(s.get("run", "") for s in steps)
    assert "jupyter-book build" in workflow_build_command()
    assert "sipe.reproduce" not in runs and "make " not in runs, "the workflow must not execute or train anything"
    assert any(s.get("uses", "").startswith("actions/upload-pages-artifact") for s in steps)
    assert any(s.get("uses", "").startswith("actions/deploy-pages") for s in flow["jobs"]["deploy"]["steps"])
    assert (REPO / "requirements-book.txt").read_text().count("jupyter-book==") == 1


def toc_files() -> list[str]:
    """Every document of _toc.yml in reading order (root first)."""
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    return [toc["root"]] + [ch["file"] for part in toc["parts"] for ch in part["chapters"]]


def is_number(text: str) -> bool:
    return bool(NUMBER.match(text.strip().replace(",", "")))


def test_toc_lists_the_runners_notebooks_and_existing_pages():
    files = toc_files()
    assert [f for f in files if f.startswith("book/executed/")] == [f"book/executed/{nb.name}" for nb in NOTEBOOKS]
    for f in files:
        if not f.startswith("book/executed/"):
            assert (REPO / f"{f}.md").is_file(), f


@pytest.fixture(scope="module")
def html(local_book) -> Path:
    """The republished book's _build/html (see `local_book`)."""
    return local_book.html


def page(html: Path, doc: str) -> BeautifulSoup:
    return BeautifulSoup((html / f"{doc}.html").read_text(encoding="utf-8"), "html.parser")


@pytest.mark.slow
def test_every_chapter_is_built_and_linked(html):
    nav = page(html, "book/intro").select("nav.bd-docs-nav a[href]")
    linked = {os.path.normpath(os.path.join("book", a["href"].split("#")[0])) for a in nav}
    for doc in toc_files():
        assert (html / f"{doc}.html").is_file(), doc
        if doc != toc_files()[0]:
            assert f"{doc}.html" in linked, doc


def result_tables(soup: BeautifulSoup) -> list:
    """The page's tables except the provenance table (its header is provenance_table's columns)."""
    provenance_header = list(provenance_table({}).columns)
    return [t for t in soup.find_all("table")
            if [th.get_text(strip=True) for th in t.select("thead th") if th.get_text(strip=True)] != provenance_header]


@pytest.mark.slow
def test_result_tables_hold_numbers(html):
    for nb in NOTEBOOKS:
        tables = result_tables(page(html, f"book/executed/{nb.name}"))
        if "_table" in nb.name:
            assert tables, f"{nb.name} shows no table"
        for table in tables:
            cells = [td.get_text(" ", strip=True) for td in table.find_all("td")]
            assert any(is_number(c) or OURS.match(c) for c in cells), f"{nb.name}: a table without numbers: {cells[:10]}"


@pytest.mark.slow
def test_every_ours_column_holds_numbers_of_ours(html):
    """Paper-vs-ours tables: each 'ours' column has at least one measured number (mean ± std (n)), so no
    chapter shows only the paper's numbers under our name."""
    checked = 0
    for nb in NOTEBOOKS:
        for table in result_tables(page(html, f"book/executed/{nb.name}")):
            header_rows = table.select("thead tr")
            if not header_rows:
                continue
            last = [th.get_text(strip=True) for th in header_rows[-1].find_all("th")]
            columns = [i for i, h in enumerate(last) if h == "ours"]
            if not columns:
                continue
            body = [[c.get_text(" ", strip=True) for c in tr.find_all(["th", "td"])] for tr in table.select("tbody tr")]
            for i in columns:
                values = [row[i] for row in body if len(row) > i]
                assert any(OURS.match(v) for v in values), f"{nb.name}: an 'ours' column without our numbers: {values}"
                checked += 1
    assert checked >= 5


FIGURE_PAGES = ("00_data_overview", "01_training", "06_fig8_seed_locating", "07_fig1_tsne", "08_fig3_structure",
                "09_fig5_fig7_visual")


@pytest.mark.slow
def test_figure_pages_show_rendered_images(html):
    for name in FIGURE_PAGES:
        soup = page(html, f"book/executed/{name}")
        images = [img for img in soup.select("div.cell_output img") if img.get("src", "").endswith(".png")]
        assert images, f"{name}: no rendered figure"
        assert "<Figure size" not in soup.get_text(), f"{name}: a figure printed as text instead of drawn"


@pytest.mark.slow
def test_claims_page_lists_claims_and_run_record(html):
    from sipe.study.claims import CLAIMS

    text = page(html, "book/claims").get_text(" ", strip=True).replace("\u2019", "'")
    for claim in CLAIMS:
        assert claim.claim in text
    rows = [[td.get_text(strip=True) for td in tr.find_all("td")] for tr in page(html, "book/claims").find_all("tr")]
    status = {r[0]: r[1] for r in rows if r and r[0] in {nb.name for nb in NOTEBOOKS}}
    assert status == {nb.name: "ok" for nb in NOTEBOOKS}


def chromium(tmp: Path, *args: str) -> str:
    proc = subprocess.run([str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'chromium-profile'}", *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing (`make test` installs it as root)")
def test_browser_renders_book(html, tmp_path):
    for name, doc in (("index", "index"), ("table1", TABLE1_PAGE)):
        png = tmp_path / f"{name}.png"
        chromium(tmp_path, f"--screenshot={png}", (html / f"{doc}.html").as_uri())
        pixels = np.asarray(Image.open(png).convert("L"), dtype=np.float32)
        assert pixels.shape == (1600, 1200)
        assert pixels.std() > 10, f"{name}.png looks blank"

    dom = BeautifulSoup(chromium(tmp_path, "--dump-dom", (html / f"{TABLE1_PAGE}.html").as_uri()), "html.parser")
    rendered = " ".join(dom.get_text(" ", strip=True).split())
    for table in result_tables(page(html, TABLE1_PAGE)):
        headers = {w for th in table.find_all("th") for w in th.get_text(" ", strip=True).split()}
        numbers = {td.get_text(strip=True) for td in table.find_all("td") if is_number(td.get_text())}
        assert headers and numbers
        missing = sorted(w for w in headers | numbers if w not in rendered)
        assert not missing, f"rendered Table 1 page lacks {missing[:10]}"

    intro = chromium(tmp_path, "--dump-dom", (html / "book/intro.html").as_uri())
    assert intro.count('<mjx-container class="MathJax') >= 5, "MathJax did not typeset the formulas offline"
    assert 'jax="SVG"' in intro


def checkout_copy(dest: Path) -> Path:
    """The working tree's files that git tracks or would track (what a checkout of this change holds), under dest."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


def run_step(command: str, root: Path, env: dict[str, str]) -> str:
    """Run a workflow command in root; its output (stdout and stderr)."""
    run = subprocess.run(["bash", "-c", command], cwd=root, env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, f"`{command}` failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return run.stdout + run.stderr


class Republished(NamedTuple):
    html: Path
    log: str
    root: Path
    runner_output: str


CLEARED_ENV = ("SIPE_WORK_DIR", "SIPE_RESULTS_DIR", "SIPE_DATA_ROOT", "PYTHONPATH")


@pytest.fixture(scope="module")
def local_book(real_root: Path, tmp_path_factory) -> Republished:
    """The book as a fresh clone republishes it: a copy of the checkout (no work folder, no trained weights), every
    chapter re-executed from the committed outputs (`python -m sipe.reproduce --no-compute`, as the README says),
    then built with the workflow's command in this environment, whose `sipe` autodoc imports."""
    root = checkout_copy(tmp_path_factory.mktemp("local_book"))
    env = {k: v for k, v in os.environ.items() if k not in CLEARED_ENV}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", PYTHONPATH=str(root))
    run = subprocess.run([sys.executable, "-m", "sipe.reproduce", "--profile", "subset", "--no-compute",
                          "--data-root", str(real_root), "--device", "cpu"],
                         cwd=root, env=env, capture_output=True, text=True, timeout=3600)
    assert run.returncode == 0, f"runner failed:\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}"
    log = run_step(workflow_build_command(), root, env)
    return Republished(root / "_build" / "html", log, root, run.stdout)


@pytest.mark.slow
def test_no_compute_on_a_fresh_copy_executes_every_chapter(local_book: Republished) -> None:
    """Every chapter re-executes from the committed outputs alone, computes nothing and writes the committed
    tables again (the figures read their committed inputs, `sipe.study.figinputs`)."""
    results = REPO / "results" / "subset"
    assert all(record_path(results, name).is_file() for name in FIGURES), "committed figure inputs are missing"
    assert f"{len(NOTEBOOKS)}/{len(NOTEBOOKS)} notebook(s) finished" in local_book.runner_output
    clone = local_book.root
    assert not (clone / "work").exists(), "the chapters made a work folder: something was computed"
    for nb in NOTEBOOKS:
        assert (clone / "book" / "executed" / f"{nb.name}.ipynb").is_file(), nb.name
        assert not (clone / "book" / "executed" / f"{nb.name}.failed.ipynb").exists(), nb.name
    for table in sorted(results.glob("*.csv")):
        assert (clone / "results" / "subset" / table.name).read_text() == table.read_text(), \
            f"{table.name} changed when re-executed from the committed outputs"


@pytest.fixture(scope="module")
def pages_book(tmp_path_factory) -> tuple[Path, str, Path]:
    """The committed book built as the Pages workflow builds it: a fresh virtual environment, the workflow's own
    install commands (from PyPI), then its build command; (_build/html, build output, the environment)."""
    tmp = tmp_path_factory.mktemp("pages_book")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv))
    root = checkout_copy(tmp / "checkout")
    for command in workflow_install_commands():
        run_step(command, root, env)
    log = run_step(workflow_build_command(), root, env)
    return root / "_build" / "html", log, venv


def ipe_docstrings() -> dict[str, str]:
    """{name: first docstring line} of the public functions of the package's IPE module, read from its source."""
    (path,) = (REPO / "sipe").rglob("ipe.py")
    functions = [n for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef)]
    return {f.name: ast.get_docstring(f).splitlines()[0] for f in functions if not f.name.startswith("_")}


def text(node) -> str:
    return " ".join(node.get_text(" ", strip=True).split())


def api_entries(html: Path) -> dict[str, str]:
    """{object id: its signature and description as text} of every object the API page documents."""
    return {dt["id"]: text(dt) + " :: " + text(dt.find_next_sibling("dd"))
            for dt in page(html, "book/api").select("dl.py > dt[id]")}


def section_titles(path: Path) -> list[str]:
    soup = BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")
    for link in soup.select("a.headerlink"):
        link.decompose()
    main = soup.find("main") or soup
    return [text(h) for h in main.find_all(["h1", "h2", "h3", "h4", "h5", "h6"])]


def html_pages(html: Path) -> list[str]:
    return sorted(str(p.relative_to(html)) for p in html.rglob("*.html"))


SMART = str.maketrans({"\u2026": "...", "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
                       "\u2013": "--", "\u2014": "---"})


def bare(s: str) -> str:
    """s without whitespace, backquotes and Sphinx's typographic quotes and dots, to find a docstring in its
    rendering."""
    return "".join(s.replace("`", "").translate(SMART).split())


@pytest.mark.slow
def test_pages_build_documents_the_api_without_torch(pages_book):
    html, log, venv = pages_book
    probe = "import importlib.util as u; print([m for m in ('torch', 'numpy', 'sipe') if u.find_spec(m)])"
    found = subprocess.run([str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True,
                           cwd=venv, env={"PATH": os.environ.get("PATH", "")}, check=True).stdout.strip()
    assert found == "['sipe']", f"the Pages environment should hold sipe without torch or numpy: {found}"
    assert "autodoc: failed to import" not in log, log[log.find("failed to import") - 200:][:2000]
    entries = api_entries(html)
    docstrings = ipe_docstrings()
    assert {"locate_seeds", "structure_iou", "prototypes", "is_cam"} <= set(docstrings)
    for name, first_line in docstrings.items():
        shown = [v for k, v in entries.items() if k.endswith(f".ipe.{name}")]
        assert len(shown) == 1, f"{name} is not documented once on the API page"
        assert bare(first_line) in bare(shown[0]), f"{name}: docstring missing: {shown[0][:300]}"
    assert len(entries) > 300


@pytest.mark.slow
def test_pages_build_equals_the_local_build(pages_book, local_book):
    """The same pages (the modules' highlighted sources too), the same section titles on every page of the book,
    the same API entries."""
    pages, local = pages_book[0], local_book.html
    assert html_pages(pages) == html_pages(local)
    for name in [f"{doc}.html" for doc in toc_files()]:
        assert section_titles(pages / name) == section_titles(local / name), name
    assert api_entries(pages) == api_entries(local)


@pytest.mark.slow
def test_header_links_the_repository_and_its_issues(local_book):
    html = local_book.html
    url = yaml.safe_load((REPO / "_config.yml").read_text())["repository"]["url"]
    for doc in toc_files():
        soup = page(html, doc)
        (repository,) = soup.select("a.btn-source-repository-button")
        (issues,) = soup.select("a.btn-source-issues-button")
        assert repository["href"] == url, doc
        assert issues["href"].startswith(f"{url}/issues/new?"), doc
    owner, name = url.removeprefix("https://github.com/").split("/")
    reproduce = {a["href"] for a in page(html, "book/reproduce").select("article a.reference.external")}
    assert {url, f"{url}/issues", f"https://{owner.lower()}.github.io/{name}/"} <= reproduce


DOWNLOAD = re.compile(r"\{download\}`[^`<]*<([^>`]+)>`")
WRITES_TIDY_TABLE = re.compile(r"\bstudy\.table\(|\bwrite_table\(")
RESULTS = REPO / "results" / "subset"


def chapter_downloads(folder: Path) -> dict[str, list[str]]:
    """{chapter: the paths its Markdown cells' {download} roles name} of the runner's notebooks in folder."""
    cells = {nb.name: nbformat.read(folder / nb.path, as_version=4).cells for nb in NOTEBOOKS}
    return {name: [t for c in cs if c.cell_type == "markdown" for t in DOWNLOAD.findall(c.source)]
            for name, cs in cells.items()}


def chapters_writing_tidy_tables() -> set[str]:
    return {nb.name for nb in NOTEBOOKS
            if any(c.cell_type == "code" and WRITES_TIDY_TABLE.search(c.source)
                   for c in nbformat.read(NOTEBOOKS_DIR / nb.path, as_version=4).cells)}


def test_chapters_link_the_tidy_csvs_they_write():
    """Each chapter that writes tidy tables links them (relative to book/executed/, where the book renders it),
    every published CSV but the claims page's is linked, and the executed copies carry the same links."""
    links = chapter_downloads(NOTEBOOKS_DIR)
    assert {name for name, targets in links.items() if targets} == chapters_writing_tidy_tables()
    targets = [REPO / "book" / "executed" / t for ts in links.values() for t in ts]
    assert all(t.resolve().parent == RESULTS and t.is_file() for t in targets), targets
    assert {t.stem for t in targets} == {p.stem for p in RESULTS.glob("*.csv")} - {"claims"}
    assert chapter_downloads(REPO / "book" / "executed") == links


@pytest.mark.slow
def test_built_chapters_download_their_csvs_under_their_tables(local_book):
    html = local_book.html
    for name in sorted(chapters_writing_tidy_tables()):
        soup = page(html, f"book/executed/{name}")
        links = soup.select("a.reference.download")
        assert links, f"{name}: no download link"
        first_table = result_tables(soup)[0]
        for a in links:
            target = (html / "book" / "executed" / a["href"]).resolve()
            assert target.is_relative_to(html / "_downloads") and target.is_file(), (name, a["href"])
            assert target.read_bytes() == (RESULTS / target.name).read_bytes(), (name, target.name)
            assert first_table in a.find_all_previous("table"), f"{name}: {target.name} is linked above the tables"


LAYOUT_WIDTH = 1366
LAYOUT_REPORT = "layout-report"
LAYOUT_SCRIPT = """<script>
(function () {
  var SLACK = 4;
  function name(el) {
    var cls = (el.className && el.className.baseVal === undefined ? el.className : "").trim().split(/\\s+/).slice(0, 3);
    var text = (el.innerText || el.textContent || "").trim().replace(/\\s+/g, " ");
    return el.tagName.toLowerCase() + (cls[0] ? "." + cls.join(".") : "") + " \\"" + text.slice(0, 80) + "\\"";
  }
  function shown(el) { return el.getClientRects().length > 0 && getComputedStyle(el).visibility !== "hidden"; }
  function clips(el) { return ["auto", "scroll", "hidden", "clip"].indexOf(getComputedStyle(el).overflowX) >= 0; }
  function measure() {
    var found = [], root = document.documentElement;
    if (root.scrollWidth > root.clientWidth + SLACK)
      found.push({kind: "page", what: "html", content: root.scrollWidth, box: root.clientWidth});
    var article = document.querySelector("main article") || document.querySelector("main");
    if (article) {
      var right = article.getBoundingClientRect().right;
      article.querySelectorAll("*").forEach(function (el) {
        if (!shown(el) || el.closest("mjx-assistive-mml")) return;
        if (clips(el) && el.clientWidth > 1 && el.scrollWidth > el.clientWidth + SLACK)
          found.push({kind: "cut off", what: name(el), content: el.scrollWidth, box: el.clientWidth});
        var spill = el.getBoundingClientRect().right - right;
        if (spill > SLACK && el.parentElement && el.parentElement.getBoundingClientRect().right - right <= SLACK) {
          for (var a = el.parentElement; a && a !== article; a = a.parentElement) if (clips(a)) return;
          found.push({kind: "past the column", what: name(el), content: Math.round(spill), box: 0});
        }
      });
      article.querySelectorAll("td, th").forEach(function (cell) {
        var t = (cell.innerText || "").trim();
        if (/(\\.\\.\\.|\\u2026)$/.test(t)) found.push({kind: "truncated cell", what: t.slice(-80), content: 0, box: 0});
      });
    }
    window.parent.postMessage(JSON.stringify({article: !!article, width: window.innerWidth, problems: found}), "*");
  }
  window.addEventListener("load", function () {
    var typeset = window.MathJax && MathJax.startup && MathJax.startup.promise;
    (typeset || Promise.resolve()).then(function () { setTimeout(measure, 500); });
  });
})();
</script>"""
LAYOUT_PAGE = """<!DOCTYPE html><html><head><style>body { margin: 0 } iframe { border: 0; display: block; width: %dpx; height: 900px }
</style></head><body><script>
var pages = %s, found = {};
function next(i) {
  if (i === pages.length) {
    var pre = document.createElement("pre");
    pre.id = "%s";
    pre.textContent = JSON.stringify(found);
    document.body.appendChild(pre);
    return;
  }
  var frame = document.createElement("iframe"), timer;
  function done(event) {
    if (event && event.source !== frame.contentWindow) return;
    window.removeEventListener("message", done);
    clearTimeout(timer);
    found[pages[i]] = event ? JSON.parse(event.data) : null;
    frame.remove();
    next(i + 1);
  }
  window.addEventListener("message", done);
  timer = setTimeout(done, 15000);
  frame.src = pages[i];
  document.body.appendChild(frame);
}
next(0);
</script></body></html>"""


def layout_problems(html: Path, docs: list[str], tmp: Path) -> dict[str, list[dict]]:
    """{page: what a reader at LAYOUT_WIDTH px sees cut off or truncated} for each document of the built book html,
    measured in one headless Chromium: a page loads each document in turn in a LAYOUT_WIDTH px frame, and a script
    injected into a copy of each document reports (the document's own horizontal scroll, elements that clip or
    scroll their content horizontally, elements reaching past the content column, each by more than 4 px, the
    overhang of italic glyphs; table cells ending in an ellipsis)."""
    site = tmp / "site"
    shutil.copytree(html, site)
    for doc in docs:
        path = site / f"{doc}.html"
        source = path.read_text(encoding="utf-8")
        path.write_text(source.replace("</body>", LAYOUT_SCRIPT + "</body>", 1), encoding="utf-8")
    runner = site / "layout-check.html"
    runner.write_text(LAYOUT_PAGE % (LAYOUT_WIDTH, json.dumps([f"{doc}.html" for doc in docs]), LAYOUT_REPORT),
                      encoding="utf-8")
    dom = chromium(tmp, f"--window-size={LAYOUT_WIDTH + 100},900", f"--virtual-time-budget={20000 * len(docs)}",
                   "--dump-dom", runner.as_uri())
    report = BeautifulSoup(dom, "html.parser").find("pre", id=LAYOUT_REPORT)
    assert report is not None, "the layout page did not finish"
    reports = json.loads(report.get_text())
    found = {}
    for doc in docs:
        measured = reports[f"{doc}.html"]
        assert measured is not None, f"{doc}: the layout script did not run"
        assert measured["article"] and measured["width"] == LAYOUT_WIDTH, (doc, measured)
        found[doc] = measured["problems"]
    return found


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing (`make test` installs it as root)")
def test_layout_script_finds_overflow_and_truncation(tmp_path):
    html = tmp_path / "html"
    html.mkdir()
    wide = "x" * 400
    (html / "wide.html").write_text(f"<html><body><main><article style='width:600px'><pre style='overflow:auto'>{wide}"
                                    f"</pre><table><tr><td>SIPE beats the CAM baseline (voi...</td></tr></table>"
                                    f"<div style='width:900px'>spills</div></article></main></body></html>")
    (html / "fine.html").write_text("<html><body><main><article style='width:600px'><pre>short</pre>"
                                    "<table><tr><td>full name</td></tr></table></article></main></body></html>")
    found = layout_problems(html, ["wide", "fine"], tmp_path)
    assert found["fine"] == []
    assert {p["kind"] for p in found["wide"]} == {"cut off", "truncated cell", "past the column"}


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing (`make test` installs it as root)")
def test_no_page_is_cut_off_at_laptop_width(local_book, tmp_path):
    found = layout_problems(local_book.html, toc_files(), tmp_path)
    bad = {doc: problems for doc, problems in found.items() if problems}
    assert not bad, "\n".join(f"{doc}: {p['kind']} {p['what']}" + (f" ({p['content']} px > {p['box']} px)" if p["box"] else "")
                              for doc, problems in bad.items() for p in problems)


def test_chapter_tables_show_long_cells_whole():
    import pandas as pd

    from sipe.study.rendering import configure_display

    claim = "SIPE beats the CAM baseline with denseCRF (void as background), the authors' protocol"
    frame = pd.DataFrame({f"column {i}": [claim] for i in range(30)})
    with pd.option_context("display.max_colwidth", 50, "display.max_columns", 20):
        assert claim not in frame._repr_html_()
        configure_display()
        shown = frame._repr_html_()
    assert shown.count(claim) == 30 and "..." not in shown


@pytest.mark.slow
def test_prose_pages_show_the_computed_numbers(local_book):
    html, log = local_book.html, local_book.log
    assert "Substitution error" not in log, log[log.find("Substitution error") - 300:][:1500]
    numbers = json.loads((REPO / "book" / "executed" / "numbers.json").read_text())
    setting = text(page(html, "book/setting").find("main"))
    for name in ("precision_unit_moves", "precision_iscam_mean", "irn_conf_fg", "subset_bg_scale"):
        assert numbers[name] in setting, name
    reproduce = page(html, "book/reproduce")
    cost = [t for t in reproduce.select("main table") if "fastest of its variant" in t.get_text()]
    assert len(cost) == 1 and numbers["core_hours"] in text(reproduce.find("main"))
