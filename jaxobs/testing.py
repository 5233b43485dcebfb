"""Helpers for testing code that uses jaxobs: capture a run's events, count compilations.

Like structlog's `capture_logs` and optax's `log_compilations`, these are for your own test
suite, so that it asserts on what a run recorded without parsing ``events.jsonl`` by hand,
and on how often JAX compiled without reaching into JAX's private caches.

- `CaptureSink` keeps every event a run hands to its sinks, as `jaxobs.Event` objects.
- `capture_run` starts a run (in a temporary directory, terminal display off) with a
  `CaptureSink` attached, and finishes it when the block ends.
- `log_compilations` records each program JAX compiles while it is active, through the
  public `jax.monitoring` listeners; `count_compilations` counts those of one call.

Sinks receive events on the run's background thread: while the run is live, call
`jaxobs.Run.flush` before reading a capture. Once the run has finished (the end of a
`capture_run` block), the capture holds everything, ``run_end`` included.

Importing this module does not import JAX; `log_compilations` imports it when entered.

Examples:
    >>> from jaxobs.testing import capture_run
    >>> with capture_run(config={"lr": 0.1}) as (run, capture):
    ...     run.log({"train/loss": 0.5}, step=0)
    ...     run.log({"train/loss": 0.25}, step=1)
    ...     run.flush()  # the sinks run on a background thread
    ...     capture.metrics()
    {'train/loss': {0: 0.5, 1: 0.25}}
    >>> capture.types()[0], capture.types()[-1]
    ('run_start', 'run_end')
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any

from jaxobs._src.formats.events import Event
from jaxobs._src.host.run import Run
from jaxobs._src.host.start import init

# What JAX records each time it hands a program to XLA (or loads it from the persistent
# compilation cache): `jax._src.dispatch.BACKEND_COMPILE_EVENT`, spelled out here so that
# nothing private is imported.
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
"""The `jax.monitoring` duration event that `log_compilations` counts."""

# A capture should see every event: a run's sinks miss stream events (metrics) when their
# queue is full, and a test may log faster than the worker thread runs.
CAPTURE_QUEUE_SIZE = 1 << 16
"""The sinks' queue size of a `capture_run` run, unless ``queue_size=`` is given."""


class CaptureSink:
    """A sink that keeps every event a run dispatches to it, in order.

    Attach it with ``jaxobs.init(..., sinks=[capture])`` or `jaxobs.Run.add_sink`, or let
    `capture_run` do both. It sees what every sink sees: the run's ``run_start`` first, then
    each recorded event (those above the run's level are not recorded), and ``run_end``
    when the run finishes.

    Events arrive on the run's background thread. Call `jaxobs.Run.flush` before reading
    while the run is live; every method here is safe to call from any thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[Event] = []

    def handle_event(self, event: Event) -> None:
        """Keep ``event`` (called by the run's dispatcher for every event type)."""
        with self._lock:
            self._events.append(event)

    @property
    def events(self) -> list[Event]:
        """A copy of the events received so far, in order (each a `jaxobs.Event`)."""
        with self._lock:
            return list(self._events)

    def __len__(self) -> int:
        with self._lock:
            return len(self._events)

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    def clear(self) -> None:
        """Forget the events received so far."""
        with self._lock:
            self._events.clear()

    def types(self) -> list[str]:
        """The type of each event received, in order (``["run_start", "metrics", ...]``)."""
        return [e.type for e in self.events]

    def of_type(self, *types: str) -> list[Event]:
        """The events of the given types, in order.

        Args:
          *types: Event types, e.g. ``"health_check"``, ``"metrics"``, ``"epoch_end"``.

        Returns:
          The events whose type is one of ``types``.

        Raises:
          TypeError: no type, or a type that is not a string.
        """
        if not types or not all(isinstance(t, str) for t in types):
            raise TypeError(
                f"of_type() takes event types as strings, e.g. of_type('health_check'); "
                f"got {types!r}"
            )
        return [e for e in self.events if e.type in types]

    def metrics(self) -> dict[str, dict[int, float]]:
        """Every scalar of the ``metrics`` events, as ``{key: {step: value}}``.

        A key logged twice at the same step keeps its last value, as in the run's TrainLog.
        """
        table: dict[str, dict[int, float]] = {}
        for event in self.of_type("metrics"):
            if event.step is None:  # a metrics record always has one
                continue
            for key, value in event.data.get("values", {}).items():
                table.setdefault(key, {})[event.step] = value
        return table

    def records(self) -> list[dict[str, Any]]:
        """Each event as its ``events.jsonl`` record (`jaxobs.Event.to_record`), not encoded:
        non-finite floats stay floats."""
        return [e.to_record() for e in self.events]

    def __repr__(self) -> str:
        return f"CaptureSink({len(self)} events)"


@contextlib.contextmanager
def capture_run(project: str = "test", **init_kwargs: Any) -> Iterator[tuple[Run, CaptureSink]]:
    """Start a run with a `CaptureSink` attached; finish it when the block ends.

    The run records into a temporary directory, deleted when the block ends, unless
    ``dir=`` is given (pass pytest's ``tmp_path`` to read its files afterwards). The
    terminal display is off unless ``terminal=True``. Sinks given as ``sinks=`` are added
    after the capture. The sinks' queue holds 65536 events unless ``queue_size=`` is given,
    so that a test cannot log faster than the capture keeps up.

    The run ends like a ``with jaxobs.init(...)`` block: an exception marks it failed and
    propagates. While the block runs, call ``run.flush()`` before reading the capture.

    Args:
      project: The run's project name.
      **init_kwargs: Any other argument of `jaxobs.init` (``config``, ``level``, ``id``, ...).

    Yields:
      ``(run, capture)``: the live `jaxobs.Run` and its `CaptureSink`.

    Raises:
      TypeError: ``sinks`` given as something other than an iterable of sinks.
    """
    capture = CaptureSink()
    extra = init_kwargs.pop("sinks", ())
    try:
        extra = list(extra)
    except TypeError:
        raise TypeError(
            f"capture_run(sinks=...) takes an iterable of sinks, got {type(extra).__name__}; "
            "e.g. sinks=[my_sink]"
        ) from None
    init_kwargs["sinks"] = [capture, *extra]
    init_kwargs.setdefault("terminal", False)
    init_kwargs.setdefault("queue_size", CAPTURE_QUEUE_SIZE)
    with contextlib.ExitStack() as stack:
        if init_kwargs.get("dir") is None:
            init_kwargs["dir"] = stack.enter_context(
                tempfile.TemporaryDirectory(prefix="jaxobs-test-")
            )
        with init(project, **init_kwargs) as run:
            yield run, capture


@dataclasses.dataclass(frozen=True)
class Compilation:
    """One program JAX compiled.

    Attributes:
      name: The name JAX gave it (``"jit(train_step)"``), or ``""`` when JAX names none.
      duration_s: How long the compilation took, in seconds.
    """

    name: str
    duration_s: float


class CompilationLog:
    """The compilations seen while `log_compilations` was active, in order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[Compilation] = []

    def add(self, compilation: Compilation) -> None:
        """Record one compilation (called by the listener)."""
        with self._lock:
            self._items.append(compilation)

    @property
    def compilations(self) -> list[Compilation]:
        """A copy of the `Compilation` records so far, in order."""
        with self._lock:
            return list(self._items)

    @property
    def count(self) -> int:
        """How many programs were compiled."""
        return len(self)

    @property
    def names(self) -> list[str]:
        """The name of each compiled program, in order."""
        return [c.name for c in self.compilations]

    def count_of(self, name: str) -> int:
        """How many compiled programs are the function ``name``.

        Args:
          name: A function's name (``"train_step"``), or the name JAX gives its program
            (``"jit(train_step)"``); the first matches ``jit(train_step)`` and the like.

        Returns:
          The number of compilations of that name.
        """
        wrapped = re.compile(r"\w+\(" + re.escape(name) + r"\)")
        return sum(1 for n in self.names if n == name or wrapped.fullmatch(n))

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __iter__(self) -> Iterator[Compilation]:
        return iter(self.compilations)

    def __repr__(self) -> str:
        return f"CompilationLog(count={self.count}, names={self.names!r})"


@contextlib.contextmanager
def log_compilations() -> Iterator[CompilationLog]:
    """Record every program JAX compiles while the block runs.

    Counts JAX's ``/jax/core/compile/backend_compile_duration`` event, which it records
    through `jax.monitoring` each time it hands a program to XLA (or loads one from the
    persistent compilation cache). No private JAX API is used.

    The listener is process-wide: compilations on other threads (a sink, another test
    running in parallel) are counted too. Eager operations compile small programs of their
    own the first time they see a shape, so compare counts of like with like, or use
    `CompilationLog.count_of`.

    Yields:
      A `CompilationLog`, filled in as compilations happen.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> def double(x):
        ...     return 2 * x
        >>> step = jax.jit(double)
        >>> x = jnp.ones(3)
        >>> with log_compilations() as log:
        ...     for _ in range(5):
        ...         y = step(x)
        >>> log.count_of("double")
        1
    """
    import jax.monitoring

    log = CompilationLog()
    active = True

    def listener(event: str, duration_secs: float, **metadata: Any) -> None:
        if active and event == COMPILE_EVENT:
            log.add(Compilation(str(metadata.get("fun_name", "")), float(duration_secs)))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield log
    finally:
        active = False  # a JAX without unregister keeps a listener that does nothing
        unregister = getattr(jax.monitoring, "unregister_event_duration_listener", None)
        if unregister is not None:
            with contextlib.suppress(Exception):
                unregister(listener)


def count_compilations(calls: Callable[[], Any]) -> int:
    """How many programs JAX compiles while ``calls()`` runs (see `log_compilations`).

    Args:
      calls: A function of no arguments, e.g. a loop over a jitted step.

    Returns:
      The number of compilations.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> step = jax.jit(lambda x: x + 1)
        >>> x = jnp.zeros(2)
        >>> count_compilations(lambda: [step(x) for _ in range(3)])
        1
    """
    with log_compilations() as log:
        calls()
    return log.count


__all__ = [
    "CAPTURE_QUEUE_SIZE",
    "COMPILE_EVENT",
    "CaptureSink",
    "Compilation",
    "CompilationLog",
    "capture_run",
    "count_compilations",
    "log_compilations",
]
