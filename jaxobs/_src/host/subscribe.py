"""A bounded, non-blocking channel of a run's events: `Run.subscribe`.

A `Subscription` is fed by a sink of its own (on that sink's worker thread, see
`jaxobs._src.host.dispatch`), so the training thread never waits for a reader. Its queue
holds at most ``maxsize`` events; when it is full the **oldest** queued event is dropped
(and counted in `Subscription.dropped`), so the events kept are always the most recent
ones, a contiguous stretch of what the run recorded (that passed the filter). Events the
sink's own queue had no room for are also counted (all of them are in ``events.jsonl``).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from jaxobs._src.formats.events import Event

__all__ = ["Subscription"]


class Subscription:
    """The events of a run, from the moment of `Run.subscribe` on, in a bounded queue.

    Iterate it (``for event in sub:``) to wait for each next event; the loop ends once the
    run has finished (or `close` was called) and the queue is empty.

    Args:
      types: The event type names to keep (``{"metrics", "alert"}``), or a callable
        ``(Event) -> bool``; None keeps every event.
      maxsize: How many events may wait; a full queue drops its oldest event.

    Raises:
      ValueError: ``maxsize`` below 1.
      TypeError: ``types`` that is neither a callable nor an iterable of strings.
    """

    def __init__(
        self, types: Iterable[str] | Callable[[Event], bool] | None = None, maxsize: int = 1000
    ) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1:
            raise ValueError(f"subscribe(maxsize={maxsize!r}): expected an int of at least 1")
        self._keep = _filter(types)
        self._queue: collections.deque[Event] = collections.deque()
        self._maxsize = maxsize
        self._dropped = 0
        self._ended = False
        self._closed = False
        self._cond = threading.Condition()
        self._skipped: Callable[[], int] = lambda: 0
        self.sink = _Feed(self)

    @property
    def dropped(self) -> int:
        """How many events that passed the filter were not kept (the queue was full)."""
        with self._cond:
            return self._dropped + self._skipped()

    @property
    def ended(self) -> bool:
        """Whether no more events will arrive (the run finished, or `close` was called)."""
        with self._cond:
            return self._ended

    def get(self, timeout: float | None = None) -> Event | None:
        """The next event, waiting up to ``timeout`` seconds (None: until one arrives).

        Returns:
          The event, or None on timeout or when the subscription has ended and is empty.
        """
        with self._cond:
            self._cond.wait_for(lambda: self._queue or self._ended, timeout)
            return self._queue.popleft() if self._queue else None

    def drain(self) -> list[Event]:
        """Every event queued now, oldest first, without waiting."""
        with self._cond:
            out = list(self._queue)
            self._queue.clear()
            return out

    def close(self) -> None:
        """Stop receiving: queued events are discarded and iteration ends."""
        with self._cond:
            self._closed = self._ended = True
            self._queue.clear()
            self._cond.notify_all()

    def __iter__(self) -> Iterator[Event]:
        while True:
            event = self.get()
            if event is None:
                return
            yield event

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- fed by the sink (never waits for a reader)

    def _put(self, event: Event) -> None:
        try:
            keep = self._keep(event)
        except Exception:
            keep = False
        if not keep:
            return
        with self._cond:
            if self._closed:
                return
            if len(self._queue) >= self._maxsize:
                self._queue.popleft()
                self._dropped += 1
            self._queue.append(event)
            self._cond.notify_all()

    def _end(self) -> None:
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def _attach(self, run: Any) -> None:
        """Count what the sink's own queue had no room for, and end with a run that is over
        (or that does not write on this process)."""
        self._skipped = lambda: len(run.skipped_for(self.sink))
        if run.finished or not run.enabled:
            self._end()


class _Feed:
    """The sink that feeds a `Subscription` (its ``close`` ends it, not discards it)."""

    name = "subscription"

    def __init__(self, sub: Subscription) -> None:
        self._sub = sub

    def handle_event(self, event: Event) -> None:
        self._sub._put(event)

    def close(self) -> None:
        self._sub._end()


def _filter(types: Any) -> Callable[[Event], bool]:
    if types is None:
        return lambda event: True
    if callable(types):
        return types
    if isinstance(types, str):
        names = {types}
    else:
        try:
            names = set(types)
        except TypeError:
            raise TypeError(
                f"subscribe(types={types!r}): expected event type names or a callable"
            ) from None
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise TypeError(f"subscribe(types=...): event type names must be strings, got {bad[0]!r}")
    return lambda event: event.type in names
