"""The skeleton every tracker bridge shares: live delivery with a marker clock, catch-up of
skipped records, and the failure policy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from jaxobs._src.formats.events import Event
from jaxobs._src.formats.rundir import events_of
from jaxobs._src.formats.sync_marker import SyncMarker

logger = logging.getLogger("jaxobs")


class MarkerClock:
    """Advances a `SyncMarker` for a live sink and saves it every ``every_s`` seconds, so a
    sync after a crash sends only what the live stream had not sent.

    Args:
      marker: The destination's marker.
      every_s: How often `tick` saves it.
      run: The live `jaxobs.Run`: records its sinks' queue skipped are not counted as sent
        until `catch_up` has sent them.
    """

    def __init__(self, marker: SyncMarker, every_s: float = 10.0, run: Any = None):
        self.marker = marker
        self.every_s = every_s
        self.run = run
        self.caught_up = False
        self._saved = time.monotonic()

    def tick(self, event: Event, info: Mapping[str, Any] | None = None) -> None:
        self.marker.advance(event)
        if time.monotonic() - self._saved >= self.every_s:
            self.save(info)

    def save(self, info: Mapping[str, Any] | None = None) -> None:
        skipped = self.run.skipped_for_sinks_ns if self.run is not None else []
        sent = self.marker.sent_through_ns
        if skipped and not self.caught_up and sent is not None and sent >= min(skipped):
            # Not yet sent: a sync after a crash starts from the first skipped record.
            self.marker.sent_through_ns = min(skipped) - 1
            try:
                self.marker.save(**dict(info or {}))
            finally:
                self.marker.sent_through_ns = sent
        else:
            self.marker.save(**dict(info or {}))
        self._saved = time.monotonic()

    def catch_up(self, handle: Callable[[Event], Any]) -> int:
        """Send, through ``handle``, the records the sinks' queue skipped, read back from the
        run's ``events.jsonl``; returns how many. Call it when the run ends."""
        skipped = set(self.run.skipped_for_sinks_ns) if self.run is not None else set()
        sent = 0
        if skipped:
            from jaxobs._src.formats.rundir import read_run

            for event in events_of(read_run(self.run.dir, _warn=False)):
                if event.timestamp_ns in skipped and event.type != "run_end":
                    handle(event)
                    sent += 1
        self.caught_up = True
        return sent


def deliver(bridge: Any, event: Event, tracker: str, info: Callable[[], Mapping[str, Any]]) -> None:
    """Hand ``event`` to ``bridge._on_<event type>`` and count it in the bridge's marker.

    The protocol the bridges share: ``bridge._failed``, ``bridge._replaying`` (a sync: errors
    are raised, not reported), ``bridge._clock`` (a `MarkerClock`) and ``bridge._run_dir``.
    A live bridge that raises is reported once, with the ``jaxobs sync`` command that sends
    the rest later, and gets nothing more; training goes on.
    """
    if bridge._failed:
        return
    method = getattr(bridge, f"_on_{event.type}", None)
    try:
        if method is not None:
            method(event)
    except Exception as e:
        if bridge._replaying:
            raise
        bridge._failed = True
        where = bridge._run_dir or "the run directory"
        logger.warning(
            "jaxobs: %s failed: %s: %s (on %s at step %s). Training goes on and %s is "
            "complete; %s gets nothing more from this run: send the rest later with "
            "`jaxobs sync %s --to %s`",
            tracker,
            type(e).__name__,
            e,
            event.type,
            event.step,
            where,
            tracker,
            where,
            bridge.tracker,
        )
        return
    if bridge._clock is not None and event.type != "run_end":
        bridge._clock.tick(event, info())
