"""The monitors of a run (`Run.add_monitor`): objects that watch what it records.

A monitor is any object with some of these methods, each called in the thread that caused
it: ``on_log(run, step, values)`` after every `Run.log` record, ``on_finish(run)`` when
`Run.finish` begins (deliver what is still in flight), and ``on_end(run, status, error)``
before ``run_end`` is written. A `HealthChecker` is wrapped in a `Supervisor` (with a
`FlightRecorder` of the last 256 steps) that emits its alerts and writes crash dumps. A
monitor that raises is reported once on the ``jaxobs`` logger; the run goes on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from jaxobs._src.host.checker import HealthChecker
from jaxobs._src.host.recorder import FlightRecorder

if TYPE_CHECKING:
    from jaxobs._src.host.supervisor import Supervisor

__all__ = ["HOOKS", "Monitors", "supervise"]

logger = logging.getLogger("jaxobs")


HOOKS = ("on_log", "on_finish", "on_end")


RECORDER_STEPS = 256


def supervise(checker: HealthChecker) -> Supervisor:
    """The monitor that applies ``checker``'s rules to a run's records: a `Supervisor` with
    a `FlightRecorder` of the last 256 steps."""
    # Imported on use: the supervisor drives the on-device guard and may import jax, which
    # `import jaxobs` must not.
    from jaxobs._src.host.supervisor import Supervisor

    return Supervisor(checker, recorder=FlightRecorder(RECORDER_STEPS))


class Monitors:
    """The monitors of one run, in the order they were added. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.RLock()  # `add` asks `_has` while holding it
        self._added: list[tuple[Any, Any]] = []  # (what was passed, what is called)
        self._failed: set[tuple[int, str]] = set()  # (monitor id, hook) already reported

    def add(self, monitor: Any) -> None:
        """Add ``monitor`` (once per object); a `HealthChecker` is wrapped by `supervise`,
        unless a supervisor attached already applies it.

        Raises:
          TypeError: a hook attribute that is not callable.
        """
        if self._has(monitor):
            return
        attached = supervise(monitor) if isinstance(monitor, HealthChecker) else monitor
        for name in HOOKS:
            hook = getattr(attached, name, None)
            if hook is not None and not callable(hook):
                raise TypeError(f"{type(attached).__name__}.{name} must be callable")
        with self._lock:
            if not self._has(monitor):
                self._added.append((monitor, attached))

    def _has(self, monitor: Any) -> bool:
        """Whether ``monitor`` was added (or is what an added checker was wrapped in), or is a
        checker an attached supervisor applies."""
        with self._lock:
            if any(monitor is given or monitor is attached for given, attached in self._added):
                return True
            if not isinstance(monitor, HealthChecker):
                return False
            from jaxobs._src.host.supervisor import Supervisor  # see `supervise`

            return any(
                isinstance(attached, Supervisor) and attached.checker is monitor
                for _, attached in self._added
            )

    @property
    def attached(self) -> tuple[Any, ...]:
        """The monitors as they are called (a `HealthChecker` as its supervisor)."""
        with self._lock:
            return tuple(attached for _, attached in self._added)

    def call(self, name: str, *args: Any) -> None:
        """Call hook ``name`` of every monitor that has it, with ``args``."""
        for monitor in self.attached:
            hook = getattr(monitor, name, None)
            if hook is not None:
                self._call((id(monitor), name), hook, *args)

    def _call(self, key: tuple[int, str], hook: Callable, *args: Any) -> None:
        try:
            hook(*args)
        except Exception as e:
            with self._lock:
                first = key not in self._failed
                self._failed.add(key)
            if first:
                logger.warning(
                    "jaxobs: %r failed (reported once): %s: %s", hook, type(e).__name__, e
                )
