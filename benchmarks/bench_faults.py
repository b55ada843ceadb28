"""Faults survived: `python -m sipe stages --profile smoke` killed (SIGKILL) K times and resumed gives the results
of an uninterrupted run, bit for bit.

Usage: python benchmarks/bench_faults.py [--kills 5] [--seed 0] [--n-images 16] [--keep DIR]

In a temporary folder: a synthetic dataset (`python -m data_prep.make_synthetic --n-images 16 --height 96 --width
128 --seed 0`), then the smoke stages computed twice, each into its own `--work-dir`/`--results-dir`:

- reference: one uninterrupted run, whose log is watched to time each unit (from its "[i/n] unit ..." line to
  the next);
- killed: the same command, killed with SIGKILL (its whole process group: evaluation workers too) K times and
  started again with the same command after every kill until it exits 0. The K moments are drawn uniformly over
  the reference's work (from its first unit line to its exit) with a seeded RNG, sorted, and each is replayed as
  "t seconds into unit u": the killed computation is killed once it has been t seconds in unit u (counted from
  that unit's line in the current start), or as soon as it is past unit u. Anchoring the moments to units keeps
  every kill landing when load on a shared machine makes the two computations run at different speeds.

Then every unit of the smoke plan is compared with `sipe.study.certify.compare` (training log but its timings,
per-image confusions, result rows). Printed: K, the kill moments, the stage each kill landed in (the last
"[i/n] unit" line and progress bar of the killed start's log), the folder locks each killed start left behind
and whether a later start waited on one (a lock left by a killed process must not block), and per unit what
matched. Exit status 1 if a unit differs, a start waited on a lock, or a command failed.
"""
from __future__ import annotations

import argparse
import bisect
import datetime
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
UNIT_LINE = re.compile(r"\[(\d+)/(\d+)\] (\S+) \.\.\.")
BAR = re.compile(r"([A-Za-z][^\r\n|:]*?):\s+(\d+)%\|")
LOCK_WAIT = "waiting for "


@dataclass(frozen=True)
class Moment:
    """A kill moment: `seconds` into unit number `unit` (1-based, the plan's order)."""

    unit: int
    seconds: float


@dataclass
class Attempt:
    """One start of a computation: its wall time (s), when each unit's line appeared (s from the start), whether
    it was killed as planned or stopped at the time-out, its exit status (None when killed or stopped), its log,
    and the `.lock` files naming a holder once it was gone."""

    seconds: float
    unit_starts: dict[int, float]
    killed: bool
    timed_out: bool
    returncode: int | None
    log: str
    locks_left: int


def stages_command(data_root: Path, folder: Path) -> list[str]:
    return [sys.executable, "-m", "sipe", "stages", "--profile", "smoke", "--device", "cpu",
            "--data-root", str(data_root), "--work-dir", str(folder / "work"), "--results-dir", str(folder / "results")]


def child_env() -> dict[str, str]:
    """The environment of the stages commands: this checkout first on the path, unbuffered output, and no
    inherited SIPE_* folder settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIPE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH", "")])])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def due(moment: Moment | None, unit_starts: dict[int, float], now: float) -> bool:
    """Whether a start whose units began at `unit_starts` (s) has reached `moment` at time `now` (s)."""
    if moment is None or not unit_starts:
        return False
    current = max(unit_starts)
    return current > moment.unit or (current == moment.unit and now - unit_starts[current] >= moment.seconds)


def run_attempt(cmd: list[str], folder: Path, log_path: Path, moment: Moment | None, timeout: float) -> Attempt:
    """Start `cmd` in its own process group (output to `log_path`), watching its log for unit lines; SIGKILL the
    group when `moment` is due, or `timeout` seconds after its start, unless it exits first. `folder`: where to
    count the locks it left."""
    unit_starts: dict[int, float] = {}
    with log_path.open("w") as log:
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=child_env(),
                                start_new_session=True)
        while proc.poll() is None and time.monotonic() - start < timeout:
            now = time.monotonic() - start
            for m in UNIT_LINE.finditer(log_path.read_text(errors="replace")):
                unit_starts.setdefault(int(m.group(1)), now)
            if due(moment, unit_starts, now):
                break
            time.sleep(0.05)
        returncode = proc.poll()
        if returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        seconds = time.monotonic() - start
    stopped = returncode is None
    text = log_path.read_text(errors="replace")
    for m in UNIT_LINE.finditer(text):
        unit_starts.setdefault(int(m.group(1)), seconds)
    return Attempt(seconds, unit_starts, stopped and seconds < timeout, stopped and seconds >= timeout, returncode,
                   text, left_locks(folder))


def kill_moments(reference: Attempt, k: int, rng: np.random.Generator) -> list[Moment]:
    """`k` moments drawn uniformly over the reference's work (first unit line to exit), sorted, each as the unit
    it fell in and the seconds into it."""
    units = sorted(reference.unit_starts)
    starts = [reference.unit_starts[u] for u in units]
    moments = []
    for t in np.sort(rng.uniform(starts[0], reference.seconds, size=k)):
        i = bisect.bisect_right(starts, t) - 1
        moments.append(Moment(units[i], float(t - starts[i])))
    return moments


def where(log: str) -> str:
    """The unit and stage a log stopped in: its last '[i/n] unit ...' line and the last progress bar after it."""
    units = list(UNIT_LINE.finditer(log))
    if not units:
        return "start-up (no unit begun)"
    last = units[-1]
    tail = log[last.end():]
    if f"{last.group(3)} done in" in tail:
        return f"{last.group(3)} finished, before the next unit"
    bars = list(BAR.finditer(tail))
    stage = f"{bars[-1].group(1).strip()} at {bars[-1].group(2)}%" if bars else "before its first progress bar"
    return f"unit {last.group(1)}/{last.group(2)} {last.group(3)}: {stage}"


def left_locks(folder: Path) -> int:
    """How many `.lock` files under `folder` still name a holder (written by a process that never released them)."""
    return sum(1 for p in folder.rglob(".lock") if p.read_text(errors="replace").strip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=5, help="K: how many times the computation is killed")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--n-images", type=int, default=16)
    parser.add_argument("--keep", default=None, help="work here instead of a temporary folder (kept)")
    args = parser.parse_args()

    from sipe.infra.config import get_profile
    from sipe.study import plan
    from sipe.study.certify import compare

    load_at_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.keep or tmp).resolve()
        base.mkdir(parents=True, exist_ok=True)
        data = base / "data"
        subprocess.run([sys.executable, "-m", "data_prep.make_synthetic", "--out", str(data), "--n-images",
                        str(args.n_images), "--height", "96", "--width", "128", "--seed", "0"],
                       check=True, cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL)
        reference, killed = base / "reference", base / "killed"
        for folder in (reference, killed):
            folder.mkdir(exist_ok=True)

        ref = run_attempt(stages_command(data, reference), reference, reference / "log.txt", None, timeout=3 * 3600)
        if ref.returncode != 0 or not ref.unit_starts:
            print(f"reference run failed (exit {ref.returncode}); log: {reference / 'log.txt'}\n{ref.log[-3000:]}")
            return 1
        moments = kill_moments(ref, args.kills, np.random.default_rng(args.seed))

        attempts: list[Attempt] = []
        cmd = stages_command(data, killed)
        for i in range(args.kills + 1):
            moment = moments[i] if i < args.kills else None
            attempts.append(run_attempt(cmd, killed, killed / f"log-{i}.txt", moment, timeout=max(5 * ref.seconds, 600)))
            if not attempts[-1].killed:
                break
        names = [u.name for u in plan.plan(get_profile("smoke"))]
        finished = attempts[-1].returncode == 0
        table = compare(reference / "results", killed / "results", names) if finished else None

    waited = [i for i, a in enumerate(attempts) if LOCK_WAIT in a.log]
    landed = [a for a in attempts if a.killed]
    n = len(ref.unit_starts)
    print(f"# bench_faults {datetime.date.today()}: {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, load average {load_at_start:.2f} -> {os.getloadavg()[0]:.2f}")
    print(f"# smoke stages on {args.n_images} synthetic 96x128 images: {n} units; reference (uninterrupted) run "
          f"{ref.seconds:.1f} s, its first unit at {min(ref.unit_starts.values()):.1f} s")
    print(f"K = {args.kills} kills (SIGKILL to the process group), seed {args.seed}, moments (unit/{n} + s into it): "
          + ", ".join(f"{m.unit}+{m.seconds:.1f}" for m in moments))
    print(f"{'start':>5} {'ran s':>7}  outcome")
    for i, a in enumerate(attempts):
        outcome = (f"killed in {where(a.log)}; locks left naming it: {a.locks_left}" if a.killed else
                   f"stopped at the time-out in {where(a.log)}" if a.timed_out else f"exited {a.returncode}")
        print(f"{i:>5} {a.seconds:>7.1f}  {outcome}")
    print(f"kills landed: {len(landed)}/{args.kills}; starts: {len(attempts)}; their run time "
          f"{sum(a.seconds for a in attempts):.1f} s (reference {ref.seconds:.1f} s)")
    print(f"starts that waited on a folder lock: {', '.join(map(str, waited)) or 'none'}")
    if table is not None:
        shown = table.drop(columns=["revisions"]).astype({"log_steps": "Int64"}).astype(object)
        print(shown.where(shown.notna(), "-").to_string(index=False))
    ok = table is not None and not waited and bool(table["identical"].all())
    print(f"verdict: {'every unit identical to the uninterrupted run' if ok else 'FAULT NOT SURVIVED'}")
    if not finished:
        print(f"the last start did not finish (exit {attempts[-1].returncode}):\n{attempts[-1].log[-3000:]}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
