"""One writer per run, maps or results folder: an advisory `flock` on `<folder>/.lock`.

A background `make stages` and a `make reproduce` may ask for the same stage; the second one waits
until the first releases the folder (then reuses its finished output) or, with `wait=False`, stops with
a `FolderBusyError` that names the folder and the process holding it. The lock dies with its process,
so a killed job never leaves a stale lock behind.
"""
from __future__ import annotations

import fcntl
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import SipeError

LOCK_FILE = ".lock"


class FolderBusyError(SipeError, RuntimeError):
    """Another process is writing the folder; the message names it and the holder."""


def _holder(lock: Path) -> str:
    try:
        return lock.read_text().strip() or "unknown process"
    except OSError:
        return "unknown process"


@contextmanager
def folder_lock(folder: str | os.PathLike, wait: bool = True, quiet: bool = False) -> Iterator[Path]:
    """Hold the exclusive lock of `folder` (created if needed) for the `with` block; yields the folder.

    wait=True blocks until the holder is done (saying once on stderr who holds it); wait=False raises
    FolderBusyError at once. Re-entrant within one process is not supported: take it once per stage.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(path)
            if not wait:
                raise FolderBusyError(
                    f"{folder} is being written by {holder}; wait for it to finish (or stop it) and run again"
                ) from None
            if not quiet:
                print(f"waiting for {folder}: it is being written by {holder}", file=sys.stderr, flush=True)
            start = time.monotonic()
            fcntl.flock(f, fcntl.LOCK_EX)
            if not quiet:
                print(f"{folder} released after {time.monotonic() - start:.0f}s", file=sys.stderr, flush=True)
        try:
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()} ({' '.join(sys.argv[:3])[:200]})\n")
            f.flush()
            yield folder
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)
