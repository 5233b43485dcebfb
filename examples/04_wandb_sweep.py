"""A W&B hyperparameter sweep over the digits CNN, with jaxobs observing every trial.

    python examples/04_wandb_sweep.py --dir runs      # one trial with the defaults, offline
    python examples/04_wandb_sweep.py --create        # create the sweep (needs a W&B login)
    wandb agent ENTITY/digits-sweep/SWEEP_ID           # run trials (this file is the program)
    python examples/04_wandb_sweep.py --agent ENTITY/digits-sweep/SWEEP_ID --count 10

`train` is the trial: it starts a jaxobs run with the defaults as its config and a
`WandbSink`. Under a sweep agent, `wandb.init` (called by the sink) returns the sweep's
values; the sink copies them into the jaxobs run's config, and the trial reads its
hyperparameters from ``run.config``, so the run directory, the W&B run and the model agree.
The sweep's metric, ``val/accuracy``, is logged every epoch and its best value lands in the
W&B run's summary.

W&B sweeps need the W&B server to choose the values; without a login, the first form runs
one trial with the defaults and writes a W&B offline run, for ``wandb sync`` later.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jaxobs
from jaxobs.bridges.wandb import WandbSink

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import digits  # the data, the CNN and the train step shared by the examples

PROJECT = "digits-sweep"
DEFAULTS = {"learning_rate": 0.05, "momentum": 0.9, "batch_size": 64, "epochs": 4, "seed": 0}
SWEEP = {
    "program": "examples/04_wandb_sweep.py",
    "method": "random",
    "metric": {"name": "val/accuracy", "goal": "maximize"},
    "parameters": {
        "learning_rate": {"distribution": "log_uniform_values", "min": 0.003, "max": 0.3},
        "momentum": {"values": [0.0, 0.5, 0.9]},
        "batch_size": {"values": [32, 64, 128]},
    },
}


def train(dir: str = "runs", defaults: dict | None = None) -> jaxobs.Run:
    """One trial: train with the hyperparameters W&B gives (else the defaults)."""
    step_fn = jaxobs.observe(digits.step_fn)
    with jaxobs.init(
        PROJECT, config={**DEFAULTS, **(defaults or {})}, dir=dir, sinks=[WandbSink()]
    ) as run:
        config = run.config  # under a sweep agent: the sweep's values, never the defaults
        (x_train, y_train), (x_val, y_val) = digits.load_data(int(config["seed"]))
        state = digits.create_state(
            int(config["seed"]), float(config["learning_rate"]), float(config["momentum"])
        )
        batch_size = int(config["batch_size"])
        steps_per_epoch = len(x_train) // batch_size
        data = digits.batches(x_train, y_train, batch_size, int(config["seed"]))
        for epoch in range(int(config["epochs"])):
            for _ in range(steps_per_epoch):
                state, _ = step_fn(state, *next(data))
            val = digits.evaluate(state, x_val, y_val)
            run.log(val, step=(epoch + 1) * steps_per_epoch - 1)
            run.emit("epoch_end", step=(epoch + 1) * steps_per_epoch - 1, epoch=epoch, metrics=val)
        step_fn.flush()
    print(f"trial {run.id}: {dict((k, config[k]) for k in SWEEP['parameters'])}")
    print(f"  val/accuracy {val['val/accuracy']:.3f}; run directory {run.dir}")
    return run


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default="runs", help="root of run directories")
    parser.add_argument("--create", action="store_true", help="create the sweep on W&B")
    parser.add_argument("--agent", metavar="SWEEP_ID", help="run trials of this sweep")
    parser.add_argument("--count", type=int, default=10, help="trials for --agent")
    # `wandb agent` passes the trial's values as --key=value; wandb.init reads them too.
    args, _ = parser.parse_known_args(argv)
    if args.create:
        import wandb

        print(wandb.sweep(SWEEP, project=PROJECT))
    elif args.agent:
        import wandb

        wandb.agent(args.agent, function=lambda: train(args.dir), count=args.count)
    else:
        train(args.dir)


if __name__ == "__main__":
    main()
