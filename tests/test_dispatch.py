"""Event dispatch: sinks, callbacks, the bounded queue's policy, failing sinks, terminal."""

import io
import logging
import threading
import time

import pytest
from helpers import metric_table, read_events

import jaxobs
from jaxobs._src.formats.events import Event, Level
from jaxobs._src.host.dispatch import Dispatcher


class Recorder:
    """A sink that keeps what it receives."""

    def __init__(self):
        self.got = []
        self.closed = False

    def handle_metrics(self, event):
        self.got.append(("metrics", event.step, dict(event.metrics)))

    def handle_epoch_end(self, event):
        self.got.append(("epoch_end", event.epoch, dict(event.metrics)))

    def close(self):
        self.closed = True


class Blocked:
    """A sink stuck on its first event until released."""

    def __init__(self):
        self.release = threading.Event()
        self.seen = []

    def handle_event(self, event):
        self.release.wait(60)
        self.seen.append(event.type)


def _init(tmp_path, **kw):
    return jaxobs.init(project="p", dir=tmp_path, terminal=False, **kw)


def test_sinks_receive_events_in_order(tmp_path):
    """handle_<type> methods get the events, in order, and close() at the end."""
    sink = Recorder()
    with _init(tmp_path, sinks=[sink]) as run:
        for step in range(5):
            run.log({"train/loss": float(step)}, step=step)
        run.emit("epoch_end", step=4, epoch=0, metrics={"val/loss": 0.5})
    assert sink.got == [
        *[("metrics", s, {"train/loss": float(s)}) for s in range(5)],
        ("epoch_end", 0, {"val/loss": 0.5}),
    ]
    assert sink.closed


def test_register_callback_by_type_and_wildcard(tmp_path):
    """Callbacks get their event type; '*' gets every event."""
    epochs, everything = [], []
    run = _init(tmp_path)
    run.register_callback("epoch_end", lambda e: epochs.append(e.epoch))
    run.register_callback("*", lambda e: everything.append(e.type))
    run.log({"a": 1.0})
    run.emit("epoch_end", epoch=3)
    run.finish()
    assert epochs == [3]
    # run_start may reach the worker before or after the callback is registered.
    assert [t for t in everything if t != "run_start"] == ["metrics", "epoch_end", "run_end"]
    other = _init(tmp_path)
    with pytest.raises(TypeError, match="callable"):
        other.register_callback("epoch_end", "not a function")
    other.finish()


def test_failing_sink_is_reported_once_and_disabled(tmp_path, caplog):
    """A raising sink is reported once, disabled; other sinks and the file are unaffected."""

    class Broken:
        calls = 0

        def handle_metrics(self, event):
            Broken.calls += 1
            raise OSError("tracker unreachable")

    good = Recorder()
    with (
        caplog.at_level(logging.WARNING, logger="jaxobs"),
        _init(tmp_path, sinks=[Broken(), good]) as run,
    ):
        for step in range(10):
            run.log({"a": float(step)}, step=step)
    assert Broken.calls == 1
    reports = [r.getMessage() for r in caplog.records if "Broken.handle_metrics" in r.message]
    assert len(reports) == 1 and "OSError: tracker unreachable" in reports[0]
    assert len(good.got) == 10
    end = read_events(run.dir)[-1]
    assert "tracker unreachable" in end["sink_errors"][0]
    assert sorted(metric_table(read_events(run.dir))["a"]) == list(range(10))


def test_slow_sink_never_stalls_logging(tmp_path):
    """With a sink stuck, logging still returns; stream events are dropped for sinks only."""
    sink = Blocked()
    run = _init(tmp_path, sinks=[sink], queue_size=4)
    done = threading.Event()

    def train():
        for step in range(300):
            run.log({"a": float(step)}, step=step)
        done.set()

    worker = threading.Thread(target=train)
    worker.start()
    finished = done.wait(60)  # would time out if log() waited for the sink
    sink.release.set()
    worker.join(60)
    assert finished
    run.finish()
    events = read_events(run.dir)
    assert sorted(metric_table(events)["a"]) == list(range(300))  # the file has everything
    dropped = events[-1]["dropped_for_sinks"]["metrics"]
    assert dropped > 0
    assert sink.seen.count("metrics") == 300 - dropped


def test_no_event_type_waits_for_a_full_queue():
    """Boundary events find a full queue: dropped for that sink at once, counted, never waited."""
    sink = Blocked()
    d = Dispatcher([sink], maxsize=1)

    def ev(kind):
        return Event(kind, Level.BASIC, 0, time.time_ns(), {})

    assert d.submit(ev("epoch_end"))  # taken by the worker, which then blocks
    while not d.submit(ev("epoch_end")):  # fills the queue once the worker holds the first
        pass
    assert not d.submit(ev("epoch_end"))  # full: dropped, no wait
    assert not d.submit(ev("metrics"))
    assert d.drops()[0]["metrics"] == 1 and d.drops()[0]["epoch_end"] >= 1
    assert d.submit(ev("run_end"))  # the end of the run is never dropped
    sink.release.set()
    d.close()
    assert sink.seen[-1] == "run_end" and sink.seen.count("epoch_end") == 2


def test_flush_waits_for_sinks(tmp_path):
    """run.flush() returns after the sinks handled every queued event."""
    sink = Recorder()
    run = _init(tmp_path, sinks=[sink])
    for step in range(50):
        run.log({"a": 1.0}, step=step)
    run.flush()
    assert len(sink.got) == 50
    run.finish()


def _console(terminal: bool):
    from rich.console import Console

    buf = io.StringIO()
    return buf, Console(file=buf, force_terminal=terminal, width=160, color_system=None)


def test_terminal_sink_shows_progress_metrics_and_alerts(tmp_path):
    """On a terminal: run line, progress with steps, metrics, coloured alert text, end line."""
    buf, console = _console(True)
    sink = jaxobs.TerminalSink(total_steps=20, console=console)
    with _init(tmp_path, sinks=[sink]) as run:
        for step in range(20):
            run.log({"train/loss": 1.5 - step / 100, "grads/x/norm": 3.0}, step=step)
            time.sleep(0.01)
        run.emit("health_check", step=19, severity="danger", message="gradient norm 1e6")
    out = buf.getvalue()
    assert f"p/{run.id}" in out
    assert "20/20" in out
    assert "train/loss=1.31" in out
    assert "grads/x/norm" not in out  # train/ and val/ keys are preferred
    assert "steps/s" in out
    assert "[DANGER] step 19: gradient norm 1e6" in out
    assert "finished" in out


def test_terminal_sink_is_quiet_off_terminal(tmp_path):
    """Off a terminal: no bar, no metrics; only warning-or-worse alerts, one line each."""
    buf, console = _console(False)
    sink = jaxobs.TerminalSink(console=console)
    with _init(tmp_path, sinks=[sink]) as run:
        run.log({"train/loss": 1.0}, step=0)
        run.emit("health_check", step=0, severity="info", message="fyi")
        run.emit("health_check", step=0, severity="warning", message="loss spike")
    assert buf.getvalue() == "jaxobs: [WARNING] step 0: loss spike\n"


def test_default_terminal_sink_respects_stdout(tmp_path, capsys):
    """init's own terminal display prints nothing when stdout is captured (not a terminal)."""
    with jaxobs.init(project="p", dir=tmp_path) as run:
        run.log({"train/loss": 1.0}, step=0)
    assert capsys.readouterr().out == ""


def test_drops_from_many_threads_are_all_counted():
    """Producers dropping events at the same moment lose no count and no timestamp."""
    sink = Blocked()
    d = Dispatcher([sink], maxsize=1)
    assert d.submit(Event("first", Level.BASIC, 0, 0, {}))  # the worker blocks on it
    while not d.submit(Event("fill", Level.BASIC, 0, 0, {})):  # until the queue holds one
        pass
    threads, types = 8, 20
    refused = [0] * threads
    barrier = threading.Barrier(threads)

    def produce(i):
        barrier.wait()
        for t in range(types):
            refused[i] += not d.submit(Event(f"type_{t}", Level.BASIC, 0, 1000 + t, {}))

    workers = [threading.Thread(target=produce, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    sink.release.set()
    d.close()
    assert sum(refused) == threads * types  # every submission found the queue full
    dropped, _ = d.drops()
    counts = {k: n for k, n in dropped.items() if k.startswith("type_")}  # not "fill"
    assert counts == {f"type_{t}": threads for t in range(types)}
    stamps = sorted(d.skipped_for(sink))  # per sink, with repeats: one per drop
    assert [ns for ns in stamps if ns >= 1000] == sorted(
        1000 + t for t in range(types) for _ in range(threads)
    )


def test_close_from_the_worker_thread_stops_it():
    """close() called on the worker (a sink, or a run collected there) neither raises nor hangs."""
    closed = threading.Event()
    d = None

    class Closer:
        def handle_event(self, event):
            d.close(timeout_s=1.0)  # on the worker thread: joining it would raise

        def close(self):
            closed.set()

    d = Dispatcher([Closer()])
    d.submit(Event("epoch_end", Level.BASIC, 0, 0, {}))
    assert closed.wait(60)  # the worker went on to close the sinks
    assert d.errors == []
    assert not d.submit(Event("epoch_end", Level.BASIC, 1, 0, {}))  # closed: refused
    deadline = time.monotonic() + 60
    while not d.stopped and time.monotonic() < deadline:
        time.sleep(0.01)
    assert d.stopped


def test_close_from_the_worker_with_a_full_queue_delivers_the_rest():
    """A close on the worker while the queue is full still delivers what was queued, then stops."""
    go, closed = threading.Event(), threading.Event()
    seen = []
    d = None

    class Closer:
        def handle_event(self, event):
            seen.append(event.step)
            if event.step == 0:
                go.wait(60)
                d.close(timeout_s=1.0)  # the queue is full: the stop cannot be queued

        def close(self):
            closed.set()

    d = Dispatcher([Closer()], maxsize=1)
    d.submit(Event("epoch_end", Level.BASIC, 0, 0, {}))
    while not d.submit(Event("epoch_end", Level.BASIC, 1, 0, {})):
        pass
    go.set()
    assert closed.wait(60)
    assert seen[0] == 0 and seen[-1] == 1
    assert d.errors == []


def test_flush_from_the_worker_does_not_wait_for_itself(tmp_path):
    """run.finish() called from a callback (on the worker) ends the run without a deadlock."""
    done = threading.Event()
    run = _init(tmp_path)

    def finish_now(event):
        run.finish()
        done.set()

    run.register_callback("epoch_end", finish_now)
    run.emit("epoch_end", epoch=0)
    assert done.wait(60)
    events = read_events(run.dir)
    assert events[-1]["event"] == "run_end" and events[-1]["sink_errors"] == []
    assert run.trainlog_path.is_file()
