"""`jaxobs list DIR [--json]`: one row per run directory under DIR, oldest first.

Also the terminal helpers that `compare` and `get` share: a console, plain-text cells, and
JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import warnings
from typing import Any

from jaxobs._src.analysis.compare import MISSING, RunOverview, config_diff, overview
from jaxobs._src.analysis.text import format_value, printable
from jaxobs._src.formats.codec import encode_tree
from jaxobs._src.formats.errors import RunDirError
from jaxobs._src.formats.rundir import EVENTS_FILE

__all__ = [
    "add_parser",
    "add_row",
    "cell",
    "config_value",
    "console",
    "duration_text",
    "find_runs",
    "print_json",
    "run",
]

_MAX_BEST_COLUMNS = 3
_MAX_CONFIG_COLUMNS = 6


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the `list` command to the subparsers `sub`."""
    p = sub.add_parser("list", help="one row per run directory under DIR: status, best metrics")
    p.add_argument("dir", help="a folder of runs (<dir>/<project>/<run_id>), searched recursively")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    return p


def find_runs(root: str | os.PathLike) -> list[pathlib.Path]:
    """Every run directory (a folder holding ``events.jsonl``) under ``root``, ``root``
    included, sorted by path; symbolic links to folders are not followed.

    Raises:
      RunDirError: ``root`` is not a directory, or holds no run.
    """
    root = pathlib.Path(root)
    if not root.is_dir():
        what = "no such file or directory" if not root.exists() else "not a directory"
        raise RunDirError(f"{root}: {what}; expected a folder of jaxobs runs")
    found = []
    for folder, subdirs, files in os.walk(root):
        if EVENTS_FILE in files:
            found.append(pathlib.Path(folder))
            subdirs.clear()  # a run's own folders (crash/, media/, ...) hold no runs
        else:
            subdirs.sort()
    if not found:
        raise RunDirError(f"{root}: no jaxobs runs under it (no <project>/<run_id>/{EVENTS_FILE})")
    return sorted(found)


def run(args: argparse.Namespace) -> None:
    """Read every run under `args.dir` and print them as a table or JSON."""
    from jaxobs._src.formats.rundir import read_run
    from jaxobs.cli.main import one_line

    rows: list[RunOverview] = []
    broken: list[tuple[str, str]] = []
    for path in find_runs(args.dir):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rows.append(overview(read_run(path, warn=False)))
        except (ValueError, OSError) as e:
            broken.append((str(path), one_line(e)))
    rows.sort(key=lambda r: (r.start_ns, r.path))
    diff = config_diff([r.config for r in rows]) if len(rows) > 1 else {}
    if args.json:
        out = [_row_json(r, i, diff) for i, r in enumerate(rows)]
        out += [{"path": path, "error": error} for path, error in broken]
        print_json(out)
    else:
        _print_table(rows, broken, diff)


def _row_json(row: RunOverview, index: int, diff: dict[str, list[Any]]) -> dict[str, Any]:
    best = {
        key: {"value": s.best, "step": s.best_step, "direction": s.direction}
        for key, s in row.best.items()
    }
    config = {k: v[index] for k, v in diff.items() if v[index] is not MISSING}
    return {
        "path": row.path,
        "project": row.project,
        "run_id": row.run_id,
        "name": row.name,
        "group": row.group,
        "status": row.status,
        "steps": row.last_step,
        "duration_s": row.duration_s,
        "start_time": row.start_time,
        "best": best,
        "config": config,
    }


def _print_table(
    rows: list[RunOverview], broken: list[tuple[str, str]], diff: dict[str, list[Any]]
) -> None:
    from rich.table import Table

    best_keys = list(dict.fromkeys(k for r in rows for k in r.best))
    shown_best = best_keys[:_MAX_BEST_COLUMNS]
    shown_config = list(diff)[:_MAX_CONFIG_COLUMNS]
    table = Table(title=f"{len(rows) + len(broken)} runs", title_justify="left")
    for column in ("project", "run id", "name", "group", "status"):
        table.add_column(column, overflow="fold")
    for column in ("steps", "duration"):
        table.add_column(column, justify="right", no_wrap=True)
    for key in shown_best:
        table.add_column(cell(f"best {key}"), justify="right", overflow="fold")
    for key in shown_config:
        table.add_column(cell(key), overflow="fold")
    for i, r in enumerate(rows):
        bests = []
        for key in shown_best:
            s = r.best.get(key)
            bests.append("" if s is None else f"{format_value(s.best)} @{s.best_step}")
        add_row(
            table,
            r.project,
            r.run_id,
            r.name,
            r.group,
            cell(r.status, _STATUS_STYLE.get(r.status, "")),
            "" if r.last_step is None else str(r.last_step),
            duration_text(r.duration_s),
            *bests,
            *(config_value(diff[key][i]) for key in shown_config),
        )
    for path, error in broken:
        p = pathlib.Path(path)
        add_row(table, p.parent.name, p.name, cell(f"error: {error}", "red"), "", "unreadable")
    out = console()
    out.print(table)
    hidden = len(best_keys) - len(shown_best) + len(diff) - len(shown_config)
    if hidden:
        out.print(cell(f"... and {hidden} more columns (--json lists them all)"))


_STATUS_STYLE = {"finished": "green", "failed": "red", "incomplete": "yellow"}


def config_value(value: Any) -> str:
    """A config value as JSON text, or "-" for a key the run does not have."""
    if value is MISSING:
        return "-"
    return json.dumps(value, ensure_ascii=False, default=repr)


def duration_text(seconds: float | None) -> str:
    """``12.3s``, ``4m05s``, ``2h03m``; "" for None."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def console() -> Any:
    """A rich console; 160 columns wide when output is piped or redirected."""
    from rich.console import Console

    out = Console()
    return out if out.is_terminal else Console(width=160)


def cell(value: Any, style: str = "") -> Any:
    """``value`` as a rich `Text`: printed as it is (no markup), control characters and
    lone surrogates written out."""
    from rich.text import Text

    text = printable(value).encode("utf-8", "backslashreplace").decode("utf-8")
    return Text(text, style=style)


def add_row(table: Any, *cells: Any) -> None:
    """Add a row of plain-text cells (strings are never read as rich markup)."""
    table.add_row(*(c if not isinstance(c, str) else cell(c) for c in cells))


def print_json(value: Any) -> None:
    """``value`` as indented JSON on stdout, non-finite floats as "NaN", "Infinity",
    "-Infinity" (as in a TrainLog); characters UTF-8 cannot hold are escaped."""
    data = encode_tree(value)
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, indent=2)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate in a name: \\ud800 escapes are valid JSON
        text = json.dumps(data, ensure_ascii=True, allow_nan=False, indent=2)
    sys.stdout.write(text + "\n")
