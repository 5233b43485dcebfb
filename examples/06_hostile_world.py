"""A tracker that hangs, secrets in the config, a sync run twice: what jaxobs promises.

    python examples/06_hostile_world.py --dir runs

The digits CNN trains with two sinks: TensorBoard, and a "tracker" that hangs forever on
its first event (a dead network share, a stuck HTTP call). The config holds an API key and
a URL with a password. jaxobs keeps its promises:

- the hung sink costs the loop nothing (each sink has its own thread and queue), and
  ``finish()`` abandons it after its time limit (`jaxobs.SinkTimeouts`) and says so;
- the secrets are redacted in every file of the run directory;
- ``jaxobs sync --to tensorboard`` after the live stream finds nothing to send: every point
  is in the event files exactly once.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import threading
import time

import jaxobs
from jaxobs.bridges import tensorboard as tb_bridge
from jaxobs.bridges.tensorboard import TensorBoardSink

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import digits  # the data, the CNN and the train step shared by the examples

SECRETS = ("k3y-0123456789abcdef", "hunter2")


class HungTracker:
    """A sink stuck in its first call until the process ends."""

    def __init__(self):
        self.forever = threading.Event()

    def handle_event(self, event):
        self.forever.wait()


def main(argv=None) -> jaxobs.Run:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default="runs", help="root of run directories")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    (x_train, y_train), _ = digits.load_data(args.seed)
    state = digits.create_state(args.seed, 0.05)
    train_step = jaxobs.observe(digits.step_fn, level="basic")
    data = digits.batches(x_train, y_train, 64, args.seed)
    config = {
        "lr": 0.05,
        "wandb_api_key": SECRETS[0],
        "data_url": f"https://alice:{SECRETS[1]}@data.example.com/digits",
    }
    run = jaxobs.init(
        "digits",
        name="hostile",
        dir=args.dir,
        config=config,
        terminal=False,
        sinks=[HungTracker(), TensorBoardSink()],
        sink_timeouts=jaxobs.SinkTimeouts(flush_s=1.0, close_s=1.0),
    )
    with run:
        start = time.perf_counter()
        for _ in range(args.steps):
            x, y = next(data)
            state, _ = train_step(state, x, y)
        train_step.flush()
        loop_s = time.perf_counter() - start
        finishing = time.perf_counter()
    finish_s = time.perf_counter() - finishing
    end = jaxobs.read_run(run.dir).events[-1]
    print(f"run {run.dir}")
    print(f"{args.steps} steps in {loop_s:.2f} s with a hung sink; finish took {finish_s:.1f} s")
    for error in end["sink_errors"]:
        print("reported:", error.split(";")[0])
    leaked = [
        str(p.relative_to(run.dir))
        for p in run.dir.rglob("*")
        if p.is_file() and any(s.encode() in p.read_bytes() for s in SECRETS)
    ]
    print("secrets found in the run directory:", leaked or "none")
    print("config as stored:", jaxobs.read_run(run.dir).info.config)
    result = tb_bridge.sync(run.dir)
    print(f"jaxobs sync --to tensorboard after the live stream: {result.records} records to send")
    return run


if __name__ == "__main__":
    main()
