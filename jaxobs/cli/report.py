"""`jaxobs report RUN [--format md] [-o FILE]`: a run as a Markdown report with PNG plots."""

from __future__ import annotations

import argparse
import pathlib
import warnings
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the `report` command to the subparsers `sub`."""
    report = sub.add_parser("report", help="a Markdown report of a run, with PNG plots")
    report.add_argument("run", help="run directory or TrainLog JSON file")
    report.add_argument(
        "--format", choices=("md", "html"), default="md", help="report format (default: md)"
    )
    report.add_argument(
        "--output",
        "-o",
        metavar="FILE",
        help="report file (default: report.md in the run directory, or beside a TrainLog file)",
    )
    return report


def run(args: argparse.Namespace) -> None:
    """Write the report (its plots in `<stem>_files/` beside it) and print its path."""
    from jaxobs._src.analysis.report_md import write_markdown_report
    from jaxobs._src.formats.rundir import load_trainlog

    if args.format != "md":
        raise ValueError(f"--format {args.format} is not yet available; use --format md")
    with warnings.catch_warnings(record=True):  # a torn line is listed in the report's notes
        warnings.simplefilter("always")
        log, record = load_trainlog(args.run)
    source = pathlib.Path(args.run)
    default = (source if source.is_dir() else source.parent) / "report.md"
    out = pathlib.Path(args.output) if args.output else default
    print(write_markdown_report(record if record is not None else log, out)[0])
