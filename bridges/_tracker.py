"""What every tracker bridge shares: `TrackerSink`, the live and replay skeleton.

A tracker bridge is a jaxobs sink (`bind`, `handle_event`, `flush`, `close`) that streams a
run to an experiment tracker while it trains, and sends a run directory later through
`TrackerSink.replay` (what `jaxobs sync` runs). The parts that do not depend on the tracker
live here, once:

- **The marker clock** (`MarkerClock`): which records the destination holds, in a
  `SyncMarker` saved every few seconds and when the tracker is closed, so that a later sync
  sends only the rest.
- **Delivery**: each event goes to the bridge's `_on_<event type>` method, if it has one.
  Live, the first exception is reported once (with the `jaxobs sync` command that sends the
  rest later) and the bridge gets nothing more, while training goes on; in a replay it is
  raised.
- **The end of a run**: the records a full queue kept from the sinks are read back from
  `events.jsonl` and sent first, then the tracker writes its last values and is finished.
- **The sync loop**: the records the destination does not hold yet, in order.
- **Exactly once**: one sender per (run, destination) at a time (`SyncLock`: a live bridge
  holds it for the whole run, a sync while it sends); the marker is saved only after
  `_make_durable` has made what it counts durable in the tracker's own files (and records
  what it needs to find them again); a replay first asks `_resume_after` where the
  destination really ends (the TensorBoard bridge cuts its files back to the marker, the
  W&B bridge reads its `.wandb` files back), so a sync killed at any point and run again
  sends every record exactly once.
- **The metric budget** (`MetricBudget`, in `bridges/_budget.py`): `metrics` records reach
  `_on_metrics` as the budget lets them through (every key while the run is within it,
  per-layer roll-ups from the record that breaks it on), live and in a replay alike; the
  first roll-up is said once, on the `jaxobs` logger.

A bridge subclasses `TrackerSink`, names itself with `tracker` and `label`, and implements
the hooks below; only this base class calls the underscored ones. Once the sink is bound
(`bind`) or replaying (`replay`), its run is `run_info` and `run_dir`.

| hook              | called                                  | default              |
| ----------------- | --------------------------------------- | -------------------- |
| `_start`          | when the run is bound or replayed       | (required)           |
| `is_open`         | before every event                      | (required)           |
| `describe`        | for the `tracker` record                | (required)           |
| `_bound`          | in `bind`, after `_start`               | nothing              |
| `_marker_info`    | whenever the marker is saved            | `describe()`         |
| `_end_run`        | at `run_end`, after the catch-up        | nothing              |
| `_finish_run`     | at `run_end`, last                      | `_close()`           |
| `_close`          | by `close` (must be idempotent)         | (required)           |
| `_before_replay`  | in `replay`, before the first event     | nothing              |
| `_make_durable`   | before every marker save                | `{}`                 |
| `_resume_after`   | in `replay`, under the lock             | the marker's point   |
| `_end_replay`     | in `replay`, after the last event       | `close()`            |
| `_location`       | for the `SyncResult` of `replay`        | None                 |
"""

from __future__ import annotations

import dataclasses
import logging
import math
import pathlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from jaxobs._src.formats.events import Event
from jaxobs._src.formats.experiment import RunInfo
from jaxobs._src.formats.rundir import RunRecord, events_of, read_run
from jaxobs._src.formats.sync_marker import SyncLock, SyncMarker, SyncResult
from jaxobs.bridges._budget import BudgetMeter, MetricBudget

__all__ = ["Binding", "MarkerClock", "TrackerSink"]

logger = logging.getLogger("jaxobs")


class MarkerClock:
    """Advances a `SyncMarker` for a sink and says when it is time to save it (every
    `every_s` seconds), so a sync after a crash sends only what had not been sent.

    Args:
      marker: The destination's marker.
      every_s: How often `tick` asks for a save.
      skipped: The ``timestamp_ns`` of the records the sink's queue skipped (they are not
        counted as sent until `catch_up` has sent them).
      run_dir: The run directory, whose ``events.jsonl`` `catch_up` reads.
    """

    def __init__(
        self,
        marker: SyncMarker,
        every_s: float = 10.0,
        skipped: Callable[[], list[int]] | None = None,
        run_dir: pathlib.Path | None = None,
    ):
        self.marker = marker
        self.every_s = every_s
        self.skipped = skipped or list
        self.run_dir = run_dir
        self.caught_up = False
        self._saved = time.monotonic()

    def tick(self, event: Event) -> bool:
        """Count `event` as sent; True when `every_s` has passed since the last save."""
        self.marker.advance(event)
        return time.monotonic() - self._saved >= self.every_s

    def save(self, info: Mapping[str, Any] | None = None) -> None:
        """Write the marker, with `info` about the destination."""
        skipped = self.skipped()
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
        """Send the records the sinks' queue skipped, read back from `events.jsonl`.

        Args:
          handle: Called with each skipped record, in order (not the `run_end` record).

        Returns:
          How many records were sent.
        """
        skipped = set(self.skipped())
        sent = 0
        if skipped and self.run_dir is not None:
            # warn=False: a torn last line is expected while the run is still writing.
            for event in events_of(read_run(self.run_dir, warn=False)):
                if event.timestamp_ns in skipped and event.type != "run_end":
                    handle(event)
                    sent += 1
        self.caught_up = True
        return sent


@dataclass
class Binding:
    """The run a `TrackerSink` is open for: made whole in `bind` or `replay`.

    Attributes:
      info: The run's metadata and config.
      run_dir: The run directory.
      clock: The marker clock of the destination.
    """

    info: RunInfo
    run_dir: pathlib.Path
    clock: MarkerClock


class TrackerSink:
    """The base of the tracker bridges: marker clock, delivery, failure policy, sync loop.

    Subclasses set `tracker` and `label`, implement `_start`, `is_open`, `describe` and
    `_close`, handle event types with `_on_<event type>(event)` methods, and override the
    other hooks of the module's table where they need to.

    Args:
      budget: The `MetricBudget` of the `metrics` records sent (None: `MetricBudget()`,
        False: every key of every record).
      marker_every_s: How often the sync marker is saved while the sink sends.

    Raises:
      TypeError: a `budget` that is not a `MetricBudget`, None or False.
      ValueError: a `marker_every_s` that is not a positive number.
    """

    tracker: ClassVar[str] = ""  # `jaxobs sync --to` name and the marker's file name
    label: ClassVar[str] = ""  # the tracker's name in messages
    replay_skips: ClassVar[tuple[str, ...]] = ("tracker",)  # record types a replay leaves out
    # Whether `_make_durable` makes the marker exact, so a replay may save it as it goes.
    durable_marker: ClassVar[bool] = False

    def __init__(
        self, budget: MetricBudget | bool | None = None, marker_every_s: float = 10.0
    ) -> None:
        if isinstance(marker_every_s, bool) or not isinstance(marker_every_s, (int, float)):
            raise ValueError(f"marker_every_s must be a number of seconds, got {marker_every_s!r}")
        if not marker_every_s > 0:
            raise ValueError(f"marker_every_s must be positive, got {marker_every_s!r}")
        self.marker_every_s = float(marker_every_s)
        if budget is None or budget is True:
            budget = MetricBudget()
        elif budget is not False and not isinstance(budget, MetricBudget):
            raise TypeError(
                f"{type(self).__name__}(budget={budget!r}): expected a MetricBudget, None "
                "(the default budget) or False (send every key)"
            )
        self.budget: MetricBudget | None = budget or None
        self._meter: BudgetMeter | None = None  # the budget of the open run
        self._said_budget = False  # the roll-up is said once
        self._binding: Binding | None = None  # set by `bind` or `replay`
        self._replaying = False  # a sync: errors are raised, not reported
        self._failed = False
        self._ended = False
        self._lock: SyncLock | None = None  # held while this sink sends to its destination

    # -- hooks

    def _start(self, info: RunInfo, run_dir: pathlib.Path, marker: SyncMarker | None) -> str:
        """Open the tracker for a run; `marker` is given in a replay.

        Returns:
          The destination's key in the sync marker.
        """
        raise NotImplementedError

    @property
    def is_open(self) -> bool:
        """Whether the tracker is open and takes events."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Where this sink sends the run (the `tracker` record's fields)."""
        raise NotImplementedError

    def _bound(self, run: Any) -> None:
        """The tracker's part of `bind`, after `_start` and before the `tracker` record."""

    def _marker_info(self) -> dict[str, Any]:
        return self.describe()

    def _end_run(self, event: Event) -> None:
        """The tracker's last writes at `run_end`, after the skipped records."""

    def _finish_run(self, event: Event) -> None:
        """Release the tracker at `run_end` (and save the marker once it holds everything)."""
        self._close()

    def _close(self) -> None:
        """Release the tracker, whether the run ended or not; a second call does nothing."""
        raise NotImplementedError

    def _before_replay(self, record: RunRecord) -> None:
        """Prepare a replay of `record`, after `_start`."""

    def _end_replay(self, record: RunRecord) -> None:
        """Finish a replay of `record`, after its last event."""
        self.close()

    def _location(self, marker: SyncMarker) -> str | None:
        """Where the tracker wrote (a W&B run directory, a log directory), for `replay`."""
        return None

    def _make_durable(self) -> dict[str, Any]:
        """Make everything sent so far durable in the tracker's files, before the marker
        says so; returns what the marker's info should record to find it again."""
        return {}

    def _resume_after(self, marker: SyncMarker, record: RunRecord) -> int | None:
        """The ``timestamp_ns`` after which the destination lacks records of `record`
        (None: all of them), found under the destination's lock before a replay sends
        anything."""
        return marker.sent_through_ns

    # -- the bound run

    @property
    def run_info(self) -> RunInfo:
        """The metadata and config of the run this sink is open for.

        Raises:
          RuntimeError: the sink is not bound to a run yet (see `run_dir`).
        """
        return self._bound_run().info

    @property
    def run_dir(self) -> pathlib.Path:
        """The directory of the run this sink is open for.

        Raises:
          RuntimeError: the sink is not bound to a run yet: pass it to `jaxobs.init` (or
            call `bind`), or `replay` a run directory, first.
        """
        return self._bound_run().run_dir

    def _bound_run(self) -> Binding:
        if self._binding is None:
            raise RuntimeError(
                f"this {self.label} sink is not bound to a run: pass it to jaxobs.init "
                "(or call bind(run)), or replay a run directory, first"
            )
        return self._binding

    # -- live

    def bind(self, run: Any) -> None:
        """Open the tracker for the jaxobs `run`; called by `jaxobs.init`.

        Raises:
          jaxobs.SyncBusyError: another process sends this run to the same destination.
        """
        self._open(run.info, run.dir, run=run)
        self._bound(run)
        run.emit("tracker", **self.describe())

    def _open(
        self,
        info: RunInfo,
        run_dir: str | pathlib.Path,
        marker: SyncMarker | None = None,
        run: Any = None,
    ) -> None:
        path = pathlib.Path(run_dir)
        destination = self._start(info, path, marker)
        if marker is None:  # live: this sink is the destination's one sender until it closes
            self._lock = SyncLock(path, self.tracker, destination)
            try:
                self._lock.acquire()
            except BaseException:
                self._lock = None
                self._close()
                raise
            skipped = _skipped_for(run, self)
            clock = MarkerClock(
                SyncMarker(path, self.tracker, destination),
                every_s=self.marker_every_s,
                skipped=skipped,
                run_dir=path,
            )
        else:  # a replay saves as it goes only when the marker is exact
            every = self.marker_every_s if self.durable_marker else math.inf
            clock = MarkerClock(marker, every_s=every, run_dir=path)
        self._binding = Binding(info, path, clock)
        self._meter = self.budget.meter() if self.budget is not None else None

    def handle_event(self, event: Event) -> None:
        """Send one jaxobs event to the tracker (the dispatcher calls this for every event).

        A live bridge that raises is reported once, with the `jaxobs sync` command that sends
        the rest later, and gets nothing more; training goes on. In a replay it raises.
        """
        if not self.is_open or self._failed:
            return
        method = getattr(self, f"_on_{event.type}", None)
        try:
            if method is not None:
                method(self._within_budget(event) if event.type == "metrics" else event)
        except Exception as e:
            if self._replaying:
                raise
            self._failed = True
            self._report(e, event)
            return
        binding = self._binding
        if binding is not None and event.type != "run_end" and binding.clock.tick(event):
            self._save_marker()

    def _within_budget(self, event: Event) -> Event:
        """A `metrics` event as the budget lets it through; the first roll-up is said once."""
        meter = self._meter
        if meter is None:
            return event
        values = meter.send(event.metrics, event.step, event.timestamp_ns / 1e9)
        if meter.trip is None:
            return event
        if not self._said_budget:
            self._said_budget = True
            self._say_rolled_up(meter)
        return dataclasses.replace(event, data={**event.data, "values": values})

    def _say_rolled_up(self, meter: BudgetMeter) -> None:
        trip, budget = meter.trip, meter.budget
        if trip is None:
            return
        if trip.reason == "values_per_minute":
            limit = budget.values_per_minute
            why = f"{trip.values_per_minute:,} values within a minute (budget: {limit:,})"
        else:
            why = f"{trip.keys:,} distinct keys (budget: {budget.max_keys:,})"
        logger.warning(
            "jaxobs: %s metric budget: the run's metrics reached %s at step %s. From there "
            "on, %s receives the params/updates/grads/acts statistics rolled up per layer "
            "(norm, min, max, max_abs, nonfinite) and every statistic of the top %d leaves "
            "of each group; %s keeps every key. Change it with %s(budget=%s.MetricBudget("
            "values_per_minute=..., max_keys=..., top_k=...)), or send every key with "
            "budget=False",
            self.label,
            why,
            trip.step,
            self.label,
            budget.top_k,
            self._binding.run_dir / "events.jsonl" if self._binding else "events.jsonl",
            type(self).__name__,
            type(self).__module__,
        )

    def _report(self, error: Exception, event: Event) -> None:
        where = self._binding.run_dir if self._binding is not None else "the run directory"
        logger.warning(
            "jaxobs: %s failed: %s: %s (on %s at step %s). Training goes on and %s is "
            "complete; %s gets nothing more from this run: send the rest later with "
            "`jaxobs sync %s --to %s`",
            self.label,
            type(error).__name__,
            error,
            event.type,
            event.step,
            where,
            self.label,
            where,
            self.tracker,
        )

    def _on_run_end(self, event: Event) -> None:
        if self._binding is not None:  # what a full queue kept from this sink, from the file
            self._binding.clock.catch_up(self.handle_event)
        self._end_run(event)
        self._ended = True
        if self._binding is not None:
            self._binding.clock.marker.advance(event)
        self._finish_run(event)

    def _save_marker(self, info: Mapping[str, Any] | None = None) -> None:
        """Make what was sent durable, then save the marker (with `info`, by default
        `_marker_info()`)."""
        if self._binding is not None:
            info = dict(self._marker_info() if info is None else info)
            info.update(self._make_durable())
            self._binding.clock.save(info)

    def close(self) -> None:
        """Release the tracker (the run ended, or the run's dispatcher is shutting down).

        Live, a failure is reported and never raised; in a replay it raises.
        """
        try:
            self._close()
        except Exception as e:
            if self._replaying:
                raise
            logger.warning("jaxobs: closing %s failed: %s: %s", self.label, type(e).__name__, e)
        finally:
            if self._lock is not None and not self._replaying:
                self._lock.release()

    # -- later

    def replay(self, record: RunRecord, marker: SyncMarker, wait_s: float = 0.0) -> SyncResult:
        """Send the records of `record` that `marker`'s destination lacks, in order (a sync).

        Errors are raised, not reported. It holds the destination's `SyncLock` while it
        sends, so a second sync (or a live bridge) of the same destination waits or is
        refused; running it twice, or again after it was killed, sends every record once.

        Args:
          record: The run directory, read with `read_run`.
          marker: The destination's marker (read again under the lock).
          wait_s: How long to wait for another sender of this destination to finish.

        Returns:
          What was sent.

        Raises:
          jaxobs.SyncBusyError: another process still sends there after ``wait_s``.
        """
        with SyncLock(record.dir, self.tracker, marker.destination, wait_s):
            marker.reload()
            after = self._resume_after(marker, record)
            if after != marker.sent_through_ns:
                marker.sent_through_ns = after
            events = [e for e in events_of(record, after) if e.type not in self.replay_skips]
            if events:
                self._replay(record, marker, after, events)
        return SyncResult(
            self.tracker,
            marker.destination,
            len(events),
            marker.last_step,
            self._location(marker),
            record.status,
        )

    def _replay(
        self, record: RunRecord, marker: SyncMarker, after: int | None, events: list[Event]
    ) -> None:
        self._replaying = True
        self._open(record.info, record.dir, marker)
        if self._meter is not None and after is not None:  # the budget as it was live
            for event in events_of(record):
                if event.type == "metrics" and event.timestamp_ns <= after:
                    self._meter.send(event.metrics, event.step, event.timestamp_ns / 1e9)
        self._before_replay(record)
        for event in events:
            self.handle_event(event)
        self._end_replay(record)


def _skipped_for(run: Any, sink: Any) -> Callable[[], list[int]]:
    """What the live `run`'s dispatcher skipped for `sink` (its queue was full)."""
    if run is None:
        return list
    per_sink = getattr(run, "skipped_for", None)
    if callable(per_sink):
        return lambda: per_sink(sink)
    return lambda: list(run.skipped_for_sinks_ns)
