"""Getting packed statistics to the host: a background thread for the outputs transport."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import jax

from jaxobs._src.engine.packing import Packed, unpack

logger = logging.getLogger("jaxobs")


class Deliverer:
    """A background thread that fetches each step's packed statistics and logs them."""

    def __init__(self, deliver: Callable[[int, dict[str, float], dict[str, Any]], None]):
        self._deliver = deliver
        self._queue: queue.Queue = queue.Queue(maxsize=256)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._progress = threading.Condition()
        self._submitted = 0  # step records queued ...
        self._done = 0  # ... and delivered

    def submit(self, packed: Packed | Callable[[], Any]) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._work, name="jaxobs-observe", daemon=True
                )
                self._thread.start()
        if not callable(packed):
            with self._progress:
                self._submitted += 1
        self._queue.put(packed)  # blocks only if the host falls 256 steps behind

    def wait(self, lag: int) -> None:
        """Wait until at most ``lag`` step records are still to be delivered (the health
        actions act within a step: the device keeps the step already queued)."""
        with self._progress:
            while self._submitted - self._done > lag and self._thread.is_alive():
                self._progress.wait(1.0)

    def flush(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._queue.join()

    def _work(self) -> None:
        while True:
            packed = self._queue.get()
            try:
                if callable(packed):  # a task in step order (a snapshot to keep)
                    packed()
                    continue
                arrays = jax.device_get(packed.arrays)
                self._deliver(*unpack(*arrays, packed.keys, packed.n_always, packed.hnames))
            except Exception as e:  # never let the thread die: report and go on
                logger.warning("jaxobs: could not deliver statistics: %s: %s", type(e).__name__, e)
            finally:
                if not callable(packed):
                    with self._progress:
                        self._done += 1
                        self._progress.notify_all()
                self._queue.task_done()


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
