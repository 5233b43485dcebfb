"""`jaxobs get RUN --around STEP [--window N] [--json]`: every series' values near a step,
for scripts and agents."""

from __future__ import annotations

import argparse
import warnings
from typing import Any

from jaxobs._src.analysis.compare import window
from jaxobs._src.analysis.text import format_value
from jaxobs.cli.listing import add_row, cell, console, print_json

__all__ = ["add_parser", "run"]

_MAX_STEP_COLUMNS = 11
_MAX_ROWS = 60


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the `get` command to the subparsers `sub`."""
    p = sub.add_parser("get", help="every series' values at the steps around STEP")
    p.add_argument("run", help="run directory or TrainLog JSON file")
    p.add_argument("--around", required=True, metavar="STEP", help="the step to look around")
    p.add_argument(
        "--window", default="5", metavar="N", help="steps on each side of STEP (default: 5)"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def _integer(text: str, option: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{option}: expected {what}, got {text!r}") from None


def run(args: argparse.Namespace) -> None:
    """Read the run and print the values within STEP ± N."""
    from jaxobs._src.formats.rundir import load_trainlog

    step = _integer(args.around, "--around", "an integer step")
    width = _integer(args.window, "--window", "a whole number of steps (0 or more)")
    if width < 0:
        raise ValueError(f"--window: expected a whole number of steps (0 or more), got {width}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        log, _ = load_trainlog(args.run)
    series = window(log, step, width)
    if args.json:
        print_json(
            {
                "run": log.run.run_id if log.run and log.run.run_id else args.run,
                "path": args.run,
                "step": step,
                "window": width,
                "series": {k: [[s, v] for s, v in pairs] for k, pairs in series.items()},
            }
        )
        return
    out = console()
    if not series:
        steps = [s for ser in log.series for s in log.steps_of(ser)]
        span = f"; its steps run from {min(steps)} to {max(steps)}" if steps else ""
        out.print(cell(f"no values within step {step} ± {width}{span}"))
        return
    _print_table(out, series, step, width)


def _print_table(
    out: Any, series: dict[str, list[tuple[int, float]]], step: int, width: int
) -> None:
    from rich.table import Table

    all_steps = sorted({s for pairs in series.values() for s, _ in pairs})
    # at most _MAX_STEP_COLUMNS columns: those nearest to STEP
    shown = sorted(sorted(all_steps, key=lambda s: (abs(s - step), s))[:_MAX_STEP_COLUMNS])
    table = Table(title=f"values within step {step} ± {width}", title_justify="left")
    table.add_column("metric", overflow="fold")
    for s in shown:
        table.add_column(cell(str(s), "bold" if s == step else ""), justify="right", no_wrap=True)
    for key, pairs in list(series.items())[:_MAX_ROWS]:
        by_step: dict[int, list[str]] = {}
        for s, v in pairs:
            by_step.setdefault(s, []).append(format_value(v))
        add_row(table, key, *(", ".join(by_step.get(s, ())) for s in shown))
    out.print(table)
    hidden_rows = len(series) - min(len(series), _MAX_ROWS)
    hidden_cols = len(all_steps) - len(shown)
    if hidden_rows or hidden_cols:
        out.print(
            cell(
                f"... {hidden_rows} more series and {hidden_cols} more steps not shown "
                "(--json lists them all)"
            )
        )
