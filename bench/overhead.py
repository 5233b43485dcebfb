"""Step-time overhead of observing a train step, as median ratios against the bare step.

    python bench/overhead.py                 # both models, default sizes
    python bench/overhead.py --model mlp --rounds 15 --steps 20

Models: a 4-layer MLP of width 1024 on 784 inputs (batch 128, Adam) and a small CNN on 28x28
inputs (batch 128, Adam). Variants, each timed over ``--steps`` steps per round, interleaved
(bare, A, B, ..., bare, A, B, ...) for ``--rounds`` rounds; each round's time is divided by
the same round's bare time and the median ratio is reported:

- ``full``: `@jaxobs.observe` with ``jaxobs.tap(grads=grads)``: every statistic of grads,
  params and updates, per leaf, every step (target <= 1.05);
- ``every10``: the same with ``every=10`` (target <= 1.01);
- ``acts``: ``full`` plus activation statistics (target <= 1.10);
- ``norms``: only the ``norm`` statistic of grads, params and updates, every step;
- ``callbacks``: ``full`` through the callback transport (``jax.jit`` on top of observe);
- ``seed003``: the seed 003 approach: grads pulled to the host every step and their norm,
  max and mean computed there with NumPy.

Prints one JSON object per model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time

import flax.linen as nn
import jax
import numpy as np
import optax
from flax.training import train_state

import jaxobs


class MLP(nn.Module):
    width: int = 1024
    depth: int = 4

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        for _ in range(self.depth):
            x = nn.relu(nn.Dense(self.width)(x))
        return nn.Dense(10)(x)


class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(32, (3, 3))(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.relu(nn.Conv(64, (3, 3))(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(128)(x))
        return nn.Dense(10)(x)


def _loss(params, apply_fn, x, y):
    logits = apply_fn({"params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def step_bare(state, x, y):
    loss, grads = jax.value_and_grad(_loss)(state.params, state.apply_fn, x, y)
    return state.apply_gradients(grads=grads), {"loss": loss}


def step_tapped(state, x, y):
    loss, grads = jax.value_and_grad(_loss)(state.params, state.apply_fn, x, y)
    jaxobs.tap(grads=grads)
    return state.apply_gradients(grads=grads), {"loss": loss}


def step_with_grads(state, x, y):
    loss, grads = jax.value_and_grad(_loss)(state.params, state.apply_fn, x, y)
    return state.apply_gradients(grads=grads), {"loss": loss}, grads


def _seed003(fn):
    """The seed 003 way: pull the gradients every step and reduce them on the host."""

    def run(state, x, y):
        state, metrics, grads = fn(state, x, y)
        for g in jax.tree.leaves(jax.device_get(grads)):
            np.linalg.norm(g), np.max(g), np.mean(g)
        return state, metrics

    return run


def variants(names):
    made = {"bare": jax.jit(step_bare)}
    if "full" in names:
        made["full"] = jaxobs.observe(step_tapped)
    if "every10" in names:
        made["every10"] = jaxobs.observe(step_tapped, every=10)
    if "acts" in names:
        made["acts"] = jaxobs.observe(step_tapped, activations=True)
    if "norms" in names:
        made["norms"] = jaxobs.observe(step_tapped, stats=["norm"])
    if "callbacks" in names:
        made["callbacks"] = jax.jit(jaxobs.observe(step_tapped))
    if "seed003" in names:
        made["seed003"] = _seed003(jax.jit(step_with_grads))
    return made


def measure(model_name: str, rounds: int, steps: int, names) -> dict:
    model = MLP() if model_name == "mlp" else CNN()
    shape = (128, 784) if model_name == "mlp" else (128, 28, 28, 1)
    key = jax.random.key(0)
    x = jax.random.normal(key, shape)
    y = jax.random.randint(key, (128,), 0, 10)
    params = model.init(key, x)["params"]
    n_params = sum(p.size for p in jax.tree.leaves(params))
    fns = variants(names)
    states = {
        k: train_state.TrainState.create(apply_fn=model.apply, params=params, tx=optax.adam(1e-4))
        for k in fns
    }
    times = {k: [] for k in fns}
    with tempfile.TemporaryDirectory() as tmp:
        run = jaxobs.init(project="bench", dir=tmp, terminal=False)
        for k, fn in fns.items():  # compile and warm up
            for _ in range(3):
                states[k], m = fn(states[k], x, y)
            jax.block_until_ready((states[k], m))
        for k in fns:
            if hasattr(fns[k], "flush"):
                fns[k].flush()
        for _ in range(rounds):
            for k, fn in fns.items():
                s = states[k]
                t0 = time.perf_counter()
                for _ in range(steps):
                    s, m = fn(s, x, y)
                jax.block_until_ready((s, m))
                times[k].append((time.perf_counter() - t0) / steps)
                states[k] = s
        run.finish()
    bare = times["bare"]
    ratios = {
        k: statistics.median(t / b for t, b in zip(v, bare, strict=True))
        for k, v in times.items()
        if k != "bare"
    }
    return {
        "model": model_name,
        "params": n_params,
        "rounds": rounds,
        "steps_per_round": steps,
        "bare_step_ms": statistics.median(bare) * 1e3,
        "ratio_vs_bare": {k: round(v, 4) for k, v in ratios.items()},
        "step_ms": {k: round(statistics.median(v) * 1e3, 3) for k, v in times.items()},
        "targets": {"full": 1.05, "every10": 1.01, "acts": 1.10},
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
    }


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=("mlp", "cnn", "both"), default="both")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument(
        "--variants",
        default="full,every10,acts,norms,callbacks,seed003",
        help="comma-separated subset of the variants",
    )
    args = p.parse_args(argv)
    names = set(args.variants.split(","))
    models = ("mlp", "cnn") if args.model == "both" else (args.model,)
    results = []
    for m in models:
        result = measure(m, args.rounds, args.steps, names)
        print(json.dumps(result), flush=True)
        results.append(result)
    return results


if __name__ == "__main__":
    sys.exit(main() and 0)
