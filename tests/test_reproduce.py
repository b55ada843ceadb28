"""The papermill runner (sipe.reproduce) and provenance records, on tiny notebooks written by the tests."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest

from sipe.infra.config import get_profile
from sipe.infra.provenance import cpu_model, git_revision, provenance, provenance_table
from sipe.reproduce import (DEFAULT_DATA_ROOT, NOTEBOOKS, Notebook, RunnerError, check_data_root, check_kernel,
    claims_markdown, run, select, shown_path)

REPO = Path(__file__).resolve().parents[1]


def write_notebook(path: Path, *code_cells: str) -> Path:
    """A notebook with a markdown title, a `parameters` cell with defaults, then `code_cells`."""
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "x"\ndata_root = ""\nwork_dir = ""\nseed = None\ndevice = "auto"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {path.stem}"), params]
    nb.cells += [nbformat.v4.new_code_cell(src) for src in code_cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def runner(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sipe.reproduce", *args], capture_output=True, text=True,
                          timeout=300, cwd=REPO)


@pytest.fixture()
def tiny(tmp_path: Path, synthetic_root: Path) -> dict[str, Path]:
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    write_notebook(nbs / "first.ipynb", "print(f'ran {profile} seed={seed} device={device}')",
                   "import pathlib\nfrom sipe.infra.provenance import REPO_ROOT\npathlib.Path(REPO_ROOT, work_dir, 'first.txt').write_text(data_root)")
    write_notebook(nbs / "boom.ipynb", "x = 1", "raise ValueError('planted failure')", "y = 2")
    work = tmp_path / "work"
    work.mkdir()
    return {"nbs": nbs, "out": tmp_path / "out", "data": synthetic_root, "work": work}


def common_args(t: dict[str, Path]) -> list[str]:
    return ["--profile", "smoke", "--data-root", str(t["data"]), "--work-dir", str(t["work"]),
            "--notebooks-dir", str(t["nbs"]), "--out", str(t["out"])]


def test_successful_run_injects_parameters_and_records_provenance(tiny):
    proc = runner(*common_args(tiny), "--only", "first", "--seed", "7", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "[1/1] first ... done in" in proc.stdout
    executed = nbformat.read(tiny["out"] / "first.ipynb", as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert not executed.metadata["papermill"]["input_path"].startswith("/")
    assert [c.id for c in injected] == ["injected-parameters"]
    source_ids = [c.id for c in nbformat.read(tiny["nbs"] / "first.ipynb", as_version=4).cells]
    assert [c.id for c in executed.cells if c not in injected] == source_ids
    printed = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert "ran smoke seed=7 device=cpu" in printed
    assert (tiny["work"] / "first.txt").read_text() == shown_path(tiny["data"])
    assert not shown_path(tiny["data"]).startswith("/")
    assert not list(tiny["out"].glob("*.partial.ipynb"))
    record = json.loads((tiny["out"] / "provenance.json").read_text())["notebooks"]
    assert [(e["name"], e["status"], e["profile"], e["seed"]) for e in record] == [("first", "ok", "smoke", 7)]
    assert record[0]["seconds"] > 0
    assert record[0]["git_revision"] == git_revision()
    assert "## Run record" in (tiny["out"] / "claims.md").read_text()


def test_failing_notebook_names_notebook_and_cell(tiny):
    assert runner(*common_args(tiny), "--only", "first").returncode == 0
    (tiny["out"] / "boom.ipynb").write_text("{}")  # the chapter published by an earlier run
    proc = runner(*common_args(tiny), "--only", "boom")
    assert proc.returncode == 1
    # boom.ipynb: title (1), parameters (2), x = 1 (3), raise (4): the injected cell does not count.
    assert f"boom failed in cell 4 of {tiny['nbs'] / 'boom.ipynb'}" in proc.stderr
    assert "ValueError: planted failure" in proc.stderr
    assert "> 1 raise ValueError('planted failure')" in proc.stderr
    assert "[1/1] boom ... FAILED" in proc.stdout
    assert (tiny["out"] / "boom.failed.ipynb").exists()
    assert (tiny["out"] / "boom.ipynb").read_text() == "{}", "a failure never removes a published chapter"
    assert f"the chapter last published was kept: {tiny['out'] / 'boom.ipynb'}" in proc.stderr
    assert (tiny["out"] / "first.ipynb").exists()
    statuses = {e["name"]: e["status"] for e in json.loads((tiny["out"] / "provenance.json").read_text())["notebooks"]}
    assert statuses == {"first": "ok", "boom": "failed"}


def test_dependents_of_a_failure_are_skipped_others_run(tiny):
    write_notebook(tiny["nbs"] / "child.ipynb", "z = 3")
    params = {"profile": "smoke", "data_root": str(tiny["data"]), "work_dir": str(tiny["work"]),
              "seed": None, "device": "cpu"}
    order = [Notebook("boom"), Notebook("child", ("boom",)), Notebook("first")]
    results = run(order, tiny["nbs"], tiny["out"], params)
    assert [(r.name, r.status) for r in results] == [("boom", "failed"), ("child", "skipped"), ("first", "ok")]
    assert not (tiny["out"] / "child.ipynb").exists()


def test_select_orders_known_notebooks_and_reports_missing(tmp_path):
    for name in ("02_maps", "00_data_overview", "extra"):
        write_notebook(tmp_path / f"{name}.ipynb")
    chosen = select(["extra", "02_maps", "00_data_overview"], tmp_path)
    assert [nb.name for nb in chosen] == ["00_data_overview", "02_maps", "extra"]
    assert chosen[1].depends_on == ("01_training",)
    with pytest.raises(RunnerError, match="01_training.ipynb"):
        select(None, tmp_path)


def test_missing_data_root_is_a_clear_error(tiny, tmp_path):
    proc = runner("--profile", "smoke", "--data-root", str(tmp_path / "nope"), "--notebooks-dir",
                  str(tiny["nbs"]), "--out", str(tiny["out"]), "--only", "first")
    assert proc.returncode == 2
    assert proc.stderr == f"error: data root {tmp_path / 'nope'} is not a folder; pass --data-root or set SIPE_DATA_ROOT\n"
    assert not tiny["out"].exists()


def test_default_data_root_is_the_makefiles():
    line = next(l for l in (REPO / "Makefile").read_text().splitlines() if l.startswith("DATA_ROOT ?="))
    assert line == f"DATA_ROOT ?= $(or $(SIPE_DATA_ROOT),{DEFAULT_DATA_ROOT})"


def test_without_a_data_root_the_runner_takes_the_default(tiny, monkeypatch):
    default = (REPO / DEFAULT_DATA_ROOT).resolve()
    if default.is_dir():
        pytest.skip(f"{default} exists here: this test checks that the runner names it when it is missing")
    monkeypatch.delenv("SIPE_DATA_ROOT", raising=False)
    proc = runner("--profile", "smoke", "--notebooks-dir", str(tiny["nbs"]), "--out", str(tiny["out"]),
                  "--only", "first")
    assert proc.returncode == 2
    assert proc.stderr == f"error: data root {default} is not a folder; pass --data-root or set SIPE_DATA_ROOT\n"


def broken_copy(root: Path, tmp_path: Path, damage: str) -> Path:
    copy = Path(shutil.copytree(root, tmp_path / "voc"))
    if damage == "no train split":
        (copy / "ImageSets" / "Segmentation" / "train.txt").unlink()
    elif damage == "labels not 0/1":
        labels = np.load(copy / "cls_labels_voc.npy", allow_pickle=True).item()
        labels["synth_0004"] = labels["synth_0004"] * 2
        np.save(copy / "cls_labels_voc.npy", labels, allow_pickle=True)
    elif damage == "unlabelled id":
        labels = np.load(copy / "cls_labels_voc.npy", allow_pickle=True).item()
        del labels["synth_0002"]
        np.save(copy / "cls_labels_voc.npy", labels, allow_pickle=True)
    elif damage == "unreadable labels":
        (copy / "cls_labels_voc.npy").write_bytes(b"not numpy")
    return copy


@pytest.mark.parametrize("damage, expected", [
    ("no train split", "ImageSets/Segmentation/train.txt not found"),
    ("labels not 0/1", "labels must be 0 or 1, but 1 id(s) hold other values (e.g. 'synth_0004'"),
    ("unlabelled id", "1 id(s) of split 'train_aug' (e.g. 'synth_0002') have no label in"),
    ("unreadable labels", "cannot read label file"),
])
def test_data_root_is_checked_before_any_notebook(tiny, tmp_path, damage, expected):
    root = broken_copy(tiny["data"], tmp_path, damage)
    with pytest.raises(RunnerError) as e:
        check_data_root(root, "smoke")
    assert str(e.value).startswith(f"data root {root} cannot be used: ") and expected in str(e.value)
    assert "python -m data_prep." in str(e.value)  # the fix
    assert check_data_root(tiny["data"], "smoke") == tiny["data"].resolve()


def test_runner_stops_on_a_broken_data_root_with_one_line(tiny, tmp_path):
    root = broken_copy(tiny["data"], tmp_path, "labels not 0/1")
    args = common_args(tiny)
    args[args.index("--data-root") + 1] = str(root)
    proc = runner(*args, "--only", "first")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(f"error: data root {root} cannot be used: label file {root / 'cls_labels_voc.npy'}")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert not tiny["out"].exists()


def test_study_notebooks_are_valid_and_carry_cell_ids():
    """Cell ids keep a republished chapter's diff to its outputs (nbformat warns without them)."""
    import warnings

    for nb in NOTEBOOKS:
        path = REPO / "notebooks" / nb.path
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            notebook = nbformat.read(path, as_version=4)
            nbformat.validate(notebook)
        ids = [c.get("id") for c in notebook.cells]
        assert all(ids) and len(set(ids)) == len(ids), path
        assert sum("parameters" in c.metadata.get("tags", []) for c in notebook.cells) == 1, path


def test_notebook_list_dependencies_point_backwards():
    seen: set[str] = set()
    for nb in NOTEBOOKS:
        assert set(nb.depends_on) <= seen, nb.name
        seen.add(nb.name)


def test_check_kernel(tmp_path, monkeypatch):
    check_kernel("python3")
    spec = tmp_path / "kernels" / "elsewhere"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps(
        {"argv": ["/opt/other/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
         "display_name": "other", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    with pytest.raises(RunnerError, match="ipykernel install --sys-prefix --name elsewhere"):
        check_kernel("elsewhere")
    with pytest.raises(RunnerError, match="no Jupyter kernel named 'missing'"):
        check_kernel("missing")


def test_claims_markdown_shows_mean_std_n_interval_and_verdict():
    import numpy as np
    import pandas as pd

    from sipe.study.claims import CLAIM_COLUMNS

    nan = np.nan
    table = pd.DataFrame([
        ["SIPE beats the CAM baseline (localization maps)", "Table 1", 8.5, 5.0, 1.0, 3, 3.1, 6.2, 5.0 / 8.5, 3.1 / 8.5,
         6.2 / 8.5, "holds", "undecided", "03"],
        ["Option (4) beats option (1), estimated background", "Table 5", 4.0, 1.5, nan, 1, 0.4, 2.6, 1.5 / 4, 0.1, 0.65,
         "holds", "undecided", "05"],
        ["Structure-aware seeds beat the best CAM threshold", "Fig. 8", 5.3, nan, nan, 0, nan, nan, nan, nan, nan,
         "not yet run", nan, "06"],
    ], columns=CLAIM_COLUMNS)
    page = claims_markdown(table, "subset", "results/subset", "profile subset; maps in bfloat16 (paper: float32)")
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in page.splitlines() if line.startswith("| ") and "---" not in line}
    assert rows["SIPE beats the CAM baseline (localization maps)"][1:7] == \
        ["+8.5", "+5.0 ± 1.0 (n=3)", "[+3.1, +6.2]", "59% [36%, 73%]", "holds", "undecided"]
    assert rows["Option (4) beats option (1), estimated background"][2:7] == \
        ["+1.5 (n=1)", "[+0.4, +2.6]", "38% [10%, 65%]", "holds", "undecided"]
    assert rows["Structure-aware seeds beat the best CAM threshold"][2:7] == ["–", "–", "–", "not yet run", "–"]
    assert "`subset`" in page and "results/subset" in page
    assert "Setting: profile subset; maps in bfloat16 (paper: float32)." in page
    assert "Of the 3 claims the study checks, 2 hold, 1 is not yet run. Share of the paper's effect reproduced (claims with " \
        "an interval and a paper difference): undecided 2.\n" in page
    from sipe.study.ladderresults import COMBINED_COLUMN

    page = claims_markdown(table.assign(**{COMBINED_COLUMN: ["mixed", "not in the ladder", "not yet computed"]}),
                           "subset", "results/subset")
    header = next(line for line in page.splitlines() if line.startswith("| claim"))
    assert header.rstrip(" |").endswith(COMBINED_COLUMN)
    rows = {line.split("|")[1].strip(): line.split("|")[-2].strip() for line in page.splitlines()
            if line.startswith("| ") and "---" not in line}
    assert rows["SIPE beats the CAM baseline (localization maps)"] == "mixed"
    assert rows["Option (4) beats option (1), estimated background"] == "not in the ladder"


def test_git_revision(tmp_path):
    assert git_revision(tmp_path) == "unknown"
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run(git + ["init", "-q"], check=True)
    (tmp_path / "f.txt").write_text("a")
    for output in ("results/subset/table1.csv", "book/executed/03.ipynb"):
        (tmp_path / output).parent.mkdir(parents=True)
        (tmp_path / output).write_text("old")
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "one"], check=True)
    head = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert git_revision(tmp_path) == head
    (tmp_path / "untracked.txt").write_text("u")
    assert git_revision(tmp_path) == head
    for output in ("results/subset/table1.csv", "book/executed/03.ipynb"):
        (tmp_path / output).write_text("new")
    assert git_revision(tmp_path) == head
    (tmp_path / "f.txt").write_text("b")
    assert git_revision(tmp_path) == f"{head}-dirty"


def test_provenance_record_and_table():
    cfg = get_profile("smoke", device="cpu")
    record = provenance(cfg)
    assert record["profile"] == "smoke"
    assert record["config_hash"] == cfg.stage_hash("eval")
    assert record["device"] == "cpu"
    assert record["packages"]["numpy"] == __import__("numpy").__version__
    assert record["python"] == ".".join(map(str, sys.version_info[:3]))
    table = provenance_table(record)
    assert list(table.columns) == ["provenance", "value"]
    assert len(table) == len(record) - 2 + len(record["packages"]) + len(record["machine"])
    assert record["machine"]["cpu"] == cpu_model() and record["machine"]["torch_cpu_capability"]
    assert table.set_index("provenance").loc["packages: torch", "value"] == record["packages"]["torch"]
    assert provenance()["profile"] is None


def test_book_sources_copy_keeps_the_published_numbers_and_no_chapter(tmp_path):
    from sipe.reproduce import NUMBERS_FILE, copy_book_sources

    root = copy_book_sources(tmp_path / "src")
    assert [p.name for p in (root / "book" / "executed").iterdir()] == [NUMBERS_FILE]
    assert (root / "book" / "executed" / NUMBERS_FILE).read_bytes() == (REPO / "book" / "executed" / NUMBERS_FILE).read_bytes()


def test_notebooks_that_read_the_claims_run_after_the_claims_are_written(tmp_path, monkeypatch):
    """The Findings page reads claims.csv: the runner writes the claims of this run first, whatever the order given."""
    import sipe.reproduce as R

    events: list[str] = []
    monkeypatch.setattr(R, "claims_page", lambda parameters: events.append("claims") or "claims\n")
    monkeypatch.setattr(R, "run_notebook", lambda nb, *a, **k: events.append(nb.name) or R.NotebookResult(nb.name, "ok", 0.1))
    parameters = {"profile": "smoke", "seed": None, "device": "cpu"}
    notebooks = [Notebook("findings", reads_claims=True), Notebook("a"), Notebook("b", ("a",))]
    results = run(notebooks, tmp_path, tmp_path / "out", parameters)
    assert events == ["a", "b", "claims", "findings"]
    assert [r.status for r in results] == ["ok"] * 3
    assert [e["name"] for e in json.loads((tmp_path / "out" / "provenance.json").read_text())["notebooks"]] == ["findings", "a", "b"]
    assert [nb.name for nb in NOTEBOOKS if nb.reads_claims] == ["findings"] and NOTEBOOKS[0].reads_claims
