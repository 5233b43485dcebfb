"""Observing for the cost of one read: the production preset, and a spike between samples.

    python examples/05_production_preset.py --dir runs

The digits CNN trains with `jaxobs.presets.production()`: the BASIC level (global norms),
statistics at one step in ``--every`` (100 by default in the preset; 20 here so the short
run has several samples), the health guard on, no terminal output. One batch, at step
``--spike-at`` (between two samples), is corrupted. Its statistics are never computed, yet
the next sampled record shows it: the health signals are reduced on the device between
samples to ``window/<signal>/min|max|mean|last``. The script prints, per sampled step, the
window's largest loss and gradient norm, and what each record holds.
"""

from __future__ import annotations

import argparse
import sys

import jaxobs

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
import digits  # the data, the CNN and the train step shared by the examples


def main(argv=None) -> jaxobs.Run:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default="runs", help="root of run directories")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--spike-at", type=int, default=47)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    preset = jaxobs.presets.production().with_options(every=args.every)
    (x_train, y_train), _ = digits.load_data(args.seed)
    state = digits.create_state(args.seed, 0.05)
    train_step = jaxobs.observe(digits.step_fn, **preset.observe)
    data = digits.batches(x_train, y_train, 64, args.seed)
    with jaxobs.init(project="digits", name="production", dir=args.dir, **preset.init) as run:
        for step in range(args.steps):
            x, y = next(data)
            if step == args.spike_at:
                x, y = digits.corrupt(x, y, args.seed, scale=50.0)
            state, _ = train_step(state, x, y)
        train_step.flush()
    record = jaxobs.read_run(run.dir)
    curves = record.log.history.curves
    loss_max, norm_max = curves["window/loss/max"], curves["window/grad_norm/max"]
    print(f"run {run.dir}: level {train_step.level.name}, every {train_step.every} steps")
    print(f"step {args.spike_at}: one corrupted batch (its statistics are never computed)")
    print("sampled step  window steps  max loss  max grad norm")
    steps = dict(zip(curves["window/steps"].steps, curves["window/steps"].values, strict=True))
    for s, lv, nv in zip(loss_max.steps, loss_max.values, norm_max.values, strict=True):
        mark = "  <- the spike" if s - steps[s] < args.spike_at <= s else ""
        print(f"{s:>12}  {int(steps[s]):>12}  {lv:>8.3f}  {nv:>13.3f}{mark}")
    keys = [k for k in curves if 0 in curves[k].steps]
    print(f"a sampled record holds {len(keys)} values; the others hold the metrics and health/*")
    return run


if __name__ == "__main__":
    main()
