"""W&B sync under attack: `jaxobs sync --to wandb` killed mid-way, live streams killed.

    .venv/bin/python bench/sync_kill.py [--trials 5] [--steps 20000]

Each trial SIGKILLs a sync (offline) of a run of `--steps` metric records at a random point
once its `.wandb` file has appeared and grown, waits for the W&B service of the killed
process to write what it received and exit, and syncs again; live trials SIGKILL a training
loop streaming to W&B right after a marker save, then sync. Every `.wandb` file of the W&B
run is read back with tests/wandb_files.py (up to a torn end) and the rows of metric `a`
counted per `trainer/step`, against the run's events.jsonl.

Prints JSON: for each experiment, the trials, the points per trial, and the duplicated and
missing points over all trials.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from wandb_files import read_sessions, step_counts, wait_for_services  # noqa: E402

ENV = {
    **os.environ,
    "JAX_PLATFORMS": "cpu",
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "WANDB_CONSOLE": "off",
    "WANDB_DISABLE_GIT": "true",
    "WANDB_DISABLE_CODE": "true",
    "WANDB_X_DISABLE_STATS": "true",
    "WANDB_X_DISABLE_MACHINE_INFO": "true",
}

_SYNC = "import sys; from jaxobs.bridges.wandb import sync; sync(sys.argv[1], mode='offline')"

_LIVE = textwrap.dedent(
    """
    import sys, time
    import jaxobs
    from jaxobs.bridges.wandb import WandbSink
    sink = WandbSink(mode="offline", marker_every_s=0.05)  # save the marker often
    run = jaxobs.init("live", dir=sys.argv[1], terminal=False, sinks=[sink])
    print(run.dir, flush=True)
    for step in range(10_000_000):
        run.log({"a": float(step)}, step=step)
        if step % 100 == 0:
            time.sleep(0.001)
    """
)


def _check(run_dir: pathlib.Path) -> tuple[int, int, int]:
    """(points logged, duplicated points, missing points) of metric `a`."""
    want, run_id = set(), None
    for line in (run_dir / "events.jsonl").read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a torn last line of a killed run
        if record.get("event") == "run_start":
            run_id = record["run"]["run_id"]
        if record.get("event") == "metrics" and "a" in record.get("values", {}):
            want.add(record["step"])
    counts = step_counts(read_sessions(run_dir / "wandb", str(run_id)), "a")
    duplicates = sum(n - 1 for n in counts.values() if n > 1)
    return len(want), duplicates, len(want - set(counts))


def _sync(run_dir: pathlib.Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _SYNC, str(run_dir)], env=ENV)


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    wait_for_services(proc.pid, timeout=120)


def _make_run(root: pathlib.Path, steps: int) -> pathlib.Path:
    import jaxobs

    with jaxobs.init("kill", dir=root, terminal=False) as run:
        for step in range(steps):
            run.log({"a": step * 0.5, "b": 1.0 / (step + 1)}, step=step)
    return run.dir


def _total(results: list[tuple[int, int, int]]) -> dict[str, int]:
    return {
        "trials": len(results),
        "points_per_trial": results[0][0] if results else 0,
        "duplicates": sum(r[1] for r in results),
        "missing": sum(r[2] for r in results),
    }


def kills_during_sync(work: pathlib.Path, trials: int, steps: int) -> dict:
    rng = random.Random(0)
    results, killed_at = [], []
    for i in range(trials):
        run_dir = _make_run(work / f"kill-{i}", steps)
        proc = _sync(run_dir)
        while proc.poll() is None and not list((run_dir / "wandb").glob("offline-run-*/*.wandb")):
            time.sleep(0.01)
        time.sleep(rng.uniform(0.5, 4.0))  # let it grow, then kill at a random point
        if proc.poll() is not None:
            killed_at.append(None)  # it finished first: no kill this trial
        else:
            _kill(proc)
            run_id = run_dir.name
            killed_at.append(
                sum(step_counts(read_sessions(run_dir / "wandb", run_id), "a").values())
            )
        subprocess.run([sys.executable, "-c", _SYNC, str(run_dir)], env=ENV, check=True)
        results.append(_check(run_dir))
    return {**_total(results), "points_in_w&b_when_killed": killed_at}


def live_kills(work: pathlib.Path, trials: int) -> dict:
    results = []
    for i in range(trials):
        root = work / f"live-{i}"
        root.mkdir()
        out = root / "out.txt"
        with open(out, "w") as f:
            proc = subprocess.Popen([sys.executable, "-c", _LIVE, str(root)], env=ENV, stdout=f)
        while not out.read_text().strip():
            time.sleep(0.01)
        run_dir = pathlib.Path(out.read_text().split()[0])
        marker = run_dir / "sync" / "wandb.json"
        while not marker.is_file():
            time.sleep(0.01)
        for _ in range(10 + 10 * (i % 3)):  # kill right after a later and later save
            seen = marker.stat().st_mtime_ns
            while marker.stat().st_mtime_ns == seen:
                time.sleep(0.0005)
        _kill(proc)
        subprocess.run([sys.executable, "-c", _SYNC, str(run_dir)], env=ENV, check=True)
        results.append(_check(run_dir))
    return _total(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        (work / "home").mkdir()
        ENV.update(WANDB_CONFIG_DIR=str(work / "home"), WANDB_CACHE_DIR=str(work / "home"))
        ENV["NETRC"] = str(work / "no-netrc")
        os.environ.update(ENV)
        out = {
            "kills_during_sync": kills_during_sync(work, args.trials, args.steps),
            "live_kills_after_marker_save": live_kills(work, args.trials),
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
