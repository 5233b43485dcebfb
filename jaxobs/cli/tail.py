"""`jaxobs tail RUN [--interval S] [--once]`: a live view of a run that is still being written.

Each interval it reads only the bytes appended to ``events.jsonl`` since the last read (a
partial last line is kept until it is complete, so a torn line is never an error) and
prints one frame: the last step and steps/s, the latest value of each metric, the last
alerts and the status. It exits when the ``run_end`` record appears (printing the final
status); Ctrl-C exits 0.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time
from typing import Any

from jaxobs._src.analysis.text import format_value, printable
from jaxobs._src.formats.rundir import EVENTS_FILE

__all__ = ["Tail", "add_parser", "run"]

_MAX_METRICS = 12
_MAX_ALERTS = 5


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the `tail` command to the subparsers `sub`."""
    p = sub.add_parser("tail", help="live view of a run being written: step, metrics, alerts")
    p.add_argument("run", help="run directory (holding events.jsonl)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between frames")
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    return p


class Tail:
    """Follows one ``events.jsonl``, reading only what was appended since the last `poll`.

    Args:
      directory: The run directory.

    Raises:
      FileNotFoundError: no ``events.jsonl`` in ``directory``.
    """

    def __init__(self, directory: str | pathlib.Path) -> None:
        self.path = pathlib.Path(directory) / EVENTS_FILE
        if not self.path.is_file():
            raise FileNotFoundError(f"{directory}: no {EVENTS_FILE} (not a run directory)")
        self._offset = 0
        self._partial = b""
        self.name = ""
        self.step: int | None = None
        self.values: dict[str, Any] = {}
        self.alerts: list[str] = []
        self.status = "running"
        self.ended = False
        self._rate: list[tuple[int, int]] = []  # (timestamp_ns, step) of recent metrics

    def poll(self) -> None:
        """Read the new complete lines (a line that does not parse is skipped)."""
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            chunk = f.read()
        self._offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                self._apply(record)

    def _apply(self, record: dict[str, Any]) -> None:
        kind = record.get("event")
        if kind == "run_start":
            self.name = str((record.get("run") or {}).get("name", ""))
        elif kind == "metrics":
            step = record.get("step")
            if isinstance(step, int):
                self.step = step
                self._rate = [*self._rate[-49:], (int(record.get("timestamp_ns", 0)), step)]
            self.values.update(record.get("values") or {})
        elif kind == "health_check":
            text = (
                f"step {record.get('step')} {record.get('severity', '?')} "
                f"{record.get('rule', '?')}: {record.get('message', '')}"
            )
            self.alerts = [*self.alerts[-(_MAX_ALERTS - 1) :], text[:200]]
        elif kind == "run_end":
            self.ended = True
            self.status = str(record.get("status", "ended"))

    @property
    def steps_per_s(self) -> float | None:
        """Steps per second over the recent metrics records (None with fewer than two)."""
        if len(self._rate) < 2:
            return None
        (t0, s0), (t1, s1) = self._rate[0], self._rate[-1]
        return (s1 - s0) / ((t1 - t0) / 1e9) if t1 > t0 else None

    def frame(self) -> str:
        """The current view, as text."""
        rate = self.steps_per_s
        lines = [
            f"run {printable(self.name)}  status: {self.status}",
            f"step {self.step if self.step is not None else '-'}"
            + (f"  ({rate:.2f} steps/s)" if rate is not None else ""),
        ]
        for key in sorted(self.values)[:_MAX_METRICS]:
            lines.append(f"  {printable(key)} = {format_value(self.values[key])}")
        if len(self.values) > _MAX_METRICS:
            lines.append(f"  ... {len(self.values) - _MAX_METRICS} more")
        lines += [f"alert: {printable(a)}" for a in self.alerts]
        return "\n".join(lines)


def run(args: argparse.Namespace) -> None:
    """Print frames until the run ends (or once); Ctrl-C stops quietly."""
    if not args.interval > 0:
        raise ValueError(f"--interval {args.interval}: expected a positive number of seconds")
    tail = Tail(args.run)
    try:
        while True:
            tail.poll()
            print(tail.frame(), flush=True)
            if args.once or tail.ended:
                if tail.ended:
                    print(f"run ended: {tail.status}", flush=True)
                return
            print(flush=True)
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return
