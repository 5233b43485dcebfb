"""`jaxobs sync RUN --to wandb|tensorboard`: replay a run directory into a tracker.

The bridge is imported only here, so the other commands never load wandb or tensorboardX.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any

__all__ = ["add_parser", "run"]

_WANDB_ONLY = ("project", "entity", "id", "mode")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the `sync` command to the subparsers `sub`."""
    sync = sub.add_parser(
        "sync", help="send a run directory to W&B or TensorBoard (only what is not there yet)"
    )
    sync.add_argument("run", help="run directory")
    sync.add_argument("--to", required=True, choices=("wandb", "tensorboard"), dest="to")
    sync.add_argument("--project", help="W&B project (default: the run's)")
    sync.add_argument("--entity", help="W&B entity")
    sync.add_argument("--id", help="W&B run id (default: the live W&B run's, else the run id)")
    sync.add_argument(
        "--mode",
        choices=("offline", "online"),
        help="W&B mode (default: WANDB_MODE, else online with credentials, offline without)",
    )
    sync.add_argument("--logdir", help="TensorBoard log directory (default: RUN/tensorboard)")
    sync.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait this long for another sync (or a live run) sending the same run there "
        "to finish (default: 0, refuse at once)",
    )
    return sync


def run(args: argparse.Namespace) -> None:
    """Send the run through its bridge's `sync` and print what was sent and where.

    Raises:
      ValueError: an option of the other tracker (`--logdir` with wandb, `--id` with
        tensorboard).
    """
    if not args.wait >= 0:
        raise ValueError(f"--wait: expected a number of seconds >= 0, got {args.wait}")
    wandb_only = [f"--{n}" for n in _WANDB_ONLY if getattr(args, n)]
    if args.to == "tensorboard" and wandb_only:
        raise ValueError(f"{', '.join(wandb_only)} apply to --to wandb only")
    if args.to == "wandb" and args.logdir:
        raise ValueError("--logdir applies to --to tensorboard only")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if args.to == "wandb":
            from jaxobs.bridges import wandb as wandb_bridge

            result = wandb_bridge.sync(
                args.run,
                project=args.project,
                entity=args.entity,
                id=args.id,
                mode=args.mode,
                wait_s=args.wait,
            )
        else:
            from jaxobs.bridges import tensorboard as tensorboard_bridge

            result = tensorboard_bridge.sync(args.run, logdir=args.logdir, wait_s=args.wait)
    for w in caught:
        if w.category.__name__ == "RunDirWarning":
            print(f"jaxobs: warning: {w.message}", file=sys.stderr)
    where = f" -> {result.location}" if result.location else ""
    if result.records == 0:
        print(f"jaxobs: {result.destination} is up to date (nothing new to send){where}")
        return
    print(
        f"jaxobs: sent {result.records} records (through step {result.last_step}, run "
        f"{result.status}) to {args.to} {result.destination}{where}"
    )
    if args.to == "wandb" and result.location and "offline-run-" in str(result.location):
        print(f"jaxobs: upload it with: wandb sync {result.location}")
    elif args.to == "tensorboard":
        print(f"jaxobs: view it with: tensorboard --logdir {result.location}")
