"""The suite's own scheduling: pytest-xdist hands out test files longest first (tests/conftest.py), by the seconds
`benchmarks/bench_tests.py --write-durations` measured (tests/durations.json), as the Makefile and the benchmark
run it."""
from __future__ import annotations

import importlib.util
import itertools
import json
import shlex
from pathlib import Path

import pytest

from conftest import DURATIONS

REPO = Path(__file__).resolve().parents[1]


def bench_tests():
    spec = importlib.util.spec_from_file_location("bench_tests", REPO / "benchmarks" / "bench_tests.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_files_are_collected_longest_first(request: pytest.FixtureRequest) -> None:
    seconds = json.loads(DURATIONS.read_text())
    files = [f for f, _ in itertools.groupby(item.nodeid.split("::")[0] for item in request.session.items)]
    assert len(files) == len(set(files)), "a file's tests are not contiguous"
    measured = [seconds.get(f, 0.0) for f in files]
    assert measured == sorted(measured, reverse=True), files[:5]


def test_every_measured_file_exists_and_the_longest_are_measured() -> None:
    seconds = json.loads(DURATIONS.read_text())
    assert all((REPO / f).is_file() for f in seconds), [f for f in seconds if not (REPO / f).is_file()]
    assert {"tests/test_book.py", "tests/test_smoke_path.py"} <= set(list(seconds)[:3])


def makefile_value(name: str) -> list[str]:
    line = next(l for l in (REPO / "Makefile").read_text().splitlines() if l.startswith(f"{name} :="))
    return shlex.split(line.split(":=", 1)[1])


def test_the_makefile_and_the_benchmark_schedule_alike() -> None:
    bench = bench_tests()
    assert " ".join(bench.XDIST) in " ".join(makefile_value("PYTEST")), bench.XDIST
    env = makefile_value("TEST_ENV")
    assert env[0] == "env" and set(env[2::2]) == set(bench.UNSET) and set(env[1::2]) == {"-u"}, env


def test_file_seconds_sum_setup_call_and_teardown_per_file() -> None:
    lines = ["12.50s setup    tests/test_a.py::test_x", "0.50s call     tests/test_a.py::test_x",
             "3.00s call     tests/test_b.py::test_y[p]", "(1 durations < 0.005s hidden.)", "1.25s teardown tests/test_a.py::test_x"]
    assert bench_tests().file_seconds(lines) == {"tests/test_a.py": 14.2, "tests/test_b.py": 3.0}
