"""One error type: every user-facing error is a SipeError naming the file or field and the fix, and every
command line reports it in one place, as one line `error: ...` with exit status 2 and no traceback."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from data_prep import download_voc
from sipe.infra import errors
from sipe.__main__ import main as cli_main
from sipe.infra.config import ConfigError, get_profile
from sipe.data import voc
from sipe.data.voc import DataError
from sipe.infra.errors import CudaUnavailableError, SipeError, cli_entry
from sipe.stages.evaluation import MapFileError, load_map
from sipe.method.backbones import WeightsError, build_backbone
from sipe.reproduce import RunnerError, check_data_root
from sipe.infra.runtime import atomic_savez, resolve_device
from sipe.stages.train import ConfigMismatchError, train

REPO = Path(__file__).resolve().parents[1]
USER_ERRORS = (ConfigError, DataError, WeightsError, MapFileError, ConfigMismatchError, RunnerError,
               CudaUnavailableError, download_voc.DownloadError, download_voc.ChecksumError)


@pytest.mark.parametrize("error_type", USER_ERRORS, ids=lambda t: t.__name__)
def test_every_user_facing_error_is_a_sipe_error(error_type):
    assert issubclass(error_type, SipeError)


def test_config_error_stays_a_value_error():
    """Callers that caught ValueError (papermill parameters, older notebooks) still do."""
    assert issubclass(ConfigError, ValueError)


def raised(fn, *args, **kwargs) -> SipeError:
    with pytest.raises(SipeError) as e:
        fn(*args, **kwargs)
    return e.value


def test_messages_name_the_field_or_file_and_the_fix(tmp_path, synthetic_root, monkeypatch):
    e = raised(get_profile, "smoke", **{"model.bg_scale": "heavy"})
    assert isinstance(e, ConfigError) and "model.bg_scale='heavy'" in str(e) and "expected float" in str(e)

    e = raised(voc.read_split, synthetic_root, "nosuch")
    assert isinstance(e, DataError)
    assert str(synthetic_root / "ImageSets" / "Segmentation" / "nosuch.txt") in str(e) and "data_prep.convert_sbd" in str(e)

    e = raised(build_backbone, get_profile("smoke", **{"model.weights": str(tmp_path / "w.pt")}).model)
    assert isinstance(e, WeightsError) and f"model.weights: EfficientNet-Lite0 weights file {tmp_path / 'w.pt'}" in str(e)

    e = raised(load_map, tmp_path, "img1")
    assert isinstance(e, MapFileError) and str(tmp_path / "img1.npz") in str(e) and "make_maps" in str(e)

    run = tmp_path / "run"
    run.mkdir()
    other = get_profile("smoke", **{"data.root": str(synthetic_root), "train.lr": 0.5})
    (run / "config.json").write_text(json.dumps(other.to_dict()))
    e = raised(train, get_profile("smoke", **{"data.root": str(synthetic_root)}), run, progress=False)
    assert isinstance(e, ConfigMismatchError) and str(run) in str(e) and "use a new run folder" in str(e)
    assert sorted(p.name for p in run.iterdir() if p.name != ".lock") == ["config.json"], \
        "a mismatching run must not be touched"

    e = raised(check_data_root, tmp_path / "absent", "smoke")
    assert isinstance(e, RunnerError) and str(tmp_path / "absent") in str(e) and "--data-root" in str(e)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    e = raised(resolve_device, "cuda:1")
    assert isinstance(e, CudaUnavailableError) and "device='cuda:1'" in str(e) and "'auto' or 'cpu'" in str(e)
    assert resolve_device("auto") == torch.device("cpu")

    bad = tmp_path / "archive.tar"
    bad.write_bytes(b"abc")
    e = raised(download_voc.verify_md5, bad, "0" * 32)
    assert isinstance(e, download_voc.ChecksumError) and str(bad) in str(e) and "download it again" in str(e)


def test_cli_entry_reports_sipe_errors_on_one_line_and_lets_bugs_through(capsys):
    @cli_entry
    def main(argv=None):
        if argv == ["user"]:
            raise DataError("file x is broken;\n  rebuild it with y")
        if argv == ["bug"]:
            raise KeyError("a bug keeps its traceback")
        return 0

    assert main([]) == 0
    assert main(["user"]) == 2
    assert capsys.readouterr().err == "error: file x is broken;; rebuild it with y\n"
    with pytest.raises(KeyError):
        main(["bug"])
    assert errors.one_line(ConfigError("a\n\n b ")) == "a; b"


# --- the command line -----------------------------------------------------------------------------------

def cli(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SIPE_DATA_ROOT"}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "sipe", *args, "--profile", "smoke", "--work-dir", str(tmp / "work"),
                           "--no-progress"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def assert_one_line_error(proc: subprocess.CompletedProcess, *expected: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for text in expected:
        assert text in lines[0]


CLI_CASES = {
    "missing data root": (["train", "--data-root", "{tmp}/no_such_root", "--device", "cpu"],
                          ["data root {tmp}/no_such_root does not exist or is not a folder", "SIPE_DATA_ROOT"]),
    "no data root at all": (["scan"], ["no data root", "data.root", "SIPE_DATA_ROOT"]),
    "bad --set value": (["show-config", "--set", "model.bg_scale=heavy"], ["model.bg_scale='heavy'"]),
    "--set without =": (["show-config", "--set", "model.bg_scale"], ["--set 'model.bg_scale'", "section.field=value"]),
    "unknown --set field": (["show-config", "--set", "train.epoch=2"], ["'train.epoch'", "epochs"]),
    "missing split file": (["train", "--data-root", "{root}", "--set", "data.train_split=nosuch", "--device", "cpu"],
                           ["split list {root}/ImageSets/Segmentation/nosuch.txt not found", "data_prep.convert_sbd"]),
    "cuda without a GPU": (["train", "--data-root", "{root}", "--device", "cuda"],
                           ["device='cuda'", "no CUDA device", "'auto' or 'cpu'"]),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_command_line_user_errors_are_one_line_exit_2(case, tmp_path, synthetic_root):
    if case == "cuda without a GPU" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    args, expected = CLI_CASES[case]
    fill = {"tmp": str(tmp_path), "root": str(synthetic_root)}
    proc = cli(*(a.format(**fill) for a in args), tmp=tmp_path)
    assert_one_line_error(proc, *(e.format(**fill) for e in expected))
    if case == "cuda without a GPU":
        assert not (tmp_path / "work").exists(), "the device is checked before any file is written"


def test_scan_prints_the_report_summary(synthetic_root, tmp_path, capsys):
    assert cli_main(["scan", "--data-root", str(synthetic_root), "--split", "train"]) == 0
    assert capsys.readouterr().out == f"{synthetic_root} split 'train': 4 ids checked, 0 problem(s)\n"

    import shutil

    root = Path(shutil.copytree(synthetic_root, tmp_path / "voc"))
    victim = voc.read_split(root, "train")[1]
    jpg = voc.image_path(root, victim)
    jpg.write_bytes(jpg.read_bytes()[:200])
    assert cli_main(["scan", "--data-root", str(root), "--split", "train"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{root} split 'train': 4 ids checked, 1 problem(s)"
    assert lines[1].startswith(f"  [unreadable image] {victim}: image {jpg} cannot be decoded")


def write_perfect_maps(root: Path, ids: list[str], out: Path) -> Path:
    """Map files whose channels are the ground truth's one-hot masks (void counted as background)."""
    labels = voc.load_cls_labels(root)
    for image_id in ids:
        mask = voc.load_mask(root, image_id)
        keys = np.concatenate([[0], np.flatnonzero(labels[image_id]) + 1]).astype(np.int64)
        maps = np.stack([(np.where(mask == 255, 0, mask) == k) for k in keys]).astype(np.float16)
        atomic_savez(out / f"{image_id}.npz", keys=keys, is_cam=maps, cam=maps)
    return out


def test_eval_crf_uses_the_configured_crf_settings(synthetic_root, tmp_path, monkeypatch, capsys):
    ids = voc.read_split(synthetic_root, "train")[:2]
    maps_dir = write_perfect_maps(synthetic_root, ids, tmp_path / "maps")
    calls = []

    def fake_crf(maps_dir_arg, root, ids_arg, **kwargs):
        calls.append(kwargs)
        return SimpleNamespace(void_as_background=SimpleNamespace(miou=12.5, note="fake crf"))

    import sipe.stages.crf
    import sipe.study.pipeline

    monkeypatch.setattr(sipe.study.pipeline, "maps", lambda *a, **k: maps_dir)
    monkeypatch.setattr(sipe.stages.crf, "evaluate_crf", fake_crf)
    sets = ["--set", "eval.crf_iterations=3", "--set", "eval.crf_gt_prob=0.9", "--set", "eval.crf_bg_scale=0.25"]
    assert cli_main(["eval", "--crf", "--data-root", str(synthetic_root), "--device", "cpu", "--no-progress",
                     "--work-dir", str(tmp_path), *sets]) == 0
    assert [(c["t"], c["gt_prob"], c["bg_scale"]) for c in calls] == [(3, 0.9, 0.25)]
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("estimated background: mIoU 100.00")  # the maps are the ground truth
    assert out[-1] == "+denseCRF: mIoU 12.50 (fake crf)"
