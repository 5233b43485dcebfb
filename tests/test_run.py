"""The live run: run directory, write-ahead records, endings, levels, environment snapshot."""

import importlib.metadata
import json
import math
import os
import platform
import socket
import subprocess

import numpy as np
import pytest
from helpers import decode, metric_table, read_events, same_float

import jaxobs


def _init(tmp_path, **kw):
    kw.setdefault("terminal", False)
    return jaxobs.init(project=kw.pop("project", "proj"), dir=tmp_path, **kw)


def test_run_directory_layout(tmp_path):
    """init makes <dir>/<project>/<run_id>/ with events.jsonl; finish adds trainlog.json."""
    run = _init(tmp_path, id="r1", name="first")
    assert run.dir == tmp_path / "proj" / "r1"
    assert (run.dir / "events.jsonl").is_file()
    assert not (run.dir / "trainlog.json").exists()
    run.finish()
    assert (run.dir / "trainlog.json").is_file()


def test_default_run_id_is_unique_and_dated(tmp_path):
    """Default ids are distinct and start with the date."""
    a, b = _init(tmp_path), _init(tmp_path)
    a.finish()
    b.finish()
    assert a.id != b.id
    assert a.id[:8].isdigit() and a.info.name == a.id


def test_logged_values_are_on_disk_when_log_returns(tmp_path):
    """Each record can be read by another reader before finish (flushed write-ahead)."""
    run = _init(tmp_path)
    values = np.random.default_rng(0).normal(size=20)
    for step, v in enumerate(values):
        run.log({"train/loss": v, "x": np.float32(v)}, step=step)
        table = metric_table(read_events(run.dir))
        assert table["train/loss"][step] == float(v)
        assert table["x"][step] == float(np.float32(v))
    run.finish()


def test_trainlog_matches_what_was_logged(tmp_path):
    """trainlog.json read with the json module holds every logged value, NaN/Inf included."""
    rng = np.random.default_rng(1)
    loss = rng.uniform(size=30).tolist()
    loss[7], loss[8], loss[9] = math.nan, math.inf, -math.inf
    with _init(tmp_path, config={"lr": 0.1}) as run:
        for step, v in enumerate(loss):
            run.log({"train/loss": v}, step=step)
            if step % 10 == 9:
                run.log({"val/loss": v * 2}, step=step)
    data = json.loads((run.dir / "trainlog.json").read_text(encoding="utf-8"))
    assert "NaN" in json.dumps(data)  # sentinels, not bare NaN tokens
    series = {s["name"]: s for s in decode(data)["series"]}
    train = series["train/loss"]
    steps = train.get("steps") or data["steps"]
    assert steps == list(range(30))
    assert all(same_float(a, b) for a, b in zip(train["values"], loss, strict=True))
    assert series["val/loss"]["steps"] == [9, 19, 29]
    assert series["val/loss"]["values"] == [loss[9] * 2, loss[19] * 2, loss[29] * 2]
    assert data["run"]["config"] == {"lr": 0.1}
    assert data["run"]["run_id"] == run.id


def test_step_defaults_follow_the_last_step(tmp_path):
    """log without a step uses one past the largest step so far."""
    run = _init(tmp_path)
    run.log({"a": 1.0})
    run.log({"a": 2.0})
    run.log({"a": 3.0}, step=10)
    run.log({"a": 4.0})
    assert run.step == 12
    run.finish()
    assert sorted(metric_table(read_events(run.dir))["a"]) == [0, 1, 10, 11]


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"w": np.ones(3)}, "metric 'w': expected a scalar"),
        ({"w": "high"}, "metric 'w': expected a number"),
        ({"": 1.0}, "non-empty strings"),
        ([("a", 1.0)], "mapping"),
    ],
)
def test_bad_log_input_names_the_problem(tmp_path, values, match):
    """Non-scalars, strings and bad keys raise a TypeError naming the metric."""
    run = _init(tmp_path)
    with pytest.raises(TypeError, match=match):
        run.log(values)
    run.finish()


def test_bad_init_arguments(tmp_path):
    """Bad project, id and level are refused with a clear message; ids are not reused."""
    with pytest.raises(ValueError, match="project"):
        jaxobs.init(project="a/b", dir=tmp_path, terminal=False)
    with pytest.raises(ValueError, match="run id"):
        jaxobs.init(project="p", id="../x", dir=tmp_path, terminal=False)
    with pytest.raises(ValueError, match="unknown level 'LOUD'"):
        jaxobs.init(project="p", level="LOUD", dir=tmp_path, terminal=False)
    _init(tmp_path, id="same").finish()
    with pytest.raises(ValueError, match="already holds a run"):
        _init(tmp_path, id="same")


def test_config_error_names_the_key(tmp_path):
    """A config value that cannot be stored fails at init, naming its key."""
    with pytest.raises(jaxobs.ConfigError, match=r"config\.model\.act"):
        _init(tmp_path, config={"model": {"act": object()}})


def test_log_after_finish_is_an_error(tmp_path):
    """A finished run refuses new records instead of losing them silently."""
    run = _init(tmp_path)
    run.finish()
    assert run.finish() == run.trainlog_path  # idempotent
    with pytest.raises(RuntimeError, match="finished"):
        run.log({"a": 1.0})


@pytest.mark.parametrize(
    ("exc", "status"), [(ValueError("boom"), "failed"), (KeyboardInterrupt(), "interrupted")]
)
def test_exception_in_with_block_is_recorded(tmp_path, exc, status):
    """An exception ends the run with its status and error, writes the trainlog, propagates."""
    with pytest.raises(type(exc)), _init(tmp_path) as run:
        run.log({"a": 1.0}, step=0)
        raise exc
    end = read_events(run.dir)[-1]
    assert end["event"] == "run_end" and end["status"] == status
    assert end["error"]["type"] == type(exc).__name__
    assert json.loads(run.trainlog_path.read_text())["series"][0]["values"] == [1.0]
    assert jaxobs.active_run() is None


def test_finish_and_exceptions_fsync_the_events_file(tmp_path, monkeypatch):
    """The events file is fsynced at finish and when an exception leaves the block."""
    synced = []
    real_fsync = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    with pytest.raises(RuntimeError), _init(tmp_path) as run:
        synced.clear()
        run.log({"a": 1.0})
        assert synced == []  # logging flushes but does not fsync
        raise RuntimeError
    assert str(run.events_path.resolve()) in synced


def test_active_run(tmp_path):
    """init makes the run active until it finishes."""
    run = _init(tmp_path)
    assert jaxobs.active_run() is run
    run.finish()
    assert jaxobs.active_run() is None


def test_environment_snapshot(tmp_path, monkeypatch):
    """run_start records versions, devices, python, host and the git commit."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "f").write_text("x")
    subprocess.run([*git, "add", "f"], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    commit = subprocess.run(
        [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    monkeypatch.chdir(repo)
    monkeypatch.setenv("WANDB_API_KEY", "abcdef")
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    run = _init(tmp_path / "runs")
    run.finish()
    env = read_events(run.dir)[0]["env"]
    for pkg in ("jax", "jaxlib", "numpy"):
        assert env["packages"][pkg] == importlib.metadata.version(pkg)
    assert env["python"] == platform.python_version()
    assert env["hostname"] == socket.gethostname()
    assert env["git"]["commit"] == commit and env["git"]["dirty"] is False
    assert env["jax"]["backend"] == "cpu" and env["jax"]["process_index"] == 0
    assert env["env"]["WANDB_API_KEY"] == "<redacted>"
    assert env["env"]["XLA_FLAGS"] == "--xla_dump_to=/tmp/x"
    assert env["start_time"][:4].isdigit()


def test_no_git_outside_a_repository(tmp_path, monkeypatch):
    """Outside a git checkout the snapshot says so (null) instead of failing."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    run = _init(tmp_path)
    run.finish()
    assert read_events(run.dir)[0]["env"]["git"] is None


def test_only_process_zero_writes(tmp_path, monkeypatch):
    """On a process other than 0 the run records nothing and every method still works."""
    from jaxobs._src.host import environment as _env

    monkeypatch.setattr(_env, "jax_state", lambda: {"process_index": 1, "process_count": 2})
    run = jaxobs.init(project="p", dir=tmp_path, terminal=False)
    run.log({"a": 1.0})
    run.emit("epoch_end", epoch=0)
    run.finish()
    assert not (tmp_path / "p").exists()


def test_levels_filter_events(tmp_path, monkeypatch):
    """JAXOBS_LEVEL sets which events are recorded; metrics are always kept."""
    monkeypatch.setenv("JAXOBS_LEVEL", "basic")
    run = _init(tmp_path)
    assert run.level is jaxobs.Level.BASIC
    run.emit("batch_end", step=0, loss=1.0)  # DETAILED
    run.emit("epoch_end", step=0, epoch=0)  # BASIC
    run.log({"a": 1.0}, step=0)
    run.finish()
    kinds = [e["event"] for e in read_events(run.dir)]
    assert kinds == ["run_start", "epoch_end", "metrics", "run_end"]

    run = _init(tmp_path, level="expert")
    run.emit("layer_forward", step=0, layer="Dense_0")
    run.emit("my_event", step=0, level="DEBUG")  # above EXPERT: not recorded
    run.finish()
    kinds = [e["event"] for e in read_events(run.dir)]
    assert kinds == ["run_start", "layer_forward", "run_end"]


def test_bad_level_in_environment(tmp_path, monkeypatch):
    """A bad JAXOBS_LEVEL names the variable."""
    monkeypatch.setenv("JAXOBS_LEVEL", "chatty")
    with pytest.raises(ValueError, match="JAXOBS_LEVEL"):
        _init(tmp_path)


def test_emit_payload_and_bad_event_types(tmp_path):
    """emit stores its payload as JSON; reserved or non-identifier types are refused."""
    run = _init(tmp_path)
    run.emit("epoch_end", step=5, epoch=1, metrics={"val/loss": np.float32(0.5)})
    with pytest.raises(ValueError, match="identifier"):
        run.emit("epoch end")
    with pytest.raises(ValueError, match="recorded by the run itself"):
        run.emit("metrics")
    with pytest.raises(jaxobs.ConfigError, match=r"epoch_end\.fn"):
        run.emit("epoch_end", fn=lambda: 0)
    run.finish()
    rec = read_events(run.dir)[1]
    assert rec["event"] == "epoch_end" and rec["step"] == 5 and rec["level"] == "BASIC"
    assert rec["epoch"] == 1 and rec["metrics"] == {"val/loss": 0.5}


def test_artifacts_notes_and_config_updates_reach_the_trainlog(tmp_path):
    """Artifacts (relative to the run dir), notes and config updates are kept."""
    run = _init(tmp_path, config={"lr": 0.1})
    ckpt = run.dir / "ckpt.bin"
    ckpt.write_bytes(b"x")
    run.add_artifact("checkpoint", ckpt.resolve(), kind="model")
    run.add_note("baseline run")
    run.update_config({"lr": 0.2, "sweep_param": 3})
    assert run.config == {"lr": 0.2, "sweep_param": 3}
    cm = jaxobs.artifacts.ConfusionMatrix.from_predictions([0, 1, 1, 2], [0, 1, 2, 2], 3)
    run.log_confusion_matrix("val_cm", cm, step=7)
    run.finish()
    data = json.loads(run.trainlog_path.read_text())
    assert data["run"]["config"] == {"lr": 0.2, "sweep_param": 3}
    assert data["notes"] == ["baseline run"]
    arts = {a["name"]: a for a in data["artifacts"]}
    assert arts["checkpoint"] == {"name": "checkpoint", "path": "ckpt.bin", "kind": "model"}
    cm_file = json.loads((run.dir / arts["val_cm"]["path"]).read_text())
    assert cm_file["matrix"] == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]


def test_read_run_of_finished_run(tmp_path):
    """read_run returns the run's info, status and metrics."""
    with _init(tmp_path, name="n", tags=["t"], group="g") as run:
        run.log({"a": 1.0}, step=0)
    rec = jaxobs.read_run(run.dir)
    assert rec.status == "finished" and rec.warnings == []
    assert (rec.info.name, rec.info.tags, rec.info.group) == ("n", ["t"], "g")
    assert rec.log.history.curves["a"].values == [1.0]
    assert rec.last_step == 0


def test_read_run_errors_name_file_and_line(tmp_path):
    """A missing events file, a corrupt middle line or a wrong first record are clear errors."""
    with pytest.raises(jaxobs.RunDirError, match="not a jaxobs run directory"):
        jaxobs.read_run(tmp_path)
    with _init(tmp_path) as run:
        run.log({"a": 1.0}, step=0)
    # A parent folder says which runs it holds.
    with pytest.raises(jaxobs.RunDirError, match=run.id):
        jaxobs.read_run(run.dir.parent)
    lines = run.events_path.read_text().splitlines(keepends=True)
    lines[1] = "{not json\n"
    run.events_path.write_text("".join(lines))
    with pytest.raises(jaxobs.RunDirError, match=r"events\.jsonl:2: corrupt record"):
        jaxobs.read_run(run.dir)
    run.events_path.write_text('{"event": "metrics", "step": 0, "values": {}}\n')
    with pytest.raises(jaxobs.RunDirError, match="expected a run_start record first"):
        jaxobs.read_run(run.dir)


def test_newer_major_run_is_refused(tmp_path):
    """A run written by a newer major format version asks to upgrade jaxobs."""
    with _init(tmp_path) as run:
        pass
    lines = run.events_path.read_text().splitlines(keepends=True)
    first = json.loads(lines[0])
    first["schema_version"] = "2.0"
    run.events_path.write_text(json.dumps(first) + "\n" + "".join(lines[1:]))
    with pytest.raises(jaxobs.SchemaVersionError, match="upgrade jaxobs"):
        jaxobs.read_run(run.dir)


def test_event_levels_are_read_only():
    """The table of event levels cannot be changed by a user (it is a read-only mapping)."""
    from jaxobs._src.formats.events import EVENT_LEVELS

    with pytest.raises(TypeError):
        EVENT_LEVELS["epoch_end"] = jaxobs.Level.DEBUG
    assert EVENT_LEVELS["epoch_end"] is jaxobs.Level.BASIC


def test_init_takes_keywords_after_project(tmp_path):
    """Everything after the project is keyword-only, as in wandb.init."""
    with pytest.raises(TypeError, match="positional"):
        jaxobs.init("p", "name", dir=tmp_path, terminal=False)
    assert not (tmp_path / "p").exists()


def test_every_method_works_on_other_processes(tmp_path, monkeypatch):
    """Off process 0 every method checks its input and records, binds and calls nothing."""
    from jaxobs._src.host import environment as _env

    monkeypatch.setattr(_env, "jax_state", lambda: {"process_index": 1, "process_count": 2})

    bound, logged, ended, seen = [], [], [], []

    class Tracker:
        def bind(self, run):
            bound.append(run)

    class Watcher:
        def on_log(self, run, step, values):
            logged.append(step)

        def on_end(self, run, status, error):
            ended.append(status)

    cm = jaxobs.artifacts.ConfusionMatrix(["a"], [[1]])
    with jaxobs.init(project="p", dir=tmp_path, sinks=[Tracker()], terminal=False) as run:
        assert run.enabled is False and run.sinks == []
        run.add_monitor(Watcher())
        run.register_callback("*", seen.append)
        run.add_sink(Tracker())
        run.log({"a": 1.0})
        run.log({"a": 2.0}, step=5)
        run.log_histograms({"h": np.arange(10.0)})
        run.emit("epoch_end", epoch=0)
        run.add_note("note")
        run.update_config({"lr": 0.1})
        run.add_artifact("file", tmp_path / "file.bin")
        run.log_confusion_matrix("cm", cm, step=1)
        run.flush()
        assert run.step == 6 and run.config == {"lr": 0.1}
        assert run.skipped_for_sinks_ns == []
        with pytest.raises(TypeError, match="metric 'w'"):
            run.log({"w": "high"})
        with pytest.raises(TypeError, match="callable"):
            run.register_callback("epoch_end", "not a function")
        with pytest.raises(ValueError, match="recorded by the run itself"):
            run.emit("metrics")
    assert run.finished and run.finish() is None
    with pytest.raises(RuntimeError, match="finished"):
        run.log({"a": 1.0})
    assert not (tmp_path / "p").exists()
    assert bound == [] and seen == []
    assert logged == [0, 5] and ended == []  # monitors see the records; on_end is not called


def _health_run(tmp_path, attach, checker):
    if attach == "init":
        return _init(tmp_path, health=checker)
    run = _init(tmp_path)
    run.add_monitor(checker)
    return run


@pytest.mark.parametrize("attach", ["init", "add_monitor"])
def test_health_checker_alerts_on_a_nan_logged_by_hand(tmp_path, attach):
    """A HealthChecker on a plain run.log loop raises a critical nonfinite alert on a NaN loss."""
    checker = jaxobs.HealthChecker()
    with _health_run(tmp_path, attach, checker) as run:
        for step in range(10):
            run.log({"train/loss": 2.0 / (step + 1)}, step=step)
        run.log({"train/loss": math.nan}, step=10)
    alerts = [e for e in read_events(run.dir) if e["event"] == "health_check"]
    critical = [(a["rule"], a["step"]) for a in alerts if a["severity"] == "critical"]
    assert critical == [("nonfinite", 10)]
    assert all(a["step"] == 10 for a in alerts)  # the healthy steps raised nothing
    assert (run.dir / "crash" / "crash-10.json").is_file()  # the supervisor's flight recorder


def test_a_health_checker_is_supervised_once(tmp_path):
    """add_monitor wraps a HealthChecker in one supervisor, however often it is added."""
    from jaxobs._src.host.supervisor import Supervisor

    checker = jaxobs.HealthChecker()
    run = _init(tmp_path, health=checker)
    run.add_monitor(checker)
    (monitor,) = run.monitors
    assert isinstance(monitor, Supervisor)
    assert monitor.checker is checker and monitor.recorder.capacity == 256
    run.finish()
    other = jaxobs.HealthChecker()
    own = Supervisor(other)
    run = _init(tmp_path)
    run.add_monitor(own)
    run.add_monitor(other)  # already applied by a supervisor of the run
    assert run.monitors == (own,)
    run.finish()
    with pytest.raises(TypeError, match="HealthChecker"):
        _init(tmp_path, health="yes")
