"""Getting packed statistics to the host: the two transports.

- **outputs**: `Deliverer`, a background thread that fetches each step's `Packed` value in
  one transfer and hands it, with the `Ticket` given at dispatch, to the host.
- **callbacks** (the observed step is traced by someone else): `Callbacks`, one
  `io_callback` per step.

A `Ticket` binds a step's records to the run that was active when the step was called,
so a record can never land in a run started later (outputs transport). A callback has no
dispatch on the host to bind it at: its records go to the run active when they arrive.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import jax

from jaxobs._src.engine.packing import Packed, unpack

__all__ = ["Callbacks", "Deliverer", "Ticket", "under_transformation"]

logger = logging.getLogger("jaxobs")


@dataclasses.dataclass(frozen=True)
class Ticket:
    """What travels with one step's packed statistics.

    Attributes:
      run: The run the records go to (resolved when the step was called), or None.
      call: The call's index (0 for the first call of the observed step), or None.
      snapshot: A snapshot of the state after the step, to keep once the step is judged.
    """

    run: Any = None
    call: int | None = None
    snapshot: Any = None


Receiver = Callable[[Ticket, int, dict[str, float], dict[str, Any]], None]


class Deliverer:
    """A background thread that fetches each step's packed statistics and hands them on.

    Args:
      receive: Called on the thread, in step order, as ``receive(ticket, step, values,
        histograms)``.
    """

    def __init__(self, receive: Receiver):
        self._receive = receive
        self._queue: queue.Queue = queue.Queue(maxsize=256)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._progress = threading.Condition()
        self._submitted = 0  # step records queued ...
        self._done = 0  # ... and delivered

    def submit(self, packed: Packed, ticket: Ticket) -> None:
        """Queue one step's statistics (blocks only if the host is 256 steps behind)."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._work, name="jaxobs-observe", daemon=True
                )
                self._thread.start()
        with self._progress:
            self._submitted += 1
        self._queue.put((packed, ticket))

    def wait(self, lag: int) -> None:
        """Wait until at most ``lag`` step records are still to be delivered (the health
        actions act within a step: the device keeps the step already queued)."""
        with self._progress:
            while self._submitted - self._done > lag and self._alive():
                self._progress.wait(1.0)

    def flush(self) -> None:
        """Wait until every record submitted so far has been handed on."""
        if self._alive():
            self._queue.join()

    def _alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _work(self) -> None:
        while True:
            packed, ticket = self._queue.get()
            try:
                step, valid, vector, hvalid, hvector = jax.device_get(packed.arrays)
                record = unpack(
                    step,
                    valid,
                    vector,
                    hvalid,
                    hvector,
                    packed.keys,
                    packed.n_always,
                    packed.hnames,
                )
                self._receive(ticket, *record)
            except Exception as e:  # never let the thread die: report and go on
                logger.warning(
                    "jaxobs: one step's statistics were lost on the way to the run (%s: %s); "
                    "training goes on. If it repeats, report it with this message.",
                    type(e).__name__,
                    e,
                )
            finally:
                with self._progress:
                    self._done += 1
                    self._progress.notify_all()
                self._queue.task_done()


class Callbacks:
    """The callbacks transport: one `io_callback` per step, inside someone else's trace.

    A step whose state carries no step number is numbered here, on arrival (the callbacks
    are then ordered), and ``every`` and ``histograms`` are applied to that number.

    Args:
      receive: Called on arrival as ``receive(ticket, step, values, histograms)``.
      every: The statistics cadence (see `jaxobs.observe`).
      histograms: The histograms cadence (0: none).
    """

    def __init__(self, receive: Receiver, *, every: int, histograms: int):
        self._receive = receive
        self._every, self._histograms = every, histograms
        self._next = 0
        self.used = False

    def send(
        self, packed: Packed, ticket: Callable[[], Ticket], *, number_on_arrival: bool
    ) -> None:
        """Send ``packed`` from inside the trace; ``ticket()`` is asked on arrival."""
        from jax.experimental import io_callback

        self.used = True
        keys, n_always, hnames = packed.keys, packed.n_always, packed.hnames

        def on_arrival(step, valid, vector, hvalid, hvector):
            step, valid, hvalid = self._number(int(step), valid, hvalid)
            record = unpack(step, valid, vector, hvalid, hvector, keys, n_always, hnames)
            self._receive(ticket(), *record)

        io_callback(on_arrival, None, *packed.arrays, ordered=number_on_arrival)

    def flush(self) -> None:
        """Wait until the callbacks in flight have arrived."""
        if self.used:
            jax.effects_barrier()

    def _number(self, step: int, valid: Any, hvalid: Any) -> tuple[int, Any, Any]:
        if step >= 0:
            return step, valid, hvalid
        step, self._next = self._next, self._next + 1
        hvalid = bool(self._histograms) and step % self._histograms == 0
        return step, step % self._every == 0, hvalid


def under_transformation(args: tuple, kwargs: dict) -> bool:
    """Whether the step is being traced by someone else (jit, grad, vmap on top of observe).

    Asks JAX's trace state (constant time) rather than walking every argument leaf at every
    step; falls back to the walk if that private function is not there.
    """
    try:
        from jax._src.core import trace_state_clean
    except ImportError:  # pragma: no cover - other JAX versions
        return any(isinstance(v, jax.core.Tracer) for v in jax.tree.leaves((args, kwargs)))
    return not trace_state_clean()
