"""One sink's own queue and thread: what isolates a slow, hung or failing sink from the
training loop and from the other sinks.

A `SinkWorker` holds one sink (or the run's callbacks, as one sink) with a bounded queue
and a daemon thread. Putting an event never waits: when the queue is full the event is
dropped for this sink and counted. Control items (the ``run_end`` event, flush, close, bind)
are always queued, behind what the sink has not handled yet. Everything the sink raises, a
`BaseException` such as `SystemExit` included, is caught on the worker's thread, reported
once, and the sink is disabled (it still gets ``close()``). A worker that does not answer a
flush, close or bind within its time limit is *abandoned* by the `Dispatcher`: it gets
nothing more, and its thread is left to end by itself (it is a daemon: it never holds up
the interpreter's exit).
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import traceback
from collections import Counter
from collections.abc import Callable
from typing import Any

from jaxobs._src.formats.events import Event

__all__ = ["SinkTimeouts", "SinkWorker", "sink_name"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SinkTimeouts:
    """How long jaxobs waits for a sink before it abandons it.

    A sink's ``bind`` (a tracker starting its run), ``flush`` and ``close`` (a tracker
    finishing its run) run on the sink's own thread; the caller waits at most this long
    for each. A sink that takes longer is abandoned: it is reported (a warning and the run's
    ``run_end`` record, under ``sink_errors``), it gets no more events, and training and
    the other sinks go on. Its records are all in ``events.jsonl``: ``jaxobs sync`` sends
    them later.

    Attributes:
      bind_s: Limit for ``bind`` (W&B's ``init`` starts a service process: seconds).
      flush_s: Limit for ``flush``, and for the events queued before it to be handled.
      close_s: Limit for ``close`` (and the events queued before it), at the run's end.

    Raises:
      ValueError: a limit that is not a positive number.
    """

    bind_s: float = 30.0
    flush_s: float = 5.0
    close_s: float = 10.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(
                    f"SinkTimeouts({field.name}={value!r}): expected a positive number of seconds"
                )


def sink_name(sink: Any) -> str:
    """A sink's name in messages and in the ``run_end`` record."""
    return getattr(sink, "name", None) or type(sink).__name__


_STOP = "stop"


_FLUSH = "flush"


_BIND = "bind"


class SinkWorker:
    """A sink with its own bounded queue and daemon thread.

    Args:
      sink: The sink: ``handle_<type>(event)`` or ``handle_event(event)`` methods, and
        optionally ``flush()`` and ``close()``.
      maxsize: How many events may wait; more are dropped for this sink and counted.
      report: Called with the message when the sink raises (on the worker's thread).
      hint: What to do about a failure, added to its report.
    """

    def __init__(
        self, sink: Any, maxsize: int, report: Callable[[str], None], hint: str | None = None
    ) -> None:
        self.sink = sink
        self.hint = hint
        self.name = sink_name(sink)
        self.maxsize = maxsize
        self.dropped: Counter[str] = Counter()
        self.dropped_ns: list[int] = []
        self.disabled = False  # it raised: only close() reaches it
        self.abandoned = False  # it did not answer in time: nothing reaches it
        self.receiving = False  # set once bound: events are queued for it from then on
        self._report = report
        self._items: collections.deque[Any] = collections.deque()
        self._events = 0  # events (not control items) in the queue
        self._cond = threading.Condition()
        self._stopping = False
        self.thread = threading.Thread(
            target=self._work, name=f"jaxobs-sink-{self.name}", daemon=True
        )
        self.thread.start()

    # -- producers (any thread; never waits)

    def put(self, event: Event) -> bool:
        """Queue ``event``. Returns False when it was dropped (full, stopping, abandoned)."""
        with self._cond:
            if self._stopping or self.abandoned or not self.receiving:
                return False
            if event.type != "run_end" and self._events >= self.maxsize:
                self.dropped[event.type] += 1
                self.dropped_ns.append(event.timestamp_ns)
                return False
            self._items.append(event)
            self._events += 1
            self._cond.notify()
        return True

    def start_receiving(self, first: Event | None) -> None:
        """Queue ``first`` (the run's ``run_start``), then every event `put` from now on."""
        with self._cond:
            if first is not None:
                self._items.append(first)
                self._events += 1
            self.receiving = True
            self._cond.notify()

    def control(self, kind: str, *args: Any) -> threading.Event | None:
        """Queue a control item behind the events; returns what is set when it is done
        (None when the worker is stopping or abandoned)."""
        done = threading.Event()
        with self._cond:
            if self._stopping or self.abandoned:
                return None
            if kind == _STOP:
                self._stopping = True
            self._items.append((kind, done, args))
            self._cond.notify()
        return done

    def bind(self, run: Any) -> threading.Event | None:
        """Call the sink's ``bind(run)`` on the worker's thread."""
        return self.control(_BIND, run)

    def flush(self) -> threading.Event | None:
        """Handle what is queued, then call the sink's ``flush()``."""
        return self.control(_FLUSH)

    def stop(self) -> threading.Event | None:
        """Handle what is queued, call the sink's ``close()``, and end the thread."""
        return self.control(_STOP)

    def abandon(self) -> None:
        """Give up on the sink: nothing more is queued or handled."""
        with self._cond:
            self.abandoned = True
            self._items.clear()
            self._cond.notify()

    def drops(self) -> tuple[dict[str, int], list[int]]:
        """A consistent copy of what was dropped for this sink: counts per type, and the
        ``timestamp_ns`` of each dropped record."""
        with self._cond:
            return dict(self.dropped), list(self.dropped_ns)

    # -- the worker thread

    def _take(self) -> Any:
        with self._cond:
            while not self._items and not self.abandoned:
                self._cond.wait()
            if self.abandoned:
                return None
            item = self._items.popleft()
            if isinstance(item, Event):
                self._events -= 1
            return item

    def _work(self) -> None:
        while True:
            item = self._take()
            if item is None:  # abandoned: release what it holds, if it can
                self._call("close", None)
                return
            if isinstance(item, Event):
                if not self.disabled:
                    self._deliver(item)
                continue
            kind, done, args = item
            if kind == _BIND:
                self._call("bind", None, *args)
            elif kind == _FLUSH and not self.disabled:
                self._call("flush", None)
            elif kind == _STOP:
                self._call("close", None)  # a disabled sink too: it releases what it holds
                done.set()
                return
            done.set()

    def _deliver(self, event: Event) -> None:
        sink = self.sink
        if getattr(sink, f"handle_{event.type}", None) is not None:
            self._call(f"handle_{event.type}", event, event)
        elif getattr(sink, "handle_event", None) is not None:
            self._call("handle_event", event, event)

    def _call(self, name: str, event: Event | None, *args: Any) -> None:
        method = getattr(self.sink, name, None)
        if method is None or (self.disabled and name != "close"):
            return
        try:
            method(*args)
        except BaseException as e:
            if self.abandoned:  # already reported as abandoned
                return  # SystemExit and KeyboardInterrupt from a sink too
            self.disabled = True
            where = f" on {event.type} at step {event.step}" if event is not None else ""
            left = "left out" if name == "bind" else "disabled for the rest of the run"
            message = (
                f"jaxobs: {self.name}.{name} raised {type(e).__name__}: {e}{where}; the sink "
                f"is {left} (training goes on, events.jsonl is complete)"
            )
            if self.hint:
                message += f"; {self.hint}"
            self._report(message + "\n" + traceback.format_exc(limit=3))
