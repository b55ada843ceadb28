"""Tests for sipe.infra.distributed: the single-process identities, batch sharding, the command line's torchrun
re-execution, and (slow) 2-process gloo runs through torchrun: DDP training equals one process and resumes
after a rank crashed; sharded maps equal one process's; a crashed rank fails the launch and keeps finished files.

The two-process runs use tests/dist_worker.py (one rank) and `python -m sipe stages --nproc 2`; the
single-process references run here with one thread, as each torchrun rank does (OMP_NUM_THREADS=1).
"""
from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

import sipe.__main__ as cli
from sipe.infra import distributed
from sipe.infra.config import get_profile
from sipe.infra.distributed import BatchShardSampler, DistributedError
from sipe.stages.fit import EpochSampler

sys.path.insert(0, str(Path(__file__).parent))
from dist_worker import tiny_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("dist_worker.py")
ENV = {"OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(autouse=True)
def single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in distributed.TORCHRUN_ENV:
        monkeypatch.delenv(key, raising=False)


@contextmanager
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_worker(*args: str) -> int:
    return distributed.launch([str(WORKER), *map(str, args)], 2, env=ENV)


def load_maps(folder: Path) -> dict[str, dict[str, np.ndarray]]:
    return {p.name: dict(np.load(p)) for p in sorted(folder.glob("*.npz"))}


def assert_same_maps(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for name, arrays in want.items():
        assert sorted(got[name]) == sorted(arrays), name
        for key, value in arrays.items():
            np.testing.assert_array_equal(got[name][key], value, err_msg=f"{name}:{key}")


def test_single_process_helpers_are_identities() -> None:
    items = [3, 1, 2]
    sampler = EpochSampler(10, 0, 0)
    model = torch.nn.Linear(2, 2)
    assert not distributed.launched() and distributed.world_size() == 1 and distributed.is_main()
    assert distributed.shard(items) is items
    assert distributed.rank_sampler(sampler, 4) is sampler
    assert distributed.wrap_model(model) is model
    assert distributed.local_batch(6) == 6
    assert distributed.broadcast_object(items) is items
    assert distributed.all_mean({"loss": 0.25}) == {"loss": 0.25}
    assert distributed.on_main(len, items) == 3
    assert distributed.main_path(Path("m.csv")) == Path("m.csv")
    distributed.barrier()


@pytest.mark.parametrize("n, batch, world, skip", [(11, 4, 2, 0), (16, 8, 4, 8), (10, 6, 3, 2)])
def test_rank_batches_together_are_the_single_process_batches(n: int, batch: int, world: int, skip: int) -> None:
    sampler = EpochSampler(n, 3, 1, skip=skip)
    single = list(sampler)
    single = [single[i:i + batch] for i in range(0, len(single) - len(single) % batch, batch)]
    local = batch // world
    per_rank = []
    for r in range(world):
        shard = BatchShardSampler(sampler, batch, r, world)
        order = list(shard)
        assert len(order) == len(shard) == len(single) * local
        per_rank.append([order[i:i + local] for i in range(0, len(order), local)])
    assert [sum((per_rank[r][s] for r in range(world)), []) for s in range(len(single))] == single


def test_a_global_batch_the_processes_do_not_divide_is_an_error() -> None:
    with pytest.raises(DistributedError, match="batch_size=6 .* not divisible by the 4 processes"):
        distributed.local_batch(6, 4)


def test_batchnorm_in_training_mode_is_refused() -> None:
    from sipe.method.network import build_model
    from sipe.infra.config import ModelConfig

    distributed.check_frozen_batchnorm(build_model(ModelConfig(backbone="efficientnet_lite0", pretrained=False,
                                                               semantic_layer="conv_head")).train())
    with pytest.raises(DistributedError, match="BatchNorm"):
        distributed.check_frozen_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(3)).train())


def test_cli_args_rebuild_the_configuration(synthetic_root: Path) -> None:
    base = get_profile("smoke")
    cfg = get_profile("smoke", **{"data.root": str(synthetic_root), "device": "cpu", "study.seeds": (5,),
                                  "infer.scales": (1.0, 0.5), "infer.max_images": None, "model.gsc": False,
                                  "train.lr": 0.003, "study.variants": ("sipe", "cam")})
    args = distributed.cli_args(cfg, base)
    assert args[:2] == ["--device", "cpu"]
    sets = cli._parse_sets([args[i + 1] for i, a in enumerate(args) if a == "--set"])
    assert get_profile("smoke", device="cpu", **sets) == cfg
    assert distributed.cli_args(base, base) == []


def test_strip_nproc() -> None:
    assert distributed.strip_nproc(["stages", "--nproc", "2", "--units", "a", "--nproc=3", "--no-progress"]) == \
        ["stages", "--units", "a", "--no-progress"]


def test_cli_relaunches_itself_under_torchrun(monkeypatch: pytest.MonkeyPatch, synthetic_root: Path) -> None:
    calls = []
    monkeypatch.setattr(distributed, "launch", lambda args, nproc: calls.append((args, nproc)) or 0)
    argv = ["stages", "--data-root", str(synthetic_root), "--device", "cpu", "--nproc", "2", "--units", "sipe-s0"]
    assert cli.main(argv) == 0
    assert calls == [(["-m", "sipe", "stages", "--data-root", str(synthetic_root), "--device", "cpu", "--units",
                       "sipe-s0"], 2)]
    assert distributed.torchrun_command(["-m", "sipe", "stages"], 2) == [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "sipe", "stages"]


def test_cli_refuses_a_batch_the_processes_do_not_divide(capsys: pytest.CaptureFixture, synthetic_root: Path) -> None:
    argv = ["train", "--data-root", str(synthetic_root), "--device", "cpu", "--nproc", "3"]
    assert cli.main(argv) == 2
    assert "train.batch_size=4 (the global batch) is not divisible by the 3 processes" in capsys.readouterr().err


def test_study_launches_units_under_torchrun(monkeypatch: pytest.MonkeyPatch, synthetic_root: Path,
                                             tmp_path: Path) -> None:
    from sipe.study.chapters import setup

    calls = []
    monkeypatch.setattr(distributed, "launch", lambda args, nproc: calls.append((args, nproc)) or 0)
    study = setup("smoke", str(synthetic_root), str(tmp_path / "work"), device="cpu", nproc=2,
                  results_dir=str(tmp_path / "res"))
    study.run(["cam"])
    (args, nproc), = calls
    assert nproc == 2 and args[:3] == ["-m", "sipe", "stages"] and args[-3:] == ["--units", "cam-s0", "cam-s1"]
    assert ["--work-dir", str(tmp_path / "work")] == args[5:7] and f"data.root={synthetic_root}" in args
    with pytest.raises(DistributedError, match="not divisible"):
        setup("smoke", str(synthetic_root), device="cpu", nproc=3)


@pytest.fixture(scope="module")
def reference_run(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_config trained in this process (one thread), uninterrupted: its final.pt."""
    from sipe.stages.train import train

    with one_thread():
        return train(tiny_config(synthetic_root), tmp_path_factory.mktemp("ref_run"), progress=False).checkpoint


@pytest.mark.slow
def test_two_process_training_equals_one_process_and_resumes_after_a_rank_crashed(
        synthetic_root: Path, reference_run: Path, tmp_path: Path) -> None:
    import csv

    run = tmp_path / "run"
    with pytest.raises(DistributedError, match="failed with exit status .* run the same command again"):
        run_worker("train", synthetic_root, run, "--crash-rank", "1", "--crash-step", "3")
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 2 and not (run / "final.pt").exists()
    assert run_worker("train", synthetic_root, run) == 0
    got = torch.load(run / "final.pt", weights_only=True)
    want = torch.load(reference_run, weights_only=True)
    assert got["steps"] == want["steps"] == 4
    for key, value in want["model"].items():
        torch.testing.assert_close(got["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    with (reference_run.parent / "metrics.csv").open() as f:
        ref = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    for r, w in zip(rows, ref):
        for key in ("loss", "loss_cls", "loss_gsc", "lr_backbone"):
            assert float(r[key]) == pytest.approx(float(w[key]), rel=1e-4, abs=1e-6), (r["step"], key)
    assert {p.name for p in run.iterdir()} == {".lock", "config.json", "metrics.csv", "checkpoint.pt", "final.pt"}


@pytest.mark.slow
def test_a_crashed_rank_fails_the_launch_keeps_finished_maps_and_the_rerun_completes(
        synthetic_root: Path, reference_run: Path, tmp_path: Path) -> None:
    from sipe.stages.maps import make_maps

    sets = ["--set", "infer.split=train_aug", "--set", "infer.max_images=none"]
    with one_thread():
        make_maps(tiny_config(synthetic_root, **{"infer.split": "train_aug", "infer.max_images": None}),
                  reference_run, tmp_path / "ref", progress=False)
    want = load_maps(tmp_path / "ref")
    assert len(want) == 8
    out = tmp_path / "maps"
    with pytest.raises(DistributedError, match="failed with exit status"):
        run_worker("maps", synthetic_root, reference_run, out, "--crash-rank", "1", "--crash-after", "1", *sets)
    assert not (out / "DONE").exists()
    kept = load_maps(out)
    assert 1 <= len(kept) < 8
    assert_same_maps(kept, {k: want[k] for k in kept})
    assert run_worker("maps", synthetic_root, reference_run, out, *sets) == 0
    assert_same_maps(load_maps(out), want)
    from sipe.infra.runtime import read_json

    assert read_json(out / "DONE")["computed_now"] == 8 - len(kept)


@pytest.mark.slow
def test_stages_in_two_processes_write_the_maps_of_one_process_and_results_once(
        synthetic_root: Path, tmp_path: Path) -> None:
    from sipe.study import pipeline, records
    from sipe.stages.maps import make_maps
    from sipe.infra.runtime import read_json

    work, res = tmp_path / "work", tmp_path / "res"
    cmd = [sys.executable, "-m", "sipe", "stages", "--nproc", "2", "--profile", "smoke", "--data-root",
           str(synthetic_root), "--device", "cpu", "--work-dir", str(work), "--results-dir", str(res),
           "--units", "sipe-s0", "--set", "eval.crf=false", "--no-progress"]
    done = subprocess.run(cmd, env={**os.environ, **ENV}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("[1/1] sipe-s0 done") == 1
    cfg = get_profile("smoke", **{"data.root": str(synthetic_root), "device": "cpu", "eval.crf": False})
    unit = pipeline.Unit("sipe", 0)
    paths = records.unit_paths(res, unit.name)
    assert all(p.exists() for p in paths.values())
    record = read_json(paths["json"])
    ucfg = pipeline.unit_config(cfg, unit)
    run = pipeline.run_dir_for(ucfg, work, "sipe")
    assert len((run / "metrics.csv").read_text().splitlines()) == 1 + 2
    for kind, scfg, methods in (("eval", ucfg, pipeline.unit_seed_methods(cfg, "sipe")),
                                ("selection", pipeline.selection_config(ucfg), ("structure",))):
        out = work / "maps" / record["maps"][kind]
        assert read_json(out / "DONE")["n_images"] == 4
        with one_thread():
            make_maps(scfg, run / "final.pt", tmp_path / f"ref_{kind}", methods, progress=False)
        assert_same_maps(load_maps(out), load_maps(tmp_path / f"ref_{kind}"))
