"""`jaxobs sync` of a run killed mid-way: every flushed step reaches W&B and TensorBoard, once."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from helpers import PYTHON, REPO, metric_table, read_events
from tb_files import read_tensorboard
from wandb_files import find_offline_runs, read_offline_run, read_records

from jaxobs.cli import main as cli


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory):
    """A JAX compilation cache for the module's trainer processes (the same tiny step)."""
    # every process after the first loads its programs instead of compiling them
    return tmp_path_factory.mktemp("jax-cache")


def _start(tmp_path, jax_cache, *extra):
    """Start tests/tiny_train.py for many steps; return the process and its run directory."""
    proc = subprocess.Popen(
        [
            PYTHON,
            str(REPO / "tests" / "tiny_train.py"),
            "--dir",
            str(tmp_path / "runs"),
            "--steps",
            "100000",
            "--sleep",
            "0.01",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={
            **os.environ,
            "JAX_PLATFORMS": "cpu",
            "JAX_COMPILATION_CACHE_DIR": str(jax_cache),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        },
    )
    line = proc.stdout.readline()
    assert line.startswith("run_dir="), line
    return proc, line.strip().split("=", 1)[1]


def _kill_after(proc, run_dir, steps: int) -> None:
    """SIGKILL the trainer once events.jsonl holds ``steps`` steps of train/loss."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if len(metric_table(read_events(run_dir)).get("train/loss", {})) >= steps:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    proc.stdout.close()


def _tb_points(logdir) -> dict[str, list[tuple[int, float]]]:
    return {t: [(s, v) for s, v, _ in pts] for t, pts in read_tensorboard(logdir).scalars.items()}


def _wandb_points(offline_runs) -> dict[str, list[tuple[int, float]]]:
    points: dict[str, list[tuple[int, float]]] = {}
    for run in offline_runs:
        for row in run.history:
            for key, value in row.items():
                if (
                    not key.startswith("_")
                    and key != "trainer/step"
                    and isinstance(value, float | int)
                ):
                    points.setdefault(key, []).append((row["trainer/step"], value))
    return points


@pytest.mark.slow
def test_sync_of_a_killed_run_sends_every_flushed_step_once(tmp_path, wandb_env, jax_cache):
    """Kill -9 mid-way; sync to W&B and TensorBoard; both hold exactly the flushed records;
    a second sync sends nothing."""
    proc, run_dir = _start(tmp_path, jax_cache)
    _kill_after(proc, run_dir, 40)
    events = read_events(run_dir)  # the independent reader: complete lines only
    assert events[-1]["event"] != "run_end"
    expected = {k: sorted(v.items()) for k, v in metric_table(events).items()}
    assert cli(["sync", run_dir, "--to", "wandb"]) == 0
    assert cli(["sync", run_dir, "--to", "tensorboard"]) == 0
    (offline_dir,) = find_offline_runs(run_dir)
    offline = read_offline_run(offline_dir, timeout=30)
    got_wandb = {k: sorted(v) for k, v in _wandb_points([offline]).items()}
    got_tb = {k: sorted(v) for k, v in _tb_points(os.path.join(run_dir, "tensorboard")).items()}
    for key, points in expected.items():
        assert got_wandb[key] == points, key
        assert [(s, pytest.approx(v, rel=1e-6, nan_ok=True)) for s, v in points] == got_tb[key]
    assert offline.summary["jaxobs/status"] == "incomplete"
    # Again: nothing new is sent, no W&B run or event file appears.
    files = sorted(os.listdir(os.path.join(run_dir, "tensorboard")))
    records = len(read_records(offline_dir))
    assert cli(["sync", run_dir, "--to", "wandb"]) == 0
    assert cli(["sync", run_dir, "--to", "tensorboard"]) == 0
    assert find_offline_runs(run_dir) == [offline_dir]
    assert sorted(os.listdir(os.path.join(run_dir, "tensorboard"))) == files
    assert len(read_records(offline_dir)) == records


@pytest.mark.slow
def test_sync_completes_a_live_stream_that_was_killed(tmp_path, wandb_env, jax_cache):
    """Streaming live to W&B and TensorBoard, killed: after sync, the live output and the
    sync's together hold every flushed record."""
    proc, run_dir = _start(tmp_path, jax_cache, "--wandb", "offline", "--tensorboard")
    _kill_after(proc, run_dir, 40)
    time.sleep(2)  # the W&B service (its own process) writes what it received, then exits
    expected = metric_table(read_events(run_dir))
    assert cli(["sync", run_dir, "--to", "wandb"]) == 0
    assert cli(["sync", run_dir, "--to", "tensorboard"]) == 0
    runs = []
    for path in find_offline_runs(run_dir):
        from wandb_files import offline_run_from_records

        runs.append(offline_run_from_records(path, read_records(path, allow_partial=True)))
    assert len({r.run_id for r in runs}) == 1
    got_wandb = _wandb_points(runs)
    got_tb = _tb_points(os.path.join(run_dir, "tensorboard"))
    for key, series in expected.items():
        assert set(series.items()) <= set(got_wandb[key]), key
        assert set(series) <= {s for s, _ in got_tb[key]}, key
