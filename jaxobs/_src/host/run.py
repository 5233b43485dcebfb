"""The `Run` facade: what a training script records, and how the run ends.

A run directory ``<dir>/<project>/<run_id>/`` holds:

- ``events.jsonl``: written ahead, one JSON object per line, each line flushed to the
  operating system before `Run.log` returns (so a killed process loses nothing it logged)
  and fsynced by `Run.finish` and when an exception or SIGTERM leaves a ``with run:`` block;
- ``trainlog.json``: the `TrainLog` of the run, written by `Run.finish` (and rebuilt from
  ``events.jsonl`` by `read_run` for a run that never finished);
- ``artifacts/``: files the run attached (confusion matrices, ...).

The parts: `jaxobs._src.host.start` (`init`), `jaxobs._src.host.recording` (the event file,
then the sinks; nothing at all on a process other than 0), `jaxobs._src.host.lifecycle`
(SIGTERM, interpreter exit, the active run) and `jaxobs._src.host.monitors`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import threading
import time
import types
from collections.abc import Callable, Mapping
from typing import Any, Literal

from jaxobs._src.formats.artifacts import ConfusionMatrix
from jaxobs._src.formats.config import histogram, scalar, to_config
from jaxobs._src.formats.events import Event, Level, check_event
from jaxobs._src.formats.experiment import Artifact, RunInfo
from jaxobs._src.formats.fields import check_step
from jaxobs._src.formats.redact import redact_text
from jaxobs._src.formats.rundir import EVENTS_FILE, TRAINLOG_FILE
from jaxobs._src.host.lifecycle import ACTIVE, Lifecycle, Terminated, active_run, exit_status
from jaxobs._src.host.monitors import Monitors
from jaxobs._src.host.recording import NullRecording, Recording
from jaxobs._src.host.run_media import MediaMethods
from jaxobs._src.host.subscribe import Subscription
from jaxobs._src.host.summary import RunSummary

__all__ = ["NAME_RE", "Run", "Terminated", "active_run"]


# What a run id or an artifact name may be: it names a file or a folder.
# `fullmatch`, never `match` with ``$``: ``$`` also matches before a trailing newline.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _convert_named(
    values: Any, method: str, what: str, convert: Callable[[Any, str], Any]
) -> dict[str, Any]:
    """``{name: convert(value, name)}``, or a TypeError naming the method or the bad name."""
    if not isinstance(values, Mapping):
        raise TypeError(f"{method} takes a mapping of {what} names to values, got {values!r}")
    converted = {}
    for key, value in values.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"{what} names must be non-empty strings, got {key!r}")
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                f"{what} name {key!r} is not valid UTF-8 (a lone surrogate?)"
            ) from None
        converted[key] = convert(value, key)
    return converted


def _confusion_matrix_path(name: Any, step: Any) -> pathlib.Path:
    """``artifacts/<name>[-<step>].json``, once the name and step are checked."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValueError(f"artifact name {name!r} must be letters, digits, '.', '_' or '-'")
    if step is None:
        return pathlib.Path("artifacts") / f"{name}.json"
    return pathlib.Path("artifacts") / f"{name}-{check_step(step)}.json"


def _artifact_in(
    directory: pathlib.Path,
    artifact: Artifact | str,
    path: str | os.PathLike | None,
    kind: str,
    description: str,
) -> Artifact:
    """The `Artifact` for `Run.add_artifact`, its path relative when inside ``directory``."""
    if not isinstance(artifact, Artifact):
        if path is None:
            raise TypeError(f"add_artifact({artifact!r}) needs a path")
        artifact = Artifact(artifact, os.fspath(path), kind, description)
    p = pathlib.Path(artifact.path)
    root = directory.resolve()
    if p.is_absolute() and p.is_relative_to(root):
        artifact = dataclasses.replace(artifact, path=str(p.relative_to(root)))
    return artifact


class Run(MediaMethods):
    """A live run. Create it with `jaxobs.init`.

    Only process 0 of a multi-process JAX job writes: on other processes `enabled` is False,
    and every method works and records nothing.

    Args:
      info: The run's metadata and config (``run.info``).
      directory: The run directory, absolute (``run.dir``).
      out: Where records go: a `Recording`, or a `NullRecording` on a process that does not
        write.
      level: The most detailed `Level` recorded (``run.level``).
    """

    def __init__(
        self,
        info: RunInfo,
        directory: pathlib.Path,
        out: Recording | NullRecording,
        *,
        level: Level = Level.DETAILED,
    ):
        self.info = info
        self.dir = directory
        self.events_path = directory / EVENTS_FILE
        self.trainlog_path = directory / TRAINLOG_FILE
        self.level = level
        self.enabled = out.enabled
        self._out = out
        self._lock = threading.RLock()
        self._next_step = 0
        self._dispatched: int | None = None  # the last step an observed step dispatched
        self._finished = False
        self._start = time.monotonic()
        self._monitors = Monitors()
        self._summary: dict[str, Any] = {}
        self._lifecycle = Lifecycle(self.finish)
        if self.enabled:
            self._lifecycle.register_exit()

    # -- properties

    @property
    def id(self) -> str:
        """The run id (the run directory's name)."""
        return self.info.run_id

    @property
    def config(self) -> dict[str, Any]:
        """The run's config (a copy; change it with `update_config`)."""
        return json.loads(json.dumps(self.info.config))

    @property
    def summary(self) -> RunSummary:
        """The run's summary, a mapping with W&B's semantics: ``run.summary["best_val_loss"]
        = 0.12``, ``run.summary.update({...})``, ``del run.summary[key]``, read back with
        ``run.summary[key]``. Each change is a ``summary`` record of ``events.jsonl``; it is
        the TrainLog's ``summary`` and is sent to the trackers as set."""
        return RunSummary(self._summary, self._record_summary)

    @property
    def step(self) -> int:
        """The step that `log` uses when it is given none: the last step that a
        `jaxobs.observe` step feeding this run dispatched, else one past the largest step
        logged so far (0 at first)."""
        return self._next_step if self._dispatched is None else self._dispatched

    @property
    def finished(self) -> bool:
        """Whether `finish` has ended the run."""
        return self._finished

    @property
    def sinks(self) -> list[Any]:
        """The sinks that receive this run's events, in order (none on other processes)."""
        return self._out.sinks

    @property
    def monitors(self) -> tuple[Any, ...]:
        """The monitors added with `add_monitor`, in order (a `HealthChecker` as the
        supervisor that applies it)."""
        return self._monitors.attached

    @property
    def skipped_for_sinks_ns(self) -> list[int]:
        """The ``timestamp_ns`` of every record the sinks did not get because their queue was
        full (all of them are in ``events.jsonl``; a tracker bridge sends them from there when
        the run ends)."""
        return self._out.skipped_ns()

    def skipped_for(self, sink: Any) -> list[int]:
        """The ``timestamp_ns`` of every record ``sink`` did not get (its own queue was full);
        all of them are in ``events.jsonl``."""
        return self._out.skipped_for(sink)

    # -- recording

    def log(self, values: Mapping[str, Any], step: int | None = None) -> None:
        """Record scalar metrics at ``step``.

        Values are converted to host floats (a jax array is waited for: log values that are
        already on the host, or let `jaxobs.observe` deliver them). The record is on disk
        (flushed to the OS) when this returns; then every monitor's ``on_log`` sees it.

        Args:
          values: ``{"val/loss": 0.3, ...}``; keys are ``/``-joined metric names.
          step: The training step. Default: `step`, that is the step the training loop
            last called an observed step at (``run.log({"epoch": e})`` right after the
            observed call of step 49 is at step 49, however far the background delivery of
            the statistics has got); in a run that no `jaxobs.observe` step feeds (or only
            one traced by an outer `jax.jit`), one past the largest step logged so far, so
            that consecutive calls without a step get 0, 1, 2, ...

        Raises:
          TypeError: a value that is not a scalar, or a non-string key; names the metric.
          ValueError: a key that is not valid UTF-8, or a step outside int64.
          RuntimeError: the run has finished.
          OSError: ``events.jsonl`` could not be written (a full disk: ``errno`` ENOSPC);
            nothing of the record is in the file and no sink got it, so logging it again
            (once there is space) records it exactly once.
        """
        converted = _convert_named(values, "run.log", "metric", scalar)
        with self._lock:
            self._check_open("log")
            step = check_step(self.step if step is None else step)
            self._write("metrics", step, {"values": converted}, Level.BASIC)
            self._next_step = max(self._next_step, step + 1)  # once it is written
        self._out.submit_pending()
        self._monitors.call("on_log", self, step, converted)

    def log_histograms(self, histograms: Mapping[str, Any], step: int | None = None) -> None:
        """Record histograms at ``step`` (one ``histograms`` record, level DETAILED).

        `jaxobs.observe(histograms=N)` computes them on the device and logs them here; the
        bridges show them as W&B and TensorBoard histograms.

        Args:
          histograms: ``{"params/Dense_0/kernel": value}``: ``(counts, edges)`` as
            `numpy.histogram` returns it, a mapping with ``counts``, ``edges`` (optionally
            ``sum``, ``sum_squares``), or samples (binned into 64 bins over the finite ones).
          step: The training step (default: the last step an observed step dispatched,
            else the last step logged, or 0).

        Raises:
          TypeError, ValueError: a malformed histogram, naming it.
          RuntimeError: the run has finished.
        """
        converted = _convert_named(histograms, "run.log_histograms", "histogram", histogram)
        if not converted:
            return
        with self._lock:
            self._check_open("log_histograms")
            if step is None:
                last = self._next_step - 1 if self._dispatched is None else self._dispatched
                step = max(last, 0)
            step = check_step(step)
            self._write("histograms", step, {"values": converted}, Level.DETAILED)
        self._out.submit_pending()

    def emit(
        self,
        event_type: str,
        step: int | None = None,
        *,
        level: Level | str | None = None,
        **data: Any,
    ) -> None:
        """Record an event (``epoch_end``, ``train_start``, ``health_check`` or your own).

        Args:
          event_type: An identifier; sinks receive it in ``handle_<event_type>``.
          step: The step it belongs to, if any.
          level: Its level (default: its entry in `EVENT_LEVELS`, else DETAILED). Events
            above the run's level are not recorded.
          **data: Payload; converted to JSON like a config (errors name the field).

        Raises:
          ValueError: a type that is not an identifier or that the run records itself, or
            a payload key that is a field of every record (``event``, ``level``, ...).
          jaxobs.ConfigError: a payload value that cannot be stored, naming its field.
          RuntimeError: the run has finished.
        """
        lvl = check_event(event_type, level, data)
        payload = to_config(data, event_type)
        self._record("emit", event_type, payload, lvl, step)

    def add_artifact(
        self,
        artifact: Artifact | str,
        path: str | os.PathLike | None = None,
        kind: str = "",
        description: str = "",
    ) -> Artifact:
        """Attach a file to the run (paths inside the run directory are stored relative)."""
        artifact = _artifact_in(self.dir, artifact, path, kind, description)
        self._record("add_artifact", "artifact", {"artifact": artifact.to_json()})
        return artifact

    def log_confusion_matrix(
        self, name: str, matrix: ConfusionMatrix, step: int | None = None
    ) -> Artifact:
        """Write ``matrix`` to ``artifacts/<name>[-<step>].json`` and attach it."""
        rel = _confusion_matrix_path(name, step)
        self._check_open("log_confusion_matrix")
        if self.enabled:
            matrix.write_json(self.dir / rel)
        where = f" at step {step}" if step is not None else ""
        return self.add_artifact(
            Artifact(name, str(rel), "confusion_matrix", f"confusion matrix{where}")
        )

    def add_note(self, text: str) -> None:
        """Add a free-form note (stored in the TrainLog's notes; secrets in it, such as a URL's
        credentials or a token, are redacted)."""
        self._record("add_note", "note", {"text": redact_text(str(text))})

    def update_config(self, values: Mapping[str, Any]) -> None:
        """Add or change config entries (recorded as a ``config_update`` event)."""
        converted = to_config(dict(values), "config")
        with self._lock:
            self._check_open("update_config")
            self.info.config.update(converted)
            self._write("config_update", None, {"config": converted}, Level.BASIC)
        self._out.submit_pending()

    def _record_summary(self, assigned: dict[str, Any], deleted: list[str]) -> None:
        """Write one ``summary`` record (`RunSummary` has checked the values)."""
        data: dict[str, Any] = {"summary": assigned} if assigned else {"deleted": deleted}
        self._record("summary", "summary", data)

    # -- who watches

    def note_dispatched(self, step: int) -> None:
        """Note that the training loop has just called an observed step at ``step`` (the
        default step of `log` from now on). `jaxobs.observe` calls it on the caller's
        thread at every call; it only stores the number."""
        self._dispatched = step

    def add_sink(self, sink: Any) -> None:
        """Send this run's events to ``sink`` from now on.

        A sink with a ``bind(run)`` method (the W&B and TensorBoard bridges) is bound first,
        in the caller's thread: that is where a tracker starts its run, so that what it
        decides (a sweep's hyperparameters) is in `config` when this returns. The sink gets
        the ``run_start`` event next. A ``bind`` that raises is reported once and the sink is
        left out; the run goes on. On a process that does not write, nothing is bound.
        """
        self._out.add_sink(sink, self)

    def register_callback(self, event_type: str, fn: Callable[[Event], Any]) -> None:
        """Call ``fn(event)`` on the worker thread for each event of that type (``"*"``: all)."""
        self._out.register_callback(event_type, fn)

    def subscribe(self, types: Any = None, *, maxsize: int = 1000) -> Subscription:
        """A bounded queue of this run's events from now on, that never blocks training.

        ``types``: event type names or a callable ``(Event) -> bool`` (None: all). A full
        queue drops its oldest event (counted in ``dropped``). Iterating it ends once the
        run has finished and the queue is empty. See `Subscription`.
        """
        sub = Subscription(types, maxsize)
        if not self._finished:
            self._out.add_sink(sub.sink, self)
        sub._attach(self)
        return sub

    def add_monitor(self, monitor: Any) -> None:
        """Let ``monitor`` watch what this run records, from now on (once per object).

        A monitor has some of these methods, each called in the thread that caused it:
        ``on_log(run, step, values)`` after every `log` record, ``on_finish(run)`` when
        `finish` begins, ``on_end(run, status, error)`` before ``run_end`` is written. A
        `HealthChecker` is wrapped in a supervisor (with a flight recorder of the last 256
        steps) that emits its alerts and writes crash dumps. A monitor that raises is
        reported once; the run goes on. A hook that is not callable is a TypeError.
        """
        self._monitors.add(monitor)

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until the sinks have handled every queued event."""
        self._out.flush(timeout_s)

    # -- internals

    def _check_open(self, what: str) -> None:
        if self._finished:
            raise RuntimeError(
                f"run.{what}() after the run {self.id!r} finished; start a new one with jaxobs.init"
            )

    def _write(self, event_type: str, step: int | None, data: dict[str, Any], level: Level) -> None:
        """Write the record, under the run's lock (unless it is above the run's level)."""
        if level <= self.level:
            self._out.write(Event(event_type, level, step, time.time_ns(), data))

    def _record(
        self,
        method: str,
        kind: str,
        data: dict[str, Any],
        level: Level = Level.BASIC,
        step: int | None = None,
    ) -> None:
        """`_write` for `method`, then queue the record for the sinks."""
        with self._lock:
            self._check_open(method)
            self._write(kind, step, data, level)
        # Queued once the lock is released: a sink's callback that records an event must
        # never wait for a lock its own thread needs.
        self._out.submit_pending()

    # -- ending

    def finish(
        self, status: str = "finished", error: BaseException | None = None
    ) -> pathlib.Path | None:
        """End the run: record how it ended, fsync, close the sinks, write ``trainlog.json``.

        Safe to call more than once, and from any thread (a sink's callback too).

        Args:
          status: ``finished``, ``failed``, ``interrupted`` or ``terminated``.
          error: The exception that ended the run (its type, message, traceback are kept).

        A file that cannot be written at the end (a full disk) is reported as a warning:
        the sinks still get ``run_end`` and are closed, and the run reads back from
        ``events.jsonl`` as far as it got.

        Returns:
          The path of ``trainlog.json`` (None on a process that does not write, or when it
          could not be written).
        """
        if not self._finished:
            self._lifecycle.finishing = True
            self._monitors.call("on_finish", self)  # producers deliver what is in flight
            if self.enabled:
                self._monitors.call("on_end", self, status, error)
            self._out.flush(10.0)  # callbacks may still record while they react
        with self._lock:
            if self._finished:
                return self.trainlog_path if self.enabled else None
            self._finished = True
        ACTIVE.clear(self)
        self._lifecycle.unregister_exit()
        last_step = self._next_step - 1 if self._next_step else None
        return self._out.close(status, error, time.monotonic() - self._start, last_step)

    def __enter__(self) -> Run:
        self._lifecycle.enter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> Literal[False]:
        status = exit_status(exc)
        try:
            self.finish(status, exc if status != "finished" else None)
        finally:
            self._lifecycle.restore()
        self._lifecycle.raise_pending(exc)
        return False

    def __del__(self) -> None:
        # A run dropped without finish(): its records are already flushed; release the file
        # and the worker. It reads back as "incomplete". The garbage collector may run this
        # on the dispatcher's own thread: its close() never joins the thread it runs on.
        out = getattr(self, "_out", None)  # None when __init__ failed early
        if out is not None and not self._finished:
            out.release()

    def __repr__(self) -> str:
        state = "finished" if self._finished else "running"
        return f"Run(project={self.info.project!r}, id={self.id!r}, dir='{self.dir}', {state})"
