"""`jaxobs compare RUN RUN... [--metric KEY ...] [--json]`: the config keys that differ and
the last/best values of the chosen metrics, one column per run."""

from __future__ import annotations

import argparse
import pathlib
import warnings
from typing import Any

from jaxobs._src.analysis.compare import (
    MISSING,
    config_diff,
    groups_of,
    metric_table,
    shared_metrics,
)
from jaxobs._src.analysis.summary import MetricSummary
from jaxobs._src.analysis.text import format_value
from jaxobs._src.formats.trainlog import TrainLog
from jaxobs.cli.listing import add_row, cell, config_value, console, print_json

__all__ = ["add_parser", "run"]

_MAX_METRICS = 20
_MAX_RUN_COLUMNS = 12


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the `compare` command to the subparsers `sub`."""
    p = sub.add_parser("compare", help="config diff and last/best metrics of several runs")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories or TrainLog files")
    p.add_argument(
        "--metric",
        action="append",
        metavar="KEY",
        help="a metric to compare (repeatable; default: those all runs share, at most 20)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return p


def run(args: argparse.Namespace) -> None:
    """Read the runs and print their comparison."""
    from jaxobs._src.formats.rundir import load_trainlog

    if len(args.runs) < 2:
        raise ValueError(f"compare needs at least two runs, got one ({args.runs[0]})")
    logs: list[TrainLog] = []
    for path in args.runs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logs.append(load_trainlog(path)[0])
    order = _group_order(logs)
    logs = [logs[i] for i in order]
    paths = [args.runs[i] for i in order]
    metrics = args.metric or shared_metrics(logs, _MAX_METRICS)
    table = metric_table(logs, metrics)
    diff = config_diff([log.run.config if log.run else {} for log in logs])
    groups = groups_of([log.run.group if log.run else "" for log in logs])
    labels = _labels(logs, paths)
    if args.json:
        print_json(
            {
                "runs": [_run_json(log, path) for log, path in zip(logs, paths, strict=True)],
                "groups": {
                    g: [_ident(logs[i], paths[i]) for i in idx] for g, idx in groups.items()
                },
                "config": {
                    k: [None if v is MISSING else v for v in values] for k, values in diff.items()
                },
                "metrics": {
                    k: [None if s is None else _summary_json(s) for s in row]
                    for k, row in table.items()
                },
            }
        )
    else:
        _print(labels, groups, diff, table)


def _group_order(logs: list[TrainLog]) -> list[int]:
    """Run indices with each group's runs together (groups in order of first appearance)."""
    names = [log.run.group if log.run else "" for log in logs]
    first = {g: names.index(g) for g in names}
    return sorted(range(len(logs)), key=lambda i: first[names[i]])


def _labels(logs: list[TrainLog], paths: list[str]) -> list[str]:
    """A column title per run: its name, or its run id where names repeat or are empty."""
    names = [(log.run.name or log.run.run_id) if log.run else "" for log in logs]
    out = []
    for log, path, name in zip(logs, paths, names, strict=True):
        if not name:
            name = log.title or pathlib.Path(path).stem
        elif names.count(name) > 1 and log.run is not None and log.run.run_id:
            name = log.run.run_id
        out.append(name)
    return out


def _ident(log: TrainLog, path: str) -> str:
    """The run's id, or its path when it has none (a TrainLog file without run metadata)."""
    return log.run.run_id if log.run is not None and log.run.run_id else path


def _run_json(log: TrainLog, path: str) -> dict[str, Any]:
    info = log.run
    return {
        "path": path,
        "project": info.project if info else "",
        "run_id": info.run_id if info else "",
        "name": info.name if info else log.title,
        "group": info.group if info else "",
    }


def _summary_json(s: MetricSummary) -> dict[str, Any]:
    return {
        "last": s.last,
        "last_step": s.last_step,
        "best": s.best,
        "best_step": s.best_step,
        "direction": s.direction,
        "count": s.count,
    }


def _print(
    labels: list[str],
    groups: dict[str, list[int]],
    diff: dict[str, list[Any]],
    table: dict[str, list[MetricSummary | None]],
) -> None:
    from rich.table import Table

    out = console()
    shown = range(min(len(labels), _MAX_RUN_COLUMNS))
    if groups:
        parts = [
            f"{g or '(no group)'}: {', '.join(labels[i] for i in idx)}" for g, idx in groups.items()
        ]
        out.print(cell(f"grouped by group (a sweep): {'; '.join(parts)}"))
    if diff:
        config = Table(title="config (keys that differ)", title_justify="left")
        config.add_column("key", overflow="fold")
        for i in shown:
            config.add_column(cell(labels[i]), overflow="fold")
        for key, values in diff.items():
            add_row(config, key, *(config_value(values[i]) for i in shown))
        out.print(config)
    else:
        out.print(cell("config: the same in every run"))
    if not table:
        out.print(cell("no metric is shared by all runs (--metric KEY picks one)"))
        return
    metrics = Table(title="metrics (last, best @ step)", title_justify="left")
    metrics.add_column("metric", overflow="fold")
    for i in shown:
        metrics.add_column(cell(labels[i]), justify="right", overflow="fold")
    for key, row in table.items():
        add_row(metrics, key, *(_summary_text(row[i]) for i in shown))
    out.print(metrics)
    if len(labels) > len(shown):
        out.print(cell(f"... and {len(labels) - len(shown)} more runs (--json lists them all)"))


def _summary_text(s: MetricSummary | None) -> str:
    if s is None:
        return "-"
    text = f"{format_value(s.last)} @{s.last_step}"
    if s.best is not None:
        text += f"\nbest {format_value(s.best)} @{s.best_step} ({s.direction})"
    return text
