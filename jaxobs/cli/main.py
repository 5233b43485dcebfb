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

from jaxobs.cli import crash, export, show, sync

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
    for command in (show, export, crash, sync):
        command.add_parser(sub).set_defaults(handler=command.run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `jaxobs` command.

    Args:
      argv: The arguments, without the program name (default: `sys.argv[1:]`).

    Returns:
      The exit status: 0, or 2 for bad input (after one `jaxobs: error: ...` line).
    """
    args = _parser().parse_args(argv)
    from jaxobs._src.formats.errors import RunDirError

    target = args.dump if args.command == "crash" else args.run
    try:
        args.handler(args)
    except (
        RunDirError,
        ValueError,
        FileNotFoundError,
        IsADirectoryError,
        PermissionError,
        ImportError,  # an optional dependency: matplotlib, wandb, tensorboardX
    ) as e:
        print(f"jaxobs: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except RecursionError:
        print(
            f"jaxobs: error: {target}: JSON nested too deeply to be a jaxobs file",
            file=sys.stderr,
        )
        return EXIT_USAGE
    except BrokenPipeError:  # `jaxobs export ... | head`
        return 0
    return 0
