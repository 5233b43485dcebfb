"""The `jaxobs` command: the parser and the dispatch to one module per command.

```text
jaxobs show RUN                  a summary of a run: metadata, config, last/best values
jaxobs export RUN --format json  the run's TrainLog as JSON (stdout or --output)
jaxobs export RUN --format csv   one row per step, one column per metric
jaxobs crash show DUMP           what a crash dump says: trigger, first layer to diverge,
                                 alerts, checkpoint, the last recorded steps
jaxobs crash plot DUMP [-o PNG]  draw the failure signature (default: next to the dump)
jaxobs sync RUN --to wandb       send a run (finished, failed or killed) to a W&B run:
                                 an offline run to upload with `wandb sync`, or online
jaxobs sync RUN --to tensorboard write it as TensorBoard event files (RUN/tensorboard)
jaxobs list DIR [--json]         one row per run under DIR: status, steps, duration, best
                                 metrics, the config keys that differ
jaxobs compare RUN RUN...        config diff and last/best metrics (--metric KEY, --json)
jaxobs get RUN --around STEP     every series' values within STEP ± N (--window N, --json)
jaxobs report RUN [-o FILE]      a Markdown report (RUN/report.md) with PNG plots beside it
jaxobs tail RUN [--once]         a live view of a run being written: step, metrics, alerts
```

A sync sends only what that destination has not received yet (`RUN/sync/<tracker>.json`
records it), so running it again never duplicates data.

RUN is a run directory (`<dir>/<project>/<run_id>`) or a TrainLog JSON file. A run that
crashed is read from its `events.jsonl`. DUMP is a flight-recorder crash dump
(`<run dir>/crash/crash-<step>.json`) or a run directory, whose newest dump is used. Bad
input prints one line, `jaxobs: error: ...`, and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from jaxobs._src.analysis.text import printable
from jaxobs.cli import compare, crash, export, get, listing, report, show, sync, tail

__all__ = ["EXIT_USAGE", "main"]

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse's own errors: one line, exit 2
        self.exit(EXIT_USAGE, f"jaxobs: error: {message} (see {self.prog} -h)\n")


def _parser() -> argparse.ArgumentParser:
    from jaxobs import __version__

    p = _Parser(prog="jaxobs", description="Inspect and export jaxobs runs.")
    p.add_argument("--version", action="version", version=f"jaxobs {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in (show, export, crash, sync, listing, compare, get, report, tail):
        command.add_parser(sub).set_defaults(handler=command.run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `jaxobs` command.

    Args:
      argv: The arguments, without the program name (default: `sys.argv[1:]`).

    Returns:
      The exit status: 0, or 2 for bad input (after one `jaxobs: error: ...` line): a file
      jaxobs cannot read (its readers raise only jaxobs' errors, which are ValueErrors), a
      path that does not exist or cannot be opened (OSError), a missing optional package.
    """
    args = _parser().parse_args(argv)
    try:
        args.handler(args)
    except BrokenPipeError:  # `jaxobs export ... | head`
        return 0
    except (
        ValueError,  # jaxobs' errors (TrainLogError, RunDirError, ...); UnicodeDecodeError
        OSError,  # no such file, a directory, permission denied
        ImportError,  # an optional dependency: matplotlib, wandb, tensorboardX
    ) as e:
        print(f"jaxobs: error: {one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def one_line(error: BaseException) -> str:
    """An error's message on one line: line breaks and control characters written out, and
    characters that cannot be printed (lone surrogates) escaped."""
    text = str(error) or type(error).__name__
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    return printable(text).encode("utf-8", "backslashreplace").decode("utf-8")
