"""Run the study's notebooks with papermill, in dependency order, into executed copies for the book::

    python -m sipe.reproduce --profile smoke|subset|paper [--data-root D] [--work-dir W] [--out DIR]
                             [--only NAME ...] [--device auto] [--seed N] [--nproc N] [--notebooks-dir DIR]

Each notebook gets the parameters profile, data_root, work_dir, seed, device, compute and nproc (paths
relative to the repository; an empty work_dir means the default; nproc > 1 computes missing units in
that many processes through torchrun). All notebooks share `work_dir` (default
`$SIPE_WORK_DIR/<profile>`, else `work/<profile>`), where `sipe.study.pipeline` caches trained models and maps by
stage key, so a stage computed by one notebook is reused by the next.

Files in the output folder (default `book/executed/` for subset and paper, `<work_dir>/executed` for smoke):

- `<name>.partial.ipynb` while a notebook runs (papermill saves it cell by cell);
- `<name>.ipynb` once it ran to the end (renamed from the partial copy; the book shows these);
- `<name>.failed.ipynb` when a cell raised: the executed copy with the traceback, beside the chapter last
  published (`<name>.ipynb` is never removed by a failure: it keeps its own provenance, and the runner says
  it was kept);
- `provenance.json`: per notebook, status, wall time, git revision, profile (merged over runs);
- `claims.md`: the claims table (`sipe.study.claims.study_claims`) over the tables the notebooks wrote into the
  results folder (also saved there as `claims.csv`, before the notebooks that read it run: the Findings page,
  `reads_claims`), and the run record;
- `numbers.json` (profile subset): the numbers of the prose pages (`sipe.study.booknumbers`), which the book shows
  as MyST substitutions.

The data root is --data-root, else `$SIPE_DATA_ROOT`, else `../shared/data/voc2012_subset` beside the
repository (the Makefile's default). Before any notebook runs, it is checked cheaply (`check_data_root`:
split lists, label file, labels in {0, 1}; no image is decoded). A run that cannot start (data root, notebooks, kernel) stops with
one line `error: ...` and exit status 2. When a notebook fails, the notebooks that depend on it are
skipped, the others still run, and the exit status is 1 with the failing notebook and cell named.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .infra.config import DATA_ROOT_ENV, PROFILES, default_work_dir
from .infra.errors import SipeError, cli_entry
from .infra.provenance import REPO_ROOT, git_revision

KERNEL_NAME = "python3"
KERNEL_ARGS = ["--IPKernelApp.log_level=CRITICAL"]
DEFAULT_DATA_ROOT = "../shared/data/voc2012_subset"
"""The data root without --data-root or $SIPE_DATA_ROOT, relative to the repository: the Makefile's default."""
PROVENANCE_FILE = "provenance.json"
CLAIMS_FILE = "claims.md"
NUMBERS_FILE = "numbers.json"
PROSE_PROFILE = "subset"
"""The profile whose study the prose pages describe: its runs rewrite `numbers.json` (`sipe.study.booknumbers`); a
copy of the book's sources keeps the committed one."""
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class RunnerError(SipeError, RuntimeError):
    """The run cannot start (missing notebook, data root, kernel); the message says how to fix it."""


@dataclass(frozen=True)
class Notebook:
    """One notebook of the study: `name`, its file `path` under the notebooks folder, the notebooks whose
    results it needs (`depends_on`), and whether it reads `claims.csv` (`reads_claims`: it runs after the
    others, once the runner has written the claims of this run)."""

    name: str
    depends_on: tuple[str, ...] = ()
    reads_claims: bool = False

    @property
    def path(self) -> str:
        return f"{self.name}.ipynb"


_TRAINED = ("01_training", "02_maps")

NOTEBOOKS: tuple[Notebook, ...] = (
    Notebook("findings", reads_claims=True),
    Notebook("00_data_overview"),
    Notebook("01_training"),
    Notebook("02_maps", ("01_training",)),
    Notebook("03_table1_localization", _TRAINED),
    Notebook("04_table4_components", _TRAINED),
    Notebook("05_table5_bpm", _TRAINED),
    Notebook("06_fig8_seed_locating", _TRAINED),
    Notebook("07_fig1_tsne", _TRAINED),
    Notebook("08_fig3_structure", _TRAINED),
    Notebook("09_fig5_fig7_visual", _TRAINED),
    Notebook("10_table2_table3_segmentation", _TRAINED),
    Notebook("11_bg_weight_selection"),
    Notebook("12_ladder"),
)


@dataclass(frozen=True)
class NotebookResult:
    """Outcome of one notebook: status 'ok' | 'failed' | 'skipped', wall time, error text, output file."""

    name: str
    status: str
    seconds: float
    error: str = ""
    output: str = ""


def select(names: Sequence[str] | None, notebooks_dir: Path) -> list[Notebook]:
    """The notebooks to run: all of NOTEBOOKS, or the named ones in NOTEBOOKS order (names outside
    NOTEBOOKS run after them, in the given order, without dependencies). Every file must exist."""
    known = {nb.name: nb for nb in NOTEBOOKS}
    if names:
        chosen = [nb for nb in NOTEBOOKS if nb.name in names]
        chosen += [Notebook(n) for n in dict.fromkeys(names) if n not in known]
    else:
        chosen = list(NOTEBOOKS)
    missing = [nb.path for nb in chosen if not (notebooks_dir / nb.path).is_file()]
    if missing:
        raise RunnerError(
            f"missing notebook(s) in {notebooks_dir}: {', '.join(missing)}; the study's notebooks are "
            f"{', '.join(known)} (pass --notebooks-dir to run notebooks from another folder)"
        )
    return chosen


def check_data_root(data_root: str | os.PathLike, profile: str) -> Path:
    """The resolved data root after a cheap check for `profile` (see `sipe.data.voc.check_root`): the image
    and mask folders, the split lists the profile trains and evaluates on, the label file with labels in
    {0, 1} and a label for every id of those splits. RunnerError naming the file and the fix otherwise."""
    from .infra.config import get_profile
    from .data import voc

    if not str(data_root):
        raise RunnerError(f"no data root: pass --data-root or set {DATA_ROOT_ENV} (e.g. ../shared/data/voc2012_subset); "
                          "see data_prep/README.md for building the full VOC 2012 + SBD layout")
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise RunnerError(f"data root {root} is not a folder; pass --data-root or set {DATA_ROOT_ENV}")
    cfg = get_profile(profile)
    try:
        voc.check_root(root, (cfg.data.train_split, cfg.data.eval_split, cfg.infer.split))
    except voc.DataError as e:
        raise RunnerError(f"data root {root} cannot be used: {e}") from e
    return root.resolve()


def check_kernel(kernel_name: str = KERNEL_NAME) -> None:
    """Raise RunnerError unless kernel `kernel_name` starts this interpreter (so notebooks see this venv)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    fix = f"run: {sys.executable} -m ipykernel install --sys-prefix --name {kernel_name}"
    try:
        argv = KernelSpecManager().get_kernel_spec(kernel_name).argv
    except NoSuchKernel as e:
        raise RunnerError(f"no Jupyter kernel named {kernel_name!r}; {fix}") from e
    exe = argv[0]
    if exe in {"python", f"python{sys.version_info[0]}", "python%d.%d" % sys.version_info[:2]}:
        return
    if Path(exe).is_absolute() and Path(exe).parent == Path(sys.executable).parent:
        return
    raise RunnerError(f"the Jupyter kernel {kernel_name!r} runs {exe}, not this environment's {sys.executable}; {fix}")


def _failed_cell(error: Exception, failed_copy: Path, source_path: Path) -> str:
    """'cell N of <source> (In [k]): Ename: evalue', N counted from 1 in the source notebook."""
    from papermill.exceptions import PapermillExecutionError

    if not isinstance(error, PapermillExecutionError):
        return f"{type(error).__name__}: {error}"
    index = error.cell_index
    try:
        import nbformat

        cells = nbformat.read(failed_copy, as_version=4).cells
        cells = [c for c in cells if "papermill-error-cell-tag" not in c.metadata.get("tags", [])]
        injected = [i for i, c in enumerate(cells) if "injected-parameters" in c.metadata.get("tags", [])]
    except (OSError, ValueError):
        injected = []
    if injected and injected[0] == index:
        where = "the injected parameters cell"
    else:
        where = f"cell {index + 1 - (1 if injected and injected[0] < index else 0)} of {source_path}"
    tb_lines = ANSI.sub("", "\n".join(error.traceback or [])).splitlines()
    line = next((t.removeprefix("---->").strip() for t in tb_lines if t.startswith("---->")), "")
    line = line or next((t for t in str(error.source).splitlines() if t.strip()), "")
    return f"{where} (In [{error.exec_count}]): {error.ename}: {error.evalue}\n    > {line}"


def run_notebook(nb: Notebook, notebooks_dir: Path, out_dir: Path, parameters: Mapping[str, Any],
                 kernel_name: str = KERNEL_NAME) -> NotebookResult:
    """Execute one notebook with papermill (cwd = its folder) into `out_dir` (see the module docstring)."""
    import papermill

    source = notebooks_dir / nb.path
    partial = out_dir / f"{nb.name}.partial.ipynb"
    final = out_dir / f"{nb.name}.ipynb"
    failed = out_dir / f"{nb.name}.failed.ipynb"
    start = time.perf_counter()
    try:
        papermill.execute_notebook(
            source, partial, parameters=dict(parameters), kernel_name=kernel_name,
            cwd=source.parent, progress_bar=False, log_output=False, extra_arguments=KERNEL_ARGS,
        )
    except Exception as error:  # noqa: BLE001 - any failure of the notebook is reported, not raised
        seconds = time.perf_counter() - start
        if partial.exists():
            os.replace(partial, failed)
        kept = f"\n  the chapter last published was kept: {final}" if final.exists() else ""
        return NotebookResult(nb.name, "failed", seconds, _failed_cell(error, failed, source) + kept, str(failed))
    _tidy_executed(partial)
    os.replace(partial, final)
    failed.unlink(missing_ok=True)
    return NotebookResult(nb.name, "ok", time.perf_counter() - start, output=str(final))


def _tidy_executed(path: Path) -> None:
    """Store papermill's input/output paths in an executed notebook relative to the repository, give
    the injected parameters cell a fixed id (papermill draws a random one), so a republished chapter
    differs from the last only where its outputs do, and its visibility tag (`sipe.study.celltags`)."""
    import nbformat

    from .study.celltags import tag

    nb = nbformat.read(path, as_version=4)
    meta = nb.metadata.get("papermill", {})
    for key in ("input_path", "output_path"):
        if meta.get(key):
            meta[key] = shown_path(meta[key])
    for cell in nb.cells:
        if "injected-parameters" in cell.metadata.get("tags", []):
            cell["id"] = "injected-parameters"
    tag(nb)
    nbformat.write(nb, path)


def write_provenance(out_dir: Path, results: Sequence[NotebookResult], parameters: Mapping[str, Any]) -> Path:
    """Merge this run's entries into `<out_dir>/provenance.json` (one entry per notebook name)."""
    from .infra.runtime import atomic_write_json

    path = out_dir / PROVENANCE_FILE
    entries: dict[str, dict[str, Any]] = {}
    if path.exists():
        try:
            entries = {e["name"]: e for e in json.loads(path.read_text())["notebooks"]}
        except (ValueError, KeyError, TypeError):
            entries = {}
    revision = git_revision()
    finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for r in results:
        entries[r.name] = {
            "name": r.name, "status": r.status, "seconds": round(r.seconds, 2), "git_revision": revision,
            "profile": parameters["profile"], "seed": parameters["seed"], "device": parameters["device"],
            "finished": finished, "error": r.error,
        }
    order = {nb.name: i for i, nb in enumerate(NOTEBOOKS)}
    ordered = sorted(entries.values(), key=lambda e: (order.get(e["name"], len(order)), e["name"]))
    return atomic_write_json(path, {"notebooks": ordered})


def claims_markdown(table: Any, profile: str, results_dir: str, setting: str = "") -> str:
    """The claims page body: `sipe.study.claims` (a claims.csv frame) as a markdown table, under a header
    naming the profile, the results folder, the study's `setting` line and the tally of verdicts."""
    from .study.ladderresults import COMBINED_COLUMN
    from .study.claims import claims_display
    from .study.notes import verdict_note

    header = (f"Profile: `{profile}`. Generated by `python -m sipe.reproduce` from the tables in "
              f"`{results_dir}` (`claims.csv` beside them).\n\n" + (f"Setting: {setting}.\n\n" if setting else "")
              + verdict_note(table, "the study checks", name_claims=False) + "\n\n")
    shown = claims_display(table)
    if COMBINED_COLUMN in table:
        shown[COMBINED_COLUMN] = table[COMBINED_COLUMN].to_numpy()
    return header + shown.to_markdown(index=False, disable_numparse=True) + "\n"


def run_record_markdown(out_dir: Path) -> str:
    """provenance.json as a markdown table: notebook, status, wall time, profile, git revision."""
    import pandas as pd

    entries = json.loads((out_dir / PROVENANCE_FILE).read_text())["notebooks"]
    table = pd.DataFrame(entries, columns=["name", "status", "seconds", "profile", "git_revision", "finished"])
    table["git_revision"] = table["git_revision"].str.replace(r"^([0-9a-f]{12})[0-9a-f]+", r"\1", regex=True)
    table = table.rename(columns={"name": "notebook", "seconds": "wall time (s)", "git_revision": "git revision"})
    return table.to_markdown(index=False, floatfmt=".1f") + "\n"


def run(notebooks: Sequence[Notebook], notebooks_dir: Path, out_dir: Path, parameters: Mapping[str, Any],
        kernel_name: str = KERNEL_NAME) -> list[NotebookResult]:
    """Run `notebooks` in order, those that read the claims last, skipping those whose dependencies failed or
    were skipped in this run; print one progress line each. The claims (`claims.csv` in the results folder) are
    written after the other notebooks, before those that read them; provenance.json and claims.md into `out_dir`
    at the end."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[NotebookResult] = []
    broken: set[str] = set()
    order = [nb for nb in notebooks if not nb.reads_claims] + [nb for nb in notebooks if nb.reads_claims]
    page = None
    for i, nb in enumerate(order, 1):
        if nb.reads_claims and page is None:
            page = claims_page(parameters)
        prefix = f"[{i}/{len(order)}] {nb.name} ..."
        blocked = [d for d in nb.depends_on if d in broken]
        if blocked:
            results.append(NotebookResult(nb.name, "skipped", 0.0, f"skipped: {', '.join(blocked)} did not finish"))
            broken.add(nb.name)
            print(f"{prefix} skipped ({', '.join(blocked)} did not finish)", flush=True)
            continue
        print(prefix, end="", flush=True)
        result = run_notebook(nb, notebooks_dir, out_dir, parameters, kernel_name)
        results.append(result)
        if result.status == "ok":
            print(f" done in {result.seconds:.1f}s", flush=True)
        else:
            broken.add(nb.name)
            print(f" FAILED after {result.seconds:.1f}s", flush=True)
            print(f"  {nb.name} failed in {result.error}\n  executed copy: {result.output}", file=sys.stderr, flush=True)
    write_provenance(out_dir, results, parameters)
    from .infra.runtime import atomic_write_text

    page = page if page is not None else claims_page(parameters)
    atomic_write_text(out_dir / CLAIMS_FILE, page + "\n## Run record\n\n" + run_record_markdown(out_dir))
    if parameters["profile"] == PROSE_PROFILE:
        write_prose_numbers(parameters, out_dir)
    return results


def write_prose_numbers(parameters: Mapping[str, Any], out_dir: Path) -> None:
    """The numbers of the prose pages (`sipe.study.booknumbers`) from the profile's results folder into
    `out_dir/numbers.json`; a warning when they cannot be computed (the published file is kept)."""
    from .study.booknumbers import FLOAT32_RESULTS, write_book_numbers
    from .study.chapters import setup

    try:
        study = setup(parameters["profile"], parameters["data_root"], parameters["work_dir"], parameters["seed"],
                      parameters["device"], compute=False)
        write_book_numbers(out_dir, study.results_dir, FLOAT32_RESULTS, parameters["data_root"])
    except (SipeError, OSError, KeyError, ValueError) as e:
        print(f"warning: the numbers of the prose pages were not computed: {e}", file=sys.stderr)


def claims_page(parameters: Mapping[str, Any]) -> str:
    """The claims of the results folder the notebooks wrote (`Study.claims`, which saves `claims.csv`) as the claims
    page's body (`claims_markdown`), or a line saying why they were not computed."""
    from .study.chapters import setup
    from .study.ladder import LADDER_PROFILES
    from .study.ladderresults import with_combined_verdicts

    try:
        study = setup(parameters["profile"], parameters["data_root"], parameters["work_dir"], parameters["seed"],
                      parameters["device"], compute=False)
        table = study.claims()
        if study.cfg.profile in LADDER_PROFILES:
            table = with_combined_verdicts(table, study.cfg, study.work_dir)
        shown_dir = os.path.relpath(study.results_dir, REPO_ROOT) if study.results_dir.is_relative_to(REPO_ROOT) \
            else study.results_dir.name
        return claims_markdown(table, parameters["profile"], shown_dir, study.setting())
    except SipeError as e:
        print(f"warning: the claims were not computed: {e}", file=sys.stderr)
        return f"The claims were not computed: {e}\n"


def copy_book_sources(dest: Path, repo: Path = REPO_ROOT) -> Path:
    """Copy the book's sources (_config.yml, _toc.yml, book/ without executed/ but its numbers.json) to `dest`, to run and build
    the book elsewhere (tests, benchmarks); returns `dest`."""
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(repo / name, dest / name)
    shutil.copytree(repo / "book", dest / "book", ignore=shutil.ignore_patterns("executed"), dirs_exist_ok=True)
    numbers = repo / "book" / "executed" / NUMBERS_FILE
    if numbers.is_file():
        (dest / "book" / "executed").mkdir(exist_ok=True)
        shutil.copy2(numbers, dest / "book" / "executed" / NUMBERS_FILE)
    return dest


PUBLISHED_OUT = REPO_ROOT / "book" / "executed"


def default_out_dir(profile: str, work_dir: Path) -> Path:
    """Where executed notebooks go: `book/executed/` (what the book renders) for the published profiles
    (subset, paper), `<work_dir>/executed` otherwise, so a smoke run never overwrites the published ones."""
    from .study.records import PUBLISHED_PROFILES

    return PUBLISHED_OUT if profile in PUBLISHED_PROFILES else work_dir / "executed"


def shown_path(path: str | os.PathLike) -> str:
    """`path` relative to the repository (as the notebooks resolve it), so a published notebook names no
    machine's absolute path."""
    return os.path.relpath(Path(path).resolve(), REPO_ROOT)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sipe.reproduce", description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", choices=PROFILES, required=True)
    p.add_argument("--data-root", default=None, help=f"VOC2012-layout folder (default: ${DATA_ROOT_ENV}, else "
                   f"{DEFAULT_DATA_ROOT} beside the repository, as make)")
    p.add_argument("--work-dir", default=None, help="shared cache of stages (default: $SIPE_WORK_DIR/<profile>, else work/<profile> in the repo)")
    p.add_argument("--out", default=None, help="folder of executed notebooks (default: book/executed for subset "
                   "and paper, <work dir>/executed for smoke)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these notebooks (names without .ipynb)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--seed", type=int, default=None, help="training seed (default: the profile's)")
    p.add_argument("--nproc", type=int, default=1, help="processes that compute missing units (torchrun when > 1)")
    p.add_argument("--notebooks-dir", default=None, help="folder of source notebooks (default: notebooks/ in the repo)")
    p.add_argument("--kernel", default=KERNEL_NAME, help="Jupyter kernel name")
    p.add_argument("--no-compute", action="store_true", help="publish what has finished: notebooks read the "
                   "finished units' results and train nothing (compute=False)")
    return p


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.nproc < 1:
        raise RunnerError(f"--nproc {args.nproc}: the number of processes must be at least 1")
    notebooks_dir = Path(args.notebooks_dir or REPO_ROOT / "notebooks").resolve()
    work_dir = (Path(args.work_dir) if args.work_dir else default_work_dir(args.profile)).resolve()
    out_dir = Path(args.out).resolve() if args.out else default_out_dir(args.profile, work_dir)
    data_root = check_data_root(args.data_root or os.environ.get(DATA_ROOT_ENV) or (REPO_ROOT / DEFAULT_DATA_ROOT).resolve(),
                                args.profile)
    notebooks = select(args.only, notebooks_dir)
    check_kernel(args.kernel)
    parameters = {"profile": args.profile, "data_root": shown_path(data_root),
                  "work_dir": "" if work_dir == default_work_dir(args.profile).resolve() else shown_path(work_dir),
                  "seed": args.seed, "device": args.device, "compute": not args.no_compute, "nproc": args.nproc}
    print(f"profile {args.profile}: {len(notebooks)} notebook(s) from {notebooks_dir} -> {out_dir} "
          f"(work dir {work_dir})", flush=True)
    start = time.perf_counter()
    results = run(notebooks, notebooks_dir, out_dir, parameters, args.kernel)
    bad = [r for r in results if r.status != "ok"]
    print(f"{len(results) - len(bad)}/{len(results)} notebook(s) finished in {time.perf_counter() - start:.1f}s", flush=True)
    if bad:
        print("not finished:\n" + "\n".join(f"  {r.name}: {r.status} - {r.error}" for r in bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
