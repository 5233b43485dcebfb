"""What the W&B and TensorBoard bridges cost the training loop, and how fast a sync is.

    python bench/bridges.py [--steps 400] [--rounds 3]

Runs the same observed training loop (tests/tiny_train.py's MLP, statistics of every leaf,
histograms every 10 steps) in interleaved rounds: with no bridge, with `WandbSink` (offline)
and `TensorBoardSink`, and measures

- ``loop_ratio``: the loop's wall time (dispatching every step, without `finish`) with the
  bridges over without. The bridges work on the run's dispatch thread, so the loop never
  waits for them, but on a machine with few cores that thread competes with the loop for
  the CPU and the GIL; ``--host-ms`` adds a wait per step, as a loop that waits for data or
  for a slower device has;
- ``finish_s``: the time `finish` takes (draining the sinks, closing W&B and TensorBoard);
- ``sync_records_per_s``: `jaxobs sync --to wandb` and `--to tensorboard` of the plain
  run's directory.

Prints one JSON object. Ratios of interleaved runs, medians over rounds: the machines are
shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))


def _loop(
    root: pathlib.Path, steps: int, bridges: bool, host_ms: float = 0.0
) -> tuple[float, float, pathlib.Path]:
    import tiny_train

    import jaxobs

    sinks = []
    if bridges:
        from jaxobs.bridges.tensorboard import TensorBoardSink
        from jaxobs.bridges.wandb import WandbSink

        sinks = [WandbSink(mode="offline"), TensorBoardSink()]
    run = jaxobs.init("bench", dir=root, config=tiny_train.DEFAULTS, sinks=sinks, terminal=False)
    state = tiny_train.make_state(run.config)
    x, y = tiny_train.data()
    step = _STEP
    state, _ = step(state, x, y)  # compiled already; one warm call
    start = time.perf_counter()
    for _ in range(steps):
        state, _ = step(state, x, y)
        if host_ms:  # the rest of a real loop (data loading, a slower step) that waits
            time.sleep(host_ms / 1000)
    state.params["params"]["Dense_0"]["kernel"].block_until_ready()
    loop = time.perf_counter() - start
    start = time.perf_counter()
    run.finish()
    return loop, time.perf_counter() - start, run.dir


_STEP = None


def main(argv=None) -> None:
    global _STEP
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--host-ms",
        type=float,
        default=0.0,
        help="sleep this long per step, as a loop that waits for data or a slower device does",
    )
    args = p.parse_args(argv)
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_X_DISABLE_STATS", "true")
    import tiny_train
    import wandb

    import jaxobs
    from jaxobs.bridges import tensorboard as tb_bridge
    from jaxobs.bridges import wandb as wandb_bridge

    _STEP = jaxobs.observe(tiny_train.step_fn, histograms=10)
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        _loop(root / "warm", 5, True)  # compile, start the W&B service
        loops = {False: [], True: []}
        finishes = {False: [], True: []}
        plain_dir = None
        for _ in range(args.rounds):
            for bridges in (False, True):
                loop, finish, run_dir = _loop(
                    root / str(bridges), args.steps, bridges, args.host_ms
                )
                loops[bridges].append(loop)
                finishes[bridges].append(finish)
                plain_dir = run_dir if not bridges else plain_dir
        ratios = [b / a for a, b in zip(loops[False], loops[True], strict=True)]
        records = len(jaxobs.read_run(plain_dir).events)
        start = time.perf_counter()
        wandb_bridge.sync(plain_dir, mode="offline")
        sync_wandb = time.perf_counter() - start
        start = time.perf_counter()
        tb_bridge.sync(plain_dir)
        sync_tb = time.perf_counter() - start
        wandb.teardown()
    print(
        json.dumps(
            {
                "steps": args.steps,
                "host_ms": args.host_ms,
                "rounds": args.rounds,
                "loop_s_plain": statistics.median(loops[False]),
                "loop_s_bridges": statistics.median(loops[True]),
                "loop_ratio": statistics.median(ratios),
                "finish_s_plain": statistics.median(finishes[False]),
                "finish_s_bridges": statistics.median(finishes[True]),
                "records": records,
                "sync_records_per_s": {
                    "wandb": records / sync_wandb,
                    "tensorboard": records / sync_tb,
                },
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
