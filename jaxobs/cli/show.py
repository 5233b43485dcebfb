"""`jaxobs show RUN [--all]`: a run's metadata, config, summary, layers and last/best values."""

from __future__ import annotations

import argparse
import json
import warnings
from typing import Any

from jaxobs._src.analysis.summary import summarize
from jaxobs._src.analysis.text import format_value, printable
from jaxobs._src.device.keys import flatten_mapping, layer_norms, layer_of, split_stat_key
from jaxobs._src.formats.trainlog import TrainLog

__all__ = ["add_parser", "layer_table", "run", "show"]

_STAT_PREFIXES = ("grads/", "params/", "updates/", "acts/")
_NORM_GROUPS = ("grads", "params")
_LAYER_COLUMNS = ("grads norm", "params norm", "update_ratio", "acts dead_frac", "acts mean")
_MAX_ROWS = 40


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the `show` command to the subparsers `sub`."""
    show = sub.add_parser("show", help="summary of a run: metadata, config, last/best values")
    show.add_argument("run", help="run directory or TrainLog JSON file")
    show.add_argument(
        "--all",
        action="store_true",
        help="list every series (default: training metrics only, at most 40)",
    )
    return show


def run(args: argparse.Namespace) -> None:
    """Read the run's TrainLog and `show` it (a torn line is listed in its table)."""
    from jaxobs._src.formats.rundir import load_trainlog

    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        log, record = load_trainlog(args.run)
    show(log, record, args.all)


def show(log: TrainLog, record: Any, show_all: bool = False) -> None:
    """Print the summary of a run to the terminal.

    Args:
      log: The run's TrainLog.
      record: Its `RunRecord` when read from a run directory, else None.
      show_all: List every series, per-layer statistics included.
    """
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # piped or redirected: do not squeeze into 80 columns
        console = Console(width=160)
    console.print(_meta(log, record))
    if log.run is not None and log.run.config:
        console.print(_config(log.run.config))
    if log.summary:
        console.print(_user_summary(log.summary))
    _show_layers(console, log)
    _show_metrics(console, log, show_all)
    if log.artifacts:
        console.print(
            _text("artifacts: " + ", ".join(f"{a.name} ({a.path})" for a in log.artifacts))
        )


def _meta(log: TrainLog, record: Any) -> Any:
    from rich.table import Table

    run = log.run
    meta = Table.grid(padding=(0, 2))
    meta.add_column(style="bold")
    meta.add_column()
    if run is not None:
        _add_row(meta, "project", run.project)
        _add_row(meta, "name", run.name)
        _add_row(meta, "run id", run.run_id)
        if run.group:
            _add_row(meta, "group", run.group)
        if run.tags:
            _add_row(meta, "tags", ", ".join(run.tags))
    else:
        _add_row(meta, "title", log.title)
    if record is not None:
        _add_row(meta, "status", record.status)
        _add_row(meta, "directory", str(record.dir))
        env = record.env
        _add_row(meta, "started", str(env.get("start_time", "")))
        _add_row(meta, "host", f"{env.get('hostname', '')} (python {env.get('python', '')})")
        pkgs = _mapping(env.get("packages"))
        _add_row(meta, "versions", ", ".join(f"{k} {v}" for k, v in pkgs.items() if v))
        devices = _mapping(env.get("jax")).get("devices")
        if devices:
            items = devices if isinstance(devices, list) else [devices]
            _add_row(meta, "devices", ", ".join(map(str, items)))
        git = _mapping(env.get("git"))
        if git:
            dirty = " (dirty)" if git.get("dirty") else ""
            _add_row(meta, "git", f"{str(git.get('commit', '?'))[:12]}{dirty}")
        err = _mapping(record.end.get("error")) if record.end else {}
        if err:
            _add_row(meta, "error", f"{err.get('type', '?')}: {err.get('message', '')}")
        for problem in record.warnings:
            _add_row(meta, "note", problem)
    return meta


def _config(config: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title="config", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in flatten_mapping(config, sep=".").items():
        _add_row(table, key, json.dumps(value, ensure_ascii=False))
    return table


def _user_summary(summary: dict[str, Any]) -> Any:
    """The user's ``run.summary`` as set: strings as text, other values as JSON."""
    from rich.table import Table

    table = Table(title="summary", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in summary.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        _add_row(table, key, text)
    return table


def _show_metrics(console: Any, log: TrainLog, show_all: bool) -> None:
    from rich.table import Table

    summaries = summarize(log)
    if not summaries:
        console.print("no metrics logged")
        return
    summaries.sort(key=lambda s: s.name.startswith(_STAT_PREFIXES))
    if show_all:
        shown = summaries
    else:  # per-layer statistics are summarised in the layers table above
        shown = [s for s in summaries if not s.name.startswith(_STAT_PREFIXES)][:_MAX_ROWS]
        shown = shown or summaries[:_MAX_ROWS]
    table = Table(title="metrics", title_justify="left")
    table.add_column("metric", no_wrap=True, overflow="fold")
    for col in ("last", "at step", "best", "at step", "n", "non-finite"):
        table.add_column(col, justify="right", no_wrap=True)
    for s in shown:
        best = "" if s.best is None else f"{format_value(s.best)} ({s.direction})"
        _add_row(
            table,
            s.name,
            format_value(s.last),
            str(s.last_step),
            best,
            "" if s.best_step is None else str(s.best_step),
            str(s.count),
            _text(s.nonfinite, "red") if s.nonfinite else "",
        )
    console.print(table)
    if len(shown) < len(summaries):
        console.print(
            f"... and {len(summaries) - len(shown)} more series, per-layer statistics included "
            "(--all lists them)"
        )


def layer_table(log: TrainLog) -> dict[str, dict[str, float]]:
    """Per layer, at each metric's last step: the layer's grads and params norms (from its
    leaves' norms), the update ratio, and the activations' dead fraction and mean.

    Returns:
      `{layer: {column: value}}`, columns among `"grads norm"`, `"params norm"`,
      `"update_ratio"`, `"acts dead_frac"` and `"acts mean"`; layers in the order their
      first series appears, norms first.
    """
    leaves: dict[str, list[tuple[str, float]]] = {group: [] for group in _NORM_GROUPS}
    order: dict[str, None] = {}  # layers with norms, in the order of their first series
    direct: dict[tuple[str, str], float] = {}
    for series in log.series:
        if not series.values:
            continue
        name, last = series.name, series.values[-1]
        for group in _NORM_GROUPS:
            split = split_stat_key(name, group)
            if split is not None and split[1] == "norm":
                leaves[group].append((split[0], last))
                order.setdefault(layer_of(split[0]))
        split = split_stat_key(name, "updates")
        if split is not None and split[1] == "update_ratio":
            direct[("update_ratio", split[0])] = last
        split = split_stat_key(name, "acts")
        if split is not None and split[1] in ("dead_frac", "mean"):
            direct[(f"acts {split[1]}", split[0])] = last
    norms = {group: layer_norms(items) for group, items in leaves.items()}
    table: dict[str, dict[str, float]] = {}
    for layer in order:
        for group in _NORM_GROUPS:
            if layer in norms[group]:
                table.setdefault(layer, {})[f"{group} norm"] = norms[group][layer]
    for (column, layer), value in direct.items():
        table.setdefault(layer, {})[column] = value
    return table


def _show_layers(console: Any, log: TrainLog) -> None:
    from rich.table import Table

    table_data = layer_table(log)
    if not table_data:
        return
    columns = [c for c in _LAYER_COLUMNS if any(c in row for row in table_data.values())]
    table = Table(title="layers (last values)", title_justify="left")
    table.add_column("layer", no_wrap=True)
    for column in columns:
        table.add_column(column, justify="right", no_wrap=True)
    for layer, row in table_data.items():
        _add_row(table, layer, *(format_value(row[c]) if c in row else "" for c in columns))
    console.print(table)


def _mapping(value: Any) -> dict[str, Any]:
    """``value`` when it is an object (a run's environment is shown as far as it has the
    expected form), else {}."""
    return value if isinstance(value, dict) else {}


def _text(value: Any, style: str = "") -> Any:
    """``value`` as a rich `Text`: printed as it is (no markup), control characters and
    lone surrogates (which no terminal can show) written out."""
    from rich.text import Text

    text = printable(value).encode("utf-8", "backslashreplace").decode("utf-8")
    return Text(text, style=style)


def _add_row(table: Any, *cells: Any) -> None:
    """Add a row of plain-text cells (strings are never read as rich markup)."""
    table.add_row(*(cell if not isinstance(cell, str) else _text(cell) for cell in cells))
