"""The terminal sink: a progress bar, the latest metrics and health alerts (rich).

A sink is any object with ``handle_<event_type>(event)`` methods. Numbers are written with
`jaxobs._src.analysis.text.format_value`, re-exported here for older imports.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jaxobs._src.analysis.text import format_value, printable
from jaxobs._src.formats.events import Event

if TYPE_CHECKING:  # rich is imported where used: `import jaxobs` stays light
    from rich.live import Live
    from rich.progress import Progress, TaskID
    from rich.text import Text

__all__ = ["TerminalSink", "format_value"]


_SEVERITY_STYLE = {
    "info": "cyan",
    "warning": "yellow",
    "danger": "bold red",
    "critical": "bold white on red",
}


class TerminalSink:
    """A rich progress display: a bar with steps/s and ETA, the latest metrics, and health
    alerts in colour.

    When the console is not a terminal (output piped to a file, CI) it is quiet: no bar and
    no metrics, only health alerts of severity warning and above, one plain line each.

    Args:
      total_steps: Number of steps for the bar and ETA (also read from a ``train_start``
        event's ``total_steps``).
      keys: Metric names to show (default: up to ``max_keys`` names starting with
        ``train/`` or ``val/``, else the first logged).
      console: A `rich.console.Console` (default: one on stdout).
      max_keys: How many metrics the line shows.
    """

    def __init__(
        self,
        total_steps: int | None = None,
        keys: list[str] | None = None,
        console: Any = None,
        max_keys: int = 3,
    ):
        from rich.console import Console

        self.console = console if console is not None else Console(file=sys.stdout)
        self.total_steps = total_steps
        self.keys = list(keys) if keys else None
        self.max_keys = max_keys
        self.latest: dict[str, float] = {}
        self._bar: _Bar | None = None  # made on the first metrics while live

    @property
    def live(self) -> bool:
        return bool(self.console.is_terminal)

    def _ensure_bar(self) -> _Bar:
        if self._bar is not None:
            return self._bar
        from rich.console import Group
        from rich.live import Live
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
        )
        task = progress.add_task("train", total=self.total_steps, rate="")
        # The bar on one line, the latest metrics on the next (cut to the terminal's width).
        live = Live(
            Group(progress, _MetricsLine(self._metrics_text)),
            console=self.console,
            refresh_per_second=4,
        )
        live.start()
        self._bar = _Bar(progress, task, live)
        return self._bar

    def handle_run_start(self, event: Event) -> None:
        run = event.data.get("run", {})
        if self.total_steps is None:
            self.total_steps = event.data.get("settings", {}).get("total_steps")
        if self.live:
            self.console.print(
                f"[bold]jaxobs[/] run [cyan]{_escape(run.get('project'))}/"
                f"{_escape(run.get('run_id'))}[/] -> {_escape(event.data['settings']['dir'])}"
            )

    def handle_train_start(self, event: Event) -> None:
        total = event.data.get("total_steps")
        if total:
            self.total_steps = int(total)
            if self._bar is not None:
                self._bar.progress.update(self._bar.task, total=self.total_steps)

    def handle_metrics(self, event: Event) -> None:
        # Rebind, never mutate: rich's refresh thread reads `latest` concurrently.
        self.latest = {**self.latest, **event.metrics}
        if not self.live:
            return
        bar = self._ensure_bar()
        speed = bar.progress.tasks[0].speed
        bar.progress.update(
            bar.task,
            completed=(event.step or 0) + 1,
            rate=f"{speed:.1f} steps/s" if speed else "",
        )

    def _metrics_text(self) -> str:
        """The latest metrics as one line: ``train/loss=0.1234  val/loss=0.2``."""
        keys = self.keys
        if keys is None:  # losses first, then other train/ and val/ metrics, else anything
            preferred = [k for k in self.latest if k.startswith(("train/", "val/"))]
            preferred.sort(key=lambda k: (not k.endswith("loss"), not k.startswith("train/")))
            keys = (preferred or list(self.latest))[: self.max_keys]
        return "  ".join(
            f"{printable(k)}={format_value(self.latest[k])}" for k in keys if k in self.latest
        )

    def handle_epoch_end(self, event: Event) -> None:
        if not self.live:
            return
        metrics = "  ".join(f"{k}={format_value(float(v))}" for k, v in event.metrics.items())
        self._print(_escape(f"epoch {event.epoch} (step {event.step}): {metrics}"))

    def handle_health_check(self, event: Event) -> None:
        severity = str(event.severity or "info").lower()
        text = f"[{severity.upper()}] step {event.step}: {event.message or event.data}"
        if self.live:
            style = _SEVERITY_STYLE.get(severity, "")
            self._print(f"[{style}]{_escape(text)}[/]" if style else _escape(text))
        elif severity in ("warning", "danger", "critical"):
            print(f"jaxobs: {printable(text)}", file=self.console.file, flush=True)

    def handle_crash_dump(self, event: Event) -> None:
        plot = event.data.get("plot")
        text = f"crash dump: {event.data.get('path')}" + (f"\n  plot: {plot}" if plot else "")
        if self.live:
            self._print(f"[red]{_escape(text)}[/]")
        else:
            print(f"jaxobs: {printable(text)}", file=self.console.file, flush=True)

    def _print(self, text: str) -> None:
        self.console.print(text)  # above the live display while one is shown

    def handle_run_end(self, event: Event) -> None:
        self.close()
        if self.live:
            status = event.data.get("status")
            style = "green" if status == "finished" else "red"
            self.console.print(
                f"[bold]jaxobs[/] run [{style}]{_escape(status)}[/] at step {event.step}"
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.live.stop()
            self._bar = None


@dataclass(frozen=True)
class _Bar:
    """The live display of one run: the progress bar, its task and the `Live` that shows it."""

    progress: Progress
    task: TaskID
    live: Live


class _MetricsLine:
    """The latest metrics as one line, rendered on each refresh of the live display."""

    def __init__(self, render: Callable[[], str]):
        self.render = render

    def __rich__(self) -> Text:
        from rich.text import Text

        return Text(self.render(), no_wrap=True, overflow="ellipsis", style="dim")


def _escape(text: Any) -> str:
    """``text`` for rich markup: printed as it is, control characters written out."""
    from rich.markup import escape

    return escape(printable(text))
