"""Tests for sipe.infra.runtime: compressed .npz files written atomically, and the precision context of the maps stage."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from sipe.infra.runtime import NPZ_COMPRESS_LEVEL, atomic_savez, precision_context


def test_atomic_savez_round_trips_every_array_compressed(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:120, 0:160]
    arrays = {
        "keys": np.array([0, 3, 15]),
        "is_cam": np.stack([np.sin(yy / 17.0 + k) * np.cos(xx / 23.0) for k in range(3)]).astype(np.float16),
        "labels@argmax:1": ((yy // 40 + xx // 50) % 3).astype(np.uint8),
        "ids": np.asarray(["2007_000032", "2008_000123"]),
    }
    path = atomic_savez(tmp_path / "a.npz", **arrays)
    with np.load(path) as z:
        assert sorted(z.files) == sorted(arrays)
        for name, value in arrays.items():
            assert z[name].dtype == value.dtype and np.array_equal(z[name], value), name
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
    assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in infos)
    assert sum(i.compress_size for i in infos) < 0.9 * sum(i.file_size for i in infos)
    assert [p.name for p in tmp_path.iterdir()] == ["a.npz"]


def test_atomic_savez_level_trades_bytes_for_speed_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    yy, xx = np.mgrid[0:200, 0:200]
    smooth = np.stack([np.exp(-((yy - 60 * k) ** 2 + (xx - 100) ** 2) / 2000.0) for k in range(3)]).astype(np.float16)
    a = atomic_savez(tmp_path / "fast.npz", m=smooth)
    monkeypatch.setattr("sipe.infra.runtime.NPZ_COMPRESS_LEVEL", 9)
    b = atomic_savez(tmp_path / "small.npz", m=smooth)
    assert NPZ_COMPRESS_LEVEL == 1 and a.read_bytes() != b.read_bytes()
    with np.load(a) as za, np.load(b) as zb:
        assert np.array_equal(za["m"], zb["m"])


def test_a_failed_savez_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        atomic_savez(tmp_path / "bad.npz", ok=np.zeros(3), bad=np.array([{"x": 1}], dtype=object))
    assert list(tmp_path.iterdir()) == []


def test_precision_context() -> None:
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with precision_context("float32", "cpu"):
        assert (a @ b).dtype == torch.float32
    with precision_context("bfloat16", torch.device("cpu")):
        low = a @ b
    assert low.dtype == torch.bfloat16 and torch.allclose(low.float(), a @ b, atol=0.1)
    with pytest.raises(ValueError, match="float16"):
        precision_context("float16", "cpu")
