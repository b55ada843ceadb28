"""One error type for everything a user can fix, and the one place that reports it on the command line.

Every user-facing error of the package derives from `SipeError`: `ConfigError` (a setting),
`DataError` (a file of the data root), `WeightsError` (pretrained weights), `MapFileError` (a map file),
`ConfigMismatchError` (a run folder of another configuration), `RunnerError` (the notebook runner),
`CudaUnavailableError` (device 'cuda' without a GPU) and the download errors of `data_prep`. Each
message names the file or the setting and says how to fix it.

Command-line entry points are wrapped in `cli_entry`: a `SipeError` becomes one line `error: ...` on
stderr and exit status 2, never a traceback. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

EXIT_USER_ERROR = 2

Main = TypeVar("Main", bound=Callable[..., int])


class SipeError(Exception):
    """Base of every user-facing error: the message names the file or field at fault and the fix."""


class CudaUnavailableError(SipeError, RuntimeError):
    """device='cuda' (or 'cuda:N') was requested but torch sees no CUDA device."""


class UnitNotComputedError(SipeError, FileNotFoundError):
    """A study that reads finished units only (compute=False) was asked for one that is not computed."""


def one_line(error: BaseException) -> str:
    """The error's message on one line (the lines of a multi-line message joined with '; ')."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return "; ".join(lines) or type(error).__name__


def report(error: SipeError) -> int:
    """Print `error: <message>` on stderr and return the exit status for user errors (2)."""
    print(f"error: {one_line(error)}", file=sys.stderr, flush=True)
    return EXIT_USER_ERROR


def cli_entry(main: Main) -> Main:
    """Wrap a command-line `main(argv) -> int`: a SipeError is reported by `report` and returns 2."""

    @functools.wraps(main)
    def wrapper(argv: Sequence[str] | None = None, *args, **kwargs) -> int:
        try:
            return main(argv, *args, **kwargs)
        except SipeError as error:
            return report(error)

    return wrapper  # type: ignore[return-value]
