"""The live run: a crash-safe run directory, event dispatch, and reading a run back.

A run directory ``<dir>/<project>/<run_id>/`` holds:

- ``events.jsonl``: written ahead, one JSON object per line, each line flushed to the
  operating system before `Run.log` returns (so a killed process loses nothing it logged)
  and fsynced by `Run.finish` and when an exception or SIGTERM leaves a ``with run:`` block;
- ``trainlog.json``: the `jaxobs.log.TrainLog` of the run, written by `Run.finish` (and
  rebuilt from ``events.jsonl`` by `read_run` for a run that never finished);
- ``artifacts/``: files the run attached (confusion matrices, ...).
"""

from __future__ import annotations

import atexit
import collections
import dataclasses
import datetime as _dt
import json
import logging
import os
import pathlib
import re
import secrets
import signal
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from jaxobs._src.formats.artifacts import ConfusionMatrix
from jaxobs._src.formats.codec import json_line
from jaxobs._src.formats.config import histogram, scalar, to_config
from jaxobs._src.formats.events import (
    CUSTOM_EVENT_LEVEL,
    EVENT_LEVELS,
    Event,
    Level,
    level_from_env,
)
from jaxobs._src.formats.experiment import Artifact, RunInfo
from jaxobs._src.formats.rundir import EVENTS_FILE, EVENTS_FORMAT, TRAINLOG_FILE, read_run
from jaxobs._src.formats.trainlog import SCHEMA_VERSION
from jaxobs._src.host.dispatch import Dispatcher
from jaxobs._src.host.environment import snapshot

logger = logging.getLogger("jaxobs")

__all__ = [
    "Run",
    "Terminated",
    "active_run",
    "init",
]


_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


_NOT_INSTALLED = object()


# Event types the run writes itself, and the fields every record has.
_RESERVED_TYPES = frozenset(
    {"run_start", "run_end", "metrics", "histograms", "artifact", "note", "config_update"}
)


_RECORD_KEYS = frozenset({"event", "level", "step", "timestamp_ns"})


class Terminated(SystemExit):
    """Raised inside a ``with run:`` block when the process receives SIGTERM.

    It derives from `SystemExit` (exit status 143, as for a process killed by SIGTERM) so that
    ``finally`` blocks run and the run directory is completed and fsynced on the way out.
    """

    def __init__(self):
        super().__init__(128 + signal.SIGTERM)


_active: Run | None = None


def active_run() -> Run | None:
    """The run started last by `init` that has not finished, or None."""
    return _active


def _new_run_id() -> str:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{secrets.token_hex(3)}"


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
        converted[key] = convert(value, key)
    return converted


def _check_step(step: Any) -> int:
    if isinstance(step, bool) or not hasattr(step, "__index__") or step < 0:
        raise TypeError(f"step must be a non-negative integer, got {step!r}")
    return int(step)


def init(
    project: str,
    name: str = "",
    config: Mapping[str, Any] | Any = None,
    dir: str | os.PathLike = "runs",
    tags: Iterable[str] = (),
    group: str = "",
    id: str | None = None,
    level: Level | str | None = None,
    sinks: Iterable[Any] = (),
    terminal: bool | None = None,
    total_steps: int | None = None,
    queue_size: int = 1024,
) -> Run:
    """Start a run that records into ``<dir>/<project>/<run_id>/``.

    Args:
      project: Project name; a folder under ``dir``.
      name: Display name (default: the run id).
      config: Hyperparameters: a mapping or a dataclass. Converted to JSON as described in
        `jaxobs.log.RunInfo`; secret-looking keys are redacted.
      dir: Root folder of run directories.
      tags: Free-form tags.
      group: Group or sweep name.
      id: Run id (default: ``YYYYmmdd-HHMMSS-xxxxxx``). Letters, digits, ``.``, ``_``, ``-``.
      level: Which events are recorded (default: ``JAXOBS_LEVEL``, else DETAILED).
      sinks: Extra sinks (objects with ``handle_<event_type>`` methods).
      terminal: Show the rich terminal display (default: yes). It stays quiet, except for
        health alerts, when stdout is not a terminal.
      total_steps: Expected number of steps, for the progress bar's ETA.
      queue_size: Capacity of the sinks' queue (see `jaxobs.events` for the policy).

    Returns:
      The `Run`, also the active run (`active_run`) until it finishes. Use it as a context
      manager to finish it (and fsync, and record the error) however the block ends.

    In a multi-process job, call this after ``jax.distributed.initialize()``: the environment
    snapshot asks JAX for its devices (starting its backend), and the process index decides
    that only process 0 writes.

    Raises:
      ValueError: a bad project, id or level, or a run directory that already exists.
      jaxobs.ConfigError: a config value that cannot be stored, naming its key.
    """
    global _active
    if not isinstance(project, str) or not project.strip() or "/" in project or "\\" in project:
        raise ValueError(f"project must be a non-empty name without slashes, got {project!r}")
    run_id = _new_run_id() if id is None else id
    if not isinstance(run_id, str) or not _ID_RE.match(run_id):
        raise ValueError(f"run id {run_id!r} must be letters, digits, '.', '_' or '-'")
    if config is not None and not isinstance(config, Mapping):
        config = to_config(config, "config")
        if not isinstance(config, dict):
            raise TypeError(f"config must be a mapping or a dataclass, got {type(config).__name__}")
    info = RunInfo(
        project=project,
        name=name or run_id,
        run_id=run_id,
        group=group,
        tags=list(tags),
        config=dict(config or {}),
    )
    level = level_from_env() if level is None else Level.parse(level)
    env = snapshot()
    primary = (env.get("jax") or {}).get("process_index", 0) == 0
    all_sinks = list(sinks)
    if primary and (terminal is None or terminal):
        from jaxobs._src.sinks.terminal import TerminalSink

        all_sinks.insert(0, TerminalSink(total_steps=total_steps))
    run = Run(
        info,
        pathlib.Path(dir) / project / run_id,
        level=level,
        env=env,
        sinks=all_sinks,
        queue_size=queue_size,
        enabled=primary,
        total_steps=total_steps,
    )
    _active = run
    return run


class Run:
    """A live run. Create it with `jaxobs.init`.

    Only process 0 of a multi-process JAX job writes: on other processes a run is disabled
    (every method works and records nothing).
    """

    def __init__(
        self,
        info: RunInfo,
        directory: pathlib.Path,
        *,
        level: Level = Level.DETAILED,
        env: Mapping[str, Any] | None = None,
        sinks: Iterable[Any] = (),
        queue_size: int = 1024,
        enabled: bool = True,
        total_steps: int | None = None,
    ):
        self.info = info
        # Absolute, so that a later chdir (Hydra does one) cannot lose the run directory.
        self.dir = pathlib.Path(directory).absolute()
        self.level = level
        self.enabled = enabled
        self._lock = threading.RLock()
        self._next_step = 0
        self._finished = False
        self._start = time.monotonic()
        self._saved_sigterm: Any = _NOT_INSTALLED
        self._finishing = False
        self._sigterm_pending = False
        self._pid = os.getpid()
        self._file = None
        self._start_event: Event | None = None
        self._dispatcher: Dispatcher | None = None
        self._pending: collections.deque[Event] = collections.deque()
        self._monitors: list[Any] = []  # see `add_monitor`
        self._monitor_errors: set[int] = set()
        if not enabled:
            return
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size}")
        # Everything that can fail is done before the file exists, so a failed init leaves
        # nothing behind that would block the same id later.
        start = Event(
            "run_start",
            Level.BASIC,
            None,
            time.time_ns(),
            {
                "schema_version": SCHEMA_VERSION,
                "format": EVENTS_FORMAT,
                "run": info.to_json(),
                "env": dict(env or {}),
                "settings": {"level": level.name, "total_steps": total_steps, "dir": str(self.dir)},
            },
        )
        line = json_line(start.to_record()) + "\n"
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            # "x": exclusive creation, so two processes given the same id cannot share a file.
            # backslashreplace: a non-UTF-8 argv or path cannot stop the run from recording.
            self._file = open(  # noqa: SIM115
                self.dir / EVENTS_FILE, "x", encoding="utf-8", errors="backslashreplace"
            )
        except FileExistsError:
            raise ValueError(
                f"run directory {self.dir} already holds a run; choose another id"
            ) from None
        self._file.write(line)
        self._fsync()
        self._start_event = start
        self._dispatcher = Dispatcher([], maxsize=queue_size)
        for sink in sinks:  # each gets run_start first; a bind may record (config, tracker)
            self.add_sink(sink)
        ref = weakref.ref(self)
        self._atexit = lambda: (r := ref()) is not None and r._finish_at_exit()
        atexit.register(self._atexit)

    # -- properties

    @property
    def id(self) -> str:
        return self.info.run_id

    @property
    def config(self) -> dict[str, Any]:
        """The run's config (a copy; change it with `update_config`)."""
        return json.loads(json.dumps(self.info.config))

    @property
    def step(self) -> int:
        """The step that `log` uses when it is given none."""
        return self._next_step

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def skipped_for_sinks_ns(self) -> list[int]:
        """The ``timestamp_ns`` of every record the sinks did not get because their queue was
        full (all of them are in ``events.jsonl``; a tracker bridge sends them from there when
        the run ends)."""
        return list(self._dispatcher.dropped_ns) if self._dispatcher is not None else []

    @property
    def events_path(self) -> pathlib.Path:
        return self.dir / EVENTS_FILE

    @property
    def trainlog_path(self) -> pathlib.Path:
        return self.dir / TRAINLOG_FILE

    # -- recording

    def log(self, values: Mapping[str, Any], step: int | None = None) -> None:
        """Record scalar metrics at ``step``.

        Values are converted to host floats (a jax array is waited for: log values that are
        already on the host, or let `jaxobs.observe` deliver them). The record is on disk
        (flushed to the OS) when this returns.

        Args:
          values: ``{"val/loss": 0.3, ...}``; keys are ``/``-joined metric names.
          step: The training step (default: `step`, which then advances by one).

        Raises:
          TypeError: a value that is not a scalar, or a non-string key; names the metric.
          RuntimeError: the run has finished.
        """
        converted = _convert_named(values, "run.log", "metric", scalar)
        with self._lock:
            self._check_open("log")
            step = _check_step(self._next_step if step is None else step)
            self._next_step = max(self._next_step, step + 1)
            self._emit("metrics", step, {"values": converted}, Level.BASIC)
        self._submit_pending()
        for monitor in list(self._monitors):
            on_log = getattr(monitor, "on_log", None)
            if on_log is not None:
                self._call_hook(on_log, self, step, converted)

    def log_histograms(self, histograms: Mapping[str, Any], step: int | None = None) -> None:
        """Record histograms at ``step`` (one ``histograms`` record, level DETAILED).

        `jaxobs.observe(histograms=N)` computes them on the device and logs them here; the
        bridges show them as W&B and TensorBoard histograms.

        Args:
          histograms: ``{"params/Dense_0/kernel": value}``, each value ``(counts, edges)``
            as `numpy.histogram` returns it, a mapping with ``counts`` and ``edges`` (and
            optionally ``sum`` and ``sum_squares``), or an array of samples (binned here into
            64 bins over its finite values).
          step: The training step (default: the last step logged, or 0).

        Raises:
          TypeError, ValueError: a malformed histogram, naming it.
          RuntimeError: the run has finished.
        """
        converted = _convert_named(histograms, "run.log_histograms", "histogram", histogram)
        if not converted:
            return
        with self._lock:
            self._check_open("log_histograms")
            step = _check_step(max(self._next_step - 1, 0) if step is None else step)
            self._emit("histograms", step, {"values": converted}, Level.DETAILED)
        self._submit_pending()

    def add_monitor(self, monitor: Any) -> None:
        """Let ``monitor`` watch what this run records, from now on (once per object).

        A monitor is any object with some of these methods, each called in the thread that
        caused it (see `Monitor`): ``on_log(run, step, values)`` after every `log` record,
        ``on_finish(run)`` when `finish` begins (deliver what is still in flight), and
        ``on_end(run, status, error)`` before ``run_end`` is written. A
        `jaxobs.HealthChecker` is wrapped in a supervisor that emits its alerts and writes
        crash dumps. A monitor that raises is reported once; the run goes on.
        """
        if any(m is monitor for m in self._monitors):
            return
        for name in ("on_log", "on_finish", "on_end"):
            hook = getattr(monitor, name, None)
            if hook is not None and not callable(hook):
                raise TypeError(f"{type(monitor).__name__}.{name} must be callable")
        self._monitors.append(monitor)

    @property
    def monitors(self) -> tuple[Any, ...]:
        """The monitors added with `add_monitor`, in order."""
        return tuple(self._monitors)

    def _call_hook(self, hook: Callable, *args: Any) -> None:
        """Call a monitor; one that raises is reported once and training goes on."""
        try:
            hook(*args)
        except Exception as e:
            if id(hook) not in self._monitor_errors:
                self._monitor_errors.add(id(hook))
                logger.warning(
                    "jaxobs: %r failed (reported once): %s: %s", hook, type(e).__name__, e
                )

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
          level: Its level (default: the seed's level for known types, DETAILED otherwise).
            Events above the run's level are not recorded.
          **data: Payload; converted to JSON like a config (errors name the field).
        """
        if not isinstance(event_type, str) or not event_type.isidentifier():
            raise ValueError(f"event type must be an identifier, got {event_type!r}")
        if event_type in _RESERVED_TYPES:
            raise ValueError(f"{event_type!r} is recorded by the run itself; use the Run methods")
        clash = sorted(_RECORD_KEYS & set(data))
        if clash:
            raise ValueError(
                f"emit({event_type!r}): payload keys {clash} are the record's own fields; "
                "rename them"
            )
        lvl = (
            Level.parse(level)
            if level is not None
            else EVENT_LEVELS.get(event_type, CUSTOM_EVENT_LEVEL)
        )
        payload = to_config(data, event_type)
        with self._lock:
            self._check_open("emit")
            self._emit(event_type, step, payload, lvl)
        self._submit_pending()

    def add_artifact(
        self,
        artifact: Artifact | str,
        path: str | os.PathLike | None = None,
        kind: str = "",
        description: str = "",
    ) -> Artifact:
        """Attach a file to the run (paths inside the run directory are stored relative)."""
        if not isinstance(artifact, Artifact):
            if path is None:
                raise TypeError(f"add_artifact({artifact!r}) needs a path")
            artifact = Artifact(artifact, os.fspath(path), kind, description)
        p = pathlib.Path(artifact.path)
        if p.is_absolute() and p.is_relative_to(self.dir.resolve()):
            artifact = dataclasses.replace(artifact, path=str(p.relative_to(self.dir.resolve())))
        with self._lock:
            self._check_open("add_artifact")
            self._emit("artifact", None, {"artifact": artifact.to_json()}, Level.BASIC)
        self._submit_pending()
        return artifact

    def log_confusion_matrix(
        self, name: str, matrix: ConfusionMatrix, step: int | None = None
    ) -> Artifact:
        """Write ``matrix`` to ``artifacts/<name>[-<step>].json`` and attach it."""
        if not _ID_RE.match(name):
            raise ValueError(f"artifact name {name!r} must be letters, digits, '.', '_' or '-'")
        if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
            raise TypeError(f"step must be a non-negative integer, got {step!r}")
        self._check_open("log_confusion_matrix")
        rel = pathlib.Path("artifacts") / (
            f"{name}-{step}.json" if step is not None else f"{name}.json"
        )
        if self.enabled:
            matrix.write_json(self.dir / rel)
        return self.add_artifact(
            Artifact(
                name,
                str(rel),
                "confusion_matrix",
                f"confusion matrix at step {step}" if step is not None else "confusion matrix",
            )
        )

    def add_note(self, text: str) -> None:
        """Add a free-form note (stored in the TrainLog's notes)."""
        with self._lock:
            self._check_open("add_note")
            self._emit("note", None, {"text": str(text)}, Level.BASIC)
        self._submit_pending()

    def update_config(self, values: Mapping[str, Any]) -> None:
        """Add or change config entries (recorded as a ``config_update`` event)."""
        converted = to_config(dict(values), "config")
        with self._lock:
            self._check_open("update_config")
            self.info.config.update(converted)
            self._emit("config_update", None, {"config": converted}, Level.BASIC)
        self._submit_pending()

    def add_sink(self, sink: Any) -> None:
        """Send this run's events to ``sink`` from now on.

        A sink with a ``bind(run)`` method (the W&B and TensorBoard bridges) is bound first,
        in the caller's thread: that is where a tracker starts its run, so that what it
        decides (a sweep's hyperparameters) is in `config` when this returns. The sink gets
        the ``run_start`` event next. A ``bind`` that raises is reported once and the sink is
        left out; the run goes on.
        """
        if self._dispatcher is None:
            return
        bind = getattr(sink, "bind", None)
        if bind is not None:
            try:
                bind(self)
            except Exception as e:
                message = (
                    f"jaxobs: {type(sink).__name__}.bind raised {type(e).__name__}: {e}; "
                    f"the sink is left out (training goes on, {self.events_path} is complete)"
                )
                tracker = getattr(sink, "tracker", None)
                if isinstance(tracker, str):
                    message += f"; send the run later with `jaxobs sync {self.dir} --to {tracker}`"
                self._dispatcher.errors.append(message)
                logger.warning(message)
                return
        self._dispatcher.add_sink(sink, first=self._start_event)

    def register_callback(self, event_type: str, fn: Callable[[Event], Any]) -> None:
        """Call ``fn(event)`` on the worker thread for each event of that type (``"*"``: all)."""
        if self._dispatcher is not None:
            self._dispatcher.register_callback(event_type, fn)
        elif not callable(fn):
            raise TypeError(f"callback for {event_type!r} must be callable, got {fn!r}")

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until the sinks have handled every queued event."""
        if self._dispatcher is not None:
            self._dispatcher.flush(timeout_s)

    # -- internals

    def _check_open(self, what: str) -> None:
        if self._finished:
            raise RuntimeError(f"run.{what}() after the run {self.id!r} finished")

    def _emit(self, event_type: str, step: int | None, data: dict[str, Any], level: Level) -> None:
        """Write the record (under the run's lock) and queue it for the sinks (after it)."""
        if level > self.level or not self.enabled:
            return
        event = self._record(event_type, step, data, level)
        self._pending.append(event)

    def _submit_pending(self) -> None:
        # Called by the public methods once they released the lock: a sink's callback that
        # records an event must never wait for a lock its own thread needs.
        while self._pending:
            try:
                event = self._pending.popleft()
            except IndexError:
                return
            self._dispatcher.submit(event)

    def _record(
        self, event_type: str, step: int | None, data: dict[str, Any], level: Level = Level.BASIC
    ) -> Event:
        event = Event(event_type, level, step, time.time_ns(), data)
        self._file.write(json_line(event.to_record()) + "\n")
        self._file.flush()
        return event

    def _fsync(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    # -- ending

    def finish(
        self, status: str = "finished", error: BaseException | None = None
    ) -> pathlib.Path | None:
        """End the run: record how it ended, fsync, close the sinks, write ``trainlog.json``.

        Safe to call more than once. Returns the path of ``trainlog.json``.
        """
        global _active
        if not self._finished:
            self._finishing = True
            for monitor in list(self._monitors):  # producers deliver what is in flight
                on_finish = getattr(monitor, "on_finish", None)
                if on_finish is not None:
                    self._call_hook(on_finish, self)
            if self.enabled:
                for monitor in list(self._monitors):
                    on_end = getattr(monitor, "on_end", None)
                    if on_end is not None:
                        self._call_hook(on_end, self, status, error)
            if self._dispatcher is not None:  # callbacks may still record while they react
                self._dispatcher.flush(10.0)
        with self._lock:
            if self._finished:
                return self.trainlog_path if self.enabled else None
            self._finished = True
        if _active is self:
            _active = None
        if not self.enabled:
            return None
        atexit.unregister(self._atexit)
        end: dict[str, Any] = {
            "status": status,
            "duration_s": time.monotonic() - self._start,
            "last_step": self._next_step - 1 if self._next_step else None,
        }
        if error is not None:
            end["error"] = {
                "type": type(error).__name__,
                "message": str(error),
                "traceback": "".join(traceback.format_exception(error))[-4000:],
            }
        self._dispatcher.flush(10.0)
        end["sink_errors"] = list(self._dispatcher.errors)
        end["dropped_for_sinks"] = dict(self._dispatcher.dropped)
        event = self._record("run_end", self._next_step - 1 if self._next_step else None, end)
        self._fsync()
        self._file.close()
        try:  # before the sinks see run_end, so that a bridge can attach trainlog.json
            record = read_run(self.dir, _warn=False)
            record.log.to_trainlog().write_json(self.trainlog_path)
        finally:
            self._dispatcher.submit(event)
            self._dispatcher.close()
        if self._dispatcher.dropped:
            logger.warning(
                "jaxobs: the sinks' queue was full; events skipped for sinks (all are in %s): %s",
                self.events_path,
                dict(self._dispatcher.dropped),
            )
        return self.trainlog_path

    def _finish_at_exit(self) -> None:
        if os.getpid() != self._pid:  # a forked child must not end its parent's run
            return
        # An uncaught exception in a script leaves sys.last_value; in an interactive session it
        # may be an older, unrelated error.
        error = None if hasattr(sys, "ps1") else getattr(sys, "last_value", None)
        self.finish("failed" if error is not None else "finished", error)

    def __enter__(self) -> Run:
        if threading.current_thread() is threading.main_thread():

            def on_sigterm(signum, frame):
                if self._finishing:  # let the run end completely, then stop
                    self._sigterm_pending = True
                    return
                raise Terminated()

            self._saved_sigterm = signal.signal(signal.SIGTERM, on_sigterm)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None or (
            isinstance(exc, SystemExit)
            and not isinstance(exc, Terminated)
            and exc.code in (0, None)
        ):
            status = "finished"
        elif isinstance(exc, Terminated):
            status = "terminated"
        elif isinstance(exc, KeyboardInterrupt):
            status = "interrupted"
        else:
            status = "failed"
        try:
            self.finish(status, exc if status != "finished" else None)
        finally:
            if self._saved_sigterm is not _NOT_INSTALLED:
                # None means a handler installed from C: the closest is the default action.
                signal.signal(signal.SIGTERM, self._saved_sigterm or signal.SIG_DFL)
                self._saved_sigterm = _NOT_INSTALLED
        if self._sigterm_pending and exc is None:
            self._sigterm_pending = False
            raise Terminated()
        return False

    def __del__(self) -> None:
        # A run dropped without finish(): its records are already flushed; release the file
        # and the worker. It reads back as "incomplete".
        file = getattr(self, "_file", None)
        if file is not None and not file.closed:
            file.close()
        dispatcher = getattr(self, "_dispatcher", None)
        if dispatcher is not None and not self._finished:
            dispatcher.close(timeout_s=1.0)

    def __repr__(self) -> str:
        state = "finished" if self._finished else "running"
        return f"Run(project={self.info.project!r}, id={self.id!r}, dir='{self.dir}', {state})"
