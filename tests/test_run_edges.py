"""Edge cases of the live run found in review: each test names the failure it guards against."""

import atexit
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from helpers import PYTHON, read_events

import jaxobs
from jaxobs.cli import main as cli


def _init(tmp_path, **kw):
    kw.setdefault("terminal", False)
    return jaxobs.init(project="p", dir=tmp_path, **kw)


@pytest.mark.parametrize("key", ["event", "level", "timestamp_ns"])
def test_emit_refuses_payload_keys_that_are_record_fields(tmp_path, key):
    """emit(..., event=...) would make the run unreadable: it is refused, naming the key."""
    run = _init(tmp_path)
    with pytest.raises(ValueError, match=key):
        run.emit("custom", **{key: "metrics"})
    run.finish()
    assert jaxobs.read_run(run.dir).status == "finished"


@pytest.mark.parametrize("kind", ["note", "config_update", "run_start", "metrics"])
def test_emit_refuses_types_the_run_records_itself(tmp_path, kind):
    """Types with a meaning for read_run cannot be forged through emit."""
    run = _init(tmp_path)
    with pytest.raises(ValueError, match="recorded by the run itself"):
        run.emit(kind, foo=1)
    run.finish()


def test_callback_that_emits_never_deadlocks(tmp_path):
    """A callback recording an event while the queue is full neither waits nor deadlocks."""
    run = _init(tmp_path, queue_size=2)
    run.register_callback("epoch_end", lambda e: run.emit("alert", step=e.step))
    t0 = time.monotonic()
    for epoch in range(5):
        run.emit("epoch_end", step=epoch, epoch=epoch)
    run.flush(20)
    run.finish()
    assert time.monotonic() - t0 < 20  # the old code waited 5 s per event (generous bound)
    kinds = [e["event"] for e in read_events(run.dir)]
    assert kinds.count("epoch_end") == 5 and kinds.count("alert") >= 1


def test_callbacks_reacting_to_last_events_may_still_record(tmp_path):
    """finish() lets queued events reach callbacks before the run stops accepting records."""
    run = _init(tmp_path)
    run.register_callback("epoch_end", lambda e: run.emit("reaction", step=e.step))
    run.emit("epoch_end", step=3, epoch=0)
    run.finish()
    events = read_events(run.dir)
    assert "reaction" in [e["event"] for e in events]
    assert events[-1]["sink_errors"] == []


def test_relative_dir_survives_chdir(tmp_path, monkeypatch):
    """A run created with a relative dir still finishes after the process changes directory."""
    monkeypatch.chdir(tmp_path)
    run = jaxobs.init(project="p", dir="runs", terminal=False)
    run.log({"a": 1.0})
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    run.finish()
    assert (tmp_path / "runs" / "p" / run.id / "trainlog.json").is_file()


@pytest.mark.parametrize(("code", "status"), [(0, "finished"), (None, "finished"), (3, "failed")])
def test_sys_exit_in_with_block(tmp_path, code, status):
    """sys.exit(0) ends the run as finished; a non-zero exit as failed."""
    with pytest.raises(SystemExit), _init(tmp_path) as run:
        raise SystemExit(code)
    assert read_events(run.dir)[-1]["status"] == status


def test_non_utf8_argv_does_not_stop_init(tmp_path):
    """A command line with bytes that are not UTF-8 is recorded (escaped), not a crash."""
    script = tmp_path / "s.py"
    script.write_text(
        "import jaxobs\n"
        f"with jaxobs.init(project='p', id='r', dir={str(tmp_path)!r}, terminal=False) as run:\n"
        "    run.log({'a': 1.0})\n"
    )
    out = subprocess.run([PYTHON, str(script), b"data_\xff.bin"], capture_output=True)
    assert out.returncode == 0, out.stderr
    argv = read_events(tmp_path / "p" / "r")[0]["env"]["argv"]
    assert os.fsencode(argv[1]) == b"data_\xff.bin"  # escaped in the file, exact when read


def test_failed_init_leaves_no_file(tmp_path):
    """An init that fails (bad queue size) leaves nothing that blocks the id later."""
    with pytest.raises(ValueError, match="queue_size"):
        _init(tmp_path, id="x", queue_size=0)
    assert not (tmp_path / "p" / "x" / "events.jsonl").exists()
    _init(tmp_path, id="x").finish()


def test_disabled_sink_is_still_closed(tmp_path):
    """A sink disabled after an error still gets close() at the end, to release resources."""

    class Sink:
        closed = False

        def handle_metrics(self, event):
            raise RuntimeError("x")

        def close(self):
            Sink.closed = True

    with _init(tmp_path, sinks=[Sink()]) as run:
        run.log({"a": 1.0})
    assert Sink.closed


def test_same_callback_for_two_types_is_disabled_only_where_it_failed(tmp_path):
    """One function registered for two types, failing on one, keeps running for the other."""
    seen = []

    def cb(event):
        if event.type == "epoch_end":
            raise RuntimeError("bad")
        seen.append(event.type)

    run = _init(tmp_path)
    run.register_callback("epoch_end", cb)
    run.register_callback("train_end", cb)
    run.emit("epoch_end", epoch=0)
    run.emit("train_end")
    run.finish()
    assert seen == ["train_end"]


def test_terminal_metrics_survive_concurrent_refresh(tmp_path):
    """The live display's refresh thread can read metrics while new ones arrive."""
    sink = jaxobs.TerminalSink()
    stop = threading.Event()
    errors = []

    def reader():
        while not stop.is_set():
            try:
                sink._metrics_text()
            except RuntimeError as e:
                errors.append(e)

    thread = threading.Thread(target=reader)
    thread.start()
    from jaxobs import Event, Level

    for i in range(3000):
        sink.latest = sink.latest  # no-op; the sink's own update path follows
        event = Event("metrics", Level.BASIC, i, 0, {"values": {f"m{i}": 1.0}})
        sink.handle_metrics.__func__(_Quiet(sink), event)
    stop.set()
    thread.join()
    assert errors == []


class _Quiet:
    """The sink's state without a console: handle_metrics updates `latest` and stops there."""

    def __init__(self, sink):
        self.__dict__["_sink"] = sink

    def __getattr__(self, name):
        return getattr(self._sink, name)

    def __setattr__(self, name, value):
        setattr(self._sink, name, value)

    @property
    def live(self):
        return False


def test_csv_export_keeps_repeated_steps(tmp_path, capsys):
    """Two values of one metric at one step are two CSV rows, not one."""
    path = tmp_path / "log.json"
    jaxobs.TrainLog(series=[jaxobs.Series("a", [1.0, 2.0], steps=[3, 3])]).write_json(path)
    assert cli(["export", str(path), "--format", "csv"]) == 0
    assert capsys.readouterr().out == "step,a\n3,1.0\n3,2.0\n"
    jaxobs.TrainLog(series=[jaxobs.Series("step", [1.0])]).write_json(path)
    assert cli(["export", str(path), "--format", "csv"]) == 0  # a metric "step" is "step_"
    assert capsys.readouterr().out == "step,step_\n0,1.0\n"


def test_deeply_nested_json_is_one_line_error(tmp_path, capsys):
    """A file nested deeper than the parser allows is a clean error, exit 2."""
    path = tmp_path / "deep.json"
    path.write_text("[" * 100000 + "]" * 100000)
    assert cli(["show", str(path)]) == 2
    assert capsys.readouterr().err.startswith("jaxobs: error: ")


def test_confusion_matrix_step_is_validated(tmp_path):
    """A step that is not an integer cannot place a file outside the run directory."""
    run = _init(tmp_path)
    cm = jaxobs.artifacts.ConfusionMatrix(["a"], [[1]])
    with pytest.raises(TypeError, match="step"):
        run.log_confusion_matrix("cm", cm, step="x/../../escaped")
    run.finish()
    with pytest.raises(RuntimeError, match="finished"):
        run.log_confusion_matrix("cm", cm, step=1)
    assert not (run.dir / "artifacts" / "cm-1.json").exists()


def test_huge_int_metric_is_a_type_error(tmp_path):
    """An int too large for a float is a TypeError naming the metric."""
    run = _init(tmp_path)
    with pytest.raises(TypeError, match="'x'"):
        run.log({"x": 10**400})
    run.finish()


def test_forked_child_does_not_end_the_parents_run(tmp_path, monkeypatch):
    """The exit hook does nothing in another process (a forked child) than the run's own."""
    # A real fork cannot be tested here: JAX hangs a forked child at interpreter exit.
    hooks, register = [], atexit.register
    monkeypatch.setattr(atexit, "register", lambda fn: hooks.append(fn) or register(fn))
    run = _init(tmp_path)
    finish_at_exit = hooks[-1]  # what the interpreter calls at exit
    run.log({"a": 1.0}, step=0)
    real_pid = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: real_pid + 1)
    finish_at_exit()
    assert [e["event"] for e in read_events(run.dir)][-1] == "metrics"
    monkeypatch.setattr(os, "getpid", lambda: real_pid)
    finish_at_exit()
    assert read_events(run.dir)[-1]["status"] == "finished"


def test_sigterm_handler_restored_when_previous_was_none(tmp_path, monkeypatch):
    """If the previous handler is unknown to Python (None), Terminated is not left installed."""
    real = signal.signal
    calls = []

    def fake(sig, handler):
        calls.append(handler)
        previous = real(sig, handler)
        return None if len(calls) == 1 else previous

    monkeypatch.setattr(signal, "signal", fake)
    with _init(tmp_path):
        pass
    assert calls[-1] is signal.SIG_DFL


# Gaps where a broken feature would have passed every test.


def test_init_adds_a_terminal_sink_unless_told_not_to(tmp_path):
    """terminal=None (default) adds a TerminalSink; terminal=False does not."""
    with jaxobs.init(project="p", dir=tmp_path) as run:
        assert any(isinstance(s, jaxobs.TerminalSink) for s in run.sinks)
    with _init(tmp_path) as run:
        assert not any(isinstance(s, jaxobs.TerminalSink) for s in run.sinks)


def test_run_start_is_fsynced(tmp_path, monkeypatch):
    """The first record is fsynced as soon as the run starts."""
    synced = []
    real = os.fsync
    monkeypatch.setattr(
        os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd))
    )
    run = _init(tmp_path)
    assert str(run.events_path) in synced
    run.finish()


def test_run_flush_flushes_sinks(tmp_path):
    """run.flush() calls each sink's flush()."""

    class Sink:
        flushed = 0

        def flush(self):
            Sink.flushed += 1

    run = _init(tmp_path, sinks=[Sink()])
    run.flush()
    assert Sink.flushed == 1
    run.finish()


def test_default_level_is_detailed(tmp_path):
    """Without JAXOBS_LEVEL, DETAILED events are recorded and DEBUG ones are not."""
    run = _init(tmp_path)
    run.emit("batch_end", step=0)
    run.emit("deep", step=0, level="DEBUG")
    run.emit("mine", step=0)  # a custom type: DETAILED
    run.finish()
    kinds = [e["event"] for e in read_events(run.dir)]
    assert kinds == ["run_start", "batch_end", "mine", "run_end"]


def test_custom_events_are_filtered_at_basic(tmp_path):
    """A custom event type is DETAILED, so a BASIC run does not record it."""
    run = _init(tmp_path, level="BASIC")
    run.emit("mine", step=0)
    run.finish()
    assert "mine" not in [e["event"] for e in read_events(run.dir)]


def test_finishing_an_older_run_leaves_the_newer_one_active(tmp_path):
    """A run finished on another thread after a newer one started does not clear the newer."""
    older = _init(tmp_path)
    newer = _init(tmp_path)
    thread = threading.Thread(target=older.finish)
    thread.start()
    thread.join()
    assert jaxobs.active_run() is newer
    newer.finish()
    assert jaxobs.active_run() is None


def test_run_collected_on_its_own_worker_thread(tmp_path, monkeypatch):
    """A run whose last reference goes away in a callback is released there without an error."""
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    closed, go = threading.Event(), threading.Event()

    class Sink:
        def close(self):
            closed.set()

    holder = [_init(tmp_path, sinks=[Sink()])]

    def drop(event):
        go.wait(60)
        holder.clear()  # the last reference: Run.__del__ runs here, on the worker thread

    holder[0].register_callback("epoch_end", drop)
    holder[0].emit("epoch_end", epoch=0)
    _init(tmp_path).finish()  # the active run is another one now
    go.set()
    assert closed.wait(60)  # the worker went on to close the sinks and stop
    assert unraisable == []
