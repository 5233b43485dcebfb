"""The dispatcher that hands a run's events to its sinks on one background thread.

A sink is any object with ``handle_<event_type>(event)`` methods (and, optionally,
``handle_event(event)`` for every type it has no specific method for, ``flush()`` and
``close()``). There is no base class to inherit from.

Queue policy (bounded queue, one worker thread):

- The run's ``events.jsonl`` is written by the `Run` itself, before an event is queued, so
  no policy here can lose a record from the file.
- *Stream* events (``metrics``, ``batch_start``, ``batch_end`` and the EXPERT/DEBUG event
  types) are dropped for the sinks when the queue is full; each drop is counted, and the
  counts are reported when the run finishes and stored in its ``run_end`` record.
- All other events (run and epoch boundaries, health checks, artifacts, custom events) wait
  up to ``block_timeout_s`` for room, then are dropped and counted the same way.
- A sink method or callback that raises is reported once (a warning on the ``jaxobs``
  logger naming the sink, the event and the error) and that sink (or callback) is disabled;
  training goes on. Reports of errors raised before the run ends are also kept in the run's
  ``run_end`` record.

The worker never waits for itself: `Dispatcher.flush` and `Dispatcher.close` called on the
worker thread (from a sink, a callback, or a run that the garbage collector finalises there)
return at once, and the worker stops after the events already queued.
"""

from __future__ import annotations

import logging
import queue
import threading
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from jaxobs._src.formats.events import STREAM_TYPES, Event

logger = logging.getLogger("jaxobs")


_STOP = object()


_FLUSH = "flush"


_ADD = "add"


class Dispatcher:
    """Hands events to sinks and callbacks on one background worker thread.

    Args:
      sinks: Initial sinks.
      maxsize: Capacity of the queue.
      block_timeout_s: How long a non-stream event waits for room in a full queue.
    """

    def __init__(
        self, sinks: Iterable[Any] = (), maxsize: int = 1024, block_timeout_s: float = 5.0
    ) -> None:
        if maxsize < 1:
            raise ValueError(f"queue size must be at least 1, got {maxsize}")
        self._sinks: list[Any] = list(sinks)
        self._callbacks: list[tuple[str, Callable[[Event], Any]]] = []
        self._disabled: set[int] = set()
        self._waiting: set[int] = set()  # sinks added but not yet given their first event
        self._queue: queue.Queue = queue.Queue(maxsize)
        self._block_timeout_s = block_timeout_s
        # Skipped events per type, and when each was recorded: a sink that must hold every
        # record (a tracker bridge) reads these back from events.jsonl when the run ends.
        # Producers on several threads update them, under `_lock`; read them with `drops`.
        self.dropped: Counter[str] = Counter()
        self.dropped_ns: list[int] = []
        self.errors: list[str] = []
        # Re-entrant: the garbage collector may finalise a run (which closes this) on the
        # worker thread at any allocation, also while the worker holds the lock.
        self._lock = threading.RLock()
        self._closed = False
        self._stop_when_drained = False  # set by `close`: the worker stops on an empty queue
        self._thread = threading.Thread(target=self._work, name="jaxobs-dispatch", daemon=True)
        self._thread.start()

    @property
    def sinks(self) -> list[Any]:
        """The sinks, in the order they were added."""
        with self._lock:
            return list(self._sinks)

    @property
    def stopped(self) -> bool:
        """Whether the worker thread has ended (after `close`)."""
        return not self._thread.is_alive()

    def drops(self) -> tuple[dict[str, int], list[int]]:
        """A consistent copy of `dropped` and `dropped_ns`."""
        with self._lock:
            return dict(self.dropped), list(self.dropped_ns)

    def add_error(self, message: str) -> None:
        """Keep the report of a sink error raised outside the worker (a failed ``bind``)."""
        with self._lock:
            self.errors.append(message)

    def add_sink(self, sink: Any, first: Event | None = None) -> None:
        """Deliver the events queued from now on to ``sink`` too, after ``first`` (the run's
        ``run_start``, so that a sink added late still learns what run it serves)."""
        if first is None:
            with self._lock:
                self._sinks.append(sink)
            return
        with self._lock:  # listed now; it gets events queued after `first`
            self._sinks.append(sink)
            self._waiting.add(id(sink))
        try:
            self._queue.put((_ADD, sink, first), timeout=self._block_timeout_s)
        except queue.Full:  # the sink still gets what comes next
            with self._lock:
                self._waiting.discard(id(sink))

    def register_callback(self, event_type: str, fn: Callable[[Event], Any]) -> None:
        """Call ``fn(event)`` for every event of ``event_type`` (``"*"``: every event)."""
        if not callable(fn):
            raise TypeError(f"callback for {event_type!r} must be callable, got {fn!r}")
        with self._lock:
            self._callbacks.append((event_type, fn))

    def submit(self, event: Event) -> bool:
        """Queue ``event`` for the sinks. Returns False when it was dropped (queue full)."""
        if self._closed:
            return False
        try:
            # The worker never waits on its own queue (a callback that records an event).
            if event.type in STREAM_TYPES or threading.current_thread() is self._thread:
                self._queue.put_nowait(event)
            else:
                self._queue.put(event, timeout=self._block_timeout_s)
            return True
        except queue.Full:
            with self._lock:  # `+=` on a Counter item is not atomic across threads
                self.dropped[event.type] += 1
                self.dropped_ns.append(event.timestamp_ns)
            return False

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until every queued event has been handled and sinks flushed.

        Returns:
          True when everything was handled; False on a timeout, and at once on the worker
          thread itself, which cannot wait for its own queue.
        """
        if threading.current_thread() is self._thread:
            return False
        if self._closed:  # the worker handles what is left, then stops
            self._thread.join(timeout_s)
            return not self._thread.is_alive()
        if not self._thread.is_alive():
            return True
        done = threading.Event()
        try:
            self._queue.put((_FLUSH, done), timeout=timeout_s)
        except queue.Full:
            return False
        return done.wait(timeout_s)

    def close(self, timeout_s: float = 30.0) -> None:
        """Handle what is queued, close the sinks and stop the worker.

        From another thread, waits up to ``timeout_s`` for the worker to stop. On the worker
        thread itself it only asks it to stop once the queue is drained (a thread cannot join
        itself).
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True  # what is submitted from now on would never be handled
            self._stop_when_drained = True
        on_worker = threading.current_thread() is self._thread
        try:
            if on_worker:
                self._queue.put_nowait(_STOP)
            else:
                self._queue.put(_STOP, timeout=timeout_s)
        except queue.Full:  # the worker stops when it finds the queue empty
            pass
        if not on_worker:
            self._thread.join(timeout_s)

    # -- worker

    def _work(self) -> None:
        while True:
            if self._stop_when_drained and self._queue.empty():
                break
            item = self._queue.get()
            if item is _STOP:
                break
            if isinstance(item, tuple) and item[0] == _FLUSH:
                self._each_sink("flush")
                item[1].set()
                continue
            if isinstance(item, tuple) and item[0] == _ADD:
                _, sink, first = item
                with self._lock:
                    self._waiting.discard(id(sink))
                self._deliver(first, only=sink)
                continue
            self._deliver(item)
        self._each_sink("close")

    def _deliver(self, event: Event, only: Any = None) -> None:
        with self._lock:
            sinks, callbacks = list(self._sinks), list(self._callbacks)
            waiting = set(self._waiting)
        if only is not None:
            sinks, callbacks = [only], []
        elif waiting:
            sinks = [s for s in sinks if id(s) not in waiting]
        for sink in sinks:
            if id(sink) in self._disabled:
                continue
            method = getattr(sink, f"handle_{event.type}", None) or getattr(
                sink, "handle_event", None
            )
            if method is not None:
                self._call(sink, method, event, f"{type(sink).__name__}.handle_{event.type}")
        for entry in callbacks:
            event_type, fn = entry
            if event_type in (event.type, "*") and id(entry) not in self._disabled:
                self._call(entry, fn, event, f"callback {getattr(fn, '__name__', fn)!r}")

    def _each_sink(self, name: str) -> None:
        for sink in list(self._sinks):
            method = getattr(sink, name, None)
            # close() reaches disabled sinks too, so that they release what they hold.
            if method is not None and (name == "close" or id(sink) not in self._disabled):
                self._call(sink, method, None, f"{type(sink).__name__}.{name}")

    def _call(self, owner: Any, fn: Callable, event: Event | None, what: str) -> None:
        try:
            fn() if event is None else fn(event)
        except Exception as e:
            self._disabled.add(id(owner))
            where = f" on {event.type} at step {event.step}" if event is not None else ""
            message = (
                f"jaxobs: {what} raised {type(e).__name__}: {e}{where}; it is disabled "
                "for the rest of the run (training goes on, events.jsonl is complete)"
            )
            self.add_error(message + "\n" + traceback.format_exc(limit=3))
            logger.warning(message)
