"""TensorBoard sync exactly once: killed syncs, concurrent syncs, a live stream killed right
after a marker save. Every check reads the event files back with tensorboard's raw loader
(no purging: a duplicate is seen) and compares with the run's own events.jsonl."""

import collections
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from helpers import read_events

import jaxobs
from jaxobs.bridges import tensorboard as tb_bridge

pytestmark = pytest.mark.slow

ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def _steps_in_files(logdir, tag="a") -> collections.Counter:
    """How many times each step of ``tag`` is in the event files (all of them, recursively)."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    counts: collections.Counter = collections.Counter()
    for path in sorted(pathlib.Path(logdir).rglob("events.out.tfevents.*")):
        for event in LegacyEventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.tag == tag:
                    counts[event.step] += 1
    return counts


def _logged_steps(run_dir, tag="a") -> list[int]:
    """The steps of ``tag`` in the run's events.jsonl (the reference)."""
    return sorted(
        e["step"] for e in read_events(run_dir) if e["event"] == "metrics" and tag in e["values"]
    )


def _assert_exactly_once(run_dir, logdir):
    counts = _steps_in_files(logdir)
    want = _logged_steps(run_dir)
    duplicates = {s: n for s, n in counts.items() if n > 1}
    missing = sorted(set(want) - set(counts))
    assert duplicates == {} and missing == [], (len(duplicates), len(missing))
    assert sorted(counts) == want


@pytest.fixture(scope="module")
def big_run(tmp_path_factory):
    """A finished run of 20,000 metrics records (a sync of it takes seconds)."""
    root = tmp_path_factory.mktemp("big")
    with jaxobs.init("tb", dir=root, terminal=False) as run:
        for step in range(20_000):
            run.log({"a": step * 0.5, "b": 1.0 / (step + 1)}, step=step)
    return run.dir


def _copy(run_dir, dest):
    import shutil

    shutil.copytree(run_dir, dest)
    return pathlib.Path(dest)


def _sync_process(run_dir, *extra):
    code = textwrap.dedent(
        """
        import sys
        from jaxobs.bridges.tensorboard import sync
        sync(sys.argv[1], flush_secs=float(sys.argv[2]), wait_s=float(sys.argv[3]))
        """
    )
    args = [sys.executable, "-c", code, str(run_dir), *extra]
    log = pathlib.Path(run_dir).parent / f"sync-{time.time_ns()}.log"
    with open(log, "wb") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen(args, env=ENV, stdout=out, stderr=subprocess.STDOUT)
    proc.log = log
    return proc


def _output(proc) -> str:
    return proc.log.read_text(errors="replace")[-2000:]


def _wait_for(predicate, proc, timeout_s=120):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    return False


def _marker_files(run_dir):
    path = pathlib.Path(run_dir) / "sync" / "tensorboard.json"
    try:
        entry = json.loads(path.read_text())["destinations"]["tensorboard"]
    except (OSError, ValueError, KeyError):
        return None
    return entry["info"].get("files")


def test_a_sync_killed_after_a_marker_save_then_run_again_writes_each_step_once(big_run, tmp_path):
    """Killed mid-way after saving its marker: the second sync cuts the files back and
    writes the rest; each step is in the files exactly once."""
    run_dir = _copy(big_run, tmp_path / "run")
    proc = _sync_process(run_dir, "0.05", "0")
    saved = _wait_for(lambda: bool(_marker_files(run_dir)), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(60)
    assert saved, _output(proc)
    marker_steps = json.loads((run_dir / "sync" / "tensorboard.json").read_text())
    assert marker_steps["destinations"]["tensorboard"]["last_step"] < 19_999  # killed mid-way
    result = tb_bridge.sync(run_dir)
    assert result.records > 0
    _assert_exactly_once(run_dir, run_dir / "tensorboard")
    assert tb_bridge.sync(run_dir).records == 0  # and up to date


def test_a_sync_killed_before_its_first_marker_save_leaves_nothing_twice(big_run, tmp_path):
    """Killed before any marker save: its file is removed, the next sync writes it all once."""
    run_dir = _copy(big_run, tmp_path / "run")
    logdir = run_dir / "tensorboard"
    proc = _sync_process(run_dir, "1000", "0")

    def writing():
        files = list(logdir.glob("events.out.tfevents.*"))
        return bool(files) and files[0].stat().st_size > 50_000

    started = _wait_for(writing, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(60)
    assert started, _output(proc)
    assert _marker_files(run_dir) is None  # it never saved
    assert sum(_steps_in_files(logdir).values()) > 0  # but it wrote
    tb_bridge.sync(run_dir)
    _assert_exactly_once(run_dir, logdir)


def test_concurrent_syncs_write_each_step_once(big_run, tmp_path):
    """Two syncs at once: one writes, the other waits for it and then finds nothing to do;
    without a wait, the second is refused with a message naming the destination."""
    run_dir = _copy(big_run, tmp_path / "run")
    first, second = _sync_process(run_dir, "10", "120"), _sync_process(run_dir, "10", "120")
    assert first.wait(180) == 0, _output(first)
    assert second.wait(180) == 0, _output(second)
    _assert_exactly_once(run_dir, run_dir / "tensorboard")
    other = _copy(big_run, tmp_path / "other")
    holder = _sync_process(other, "10", "0")
    assert _wait_for(lambda: bool(list((other / "tensorboard").glob("*tfevents*"))), holder)
    cli = subprocess.run(
        [sys.executable, "-m", "jaxobs", "sync", str(other), "--to", "tensorboard"],
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert holder.wait(180) == 0
    if cli.returncode == 0:  # the holder finished first: then it was simply up to date
        assert "up to date" in cli.stdout
    else:
        assert cli.returncode == 2 and "Traceback" not in cli.stderr
        assert "another process" in cli.stderr and "tensorboard" in cli.stderr
    _assert_exactly_once(other, other / "tensorboard")


def test_a_live_stream_killed_right_after_a_marker_save_loses_nothing(tmp_path):
    """SIGKILL right after the live sink saved its marker: the marker never counts a record
    the files lack, so the sync writes exactly what is missing."""
    script = textwrap.dedent(
        """
        import sys, time
        import jaxobs
        from jaxobs.bridges.tensorboard import TensorBoardSink
        run = jaxobs.init("tb", dir=sys.argv[1], terminal=False,
                          sinks=[TensorBoardSink(flush_secs=0.1)])
        print(run.dir, flush=True)
        for step in range(1_000_000):
            run.log({"a": float(step)}, step=step)
            if step % 50 == 0:
                time.sleep(0.002)
        """
    )
    out = tmp_path / "train.log"
    with open(out, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path)], env=ENV, stdout=f, stderr=f
        )
    assert _wait_for(lambda: out.read_text().strip() != "", proc)
    run_dir = pathlib.Path(out.read_text().splitlines()[0].strip())
    marker = run_dir / "sync" / "tensorboard.json"
    assert _wait_for(marker.is_file, proc)
    saved = marker.stat().st_mtime_ns
    assert _wait_for(lambda: marker.stat().st_mtime_ns != saved, proc)  # a fresh save
    proc.send_signal(signal.SIGKILL)
    proc.wait(60)
    tb_bridge.sync(run_dir)
    _assert_exactly_once(run_dir, run_dir / "tensorboard")
