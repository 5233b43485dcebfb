"""The W&B bridge under attack (issue 12): W&B offline, its files read back by wandb_files."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import signal
import subprocess
import textwrap
import time

import pytest
from helpers import PYTHON, REPO, metric_table, read_events
from wandb_files import (
    find_offline_runs,
    read_offline_run,
    read_records,
    read_sessions,
    step_counts,
    wait_for_services,
)

import jaxobs
from jaxobs.bridges.wandb import MetricBudget, WandbSink, sync


def _only(root):
    runs = find_offline_runs(root)
    assert len(runs) == 1, runs
    return read_offline_run(runs[0], timeout=30)


def _series(offline, key):
    return sorted((r["trainer/step"], r[key]) for r in offline.history if key in r)


def test_two_live_runs_in_one_process_each_log_to_their_own_wandb_run(wandb_env):
    """Two jaxobs runs open at once, logging in turn: each W&B run holds its values only."""
    a = jaxobs.init("two", dir=wandb_env / "runs", terminal=False, sinks=[WandbSink()])
    b = jaxobs.init("two", dir=wandb_env / "runs", terminal=False, sinks=[WandbSink()])
    for step in range(6):
        a.log({"loss": 100.0 + step}, step=step)
        b.log({"loss": 200.0 + step}, step=step)
    b.add_artifact("notes", _file(b.dir / "b.txt", "b"))
    a.finish()
    b.log({"loss": 206.0}, step=6)
    b.finish()
    got_a, got_b = _only(a.dir / "wandb"), _only(b.dir / "wandb")
    assert (got_a.run_id, got_b.run_id) == (a.id, b.id)
    assert _series(got_a, "loss") == [(s, 100.0 + s) for s in range(6)]
    assert _series(got_b, "loss") == [(s, 200.0 + s) for s in range(7)]
    assert got_a.exit_code == 0 and got_b.exit_code == 0
    (art,) = [x for x in got_b.artifacts if x["name"] == "notes"]
    assert art["entries"][0]["local_path"].startswith(str(b.dir / "wandb" / "data"))
    assert "WANDB_DATA_DIR" not in os.environ  # staged without leaking into the process


def test_a_user_started_wandb_run_is_still_adopted_by_two_sinks_in_turn(wandb_env):
    """The user's own wandb.run is adopted; a sink's run is never adopted by the next."""
    import wandb

    mine = wandb.init(project="mine", dir=str(wandb_env))
    with jaxobs.init("u", dir=wandb_env / "runs", terminal=False, sinks=[WandbSink()]) as r:
        r.log({"x": 1.0}, step=0)
    mine.finish()
    wandb.teardown()
    assert _series(_only(wandb_env / "wandb"), "x") == [(0, 1.0)]


def _file(path: pathlib.Path, text: str) -> pathlib.Path:
    path.write_text(text)
    return path


def _cut_run_end(run_dir: pathlib.Path) -> None:
    """Make `run_dir` look like a run killed before its end: drop the run_end record."""
    events = run_dir / "events.jsonl"
    lines = events.read_text().splitlines(keepends=True)
    assert json.loads(lines[-1])["event"] == "run_end"
    events.write_text("".join(lines[:-1]))


def test_a_killed_run_synced_to_wandb_exits_non_zero_with_its_status(wandb_env):
    """A run without run_end (killed) is finished in W&B with a non-zero exit code."""
    with jaxobs.init("k", dir=wandb_env / "runs", terminal=False) as run:
        for step in range(5):
            run.log({"loss": float(step)}, step=step)
    _cut_run_end(run.dir)
    assert jaxobs.read_run(run.dir).status == "incomplete"
    sync(run.dir, mode="offline")
    (path,) = find_offline_runs(run.dir)
    exits = [r.exit for r in read_records(path) if r.WhichOneof("record_type") == "exit"]
    assert len(exits) == 1 and exits[0].exit_code != 0
    offline = read_offline_run(path)
    assert offline.summary["jaxobs/status"] == "incomplete"
    assert _series(offline, "loss") == [(s, float(s)) for s in range(5)]


def test_a_finished_run_synced_to_wandb_exits_zero(wandb_env):
    """The control: a finished run's sync exits 0."""
    with jaxobs.init("k", dir=wandb_env / "runs", terminal=False) as run:
        run.log({"loss": 1.0}, step=0)
    sync(run.dir, mode="offline")
    assert _only(run.dir).exit_code == 0


def test_metrics_with_names_wandb_owns_are_renamed_and_said_once(wandb_env, caplog):
    """trainer/step, _step, _timestamp, _runtime and _x arrive as jaxobs/<name>, intact."""
    reserved = {"trainer/step": 7.5, "_step": 1.5, "_timestamp": 2.5, "_runtime": 3.5, "_x": 4.5}
    caplog.set_level(logging.WARNING, logger="jaxobs")
    with jaxobs.init("r", dir=wandb_env / "runs", terminal=False, sinks=[WandbSink()]) as run:
        for step in range(3):
            run.log({**{k: v + step for k, v in reserved.items()}, "loss": 1.0}, step=step)
    offline = _only(run.dir / "wandb")
    rows = [r for r in offline.history if "loss" in r]
    assert [r["trainer/step"] for r in rows] == [0, 1, 2]
    for step, row in enumerate(rows):
        for key, value in reserved.items():
            assert row[f"jaxobs/{key}"] == value + step, key
    said = [r.getMessage() for r in caplog.records if "reserves the key" in r.getMessage()]
    assert len(said) == len(reserved)
    for key in reserved:
        assert sum(f"{key!r}" in m for m in said) >= 1, key


def test_artifacts_keep_the_users_name_and_metadata_across_runs(wandb_env):
    """Two runs of one project logging `model`: both W&B artifacts are `model` (versions of
    one artifact), of type model, with the jaxobs record as metadata; odd names are cleaned."""
    got = []
    for i in range(2):
        with jaxobs.init("art", dir=wandb_env / "runs", terminal=False, sinks=[WandbSink()]) as r:
            ckpt = _file(r.dir / "ckpt.bin", f"weights {i}")
            r.add_artifact(
                jaxobs.Artifact("model", str(ckpt), "checkpoint", f"epoch {i}", {"epoch": i})
            )
            r.add_artifact("best model/v2:final", _file(r.dir / "b.txt", "b"))
        got.append((r, _only(r.dir / "wandb")))
    for i, (run, offline) in enumerate(got):
        (model,) = [a for a in offline.artifacts if a["name"] == "model"]
        assert model["type"] == "model" and model["description"] == f"epoch {i}"
        meta = model["metadata"]
        assert (meta["epoch"], meta["path"], meta["run_id"]) == (i, "ckpt.bin", run.id)
        assert meta["jaxobs_name"] == "model" and meta["jaxobs_kind"] == "checkpoint"
        assert [a["name"] for a in offline.artifacts if a["type"] == "file"] == [
            "best-model-v2-final"
        ]
    digests = {o.artifacts[0]["digest"] for _, o in got}
    assert len(digests) == 2  # two versions of one artifact, not one twice


def _forge(run_dir: pathlib.Path, records: list[dict]) -> None:
    """Insert artifact records before run_end, as if events.jsonl had been edited."""
    events = run_dir / "events.jsonl"
    lines = events.read_text().splitlines(keepends=True)
    end = json.loads(lines[-1])
    forged = []
    for i, artifact in enumerate(records):
        ns = end["timestamp_ns"] - len(records) + i
        forged.append(
            json.dumps({"event": "artifact", "level": "BASIC", "timestamp_ns": ns,
                        "artifact": artifact}) + "\n"
        )  # fmt: skip
    events.write_text("".join(lines[:-1] + forged + lines[-1:]))


def test_sync_sends_no_file_from_outside_the_run_directory(wandb_env, caplog):
    """Forged artifact paths (../, absolute, a symlink out) are refused by sync, each named
    in a warning; no byte of the outside file reaches W&B's staging or its artifacts."""
    secret = _file(wandb_env / "secret.txt", "the secret 0123456789")
    with jaxobs.init("f", dir=wandb_env / "runs", terminal=False) as run:
        run.add_artifact("fine", _file(run.dir / "fine.txt", "fine"))
    (run.dir / "link.txt").symlink_to(secret)
    up = os.path.relpath(secret, run.dir)
    _forge(
        run.dir,
        [
            {"name": "up", "path": up},
            {"name": "abs", "path": str(secret)},
            {"name": "link", "path": "link.txt"},
            {"name": "passwd", "path": "../../../../../../../../etc/passwd"},
        ],
    )
    with caplog.at_level(logging.WARNING, logger="jaxobs"):
        sync(run.dir, mode="offline")
    offline = _only(run.dir)
    assert [a["name"] for a in offline.artifacts if a["type"] == "file"] == ["fine"]
    said = "\n".join(r.getMessage() for r in caplog.records)
    for path in (up, str(secret), "link.txt", "etc/passwd"):
        assert path in said, path
    staged = [p for p in (run.dir / "wandb").rglob("*") if p.is_file() and not p.is_symlink()]
    assert not [p for p in staged if b"the secret" in p.read_bytes()]


def test_a_live_run_still_sends_an_absolute_path_it_logged(wandb_env):
    """Live, a file the run's own add_artifact named by an absolute path outside is sent."""
    outside = _file(wandb_env / "outside.txt", "mine")
    with jaxobs.init("f", dir=wandb_env / "runs", terminal=False, sinks=[WandbSink()]) as run:
        run.add_artifact("outside", outside)
    assert "outside" in [a["name"] for a in _only(run.dir / "wandb").artifacts]


def test_sync_takes_a_metric_budget(wandb_env):
    """sync(budget=MetricBudget(max_keys=5)) rolls the statistics up per layer, as live."""
    with jaxobs.init("b", dir=wandb_env / "runs", terminal=False) as run:
        for step in range(3):
            values = {f"params/l{i}/kernel/norm": float(i + step) for i in range(8)}
            run.log({**values, "train/loss": 1.0}, step=step)
    sync(run.dir, mode="offline", budget=MetricBudget(max_keys=5))
    keys = {k for row in _only(run.dir).history for k in row if not k.startswith("_")}
    assert {f"params/l{i}/norm" for i in range(8)} <= keys
    assert not {k for k in keys if k.endswith("/kernel/norm")}
    with pytest.raises(TypeError, match="MetricBudget"):
        sync(run.dir, budget="lots")


# ----------------------------------------------------------------------------- exactly once

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


def _env():
    return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO / "tests")}


def _wanted(run_dir) -> set[int]:
    return set(metric_table(read_events(run_dir)).get("a", {}))


def _exactly_once(run_dir) -> tuple[int, int]:
    """(duplicated points, missing points) of key `a` over every W&B session of the run."""
    run_id = jaxobs.read_run(run_dir).info.run_id
    counts = step_counts(read_sessions(run_dir, run_id), "a")
    return sum(n - 1 for n in counts.values()), len(_wanted(run_dir) - set(counts))


def _kill(proc) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    wait_for_services(proc.pid)  # the W&B service writes what it received, then exits


@pytest.mark.slow
def test_a_sync_killed_mid_way_and_run_again_sends_every_point_once(wandb_env):
    """SIGKILL a sync once its .wandb file grows; sync again: every step once in W&B."""
    with jaxobs.init("kill", dir=wandb_env / "runs", terminal=False) as run:
        for step in range(20_000):
            run.log({"a": float(step), "b": 1.0}, step=step)
    proc = subprocess.Popen([PYTHON, "-c", _SYNC, str(run.dir)], env=_env())
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        files = list((run.dir / "wandb").glob("offline-run-*/run-*.wandb"))
        if files and files[0].stat().st_size > 200_000:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the sync ended before it could be killed: use more records"
    _kill(proc)
    assert 0 < sum(step_counts(read_sessions(run.dir, run.id), "a").values()) < 20_000
    sync(run.dir, mode="offline")
    assert _exactly_once(run.dir) == (0, 0)
    sessions = len(find_offline_runs(run.dir))
    assert sync(run.dir, mode="offline").records == 0  # then: up to date, nothing new
    assert len(find_offline_runs(run.dir)) == sessions


@pytest.mark.slow
def test_a_live_stream_killed_right_after_a_marker_save_loses_nothing(wandb_env):
    """SIGKILL a live W&B stream right after it saved its marker; sync: every step once."""
    out = wandb_env / "out.txt"
    with open(out, "w") as f:
        proc = subprocess.Popen(
            [PYTHON, "-c", _LIVE, str(wandb_env / "runs")], env=_env(), stdout=f
        )
    deadline = time.monotonic() + 120
    while not out.read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert out.read_text().strip(), f"the training process printed nothing ({proc.poll()})"
    run_dir = pathlib.Path(out.read_text().split()[0])
    marker = run_dir / "sync" / "wandb.json"
    while not marker.is_file() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the training process ended by itself"
    for _ in range(20):  # let it stream a while, then kill right after a save
        seen = marker.stat().st_mtime_ns
        while marker.stat().st_mtime_ns == seen and time.monotonic() < deadline:
            time.sleep(0.0005)
    _kill(proc)
    sync(run_dir, mode="offline")
    assert _wanted(run_dir)
    assert _exactly_once(run_dir) == (0, 0)
