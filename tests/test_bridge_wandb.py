"""The W&B bridge, checked against the W&B offline files read back by tests/wandb_files.py."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import pathlib
import sys

import jax.numpy as jnp
import pytest
import tiny_train
from helpers import metric_table, read_events
from wandb_files import find_offline_runs, read_offline_run, read_records, subkeys

import jaxobs
from jaxobs.bridges.wandb import WandbSink
from jaxobs.cli import main as cli


def _history_table(offline) -> dict[str, dict[int, float]]:
    """{key: {trainer/step: value}} of the scalar history of a W&B run (or several)."""
    table: dict[str, dict[int, float]] = {}
    for run in offline if isinstance(offline, list) else [offline]:
        for row in run.history:
            step = row.get("trainer/step")
            for key, value in row.items():
                if not key.startswith("_") and key != "trainer/step" and not _is_media(key, row):
                    assert step not in table.setdefault(key, {}), f"{key} at {step} twice"
                    table[key][step] = value
    return table


def _is_media(key: str, row: dict) -> bool:
    parts = key.split("/")
    return any(f"{'/'.join(parts[:i])}/_type" in row for i in range(1, len(parts) + 1))


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def _md5(path) -> str:
    return base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode()


def _only_offline_run(root):
    runs = find_offline_runs(root)
    assert len(runs) == 1, runs
    return read_offline_run(runs[0], timeout=30)


@pytest.fixture
def streamed(wandb_env):
    """A tiny run streamed live to a W&B offline run, with histograms every 5 steps."""
    sink = WandbSink()
    with jaxobs.init(
        "tiny",
        dir=wandb_env / "runs",
        config=tiny_train.DEFAULTS,
        tags=["t1", "t2"],
        group="g",
        terminal=False,
        sinks=[sink],
    ) as run:
        tiny_train.train(run, 30, histograms=5)
    return run, _only_offline_run(run.dir / "wandb")


def test_every_metric_record_arrives_at_its_own_step(streamed):
    """Each (step, value) of events.jsonl is one history value at trainer/step = that step."""
    run, offline = streamed
    expected = metric_table(read_events(run.dir))
    got = _history_table(offline)
    assert set(expected) <= set(got)
    for key, series in expected.items():
        assert set(got[key]) == set(series), key
        assert all(_same(got[key][s], v) for s, v in series.items()), key


def test_run_metadata_config_and_step_metric(streamed):
    """Id, project, name, tags, group and config come from the jaxobs run; x-axis trainer/step."""
    run, offline = streamed
    assert (offline.run_id, offline.project, offline.name) == (run.id, "tiny", run.info.name)
    assert (offline.tags, offline.group) == (["t1", "t2"], "g")
    assert offline.config == tiny_train.DEFAULTS
    star = [m for m in offline.metric_definitions if m["glob_name"] == "*"]
    assert star and star[0]["step_metric"] == "trainer/step"
    tracker = [e for e in read_events(run.dir) if e["event"] == "tracker"]
    assert tracker[0]["id"] == offline.run_id and tracker[0]["mode"] == "offline"


def test_best_values_land_in_the_summary(streamed):
    """val/accuracy's summary is its maximum, train/loss's its minimum."""
    run, offline = streamed
    table = metric_table(read_events(run.dir))
    summary = offline.summary
    assert summary["val/accuracy"] == {"max": max(table["val/accuracy"].values())}
    assert summary["train/loss"] == {"min": min(table["train/loss"].values())}
    assert summary["jaxobs/status"] == "finished"


def test_summary_goals_follow_the_name_and_summary_overrides_them(wandb_env):
    """Goals come from the name's last word (val/accumulated_steps is no accuracy: it keeps
    its last value); `summary=` overrides them."""
    values = {
        "train/loss": [4.0, 2.0, 3.0],
        "val/acc": [0.2, 0.9, 0.5],
        "val/accumulated_steps": [10.0, 30.0, 20.0],
        "perf/step_time_s": [0.7, 0.5, 0.6],
        "eval/loss": [1.0, 3.0, 2.0],
    }
    sink = WandbSink(summary={"eval/loss": "max"})
    with jaxobs.init("tiny", dir=wandb_env / "runs", terminal=False, sinks=[sink]) as run:
        for step in range(3):
            run.log({k: v[step] for k, v in values.items()}, step=step)
    summary = _only_offline_run(run.dir / "wandb").summary
    assert summary["train/loss"] == {"min": 2.0}
    assert summary["val/acc"] == {"max": 0.9}
    assert summary["perf/step_time_s"] == {"min": 0.5}
    assert summary["val/accumulated_steps"] == 20.0
    assert summary["eval/loss"] == {"max": 3.0}


def test_histograms_arrive_as_wandb_histograms(streamed):
    """Each histograms record is a wandb.Histogram with the same edges and counts."""
    run, offline = streamed
    records = [e for e in read_events(run.dir) if e["event"] == "histograms"]
    assert [r["step"] for r in records] == [0, 5, 10, 15, 20, 25]
    rows = {}
    for row in offline.history:
        for key in row:
            if key.endswith("/_type") and row[key] == "histogram":
                rows[(row["trainer/step"], key[: -len("/_type")])] = row
    for record in records:
        for name, h in record["values"].items():
            got = subkeys(rows[(record["step"], name)], name)
            assert got["bins"] == h["edges"] and got["values"] == h["counts"], name


def test_trainlog_is_an_artifact_staged_inside_the_run_directory(streamed):
    """trainlog.json is logged as an artifact (same bytes), staged under <run>/wandb/data."""
    run, offline = streamed
    (artifact,) = [a for a in offline.artifacts if a["type"] == "trainlog"]
    (entry,) = artifact["entries"]
    assert entry["path"] == "trainlog.json"
    assert entry["digest"] == _md5(run.trainlog_path)
    assert entry["local_path"].startswith(str(run.dir / "wandb" / "data"))
    assert offline.exit_code == 0


def test_live_stream_leaves_a_marker_so_sync_sends_nothing_twice(streamed):
    """After a complete live stream, `jaxobs sync --to wandb` has nothing to send."""
    run, _ = streamed
    marker = json.loads((run.dir / "sync" / "wandb.json").read_text())
    (entry,) = marker["destinations"].values()
    assert entry["last_step"] == 29
    assert cli(["sync", str(run.dir), "--to", "wandb"]) == 0
    assert len(find_offline_runs(run.dir)) == 1


def _nan_step(state, x, y, scale):
    return tiny_train.step_fn(state, x * scale, y)


def test_alerts_crash_dump_and_wandb_alert(wandb_env):
    """A non-finite step: health/alert scalar, alerts table, wandb.alert, crash artifact, image."""
    step = jaxobs.observe(_nan_step, health=jaxobs.HealthChecker())
    with jaxobs.init(
        "tiny", dir=wandb_env / "runs", terminal=False, sinks=[WandbSink(alerts=True)]
    ):
        state = tiny_train.make_state(tiny_train.DEFAULTS)
        x, y = tiny_train.data()
        for i in range(12):
            state, _ = step(state, x, y, jnp.float32(math.inf if i == 8 else 1.0))
        step.flush()
        run = jaxobs.active_run()
    offline = _only_offline_run(run.dir / "wandb")
    events = read_events(run.dir)
    alerts = [e for e in events if e["event"] == "health_check" and e["rule"] == "nonfinite"]
    assert alerts and alerts[0]["severity"] == "critical"
    bad = alerts[0]["step"]
    assert (bad, 4) in [
        (r["trainer/step"], r["health/alert/nonfinite"])
        for r in offline.history
        if "health/alert/nonfinite" in r
    ]
    table_rows = [r for r in offline.history if r.get("health/alerts/_type") == "table-file"]
    table = json.loads(
        (offline.path.parent / "files" / table_rows[-1]["health/alerts/path"]).read_text()
    )
    assert [bad, "nonfinite", "critical", alerts[0]["message"]] in table["data"]
    assert any(
        "nonfinite" in a["title"] and a["text"] == alerts[0]["message"] for a in offline.alerts
    )
    dump = next(e for e in events if e["event"] == "crash_dump")
    (crash,) = [a for a in offline.artifacts if a["type"] == "crash"]
    entries = {e["path"]: e for e in crash["entries"]}
    assert entries[f"crash-{dump['step']}.json"]["digest"] == _md5(pathlib.Path(dump["path"]))
    images = [r for r in offline.history if r.get("health/failure_signature/_type") == "image-file"]
    assert images, "the failure-signature plot is logged as an image"


def _train_through(run_dir, sinks, wandb_finish_at=None, steps=30):
    with jaxobs.init(
        "tiny", dir=run_dir, config=tiny_train.DEFAULTS, terminal=False, sinks=sinks
    ) as run:
        state = tiny_train.make_state(run.config)
        step = jaxobs.observe(tiny_train.step_fn)
        x, y = tiny_train.data()
        for i in range(steps):
            state, _ = step(state, x, y)
            if i == wandb_finish_at:
                step.flush()
                run.flush()
                import wandb

                wandb.finish()  # a user's mistake: the sink's next log raises
        step.flush()
    return run


@pytest.mark.parametrize("failure", ["not_installed", "init_error", "log_error"])
def test_a_failing_wandb_never_stops_training_and_sync_sends_the_rest(
    wandb_env, monkeypatch, caplog, failure
):
    """W&B missing, failing at init or failing mid-run: reported once, training finishes, the
    run directory is complete, and `jaxobs sync` brings W&B to every record, none twice."""
    sink = (
        WandbSink(init_kwargs={"settings": {"no_such_setting": 1}})
        if failure == "init_error"
        else WandbSink()
    )
    with monkeypatch.context() as mp:
        if failure == "not_installed":
            mp.setitem(sys.modules, "wandb", None)
        with caplog.at_level(logging.WARNING, logger="jaxobs"):
            run = _train_through(
                wandb_env / "runs", [sink], wandb_finish_at=9 if failure == "log_error" else None
            )
    reports = [
        r for r in caplog.records if "W&B" in r.getMessage() or "WandbSink" in r.getMessage()
    ]
    assert len(reports) == 1, [r.getMessage() for r in reports]
    events = read_events(run.dir)
    assert events[-1]["status"] == "finished"
    expected = metric_table(events)
    assert sorted(expected["train/loss"]) == list(range(30))
    assert cli(["sync", str(run.dir), "--to", "wandb"]) == 0
    offline = [read_offline_run(p, timeout=30) for p in find_offline_runs(run.dir)]
    assert len(offline) == (2 if failure == "log_error" else 1)
    assert len({o.run_id for o in offline}) == 1  # the sync continued the same W&B run
    got = _history_table(offline)  # raises if a value arrived twice
    for key, series in expected.items():
        assert got[key] == series, key


def test_adopts_an_active_wandb_run_and_leaves_it_open(wandb_env):
    """With wandb.run active, the sink logs into it and does not finish it."""
    import wandb

    wrun = wandb.init(project="mine", dir=str(wandb_env), config={"extra": 1})
    run = _train_through(wandb_env / "runs", [WandbSink()], steps=5)
    assert jaxobs.read_run(run.dir).info.config["extra"] == 1  # W&B's config flowed back
    wrun.log({"after": 1.0})  # still open
    wrun.finish()
    wandb.teardown()
    offline = _only_offline_run(wandb_env / "wandb")
    assert offline.project == "mine"
    assert offline.config == {**tiny_train.DEFAULTS, "extra": 1}  # and learned jaxobs's
    assert sorted(_history_table(offline)["train/loss"]) == list(range(5))


def test_bad_arguments_are_refused():
    """Unknown modes and summary goals raise ValueError naming them."""
    with pytest.raises(ValueError, match="mode"):
        WandbSink(mode="sometimes")
    with pytest.raises(ValueError, match="summary"):
        WandbSink(summary={"val/loss": "lowest"})


def test_sync_refuses_what_is_not_a_run(tmp_path, capsys):
    """`jaxobs sync` of a folder that is not a run: one line, exit 2."""
    assert cli(["sync", str(tmp_path), "--to", "wandb"]) == 2
    assert "not a jaxobs run directory" in capsys.readouterr().err
    assert cli(["sync", str(tmp_path), "--to", "tensorboard", "--id", "x"]) == 2
    assert "--id" in capsys.readouterr().err


def test_records_of_the_offline_file_are_complete_after_sync(wandb_env):
    """The sync's offline file ends with its exit record (the run is ready for `wandb sync`)."""
    run = _train_through(wandb_env / "runs", [], steps=3)
    cli(["sync", str(run.dir), "--to", "wandb"])
    records = read_records(find_offline_runs(run.dir)[0])
    assert records[-1].WhichOneof("record_type") in ("exit", "final", "footer") or any(
        r.WhichOneof("record_type") == "exit" for r in records
    )


def test_records_a_full_queue_kept_from_the_bridges_are_sent_at_the_end(wandb_env):
    """With a tiny sink queue, metrics are skipped for the sinks; the bridges send them from
    events.jsonl when the run ends, so W&B and TensorBoard still hold every record once."""
    from tb_files import read_tensorboard

    from jaxobs.bridges.tensorboard import TensorBoardSink

    with jaxobs.init(
        "tiny",
        dir=wandb_env / "runs",
        config=tiny_train.DEFAULTS,
        terminal=False,
        queue_size=2,
        sinks=[WandbSink(), TensorBoardSink()],
    ) as run:
        tiny_train.train(run, 60, histograms=0)
    events = read_events(run.dir)
    assert events[-1]["dropped_for_sinks"].get("metrics", 0) > 0  # the path is exercised
    expected = metric_table(events)
    got = _history_table(_only_offline_run(run.dir / "wandb"))
    board = read_tensorboard(run.dir / "tensorboard").scalars
    for key, series in expected.items():
        assert got[key] == series, key
        assert sorted(s for s, _, _ in board[key]) == sorted(series), key
    marker = json.loads((run.dir / "sync" / "wandb.json").read_text())
    (entry,) = marker["destinations"].values()
    assert entry["last_step"] == 59
    assert cli(["sync", str(run.dir), "--to", "wandb"]) == 0  # nothing left to send
    assert len(find_offline_runs(run.dir)) == 1
