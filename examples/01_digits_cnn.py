"""Train a small Flax CNN on the scikit-learn digits and record the run with jaxobs.

    python examples/01_digits_cnn.py --dir runs --epochs 8

The data set (1,797 8x8 images) ships inside scikit-learn: nothing is downloaded. The script
leaves a run directory ``<dir>/digits/<run_id>/`` with ``events.jsonl`` (written ahead, every
step) and ``trainlog.json`` (written at the end), prints where it is, and shows the summary
that ``jaxobs show`` prints.

With ``--wandb offline`` (the default) and ``--tensorboard`` (on by default), the run also
streams to a W&B offline run (``<run dir>/wandb/``, upload it with ``wandb sync``) and to
TensorBoard event files (``<run dir>/tensorboard/``), histograms of the parameters, updates
and gradients included. ``--wandb off --no-tensorboard`` records the run directory only;
``jaxobs sync RUN --to wandb|tensorboard`` sends it later.

The train step (``examples/digits.py``) is wrapped with ``jaxobs.observe(activations=True,
health=jaxobs.HealthChecker(num_classes=10))`` and taps its gradients: per-leaf statistics
of gradients, parameters and updates, activation statistics of every Conv and Dense layer,
the returned loss and accuracy, and the health guard's verdict are computed inside the
jitted step and delivered from a background thread, so the loop never waits for them.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np

import jaxobs

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import digits  # the data, the CNN and the train step shared by the examples

# Owns the jit; statistics are computed inside the step. The step taps its gradients
# (`jaxobs.tap(grads=grads)`, see examples/digits.py); the health checker judges every step
# on the device and raises alerts from the host (a healthy run raises none).
train_step = jaxobs.observe(
    digits.step_fn,
    activations=True,
    health=jaxobs.HealthChecker(num_classes=digits.NUM_CLASSES),
    histograms=50,  # parameter, update and gradient histograms every 50 steps (on the device)
)
eval_step = digits.eval_step


def main(argv=None) -> jaxobs.Run:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default="runs", help="root of run directories")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--log",
        default=None,
        help="also write the TrainLog to this JSON path ('off' to skip)",
    )
    parser.add_argument(
        "--show", action="store_true", help="print the `jaxobs show` summary at the end"
    )
    parser.add_argument(
        "--wandb",
        choices=("offline", "online", "off"),
        default="offline",
        help="stream to Weights & Biases (default: an offline run in the run directory)",
    )
    parser.add_argument(
        "--tensorboard",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write TensorBoard event files into the run directory",
    )
    args = parser.parse_args(argv)
    sinks = []
    if args.wandb != "off":
        from jaxobs.bridges.wandb import WandbSink

        # quiet: this script prints where the W&B run is and how to upload it
        sinks.append(WandbSink(mode=args.wandb, init_kwargs={"settings": {"quiet": True}}))
    if args.tensorboard:
        from jaxobs.bridges.tensorboard import TensorBoardSink

        sinks.append(TensorBoardSink())

    (x_train, y_train), (x_val, y_val) = digits.load_data(args.seed)
    steps_per_epoch = len(x_train) // args.batch_size
    state = digits.create_state(args.seed, args.lr, momentum=0.9)
    config = {
        "model": "CNN(conv16, conv32, dense64)",
        "optimizer": {"name": "sgd", "lr": args.lr, "momentum": 0.9},
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "seed": args.seed,
        "data": {"name": "sklearn digits", "train": len(x_train), "val": len(x_val)},
    }
    rng = np.random.default_rng(args.seed)
    run = jaxobs.init(
        project="digits",
        name=f"cnn-lr{args.lr}",
        config=config,
        dir=args.dir,
        tags=["demo", "cnn"],
        total_steps=args.epochs * steps_per_epoch,
        sinks=sinks,
    )
    with run:
        run.emit("train_start", total_steps=args.epochs * steps_per_epoch)
        last_dispatch = time.perf_counter()
        step = 0
        for epoch in range(args.epochs):
            run.emit("epoch_start", step=step, epoch=epoch)
            order = rng.permutation(len(x_train))
            for i in range(steps_per_epoch):
                idx = order[i * args.batch_size : (i + 1) * args.batch_size]
                # train/loss, train/accuracy, grads/..., params/..., updates/..., acts/... are
                # delivered by observe from a background thread; the loop never waits.
                state, _ = train_step(state, x_train[idx], y_train[idx])
                now = time.perf_counter()
                if step:  # the time between two dispatches is the step time in steady state
                    run.log({"perf/step_time_s": now - last_dispatch}, step=step - 1)
                last_dispatch = now
                step += 1
            val_loss, predictions = eval_step(state, x_val, y_val)
            val = {
                "val/loss": float(val_loss),
                "val/accuracy": float((np.asarray(predictions) == y_val).mean()),
            }
            run.log(val, step=step - 1)
            run.emit("epoch_end", step=step - 1, epoch=epoch, metrics=val)
        cm = jaxobs.artifacts.ConfusionMatrix.from_predictions(y_val, np.asarray(predictions), 10)
        run.log_confusion_matrix("val_confusion", cm, step=step - 1)
        run.emit("train_end", step=step - 1, final_val_accuracy=val["val/accuracy"])
    if args.log is not None:  # e.g. --log out/trainlog.json, or --log off
        jaxobs.artifacts.LogDestination.parse(args.log).write(jaxobs.read_run(run.dir).log)
    print(f"run directory: {run.dir}")
    print(f"  events:   {run.events_path}")
    print(f"  trainlog: {run.trainlog_path}")
    for tracker in jaxobs.read_run(run.dir).events:
        if tracker["event"] != "tracker":
            continue
        if tracker["tracker"] == "wandb" and tracker.get("dir"):
            print(f"  W&B:      {tracker['dir']}  (upload: wandb sync {tracker['dir']})")
        elif tracker["tracker"] == "tensorboard":
            print(f"  TensorBoard: {tracker['logdir']}  (view: tensorboard --logdir <that>)")
    print(f"final validation accuracy: {val['val/accuracy']:.3f}")
    if args.show:
        from jaxobs.cli import main as cli

        print(f"\n$ jaxobs show {run.dir}")
        cli(["show", str(run.dir)])
    return run


if __name__ == "__main__":
    main()
