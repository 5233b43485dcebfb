"""A doomed run: the learning rate runs away, and jaxobs catches the explosion.

    python examples/03_doomed_run.py --dir runs

The CNN trains on the scikit-learn digits at lr 0.05 for ``--healthy-steps`` steps; then a
broken warm-up multiplies the learning rate by ``--growth`` at every step. The health guard
inside the jitted step judges each step before its update lands (robust z-score of log
loss and log gradient norm against the accepted steps so far); with ``action="halt"`` the
first bad step is skipped on the device, so the parameters stay finite, and the next call
of the step raises `jaxobs.TrainingHalted`. The flight recorder then holds the last steps
of every per-layer statistic: the script prints the alert, where the crash dump and the
failure-signature PNG are, and the dump's summary (`jaxobs crash show`).
"""

from __future__ import annotations

import argparse
import sys

import jax
import numpy as np

import jaxobs

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
import digits  # the data, the CNN and the train step shared by the examples


def main(argv=None) -> jaxobs.Run:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default="runs", help="root of run directories")
    parser.add_argument("--healthy-steps", type=int, default=150)
    parser.add_argument("--growth", type=float, default=1.25, help="lr factor per step after")
    parser.add_argument("--max-steps", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    def learning_rate(step):  # a warm-up gone wrong: exponential growth after the healthy part
        extra = jax.numpy.maximum(step - args.healthy_steps, 0)
        return 0.05 * args.growth ** extra.astype(jax.numpy.float32)

    (x_train, y_train), _ = digits.load_data(args.seed)
    state = digits.create_state(args.seed, learning_rate)
    checker = jaxobs.HealthChecker(num_classes=digits.NUM_CLASSES, action="halt", snapshot_every=25)
    train_step = jaxobs.observe(digits.step_fn, health=checker)
    data = digits.batches(x_train, y_train, 64, args.seed)
    run = jaxobs.init(
        project="digits",
        name="doomed-run",
        config={"lr": 0.05, "lr_growth_after": args.healthy_steps, "lr_growth": args.growth},
        dir=args.dir,
        tags=["demo", "doomed"],
        total_steps=args.max_steps,
    )
    halted = None
    try:
        with run:  # TrainingHalted leaving the block ends the run as "failed", with the alert
            for _ in range(args.max_steps):
                x, y = next(data)
                state, _ = train_step(state, x, y)
    except jaxobs.TrainingHalted as e:
        halted = e
    finite = all(bool(np.isfinite(np.asarray(p)).all()) for p in jax.tree.leaves(state.params))
    print(f"run directory: {run.dir}")
    if halted is None:
        print("the run was not halted (try a larger --growth)")
        return run
    print(f"halted at step {halted.alert.step} by rule {halted.alert.rule!r}")
    print(f"  alert:      [{halted.alert.severity}] {halted.alert.message}")
    print(f"  parameters: {'all finite (the bad update was skipped)' if finite else 'NOT finite'}")
    dump = train_step.dumps[-1]
    print(f"  crash dump: {dump}")
    png = dump.with_suffix(".png")
    print(f"  plot:       {png}" if png.exists() else "  plot:       (matplotlib missing)")
    ckpt = sorted(dump.parent.glob("ckpt-*"))
    if ckpt:
        print(f"  last good state (orbax): {ckpt[-1]}")
    from jaxobs.cli import main as cli

    print(f"\n$ jaxobs crash show {dump}")
    cli(["crash", "show", str(dump)])
    return run


if __name__ == "__main__":
    main()
