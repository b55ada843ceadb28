"""Devices, seeds and atomic file writes shared by every stage.

torch is imported only by the functions that need it, so the data scripts can write files atomically
without loading it.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import random
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import CudaUnavailableError

if TYPE_CHECKING:
    import torch


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cuda' without a GPU raises CudaUnavailableError."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CudaUnavailableError(f"device={name!r} was requested but torch sees no CUDA device; "
                                   "set device (--device, or -p device in a notebook) to 'auto' or 'cpu'")
    return dev


def precision_context(precision: str, device: torch.device | str):
    """A context computing in `precision`: bfloat16 autocast on `device`'s type, or nothing for float32."""
    import contextlib

    import torch

    if precision == "float32":
        return contextlib.nullcontext()
    if precision == "bfloat16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    raise ValueError(f"precision={precision!r}; choose 'float32' or 'bfloat16'")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save through `atomic_write_bytes`."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


NPZ_COMPRESS_LEVEL = 1
"""zlib level of `atomic_savez`: level 1 writes a map file about 2x faster than numpy's default (6), for 3% more bytes."""


def atomic_savez(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """`arrays` as a compressed .npz (read back by np.load, as `np.savez_compressed` writes it, at zlib level
    NPZ_COMPRESS_LEVEL), written through `atomic_write_bytes`."""
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=NPZ_COMPRESS_LEVEL,
                         allowZip64=True) as zf:
        for name, value in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(value), allow_pickle=False)
    return atomic_write_bytes(path, buf.getvalue())


def atomic_save_npy(path: str | os.PathLike, value: Any, allow_pickle: bool = False) -> Path:
    """np.save of `value` (an array, or with allow_pickle a pickled object such as a dict) through
    `atomic_write_bytes`; writes exactly `path` (no '.npy' is appended)."""
    buf = io.BytesIO()
    np.save(buf, value, allow_pickle=allow_pickle)
    return atomic_write_bytes(path, buf.getvalue())


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def read_json(path: str | os.PathLike) -> Any:
    """The JSON value stored in `path` (written by atomic_write_json)."""
    return json.loads(Path(path).read_text())


def file_digest(path: str | os.PathLike, chars: int = 16) -> str:
    """The first `chars` hex digits of the sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:chars]


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())
