"""Where a run's records go: first its event file, then its sinks' queue.

`Recording` is the output of the process that writes (process 0 of a multi-process job):
each record is written ahead to ``events.jsonl`` and then queued for the sinks, and the end
of the run writes ``run_end``, fsyncs, writes ``trainlog.json`` and closes the sinks.
`NullRecording`, the output of every other process, takes the same calls and records
nothing, so that a `Run` works the same on every process without asking which one it is.
"""

from __future__ import annotations

import collections
import logging
import pathlib
import time
from collections.abc import Callable, Mapping
from typing import Any

from jaxobs._src.formats.events import Event, Level
from jaxobs._src.formats.experiment import RunInfo
from jaxobs._src.formats.rundir import EVENTS_FILE, EVENTS_FORMAT, TRAINLOG_FILE, read_run
from jaxobs._src.formats.trainlog import SCHEMA_VERSION
from jaxobs._src.host.dispatch import Dispatcher, SinkTimeouts
from jaxobs._src.host.event_file import EventFile
from jaxobs._src.host.lifecycle import error_record

__all__ = ["NullRecording", "Recording"]

logger = logging.getLogger("jaxobs")


class Recording:
    """The event file and the sinks of a run that writes.

    `write` is called under the run's lock, so that records reach the file in the order of
    their steps; `submit_pending` after the lock is released, so that a sink's callback that
    records an event never waits for a lock its own thread holds.

    Args:
      directory: The run directory (created).
      info: The run's metadata and config, for ``run_start``.
      env: The environment snapshot, for ``run_start``.
      settings: The run's settings (level, total_steps, dir), for ``run_start``.
      queue_size: Capacity of the sinks' queue.

    Raises:
      ValueError: a ``queue_size`` below 1, or a directory that already holds a run.
    """

    enabled = True

    def __init__(
        self,
        directory: pathlib.Path,
        info: RunInfo,
        env: Mapping[str, Any],
        settings: Mapping[str, Any],
        queue_size: int,
        sink_timeouts: SinkTimeouts | None = None,
    ):
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size}")
        start = {
            "schema_version": SCHEMA_VERSION,
            "format": EVENTS_FORMAT,
            "run": info.to_json(),
            "env": dict(env),
            "settings": dict(settings),
        }
        self.dir = directory
        # The file's first record, and the first event of every sink.
        self._start = Event("run_start", Level.BASIC, None, time.time_ns(), start)
        # Everything that can fail is done before the file exists, so a failed init leaves
        # nothing behind that would block the same id later.
        self._file = EventFile(directory / EVENTS_FILE, self._start.to_record())
        self._dispatcher = Dispatcher([], maxsize=queue_size, timeouts=sink_timeouts)
        self._pending: collections.deque[Event] = collections.deque()

    @property
    def sinks(self) -> list[Any]:
        return self._dispatcher.sinks

    def skipped_ns(self) -> list[int]:
        """When each record the sinks did not get (their queue was full) was recorded."""
        return self._dispatcher.drops()[1]

    def write(self, event: Event) -> None:
        """Write ``event`` to the file (flushed) and hold it for `submit_pending`."""
        self._file.write(event.to_record())
        self._pending.append(event)

    def submit_pending(self) -> None:
        """Queue the events written so far for the sinks, in order."""
        while self._pending:
            try:
                event = self._pending.popleft()
            except IndexError:  # another thread took the last one
                return
            self._dispatcher.submit(event)

    def add_sink(self, sink: Any, run: Any) -> None:
        """Bind ``sink`` to ``run`` (when it has ``bind``) on the sink's own thread, waiting
        up to the bind time limit, then feed it from ``run_start`` on.

        A ``bind`` that raises or takes too long is reported once and the sink is left out.
        """
        tracker = getattr(sink, "tracker", None)
        hint = None
        if isinstance(tracker, str) and tracker:
            hint = f"send the run later with `jaxobs sync {self.dir} --to {tracker}`"
        self._dispatcher.add_sink(sink, first=self._start, bind=run, hint=hint)

    def skipped_for(self, sink: Any) -> list[int]:
        """When each record ``sink`` did not get (its queue was full) was recorded."""
        return self._dispatcher.skipped_for(sink)

    def register_callback(self, event_type: str, fn: Callable[[Event], Any]) -> None:
        self._dispatcher.register_callback(event_type, fn)

    def flush(self, timeout_s: float) -> None:
        self._dispatcher.flush(timeout_s)

    def close(
        self, status: str, error: BaseException | None, duration_s: float, last_step: int | None
    ) -> pathlib.Path | None:
        """End the run: write ``run_end``, fsync, write ``trainlog.json``, then let the sinks
        see ``run_end`` and close them.

        Args:
          status: How the run ended.
          error: The exception that ended it, if any.
          duration_s: How long it ran.
          last_step: The last step it logged, if any.

        A file that cannot be written (a full disk, no file descriptor left) is reported as
        a warning, and the sinks still get ``run_end`` and are closed.

        Returns:
          The path of ``trainlog.json``, or None when it could not be written.
        """
        self._dispatcher.flush(10.0)
        dropped, _ = self._dispatcher.drops()
        end: dict[str, Any] = {"status": status, "duration_s": duration_s, "last_step": last_step}
        if error is not None:
            end["error"] = error_record(error)
        end["sink_errors"] = list(self._dispatcher.errors)
        end["dropped_for_sinks"] = dropped
        end["dropped_by_sink"] = self._dispatcher.drops_by_sink()
        event = Event("run_end", Level.BASIC, last_step, time.time_ns(), end)
        path = self.dir / TRAINLOG_FILE
        written: pathlib.Path | None = path
        try:
            try:
                self._file.write(event.to_record())
                self._file.fsync()
            finally:
                self._file.close()
            # before the sinks see run_end, so that a bridge can attach trainlog.json
            read_run(self.dir, warn=False).log.to_trainlog().write_json(path)
        except OSError as e:  # a full disk, no file descriptor left: the sinks still end
            logger.warning(
                "jaxobs: the end of the run could not be written (%s); %s reads back as "
                "far as it got (jaxobs.read_run and `jaxobs show` rebuild the TrainLog from it)",
                e,
                self.dir / EVENTS_FILE,
            )
            written = None
        finally:
            self._dispatcher.submit(event)
            self._dispatcher.close()
        dropped, _ = self._dispatcher.drops()
        if dropped:
            logger.warning(
                "jaxobs: the sinks' queue was full; events skipped for sinks (all are in %s): %s",
                self.dir / EVENTS_FILE,
                dropped,
            )
        return written

    def release(self) -> None:
        """Close the file and stop the sinks' worker of a run dropped without finishing.

        Safe on any thread, the worker's own included (it is not joined there).
        """
        self._file.close()
        self._dispatcher.close(timeout_s=1.0)


class NullRecording:
    """The output of a process that does not write: every call is checked and ignored."""

    enabled = False

    @property
    def sinks(self) -> list[Any]:
        return []

    def skipped_ns(self) -> list[int]:
        return []

    def skipped_for(self, sink: Any) -> list[int]:
        return []

    def write(self, event: Event) -> None:
        """Ignored."""

    def submit_pending(self) -> None:
        """Nothing is pending."""

    def add_sink(self, sink: Any, run: Any) -> None:
        """Ignored: no sink is bound or fed on this process."""

    def register_callback(self, event_type: str, fn: Callable[[Event], Any]) -> None:
        """Checks ``fn`` as the dispatcher does, and never calls it."""
        if not callable(fn):
            raise TypeError(f"callback for {event_type!r} must be callable, got {fn!r}")

    def flush(self, timeout_s: float) -> None:
        """Nothing to flush."""

    def close(
        self, status: str, error: BaseException | None, duration_s: float, last_step: int | None
    ) -> None:
        """Nothing is written: there is no ``trainlog.json`` (returns None)."""

    def release(self) -> None:
        """Nothing to release."""
