"""A small observed training run, for the bridge and sync tests (run as a script or imported).

    python tests/tiny_train.py --dir D --steps N [--sleep S] [--wandb MODE] [--tensorboard]

Prints ``run_dir=<path>`` first, then ``step <n>`` after each step.
"""

from __future__ import annotations

import argparse
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

import jaxobs

DEFAULTS = {"learning_rate": 0.05, "width": 16, "seed": 0}


class MLP(nn.Module):
    width: int = 16

    @nn.compact
    def __call__(self, x):
        return nn.Dense(4)(nn.relu(nn.Dense(self.width)(x)))


def make_state(config):
    model = MLP(int(config["width"]))
    params = model.init(jax.random.key(int(config["seed"])), jnp.ones((1, 8)))
    return train_state.TrainState.create(
        apply_fn=model.apply, params=params, tx=optax.sgd(float(config["learning_rate"]))
    )


def data(seed=0, n=64):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    y = (x[:, :4].argmax(axis=1)).astype(np.int32)
    return jnp.asarray(x), jnp.asarray(y)


def step_fn(state, x, y):
    def loss_fn(params):
        logits = state.apply_fn(params, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    jaxobs.tap(grads=grads)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
    return state.apply_gradients(grads=grads), {"loss": loss, "accuracy": accuracy}


def train(run, steps: int, sleep: float = 0.0, histograms: int = 5, echo: bool = False):
    """Train on ``run``'s config for ``steps`` steps, validating every 10; returns the last
    validation accuracy."""
    config = run.config
    state = make_state(config)
    step = jaxobs.observe(step_fn, histograms=histograms)
    x, y = data()
    vx, vy = data(seed=1)
    accuracy = 0.0
    for i in range(steps):
        state, _ = step(state, x, y)
        if i % 10 == 9:
            logits = state.apply_fn(state.params, vx)
            accuracy = float(jnp.mean(jnp.argmax(logits, -1) == vy))
            run.log({"val/accuracy": accuracy}, step=i)
        if echo:
            print(f"step {i}", flush=True)
        if sleep:
            time.sleep(sleep)
    step.flush()
    return accuracy


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--wandb", choices=("offline",), default=None)
    p.add_argument("--tensorboard", action="store_true")
    args = p.parse_args(argv)
    sinks = []
    if args.wandb:
        from jaxobs.bridges.wandb import WandbSink

        sinks.append(WandbSink(mode=args.wandb))
    if args.tensorboard:
        from jaxobs.bridges.tensorboard import TensorBoardSink

        sinks.append(TensorBoardSink(flush_secs=1))
    with jaxobs.init("tiny", dir=args.dir, config=DEFAULTS, sinks=sinks, terminal=False) as run:
        print(f"run_dir={run.dir}", flush=True)
        train(run, args.steps, args.sleep, echo=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
