"""The smoke path end to end: every notebook through the runner, the Jupyter Book build, and the pages as a
headless browser renders them. The tests that need the built book are marked slow (minutes)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from bs4 import BeautifulSoup
from PIL import Image

from sipe.infra.provenance import provenance_table
from sipe.reproduce import NOTEBOOKS, copy_book_sources

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


def workflow_build_command() -> str:
    """The `run` command of the GitHub Pages workflow's build step (the book is built exactly as it is online)."""
    steps = yaml.safe_load(WORKFLOW.read_text())["jobs"]["build"]["steps"]
    (step,) = [s for s in steps if s.get("id") == "build"]
    return step["run"]


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


def data_root(tmp: Path) -> Path:
    """The real VOC subset when available (SIPE_DATA_ROOT, SIPE_SUBSET_ROOT, ../shared/data), else a
    synthetic dataset in the same layout."""
    candidates = [os.environ.get("SIPE_DATA_ROOT"), os.environ.get("SIPE_SUBSET_ROOT"),
                  str(REPO.parent / "shared" / "data" / "voc2012_subset")]
    for c in candidates:
        if c and (Path(c) / "JPEGImages").is_dir():
            return Path(c)
    from sipe.data.synthetic import make_synthetic_voc

    return make_synthetic_voc(tmp / "synthetic_voc", n_images=16, size=(96, 128), seed=0)


def test_toc_lists_the_runners_notebooks_and_existing_pages():
    files = toc_files()
    assert [f for f in files if f.startswith("book/executed/")] == [f"book/executed/{nb.name}" for nb in NOTEBOOKS]
    for f in files:
        if not f.startswith("book/executed/"):
            assert (REPO / f"{f}.md").is_file(), f


@pytest.fixture(scope="module")
def html(tmp_path_factory) -> Path:
    """Run the smoke profile into a copy of the book's sources and build it; returns _build/html."""
    if not any(NOTEBOOKS_DIR.glob("*.ipynb")):
        pytest.skip("notebooks/ has no notebooks yet: nothing to run for the smoke path")
    tmp = tmp_path_factory.mktemp("smoke_book")
    root = copy_book_sources(tmp / "src")
    run = subprocess.run(
        [sys.executable, "-m", "sipe.reproduce", "--profile", "smoke", "--data-root", str(data_root(tmp)),
         "--work-dir", str(tmp / "work"), "--out", str(root / "book" / "executed"),
         "--notebooks-dir", str(NOTEBOOKS_DIR), "--device", "cpu"],
        capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, f"runner failed:\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    build = subprocess.run(["bash", "-c", workflow_build_command()], cwd=root, env=env,
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, f"the workflow's book build failed:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}"
    return root / "_build" / "html"


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
    from sipe.study.results import CLAIMS

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
