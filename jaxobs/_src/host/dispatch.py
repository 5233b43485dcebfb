"""The dispatcher that hands a run's events to its sinks, each sink on its own thread.

A sink is any object with ``handle_<event_type>(event)`` methods (and, optionally,
``handle_event(event)`` for every type it has no specific method for, ``bind(run)``,
``flush()`` and ``close()``). There is no base class to inherit from.

Isolation (one `SinkWorker` per sink, and one for the run's callbacks):

- The run's ``events.jsonl`` is written by the `Run` itself, before an event is handed
  here, so nothing here can lose a record from the file.
- **The training thread never waits on a sink**, for any event type: each sink has its own
  bounded queue (``maxsize`` events), and an event that finds it full is dropped *for that
  sink only* and counted (per sink, with the record's timestamp, so that a tracker bridge
  sends it from ``events.jsonl`` when the run ends). The ``run_end`` event is never
  dropped. One slow sink does not delay the others.
- **Time limits** (`SinkTimeouts`): ``bind``, ``flush`` and ``close`` run on the sink's
  thread, and the caller waits at most ``bind_s`` / ``flush_s`` / ``close_s``. A sink that
  takes longer is abandoned: reported (a warning and the run's ``run_end`` record), sent
  nothing more, its thread left to end by itself.
- A sink method or callback that raises, with any `BaseException` (`SystemExit` too), is
  reported once (a warning on the ``jaxobs`` logger naming the sink, the event and the
  error) and that sink (or callback) is disabled; training goes on.

`Dispatcher.flush` and `Dispatcher.close` called on a sink's own thread (from a sink, a
callback, or a run that the garbage collector finalises there) do not wait for that
thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from jaxobs._src.formats.events import Event
from jaxobs._src.host.sink_worker import SinkTimeouts, SinkWorker

__all__ = ["Dispatcher", "SinkTimeouts"]

logger = logging.getLogger("jaxobs")


class _Callbacks:
    """The run's callbacks as one sink, each callback disabled on its own when it raises."""

    name = "callbacks"

    def __init__(self, report: Callable[[str], None]) -> None:
        self.entries: list[tuple[str, Callable[[Event], Any]]] = []
        self._disabled: set[int] = set()
        self._report = report
        self._lock = threading.Lock()

    def add(self, event_type: str, fn: Callable[[Event], Any]) -> None:
        with self._lock:
            self.entries.append((event_type, fn))

    def handle_event(self, event: Event) -> None:
        with self._lock:
            entries = list(self.entries)
        for entry in entries:
            event_type, fn = entry
            if event_type not in (event.type, "*") or id(entry) in self._disabled:
                continue
            try:
                fn(event)
            except BaseException as e:
                self._disabled.add(id(entry))
                self._report(
                    f"jaxobs: callback {getattr(fn, '__name__', fn)!r} raised "
                    f"{type(e).__name__}: {e} on {event.type} at step {event.step}; it is "
                    "disabled for the rest of the run (training goes on, events.jsonl is "
                    "complete)"
                )


class Dispatcher:
    """Hands events to sinks and callbacks, each sink on its own worker thread.

    Args:
      sinks: Initial sinks (not bound: see `add_sink`).
      maxsize: How many events may wait for each sink.
      timeouts: The time limits of ``bind``, ``flush`` and ``close``.
    """

    def __init__(
        self,
        sinks: Iterable[Any] = (),
        maxsize: int = 1024,
        timeouts: SinkTimeouts | None = None,
    ) -> None:
        if maxsize < 1:
            raise ValueError(f"queue size must be at least 1, got {maxsize}")
        if timeouts is not None and not isinstance(timeouts, SinkTimeouts):
            raise TypeError(f"timeouts must be a jaxobs.SinkTimeouts, got {timeouts!r}")
        self.timeouts = timeouts or SinkTimeouts()
        self._maxsize = maxsize
        self.errors: list[str] = []
        # Re-entrant: the garbage collector may finalise a run (which closes this) on a
        # worker thread at any allocation, also while that thread holds the lock.
        self._lock = threading.RLock()
        self._workers: list[SinkWorker] = []
        self._callbacks = _Callbacks(self._report)
        self._callback_worker: SinkWorker | None = None
        self._closed = False
        for sink in sinks:
            self.add_sink(sink)

    # -- what is known

    @property
    def sinks(self) -> list[Any]:
        """The sinks, in the order they were added (abandoned ones included)."""
        with self._lock:
            return [w.sink for w in self._workers]

    @property
    def stopped(self) -> bool:
        """Whether every worker thread has ended (after `close`)."""
        return not any(w.thread.is_alive() for w in self._all() if not w.abandoned)

    def drops(self) -> tuple[dict[str, int], list[int]]:
        """What the sinks did not get: counts per event type (summed over the sinks), and the
        ``timestamp_ns`` of every record some sink did not get (sorted, once each)."""
        counts: Counter[str] = Counter()
        stamps: set[int] = set()
        for worker in self._all():
            dropped, dropped_ns = worker.drops()
            counts.update(dropped)
            stamps.update(dropped_ns)
        return dict(counts), sorted(stamps)

    def drops_by_sink(self) -> dict[str, dict[str, int]]:
        """What each sink did not get, counted per event type (sinks that got all: absent)."""
        out: dict[str, dict[str, int]] = {}
        for worker in self._all():
            dropped, _ = worker.drops()
            if dropped:
                out[worker.name] = dropped
        return out

    def skipped_for(self, sink: Any) -> list[int]:
        """The ``timestamp_ns`` of every record ``sink`` did not get (its queue was full)."""
        for worker in self._all():
            if worker.sink is sink:
                return worker.drops()[1]
        return []

    def add_error(self, message: str) -> None:
        """Keep the report of a sink error raised outside the workers (a failed ``bind``)."""
        with self._lock:
            self.errors.append(message)

    def _report(self, message: str) -> None:
        """Keep and log the report of a sink error (the traceback is kept, not logged)."""
        self.add_error(message)
        logger.warning(message.split("\n", 1)[0])

    # -- adding

    def add_sink(
        self, sink: Any, first: Event | None = None, bind: Any = None, hint: str | None = None
    ) -> bool:
        """Give ``sink`` its own worker, and deliver it the events submitted from now on.

        Args:
          sink: The sink.
          first: An event it gets first (the run's ``run_start``).
          bind: The run to ``bind`` it to first (when it has ``bind``), on its own thread,
            waiting up to ``timeouts.bind_s``.
          hint: What to do about it, added to every report of this sink's failures (the
            `jaxobs sync` command of a tracker).

        Returns:
          Whether the sink was added: False when its ``bind`` raised or took too long (it
          is reported, and the run goes on without it).
        """
        worker = SinkWorker(sink, self._maxsize, self._report, hint)
        with self._lock:
            self._workers.append(worker)
        if bind is not None and getattr(sink, "bind", None) is not None:
            done = worker.bind(bind)
            if done is not None and not done.wait(self.timeouts.bind_s):
                self._abandon(worker, "bind", self.timeouts.bind_s)
                return False
            if worker.disabled:  # bind raised: reported by the worker
                worker.stop()
                return False
        worker.start_receiving(first)
        return True

    def register_callback(self, event_type: str, fn: Callable[[Event], Any]) -> None:
        """Call ``fn(event)`` for every event of ``event_type`` (``"*"``: every event)."""
        if not callable(fn):
            raise TypeError(f"callback for {event_type!r} must be callable, got {fn!r}")
        self._callbacks.add(event_type, fn)
        with self._lock:
            if self._callback_worker is None and not self._closed:
                self._callback_worker = SinkWorker(self._callbacks, self._maxsize, self._report)
                self._callback_worker.start_receiving(None)

    # -- delivering (never waits)

    def submit(self, event: Event) -> bool:
        """Hand ``event`` to every sink's queue. Returns False when some sink dropped it."""
        if self._closed:
            return False
        ok = True
        for worker in self._all():
            if worker.receiving and not worker.abandoned and not worker.put(event):
                ok = False
        return ok

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until every sink has handled what was queued, and flushed.

        A sink that does not within ``timeouts.flush_s`` is abandoned (and reported).

        Returns:
          True when every sink that is not abandoned answered; False on ``timeout_s`` (or
          at once on a sink's own thread, which cannot wait for itself).
        """
        if self._on_worker() or self._closed:
            return self._closed and self.stopped
        return self._wait_all("flush", timeout_s, self.timeouts.flush_s)

    def close(self, timeout_s: float = 30.0) -> None:
        """Handle what is queued, close the sinks and stop their threads.

        Waits up to ``min(timeout_s, timeouts.close_s)``; sinks still busy then are
        abandoned. On a sink's own thread it only asks the workers to stop.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._on_worker():
            for worker in self._all():
                worker.stop()
            return
        self._wait_all("close", timeout_s, self.timeouts.close_s)

    # -- internals

    def _all(self) -> list[SinkWorker]:
        with self._lock:
            workers = list(self._workers)
            if self._callback_worker is not None:
                workers.append(self._callback_worker)
        return workers

    def _on_worker(self) -> bool:
        me = threading.current_thread()
        return any(w.thread is me for w in self._all())

    def _wait_all(self, what: str, timeout_s: float, limit_s: float) -> bool:
        waits = []
        for worker in self._all():
            if worker.abandoned:
                continue
            done = worker.stop() if what == "close" else worker.flush()
            if done is not None:
                waits.append((worker, done))
        start = time.monotonic()
        wait_s = min(timeout_s, limit_s)
        ok = True
        for worker, done in waits:
            if done.wait(max(0.0, wait_s - (time.monotonic() - start))):
                continue
            ok = False
            if wait_s >= limit_s:  # the sink's own limit, not the caller's shorter wait
                self._abandon(worker, what, limit_s)
        return ok

    def _abandon(self, worker: SinkWorker, what: str, limit_s: float) -> None:
        worker.abandon()
        hint = f"; {worker.hint}" if worker.hint else ""
        self._report(
            f"jaxobs: {worker.name} did not finish {what} within {limit_s:g} s; it is "
            "abandoned and gets nothing more (training goes on, events.jsonl is complete; "
            f"change the limit with jaxobs.init(sink_timeouts=jaxobs.SinkTimeouts(...))){hint}"
        )
