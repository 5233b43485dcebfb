"""The flight recorder: the last N steps of every statistic, at constant memory, dumped to
``crash/crash-<step>.json`` when something goes wrong.

The ring is a preallocated ``float32`` array (steps x keys) plus a "recorded" mask; a key
seen for the first time adds a column (amortised), so memory stays constant once the set of
keys is known. Records are merged by step, so values that `Run.log` receives for the same
step at different times (the step's statistics, then the validation loss) share one row.
"""

from __future__ import annotations

import os
import pathlib
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxobs._src.analysis.diagnose import first_diverged
from jaxobs._src.formats.crash_dump import write_dump
from jaxobs._src.host.environment import versions

__all__ = ["FlightRecorder"]


class FlightRecorder:
    """A ring buffer of the last ``capacity`` steps' records.

    Thread-safe: records arrive from the observe delivery thread and from the training loop.
    Give a configured one to ``jaxobs.observe(recorder=...)`` to keep or inspect it.

    Args:
      capacity: Steps kept.
    """

    def __init__(self, capacity: int = 256):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"FlightRecorder(capacity={capacity!r}): a positive integer")
        self.capacity = capacity
        self._lock = threading.Lock()
        self._cols: dict[str, int] = {}
        self._values = np.zeros((capacity, 16), np.float32)
        self._present = np.zeros((capacity, 16), bool)
        self._steps = np.full(capacity, -1, np.int64)
        self._next = 0  # rows written so far (the ring position is _next % capacity)

    def __len__(self) -> int:
        return min(self._next, self.capacity)

    def add(self, step: int, values: Mapping[str, float]) -> None:
        """Record ``values`` at ``step`` (merged into the row of that step if it is recent)."""
        with self._lock:
            row = self._row_for(int(step))
            for key, v in values.items():
                col = self._cols.get(key)
                if col is None:
                    col = self._add_column(key)
                self._values[row, col] = v
                self._present[row, col] = True

    def _row_for(self, step: int) -> int:
        n = len(self)
        for back in range(1, min(n, 8) + 1):  # recent rows: same step logged twice
            row = (self._next - back) % self.capacity
            if self._steps[row] == step:
                return row
        row = self._next % self.capacity
        self._next += 1
        self._steps[row] = step
        self._present[row] = False
        return row

    def _add_column(self, key: str) -> int:
        col = len(self._cols)
        if col == self._values.shape[1]:
            grow = max(16, col)
            self._values = np.pad(self._values, ((0, 0), (0, grow)))
            self._present = np.pad(self._present, ((0, 0), (0, grow)))
        self._cols[key] = col
        return col

    def snapshot(self) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
        """``(steps, series, present)`` in step order; a value not recorded at a step is NaN
        in ``series`` and False in ``present``."""
        with self._lock:
            n = len(self)
            start = self._next - n
            ring = np.asarray([(start + i) % self.capacity for i in range(n)], int)
            steps = self._steps[ring].copy()
            order = np.argsort(steps, kind="stable")
            rows = ring[order]
            series = {}
            for key, col in self._cols.items():
                v = self._values[rows, col].astype(np.float64)
                v[~self._present[rows, col]] = np.nan
                series[key] = v
            present = {key: self._present[rows, col].copy() for key, col in self._cols.items()}
            return steps[order], series, present

    def first_diverged(self, **kwargs: Any) -> dict[str, Any] | None:
        """The first layer to diverge in the recorded steps (`jaxobs.crash.first_diverged`)."""
        steps, series, present = self.snapshot()
        return first_diverged(steps, series, present=present, **kwargs)

    def dump(
        self,
        directory: str | os.PathLike,
        *,
        step: int,
        trigger: Mapping[str, Any],
        thresholds: Mapping[str, Any] | None = None,
        alerts: Sequence[Mapping[str, Any]] = (),
        run: Mapping[str, Any] | None = None,
        checkpoint: Mapping[str, Any] | None = None,
    ) -> pathlib.Path:
        """Write ``<directory>/crash-<step>.json`` (the format `jaxobs.crash.load_dump` reads).

        Returns the path. A dump for the same step is replaced.
        """
        steps, series, present = self.snapshot()
        return write_dump(
            directory,
            step=step,
            trigger=trigger,
            recorder={
                "capacity": self.capacity,
                "steps": steps,
                "series": {
                    key: [
                        float(v) if ok else None for v, ok in zip(values, present[key], strict=True)
                    ]
                    for key, values in series.items()
                },
            },
            first_diverged=first_diverged(steps, series, present=present),
            thresholds=thresholds,
            alerts=alerts,
            run=run,
            versions=versions(),
            checkpoint=checkpoint,
        )
