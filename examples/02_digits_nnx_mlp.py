"""Train a Flax NNX MLP on the scikit-learn digits with `@jaxobs.observe` watching it.

    python examples/02_digits_nnx_mlp.py --dir runs --epochs 5

The step takes ``(model, optimizer, x, y)``, updates both in place and returns its metrics:
the NNX shape that `observe` recognises. It jits the step with `nnx.jit` itself and records
``params/...`` and ``updates/...`` of the model's parameters, ``grads/...`` (tapped),
``acts/<layer>/...`` of every ``nnx.Linear`` (without editing the model), and the returned
``train/loss``. The model's layers keep their own classes outside the step.
"""

from __future__ import annotations

import argparse

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits

import jaxobs


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, width: int = 64):
        self.hidden1 = nnx.Linear(64, width, rngs=rngs)
        self.hidden2 = nnx.Linear(width, width, rngs=rngs)
        self.out = nnx.Linear(width, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.hidden1(x))
        x = nnx.relu(self.hidden2(x))
        return self.out(x)


@jaxobs.observe(activations=True)
def train_step(model, optimizer, x, y):
    def loss_fn(model):
        logits = model(x)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, logits

    (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    jaxobs.tap(grads=grads)
    optimizer.update(model, grads)
    return {"loss": loss, "accuracy": (logits.argmax(-1) == y).mean()}


def main(argv=None) -> jaxobs.Run:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default="runs")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    y = y.astype(np.int32)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(x))
    val, train = order[:360], order[360:]
    model = MLP(nnx.Rngs(args.seed))
    optimizer = nnx.Optimizer(model, optax.adam(args.lr), wrt=nnx.Param)
    steps_per_epoch = len(train) // args.batch_size
    config = {
        "model": "MLP(64, 64)",
        "optimizer": {"name": "adam", "lr": args.lr},
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "seed": args.seed,
    }
    with jaxobs.init(
        project="digits-nnx",
        name=f"mlp-lr{args.lr}",
        config=config,
        dir=args.dir,
        total_steps=args.epochs * steps_per_epoch,
    ) as run:
        step = 0
        for epoch in range(args.epochs):
            perm = rng.permutation(train)
            for i in range(steps_per_epoch):
                idx = perm[i * args.batch_size : (i + 1) * args.batch_size]
                train_step(model, optimizer, jnp.asarray(x[idx]), jnp.asarray(y[idx]))
                step += 1
            accuracy = float((model(jnp.asarray(x[val])).argmax(-1) == y[val]).mean())
            run.log({"val/accuracy": accuracy}, step=step - 1)
            run.emit("epoch_end", step=step - 1, epoch=epoch, metrics={"val/accuracy": accuracy})
    print(f"run directory: {run.dir}")
    print(f"final validation accuracy: {accuracy:.3f}")
    return run


if __name__ == "__main__":
    main()
