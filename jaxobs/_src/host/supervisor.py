"""The host side of run health: a `Supervisor` watches a run's records and acts on them.

It is a run monitor (`Run.add_monitor`): every record a run logs, from an observed step or
from the user's own ``run.log``, goes to the flight recorder and through the checker's
rules; alerts become ``health_check`` events; a critical alert, a halt, or a run that ends
badly writes a crash dump (with the failure-signature plot, and the newest good snapshot as
an orbax checkpoint). For an observed step it also takes the actions the device guard asks
for through the checker's `ActionPolicy`: it raises `TrainingHalted`, keeps snapshots of
good states, and rolls back to one.

Every step number here is the state's own (the step its records carry), never a count of
calls, so a run resumed at step 1000 snapshots, rolls back and dumps at its own steps.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from jaxobs._src.host.alerts import Alert, TrainingHalted
from jaxobs._src.host.checker import HealthChecker
from jaxobs._src.host.recorder import FlightRecorder
from jaxobs._src.host.snapshots import PendingSnapshot, Snapshots

__all__ = ["Supervisor"]

logger = logging.getLogger("jaxobs")


class Supervisor:
    """Health rules, actions, flight recorder, snapshots and crash dumps for runs.

    Attach it with ``run.add_monitor(supervisor)`` (`jaxobs.observe` attaches its own to
    every run it feeds). Without an observed step it has no snapshots; rules, alerts and
    crash dumps work all the same.

    Args:
      checker: The health rules and actions (None: record only).
      recorder: The flight recorder dumped on a failure (None: no crash dumps).

    Attributes:
      checker: The checker.
      recorder: The recorder.
      snapshots: The kept states (filled by an observed step).
      rollbacks: One dict per rollback: ``at_step``, ``restored_step``, ``trigger_step``,
        ``streak_start``.
      dumps: The crash dumps written, in order.
      batches_to_skip: Batches the data loop should skip after rollbacks.
    """

    def __init__(
        self, checker: HealthChecker | None = None, recorder: FlightRecorder | None = None
    ) -> None:
        if checker is not None and not isinstance(checker, HealthChecker):
            raise TypeError(f"Supervisor(checker={checker!r}): a jaxobs.HealthChecker or None")
        if recorder is not None and not isinstance(recorder, FlightRecorder):
            raise TypeError(f"Supervisor(recorder={recorder!r}): a jaxobs.FlightRecorder or None")
        self.checker = checker
        self.recorder = recorder
        self.snapshots = Snapshots()
        self.rollbacks: list[dict[str, Any]] = []
        self.dumps: list[Any] = []
        self.batches_to_skip = 0
        self._lock = threading.Lock()  # rule checks, actions and dumps
        self._halt_raised = False
        self._sources: list[Callable[[], None]] = []
        self._runs: weakref.WeakSet = weakref.WeakSet()  # ids can be reused; runs cannot

    # -- attaching

    def attach(self, run: Any) -> None:
        """Watch ``run`` (once per run): ``run.add_monitor(self)``."""
        if run not in self._runs:
            self._runs.add(run)
            if not any(m is self for m in run.monitors):  # e.g. made by init(health=...)
                run.add_monitor(self)

    def watches(self, run: Any) -> bool:
        """Whether `attach` was called for ``run``."""
        return run in self._runs

    def for_run(self, run: Any) -> Supervisor:
        """The supervisor to attach to ``run``: one already watching it with the same checker
        (``jaxobs.init(health=checker)``) while this one has done nothing yet, so that no
        record is checked twice; else this one. A supervisor taking over gets the sources."""
        if (
            self.checker is None
            or self._runs
            or self.rollbacks
            or self.dumps
            or len(self.snapshots)
        ):
            return self
        for monitor in run.monitors:
            mine = isinstance(monitor, Supervisor) and monitor.checker is self.checker
            if mine and monitor is not self:
                for flush in self._sources:
                    monitor.add_source(flush)
                return monitor
        return self

    def add_source(self, flush: Callable[[], None]) -> None:
        """A producer of records (an observed step): ``flush()`` delivers what it still has
        in flight, and is called when an attached run begins to finish."""
        self._sources.append(flush)

    # -- run monitor hooks

    def on_log(self, run: Any, step: int, values: Mapping[str, float]) -> None:
        """Every record the run logs: the recorder, then the rules (alerts, dumps)."""
        if self.recorder is not None:
            self.recorder.add(step, values)
        checker = self.checker
        if checker is None:
            return
        with self._lock:
            diverged = self.recorder.first_diverged if self.recorder is not None else None
            alerts = checker.check(step, values, diverged=diverged)
            emit_alerts(run, alerts)
            critical = next((a for a in alerts if a.severity == "critical"), None)
            halt = checker.actions.halt
            if halt is not None and halt in alerts:
                critical = halt
            if critical is not None:
                self._dump(
                    run,
                    critical.step,
                    {
                        "kind": "halt" if halt is critical else "alert",
                        "rule": critical.rule,
                        "severity": critical.severity,
                        "message": critical.message,
                        "error": None,
                    },
                )

    def on_finish(self, run: Any) -> None:
        """The run begins to finish: the producers deliver what they have in flight."""
        for flush in list(self._sources):
            flush()

    def on_end(self, run: Any, status: str, error: BaseException | None) -> None:
        """The run ends: if badly (exception, SIGTERM, Ctrl-C), dump the recorder."""
        if status == "finished" or self.recorder is None or not len(self.recorder):
            return
        if isinstance(error, TrainingHalted) and self.dumps:
            return  # dumped when the alert came
        kind = {"terminated": "sigterm", "interrupted": "interrupt"}.get(status, "exception")
        steps, _, _ = self.recorder.snapshot()
        message = f"{type(error).__name__}: {error}" if error is not None else status
        with self._lock:
            self._dump(
                run,
                int(steps[-1]),
                {
                    "kind": kind,
                    "rule": None,
                    "severity": None,
                    "message": message.splitlines()[0] if message else status,
                    "error": None
                    if error is None
                    else {"type": type(error).__name__, "message": str(error)},
                },
            )

    # -- an observed step

    @property
    def acts_on_steps(self) -> bool:
        """Whether bad steps are acted on (skip, halt, rollback): the observed step then
        waits for the verdict of step s - 1 before dispatching s + 1."""
        return self.checker is not None and self.checker.skips_on_device

    @property
    def snapshot_every(self) -> int | None:
        """Steps between snapshots (None: no snapshots)."""
        return self.checker.snapshot_every if self.checker is not None else None

    def before_step(
        self,
        args: tuple,
        *,
        run: Any,
        restore: Callable[[tuple, Any], tuple],
        current_step: Callable[[tuple], int],
    ) -> tuple:
        """Before an observed step is dispatched: halt, or roll back if the policy asks.

        Args:
          args: The step's arguments.
          run: The run the step records into (for the rollback event), or None.
          restore: ``restore(args, state)``: ``args`` with the state replaced.
          current_step: ``current_step(args)``: the state's step number in ``args``.

        Returns:
          ``args``, with the newest good snapshot restored after a rollback request.

        Raises:
          TrainingHalted: the policy halted the run (once).
        """
        self.raise_if_halted()
        checker = self.checker
        if checker is None:
            return args
        with self._lock:
            request = checker.actions.take_rollback()
        if request is None:
            return args
        snapshot = self.snapshots.newest(at_or_before=request.streak_start)
        if snapshot is None:
            with self._lock:
                alert = checker.actions.give_up(
                    request.step, "no good state was kept to roll back to (see snapshot_every)"
                )
            if alert is not None and run is not None and not run.finished:
                emit_alerts(run, [alert])
            self.raise_if_halted()
            return args
        args = restore(args, snapshot.tree())
        at_step = current_step(args)  # the state keeps its own counter across a rollback
        self.batches_to_skip += checker.rollback_skip_batches
        with self._lock:
            checker.actions.rollback_done(at_step)  # verdicts of steps in flight do not count
        info = {
            "at_step": at_step,
            "restored_step": snapshot.step,
            "trigger_step": request.step,
            "streak_start": request.streak_start,
        }
        self.rollbacks.append(info)
        if run is not None and not run.finished:
            run.emit("rollback", step=at_step, **info)
        return args

    def after_step(self, step: int, state: Callable[[], Any]) -> PendingSnapshot | None:
        """After step ``step`` was dispatched: a snapshot of the state it returns (``state()``)
        when one is due (the state before step ``step + 1``), to `keep_snapshot` once the
        step is judged."""
        every = self.snapshot_every
        if not every or (step + 1) % every:
            return None
        tree = state()
        return None if tree is None else self.snapshots.take(tree)

    def keep_snapshot(self, pending: PendingSnapshot, step: int) -> None:
        """On the delivery thread, after the record of step ``step - 1``: keep the snapshot
        of the state before ``step`` if that step was healthy."""
        checker = self.checker
        if checker is not None and (checker.actions.last_bad or checker.actions.halt is not None):
            return
        self.snapshots.keep(pending, step)

    def take_batches_to_skip(self) -> int:
        """How many batches the data loop should skip after a rollback (and reset it)."""
        n, self.batches_to_skip = self.batches_to_skip, 0
        return n

    def raise_if_halted(self) -> None:
        """Raise `TrainingHalted` once the policy has halted (only once)."""
        checker = self.checker
        if checker is None or checker.actions.halt is None or self._halt_raised:
            return
        with self._lock:  # the dump for the halting alert is written under this lock
            self._halt_raised = True
            raise TrainingHalted(checker.actions.halt, self.dumps[-1] if self.dumps else None)

    # -- crash dumps

    def _dump(self, run: Any, step: int, trigger: dict[str, Any]) -> None:
        if self.recorder is not None and run.enabled:
            path = write_crash_dump(run, step, trigger, self.recorder, self.checker, self.snapshots)
            if path is not None:
                self.dumps.append(path)


def write_crash_dump(
    run: Any,
    step: int,
    trigger: Mapping[str, Any],
    recorder: FlightRecorder,
    checker: HealthChecker | None,
    snapshots: Snapshots,
) -> Any:
    """Write ``crash/crash-<step>.json`` into ``run``'s directory, with the newest snapshot
    as an orbax checkpoint and the failure-signature plot (unless ``checker.plot`` is off);
    record them as artifacts and a ``crash_dump`` event.

    Returns:
      The dump's path, or None when it could not be written (a warning says why: a failed
      dump must not hide the failure it describes).
    """
    try:
        directory = run.dir / "crash"
        path = recorder.dump(
            directory,
            step=step,
            trigger=trigger,
            thresholds=checker.settings() if checker is not None else {},
            alerts=[a.to_json() for a in checker.alerts[-100:]] if checker else [],
            run={
                "project": run.info.project,
                "run_id": run.id,
                "name": run.info.name,
                "dir": str(run.dir),
            },
            checkpoint=snapshots.save_checkpoint(directory),
        )
    except Exception as e:
        logger.warning("jaxobs: could not write the crash dump: %s: %s", type(e).__name__, e)
        return None
    run.add_artifact(f"crash-{step}", path, kind="crash_dump", description=trigger["message"])
    plot = _plot(run, path, step) if checker is None or checker.plot else None
    run.emit("crash_dump", step=step, path=str(path), plot=str(plot) if plot else None)
    return path


def emit_alerts(run: Any, alerts: Iterable[Alert]) -> None:
    """Record each alert as a ``health_check`` event at its step."""
    for alert in alerts:
        record = alert.to_json()
        del record["step"]
        run.emit("health_check", step=alert.step, **record)


_WARNED: set[str] = set()  # process-wide: a missing package is said once


def _plot(run: Any, path: Any, step: int) -> Any:
    """The failure-signature PNG beside the dump, as an artifact; None if it cannot be made."""
    try:
        from jaxobs._src.analysis.crash_plot import plot
        from jaxobs._src.formats.crash_dump import load_dump

        image = plot(load_dump(path))
    except ImportError as e:
        if "plot" not in _WARNED:
            _WARNED.add("plot")
            logger.warning(
                "jaxobs: no failure-signature plot (%s): pip install 'jaxobs[report]'", e
            )
        return None
    except Exception as e:
        logger.warning("jaxobs: could not plot %s: %s: %s", path, type(e).__name__, e)
        return None
    run.add_artifact(f"crash-{step}-plot", image, kind="image")
    return image
