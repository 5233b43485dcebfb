"""Sinks that hang, raise BaseException or are slow never stall training or the other sinks;
bind, flush and close have time limits after which the sink is abandoned and reported."""

import logging
import threading
import time

import pytest
from helpers import metric_table, read_events

import jaxobs
from jaxobs._src.formats.events import Event, Level
from jaxobs._src.host.dispatch import Dispatcher

FAST = jaxobs.SinkTimeouts(bind_s=0.3, flush_s=0.3, close_s=0.3)


class Recorder:
    def __init__(self):
        self.types = []
        self.closed = False

    def handle_event(self, event):
        self.types.append(event.type)

    def close(self):
        self.closed = True


class Hang:
    """A sink that hangs in one of its methods until released (or the test ends)."""

    def __init__(self, where):
        self.where = where
        self.release = threading.Event()
        self.entered = threading.Event()
        self.handled = 0

    def _maybe_hang(self, name):
        if name == self.where:
            self.entered.set()
            self.release.wait(120)

    def bind(self, run):
        self._maybe_hang("bind")

    def handle_event(self, event):
        self.handled += 1
        self._maybe_hang("handle")

    def flush(self):
        self._maybe_hang("flush")

    def close(self):
        self._maybe_hang("close")


def _train(run, steps=300):
    for step in range(steps):
        run.log({f"m{i}": float(step + i) for i in range(8)}, step=step)
        if step % 50 == 49:
            run.emit("epoch_end", epoch=step // 50)


def _finish_in_thread(run):
    """Finish on another thread; returns whether it returned (it would hang forever else)."""
    t = threading.Thread(target=run.finish)
    t.start()
    t.join(120)
    return not t.is_alive()


@pytest.mark.parametrize("where", ["handle", "flush", "close"])
def test_a_hung_sink_is_abandoned_and_the_rest_is_delivered(tmp_path, caplog, where):
    """A sink hung in its handler, flush or close: logging never waits, finish returns after
    the limit, the hang is reported in run_end, and the other sink gets every event."""
    caplog.set_level(logging.WARNING, logger="jaxobs")
    hung, good = Hang(where), Recorder()
    run = jaxobs.init("iso", dir=tmp_path, terminal=False, sinks=[hung, good], sink_timeouts=FAST)
    _train(run)
    if where == "flush":
        run.flush()  # the hung flush is abandoned after flush_s
    assert _finish_in_thread(run)
    hung.release.set()
    events = read_events(run.dir)
    assert sorted(metric_table(events)["m0"]) == list(range(300))  # the file has it all
    end = events[-1]
    assert end["event"] == "run_end"
    if where != "close":  # run_end is written before the sinks close
        assert any("Hang" in e and "abandoned" in e for e in end["sink_errors"]), end

    assert good.types.count("metrics") == 300 and good.types.count("epoch_end") == 6
    assert good.types[-1] == "run_end" and good.closed
    assert any("abandoned" in r.getMessage() for r in caplog.records)


def test_a_hung_bind_does_not_hold_up_init(tmp_path):
    """A sink whose bind never returns: init returns after bind_s; the sink is left out."""
    hung, good = Hang("bind"), Recorder()
    result = {}

    def start():
        result["run"] = jaxobs.init(
            "iso", dir=tmp_path, terminal=False, sinks=[hung, good], sink_timeouts=FAST
        )

    t = threading.Thread(target=start)
    t.start()
    t.join(120)
    assert not t.is_alive()
    run = result["run"]
    _train(run, 20)
    run.finish()
    hung.release.set()
    assert hung.handled == 0  # an abandoned sink gets nothing
    end = read_events(run.dir)[-1]
    assert any("bind" in e and "abandoned" in e for e in end["sink_errors"])
    assert good.types.count("metrics") == 20 and good.types[0] == "run_start"


@pytest.mark.parametrize("exc", [SystemExit(3), KeyboardInterrupt(), GeneratorExit()])
def test_base_exceptions_from_a_sink_are_contained(tmp_path, exc):
    """SystemExit & co. from a sink are reported in sink_errors; the other sinks go on."""

    class Exits:
        def handle_metrics(self, event):
            raise exc

    good = Recorder()
    with jaxobs.init("iso", dir=tmp_path, terminal=False, sinks=[Exits(), good]) as run:
        _train(run, 30)
    end = read_events(run.dir)[-1]
    assert len(end["sink_errors"]) == 1 and type(exc).__name__ in end["sink_errors"][0]
    assert good.types.count("metrics") == 30 and good.types.count("epoch_end") == 0
    assert good.types[-1] == "run_end"


def test_a_slow_sink_does_not_starve_a_fast_one():
    """With one sink stuck, another sink still gets every event, at once."""
    stuck = Hang("handle")
    good = Recorder()
    d = Dispatcher([stuck, good], maxsize=8)
    for step in range(100):
        d.submit(Event("metrics", Level.BASIC, step, step, {"values": {"a": 1.0}}))
        deadline = time.monotonic() + 30
        while len(good.types) <= step and time.monotonic() < deadline:
            time.sleep(0.0005)  # the fast one handles each event while the other is stuck
    assert good.types.count("metrics") == 100
    assert d.flush(timeout_s=0.2) is False  # the stuck one cannot answer
    counts = d.drops_by_sink()
    assert "Hang" in counts and "Recorder" not in counts
    assert counts["Hang"]["metrics"] == 100 - 1 - 8  # one in hand, eight queued
    stuck.release.set()
    d.close()


def test_the_end_of_the_run_reaches_a_sink_whose_queue_is_full():
    """run_end is never dropped: a slow sink gets it after its backlog."""
    slow = Hang("handle")
    d = Dispatcher([slow], maxsize=2)
    for step in range(10):
        d.submit(Event("metrics", Level.BASIC, step, step, {"values": {}}))
    assert d.submit(Event("run_end", Level.BASIC, 9, 10, {"status": "finished"}))
    seen = []
    slow.handle_event = lambda event: seen.append(event.type)  # unstick the next ones
    slow.release.set()
    d.close()
    assert seen[-1] == "run_end"


def test_sink_timeouts_are_validated():
    with pytest.raises(ValueError, match="flush_s"):
        jaxobs.SinkTimeouts(flush_s=0)
    with pytest.raises(ValueError, match="bind_s"):
        jaxobs.SinkTimeouts(bind_s=float("nan"))
