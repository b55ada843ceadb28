"""Where a result came from: code revision, configuration, package versions, device, date.

Every notebook ends with `provenance_table(provenance(cfg))`, and the runner stores the revision beside
each notebook's wall time, so each number in the book can be traced to the code and settings behind it.
No host name or user name is recorded.
"""
from __future__ import annotations

import ast
import fnmatch
import functools
import hashlib
import platform
import re
import subprocess
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from .config import ExperimentConfig

PACKAGES = ("sipe", "torch", "torchvision", "timm", "numpy", "pandas")
REPO_ROOT = Path(__file__).resolve().parents[2]


OUTPUT_PATHS = ("book/executed", "results")
"""Folders the study writes (published outputs): their changes do not make a revision dirty."""


def git_revision(repo: str | Path = REPO_ROOT) -> str:
    """`git rev-parse HEAD` of `repo`, with '-dirty' when tracked files outside the study's outputs
    (`OUTPUT_PATHS`) have uncommitted changes; 'unknown' when git or a commit is unavailable."""
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=repo, capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()

    try:
        rev = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".",
                    *(f":(exclude){p}" for p in OUTPUT_PATHS))
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{rev}-dirty" if dirty else rev


STAGE_ENTRIES: dict[str, str] = {"train": "sipe.stages.train", "maps": "sipe.stages.maps", "eval": "sipe.study.pipeline"}
"""Each stage's entry module: the stage's numbers are computed by it and by what it imports."""
STAGES = tuple(STAGE_ENTRIES)
NUMBER_NEUTRAL: dict[str, str] = {
    "sipe/infra/config.py": "the settings, covered by each stage's configuration hash",
    "sipe/infra/errors.py": "error types and their messages",
    "sipe/infra/locks.py": "one writer per folder",
    "sipe/infra/provenance.py": "what a record says of a result, not the result",
    "sipe/study/records.py": "where the results files go and their columns",
    "sipe/data/synthetic.py": "writes the synthetic test dataset; no stage calls it (the data package exports it)",
}
"""Modules a stage imports whose code cannot change a number, each with the reason; every other module a
stage imports, at any depth and inside functions too, is a stage source."""


def _module_file(module: str, repo: Path) -> Path | None:
    base = repo / module.replace(".", "/")
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.exists():
            return path
    return None


def imported_modules(module: str, repo: Path = REPO_ROOT) -> set[str]:
    """`module` and every module of its package it imports, directly or not (imports inside functions and
    the packages that hold each module count too)."""
    package = module.split(".")[0]
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for k in range(1, len(parts)):
            parent = ".".join(parts[:k])
            if parent not in seen and _module_file(parent, repo) is not None:
                todo.append(parent)
        path = _module_file(name, repo)
        if name in seen or path is None:
            continue
        seen.add(name)
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = parts if is_package else parts[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                targets = [stem, *(f"{stem}.{a.name}" for a in node.names)]
            else:
                continue
            todo += [t for t in targets if t.split(".")[0] == package and _module_file(t, repo) is not None]
    return seen


@functools.lru_cache(maxsize=None)
def stage_files(stage: str, repo: Path = REPO_ROOT) -> tuple[str, ...]:
    """The source files whose code computes `stage`'s numbers: the modules its entry imports
    (`imported_modules` of `STAGE_ENTRIES[stage]`) but the `NUMBER_NEUTRAL` ones, as repository paths."""
    files = {_module_file(m, repo).relative_to(repo).as_posix() for m in imported_modules(STAGE_ENTRIES[stage], repo)}
    return tuple(sorted(files - set(NUMBER_NEUTRAL)))


def stage_patterns(stages: list[str] | tuple[str, ...], repo: Path = REPO_ROOT) -> list[str]:
    """The source files the numbers of `stages` depend on: their own and those of every earlier stage, in
    STAGES order."""
    last = max((STAGES.index(s) for s in stages), default=-1)
    return sorted({f for name in STAGES[: last + 1] for f in stage_files(name, repo)})


def stage_code_hash(stage: str, repo: Path = REPO_ROOT) -> str:
    """12-hex sha256 over the source files of `stage` and of the stages before it (`stage_patterns`)."""
    h = hashlib.sha256()
    for pattern in stage_patterns([stage], repo):
        for path in sorted(repo.glob(pattern)):
            h.update(path.relative_to(repo).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:12]


def changed_files(revision: str, patterns: Sequence[str], repo: Path = REPO_ROOT) -> list[str] | None:
    """The files matching `patterns` that differ between `revision` and the working tree (`git diff
    --name-only`); None when git or the revision is unavailable."""
    rev = revision.removesuffix("-dirty")
    if not patterns:
        return []
    if not rev or rev == "unknown":
        return None
    try:
        out = subprocess.run(["git", "diff", "--name-only", rev, "--", *patterns], cwd=repo, capture_output=True,
                             text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return sorted(line for line in out.splitlines() if line)


@functools.lru_cache(maxsize=256)
def normalized_source(text: str) -> str:
    """Python source reduced to what runs: its AST with docstrings removed (comments and layout vanish
    with parsing); the text itself when it does not parse."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return text
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body and \
                isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and \
                isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


FULL_SHA = re.compile(r"[0-9a-f]{40}")


def _source_at(revision: str, name: str, repo: Path) -> str | None:
    """The text of file `name` at `revision` (`git show`); None when git, the revision or the file is unavailable."""
    try:
        return subprocess.run(["git", "show", f"{revision}:{name}"], cwd=repo, capture_output=True, text=True,
                              check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None


@functools.lru_cache(maxsize=4096)
def _committed_source(sha: str, name: str, repo: Path) -> str | None:
    """`_source_at` for a full commit hash, whose files never change: read once per process."""
    return _source_at(sha, name, repo)


def source_code_changes(revision: str, patterns: Sequence[str], repo: Path = REPO_ROOT) -> list[str] | None:
    """The files matching `patterns` whose code (not docstrings, comments or layout) differs between
    `revision` and the working tree; None when git or the revision is unavailable."""
    files = changed_files(revision, patterns, repo)
    if not files:
        return files
    rev = revision.removesuffix("-dirty")
    changed = []
    for name in files:
        old = (_committed_source if FULL_SHA.fullmatch(rev) else _source_at)(rev, name, repo)
        path = repo / name
        new = path.read_text() if path.exists() else None
        if old is None or new is None or normalized_source(old) != normalized_source(new):
            changed.append(name)
    return changed


def code_changes(revision: str, stages: list[str] | tuple[str, ...], repo: Path = REPO_ROOT) -> list[str] | None:
    """The stage source files of `stages` (and of the stages before them) whose code differs between
    `revision` and the working tree (`source_code_changes`); None when git or the revision is unavailable."""
    return source_code_changes(revision, stage_patterns(stages, repo), repo)


def stages_using(files: list[str]) -> list[str]:
    """The stages whose numbers depend on any of `files` (a stage depends on its sources and on those of the
    stages before it, as in `stage_code_hash`)."""
    return [stage for stage in STAGES
            if any(fnmatch.fnmatch(f, p) for f in files for p in stage_patterns([stage]))]


def stage_code_hashes() -> dict[str, str]:
    """{stage: stage_code_hash(stage)} for train, maps and eval."""
    return {stage: stage_code_hash(stage) for stage in STAGES}


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed version of each distribution ('not installed' when absent)."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else `platform.processor()`); '' when unknown."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine() -> dict[str, Any]:
    """What a number computed here depends on besides code, settings and data: the CPU model, torch's CPU
    capability (the vector instructions its kernels use), its thread count and the CUDA device, if any.
    Numbers reproduce to the last bit only on the same kind of machine."""
    import torch

    return {"cpu": cpu_model(), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else ""}


def machine_text(recorded: dict[str, Any] | None) -> str:
    """A record's `machine` as one line (CPU model, torch's CPU capability, CUDA device); '' when not recorded."""
    m = recorded or {}
    return ", ".join(str(v) for v in (m.get("cpu"), m.get("torch_cpu_capability"), m.get("cuda")) if v)


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def provenance(cfg: ExperimentConfig | None = None) -> dict[str, Any]:
    """Provenance record: git_revision, profile, config_hash (the 'eval' stage hash), device, python,
    packages {name: version}, date (UTC, ISO 8601). profile/config_hash/device are None without `cfg`."""
    device = None
    if cfg is not None:
        from .runtime import resolve_device

        device = str(resolve_device(cfg.device))
    return {
        "git_revision": git_revision(),
        "profile": None if cfg is None else cfg.profile,
        "config_hash": None if cfg is None else cfg.stage_hash("eval"),
        "device": device,
        "machine": machine(),
        "python": platform.python_version(),
        "packages": package_versions(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def provenance_table(record: dict[str, Any]) -> pd.DataFrame:
    """The record as a two-column table (provenance, value), packages flattened to one row each."""
    rows = []
    for key, value in record.items():
        if isinstance(value, dict):
            rows += [(f"{key}: {name}", str(v)) for name, v in value.items()]
        else:
            rows.append((key, "" if value is None else str(value)))
    return pd.DataFrame(rows, columns=["provenance", "value"])
