"""`jaxobs crash show DUMP` and `jaxobs crash plot DUMP`: read a flight-recorder crash dump.

They never read the run's TrainLog.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["add_parser", "run"]

_DUMP_HELP = "crash dump (crash/crash-<step>.json) or run directory (its newest dump)"


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the `crash` command (and its `show` and `plot`) to the subparsers `sub`."""
    crash = sub.add_parser("crash", help="read a flight-recorder crash dump")
    crash_sub = crash.add_subparsers(
        dest="crash_command", metavar="{show,plot}", required=True, parser_class=type(crash)
    )
    crash_show = crash_sub.add_parser(
        "show", help="trigger, first layer to diverge, alerts, checkpoint, last steps"
    )
    crash_show.add_argument("dump", help=_DUMP_HELP)
    crash_plot = crash_sub.add_parser("plot", help="write the failure-signature image")
    crash_plot.add_argument("dump", help=_DUMP_HELP)
    crash_plot.add_argument(
        "--output", "-o", metavar="FILE", help="image file (default: the dump's path with .png)"
    )
    return crash


def run(args: argparse.Namespace) -> None:
    """Print what the dump says (`show`), or draw its failure signature and print the path."""
    from jaxobs import crash

    dump = crash.load_dump(crash.find_dump(args.dump))
    if args.crash_command == "show":
        sys.stdout.write(crash.summary(dump))
    else:
        print(crash.plot(dump, args.output))
