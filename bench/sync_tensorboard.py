"""TensorBoard sync under attack: kills during sync, concurrent syncs, live kills.

    .venv/bin/python bench/sync_tensorboard.py [--trials 8] [--steps 30000]

Prints JSON: for each experiment, the trials and the duplicated and missing points found by
reading every event file back with tensorboard's raw loader (no purging), against the run's
events.jsonl.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}

_SYNC = textwrap.dedent(
    """
    import sys
    from jaxobs.bridges.tensorboard import sync
    sync(sys.argv[1], wait_s=float(sys.argv[2]))
    """
)

_LIVE = textwrap.dedent(
    """
    import sys, time
    import jaxobs
    from jaxobs.bridges.tensorboard import TensorBoardSink
    run = jaxobs.init("tb", dir=sys.argv[1], terminal=False,
                      sinks=[TensorBoardSink(flush_secs=0.5)])
    print(run.dir, flush=True)
    for step in range(10_000_000):
        run.log({"a": float(step), "b": 1.0}, step=step)
        if step % 100 == 0:
            time.sleep(0.001)
    """
)


def _counts(logdir: pathlib.Path) -> collections.Counter:
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    counts: collections.Counter = collections.Counter()
    for path in sorted(logdir.rglob("events.out.tfevents.*")):
        for event in LegacyEventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.tag == "a":
                    counts[event.step] += 1
    return counts


def _check(run_dir: pathlib.Path) -> tuple[int, int, int]:
    """(points logged, duplicated points, missing points)."""
    want = set()
    for line in (run_dir / "events.jsonl").read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a torn last line of a killed run
        if record.get("event") == "metrics" and "a" in record.get("values", {}):
            want.add(record["step"])
    counts = _counts(run_dir / "tensorboard")
    duplicates = sum(n - 1 for n in counts.values() if n > 1)
    return len(want), duplicates, len(want - set(counts))


def _sync(run_dir: pathlib.Path, wait_s: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _SYNC, str(run_dir), str(wait_s)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _make_run(root: pathlib.Path, steps: int) -> pathlib.Path:
    import jaxobs

    with jaxobs.init("tb", dir=root, terminal=False) as run:
        for step in range(steps):
            run.log({"a": step * 0.5, "b": 1.0 / (step + 1)}, step=step)
    return run.dir


def _total(results: list[tuple[int, int, int]]) -> dict[str, int]:
    return {
        "trials": len(results),
        "points_per_trial": results[0][0] if results else 0,
        "duplicated_points": sum(r[1] for r in results),
        "missing_points": sum(r[2] for r in results),
    }


def kills_during_sync(base: pathlib.Path, work: pathlib.Path, trials: int) -> dict:
    start = time.monotonic()
    subprocess.run([sys.executable, "-c", _SYNC, str(base), "0"], env=ENV, check=True)
    full_s = time.monotonic() - start
    shutil.rmtree(base / "tensorboard")
    shutil.rmtree(base / "sync")
    rng = random.Random(0)
    results = []
    for i in range(trials):
        run_dir = pathlib.Path(shutil.copytree(base, work / f"kill-{i}"))
        proc = _sync(run_dir)
        time.sleep(rng.uniform(0.1, 0.9) * full_s)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        subprocess.run([sys.executable, "-c", _SYNC, str(run_dir), "0"], env=ENV, check=True)
        results.append(_check(run_dir))
    return {**_total(results), "full_sync_s": round(full_s, 2)}


def concurrent_syncs(base: pathlib.Path, work: pathlib.Path, trials: int) -> dict:
    results = []
    for i in range(trials):
        run_dir = pathlib.Path(shutil.copytree(base, work / f"two-{i}"))
        procs = [_sync(run_dir, wait_s=600), _sync(run_dir, wait_s=600)]
        for p in procs:
            p.wait()
        results.append(_check(run_dir))
    return _total(results)


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
        marker = run_dir / "sync" / "tensorboard.json"
        while not marker.is_file():
            time.sleep(0.01)
        for _ in range(1 + i % 3):  # kill right after the 1st, 2nd or 3rd marker save
            seen = marker.stat().st_mtime_ns
            while marker.stat().st_mtime_ns == seen:
                time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        subprocess.run([sys.executable, "-c", _SYNC, str(run_dir), "0"], env=ENV, check=True)
        results.append(_check(run_dir))
    return _total(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        base = _make_run(work / "base", args.steps)
        out = {
            "kills_during_sync": kills_during_sync(base, work, args.trials),
            "concurrent_syncs": concurrent_syncs(base, work, max(1, args.trials // 2)),
            "live_kills_after_marker_save": live_kills(work, max(1, args.trials // 2)),
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
