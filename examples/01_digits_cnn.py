"""Train a small Flax CNN on the scikit-learn digits and record the run with jaxobs.

    python examples/01_digits_cnn.py --dir runs --epochs 8

The data set (1,797 8x8 images) ships inside scikit-learn: nothing is downloaded. The script
leaves a run directory ``<dir>/digits/<run_id>/`` with ``events.jsonl`` (written ahead, every
step) and ``trainlog.json`` (written at the end), prints where it is, and shows the summary
that ``jaxobs show`` prints.

The train step is decorated with ``@jaxobs.observe(activations=True)`` and taps its
gradients: per-leaf statistics of gradients, parameters and updates, activation statistics
of every Conv and Dense layer, and the returned loss and accuracy are computed inside the
jitted step and delivered from a background thread, so the loop never waits for them.
"""

from __future__ import annotations

import argparse
import time

import flax.linen as nn
import jax
import numpy as np
import optax
from flax.training import train_state
from sklearn.datasets import load_digits

import jaxobs


class CNN(nn.Module):
    """Two 3x3 convolutions and two dense layers for 8x8x1 images."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(16, (3, 3))(x))
        x = nn.relu(nn.Conv(32, (3, 3))(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(64)(x))
        return nn.Dense(self.num_classes)(x)


def load_data(seed: int, val_fraction: float = 0.2):
    """Digits scaled to [0, 1] as NHWC float32, split into train and validation."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 8, 8, 1)
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = int(len(x) * val_fraction)
    val, train = order[:n_val], order[n_val:]
    return (x[train], y[train].astype(np.int32)), (x[val], y[val].astype(np.int32))


def loss_and_logits(params, apply_fn, x, y):
    logits = apply_fn({"params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits


@jaxobs.observe(activations=True)  # owns the jit; statistics are computed inside the step
def train_step(state, x, y):
    (loss, logits), grads = jax.value_and_grad(loss_and_logits, has_aux=True)(
        state.params, state.apply_fn, x, y
    )
    jaxobs.tap(grads=grads)  # reduced to per-leaf statistics here, on the device
    state = state.apply_gradients(grads=grads)
    return state, {"loss": loss, "accuracy": (logits.argmax(-1) == y).mean()}


@jax.jit
def eval_step(state, x, y):
    loss, logits = loss_and_logits(state.params, state.apply_fn, x, y)
    return loss, logits.argmax(-1)


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
    args = parser.parse_args(argv)

    (x_train, y_train), (x_val, y_val) = load_data(args.seed)
    steps_per_epoch = len(x_train) // args.batch_size
    model = CNN()
    params = model.init(jax.random.key(args.seed), x_train[:1])["params"]
    state = train_state.TrainState.create(
        apply_fn=model.apply, params=params, tx=optax.sgd(args.lr, momentum=0.9)
    )
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
        cm = jaxobs.ConfusionMatrix.from_predictions(y_val, np.asarray(predictions), 10)
        run.log_confusion_matrix("val_confusion", cm, step=step - 1)
        run.emit("train_end", step=step - 1, final_val_accuracy=val["val/accuracy"])
    if args.log is not None:  # e.g. --log out/trainlog.json, or --log off
        jaxobs.LogDestination.parse(args.log).write(jaxobs.read_run(run.dir).log)
    print(f"run directory: {run.dir}")
    print(f"  events:   {run.events_path}")
    print(f"  trainlog: {run.trainlog_path}")
    print(f"final validation accuracy: {val['val/accuracy']:.3f}")
    if args.show:
        from jaxobs.cli import main as cli

        print(f"\n$ jaxobs show {run.dir}")
        cli(["show", str(run.dir)])
    return run


if __name__ == "__main__":
    main()
