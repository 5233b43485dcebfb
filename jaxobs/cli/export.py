"""`jaxobs export RUN --format json|csv`: the run's metrics as a TrainLog or a wide CSV."""

from __future__ import annotations

import argparse
import csv
import io
import pathlib
import sys
import warnings
from typing import Any

from jaxobs._src.formats.errors import TrainLogError
from jaxobs._src.formats.trainlog import TrainLog

__all__ = ["add_parser", "run", "to_csv"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the `export` command to the subparsers `sub`."""
    export = sub.add_parser("export", help="write the run's metrics as json or csv")
    export.add_argument("run", help="run directory or TrainLog JSON file")
    export.add_argument("--format", choices=("json", "csv"), default="json")
    export.add_argument("--output", "-o", help="output file (default: stdout)")
    return export


def run(args: argparse.Namespace) -> None:
    """Write the run's TrainLog (json) or `to_csv` of it to `--output` or stdout."""
    from jaxobs._src.formats.rundir import load_trainlog

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        log, _ = load_trainlog(args.run)
    for w in caught:
        print(f"jaxobs: warning: {w.message}", file=sys.stderr)
    text = log.dumps() if args.format == "json" else to_csv(log)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start : e.end].encode("unicode_escape").decode()
        raise TrainLogError(
            f"{args.run}: holds the string '{bad}', a lone surrogate that UTF-8 cannot hold, "
            "so it cannot be exported; fix the metric name or value that holds it"
        ) from None
    if args.output:
        pathlib.Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


def to_csv(log: TrainLog) -> str:
    """Wide CSV: a `step` column, then one column per metric.

    Cells are empty where a metric was not logged at that step. A metric logged more than
    once at a step gets one row per repeat, in order, so nothing is dropped. Non-finite
    values are written `nan`, `inf`, `-inf`.

    The first column is always `step`. A metric named `step`, or `step` followed only by
    underscores, is written with one more underscore (`step` as `step_`, `step_` as
    `step__`), so no metric column can take the step column's name or another's.
    """
    columns: dict[str, dict[int, list[float]]] = {}
    for series in log.series:
        column: dict[int, list[float]] = {}
        for step, value in zip(log.steps_of(series), series.values, strict=True):
            column.setdefault(step, []).append(value)
        columns[_column_name(series.name)] = column
    all_steps = sorted({step for column in columns.values() for step in column})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["step", *columns])
    for step in all_steps:
        repeats = max(len(c.get(step, ())) for c in columns.values())
        for i in range(repeats):
            cells = []
            for c in columns.values():
                values = c.get(step, ())
                cells.append(repr(values[i]) if i < len(values) else "")
            writer.writerow([step, *cells])
    return out.getvalue()


def _column_name(metric: str) -> str:
    return metric + "_" if metric.rstrip("_") == "step" else metric
