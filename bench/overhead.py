"""Step-time overhead of observing a train step, as median ratios against the bare step.

    python bench/overhead.py                 # both models, every variant (~8 min, 2 cores)
    python bench/overhead.py --quick         # fewer variants and rounds (~2 min)
    python bench/overhead.py --model mlp --rounds 15 --steps 20 --variants detailed,norm

Models: a 4-layer MLP of width 1024 on 784 inputs (batch 128, Adam, 4.0M parameters) and a
small CNN on 28x28 inputs (batch 128, Adam). Every observed step taps its gradients with
``jaxobs.tap(grads=grads)``. Variants are timed over ``--steps`` steps per round,
interleaved (bare, A, B, ..., then A, B, ..., bare: the order rotates each round) for
``--rounds`` rounds; each round's time is divided by the same round's bare time (with
``every=10`` a round of 10 steps holds one sampled step: keep ``--steps`` a multiple of 10).
Reported per variant: ``ratio_vs_bare``, the median of those ratios; ``spread``, their 25th
and 75th percentiles; ``ratio_of_totals``, total time over total bare time (what
``every=100`` costs on average, its sampled step included); ``step_ms``, the median time per
step. An observed variant's timed block ends with its ``flush()``, so the host's delivery of
the records (on the same cores) is paid inside the variant that caused it. ``targets`` are
the issue's (CPU, or GPU when the backend is one) and ``targets_met`` compares the medians.

Variants (``--variants``, comma-separated):

- ``basic``, ``detailed``, ``expert``, ``debug``: ``jaxobs.observe(step, level=...)``,
  every step, a run active (``jaxobs.init(..., terminal=False)``);
- ``detailed@10``, ``detailed@100``, ``expert@10``, ``expert@100``: the same with
  ``every=N`` (two programs, chosen on the host);
- ``norm``: ``stats=["norm"], per="leaf"``, every step;
- ``callbacks``: ``jax.jit(jaxobs.observe(step))``, the callback transport, default level;
- ``seed003``: the seed 003 approach: grads pulled to the host every step and their norm,
  max and mean computed there with NumPy;
- ``levanter@10``: a Levanter-style hook: the bare jitted step returns its grads, and a
  separate jitted program computes their global and per-leaf norms every 10 steps (fetched
  to the host, as a logging hook does);
- ``floor:gnorm``, ``floor:norms3``: hand-written floors, the bare jitted step that also
  returns the global norm of its grads (one read of them: what the health guard needs
  between samples), or those of grads, params and updates (``new - old``);
- ``norun:<variant>`` (e.g. ``norun:detailed``, ``norun:norm@10``): an observed variant with
  no run active (records computed and dropped). These are timed in a first phase, before
  ``jaxobs.init``, against a bare step of their own (``norun:bare``).

``compile``: the first call of a fresh step minus a warm call (tracing, lowering, XLA
compilation; the minimum over ``--compile-repeats``), for the bare step and an observed
step at each level (interleaved), and their ratios to the bare one.

Prints one JSON object per model.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

import jaxobs

LEVELS = ("basic", "detailed", "expert", "debug")
ALL_VARIANTS = (
    *LEVELS,
    "detailed@10",
    "detailed@100",
    "expert@10",
    "expert@100",
    "norm",
    "callbacks",
    "seed003",
    "levanter@10",
    "floor:gnorm",
    "floor:norms3",
    "norun:detailed",
    "norun:expert",
    "norun:norm",
    "norun:detailed@10",
)
QUICK_VARIANTS = (
    "basic",
    "detailed",
    "expert",
    "detailed@10",
    "norm",
    "seed003",
    "levanter@10",
    "floor:gnorm",
    "floor:norms3",
)
FLOORS = {"floor:gnorm": 1, "floor:norms3": 3}
TARGETS = {  # the targets, run active
    "cpu": {
        "mlp": {"detailed": 1.05, "detailed@10": 1.01, "expert": 1.25, "norm": 1.03},
        "cnn": dict.fromkeys(LEVELS, 1.05),
    },
    "gpu": {"mlp": {"expert": 1.02}, "cnn": {"expert": 1.02}},
}
COMPILE_TARGET = {"detailed": 2.0}  # observed compile over bare compile, default level


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


def _floor_step(trees: int):
    """The bare step returning, as metrics, the global norm of the grads (``trees=1``: what
    the guard reads between samples) or of grads, params and updates (3: one read of each
    tree, what BASIC and DETAILED need): hand-written floors of observing's cost."""

    def step(state, x, y):
        loss, grads = jax.value_and_grad(_loss)(state.params, state.apply_fn, x, y)
        new = state.apply_gradients(grads=grads)
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads)}
        if trees == 3:
            updates = jax.tree.map(jnp.subtract, new.params, state.params)
            metrics |= {
                "param_norm": optax.global_norm(new.params),
                "update_norm": optax.global_norm(updates),
            }
        return new, metrics

    step.__name__ = step.__qualname__ = f"step_floor{trees}"
    return step


def _fresh(fn):
    """A new function object calling ``fn``: jax's caches (keyed on the function) miss, so
    the first call traces and compiles from scratch."""

    @functools.wraps(fn)
    def fresh(*args):
        return fn(*args)

    return fresh


def _seed003(fn):
    """The seed 003 way: pull the gradients every step and reduce them on the host."""

    def run(state, x, y):
        state, metrics, grads = fn(state, x, y)
        for g in jax.tree.leaves(jax.device_get(grads)):
            np.linalg.norm(g), np.max(g), np.mean(g)
        return state, metrics

    return run


def _norms(grads):
    return optax.global_norm(grads), jax.tree.map(jnp.linalg.norm, grads)


def _levanter(every: int):
    """A Levanter-style hook: the bare step returns its grads; a program of its own computes
    their norms every ``every`` steps, and the hook fetches them to log."""
    step, norms = jax.jit(step_with_grads), jax.jit(_norms)
    calls = [0]

    def run(state, x, y):
        state, metrics, grads = step(state, x, y)
        if calls[0] % every == 0:
            jax.device_get(norms(grads))
        calls[0] += 1
        return state, metrics

    return run


def _observe_kwargs(spec: str) -> dict:
    """``observe`` keywords for ``<level|norm>[@every]``."""
    what, _, every = spec.partition("@")
    kwargs = {"every": int(every)} if every else {}
    if what == "norm":
        return {**kwargs, "stats": ["norm"], "per": "leaf"}
    if what in LEVELS:
        return {**kwargs, "level": what}
    raise SystemExit(f"unknown variant {spec!r}: choose from {', '.join(ALL_VARIANTS)}")


def make_variant(name: str):
    """The step and the function that waits for its records (or None)."""
    if name == "callbacks":
        observed = jaxobs.observe(step_tapped)
        return jax.jit(observed), observed.flush
    if name == "seed003":
        return _seed003(jax.jit(step_with_grads)), None
    if name.startswith("levanter@"):
        return _levanter(int(name.partition("@")[2])), None
    if name in FLOORS:
        return jax.jit(_floor_step(FLOORS[name])), None
    observed = jaxobs.observe(step_tapped, **_observe_kwargs(name.removeprefix("norun:")))
    return observed, observed.flush


def _problem(model_name: str):
    model = MLP() if model_name == "mlp" else CNN()
    shape = (128, 784) if model_name == "mlp" else (128, 28, 28, 1)
    key = jax.random.key(0)
    x = jax.random.normal(key, shape)
    y = jax.random.randint(key, (128,), 0, 10)
    params = model.init(key, x)["params"]

    def new_state():
        return train_state.TrainState.create(
            apply_fn=model.apply, params=params, tx=optax.adam(1e-4)
        )

    return new_state, params, x, y


def _time_phase(fns: dict, new_state, x, y, rounds: int, steps: int) -> dict[str, list[float]]:
    """Seconds per step of each variant, one entry per round, interleaved."""
    states = {k: new_state() for k in fns}
    for k, (fn, flush) in fns.items():  # compile (both programs with every=N) and warm up
        for _ in range(3):
            states[k], m = fn(states[k], x, y)
        jax.block_until_ready((states[k], m))
        if flush is not None:
            flush()
    times: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    for r in range(rounds):
        for k in order[r % len(order) :] + order[: r % len(order)]:  # rotated each round
            fn, flush = fns[k]
            s = states[k]
            t0 = time.perf_counter()
            for _ in range(steps):
                s, m = fn(s, x, y)
            jax.block_until_ready((s, m))
            if flush is not None:
                flush()
            times[k].append((time.perf_counter() - t0) / steps)
            states[k] = s
    return times


def _compile_s(make, new_state, x, y) -> float:
    """First call of a fresh step minus its fastest of three warm calls."""
    fn, flush = make()
    s = new_state()
    t0 = time.perf_counter()
    s, m = fn(s, x, y)
    jax.block_until_ready((s, m))
    first = time.perf_counter() - t0
    warm = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        s, m = fn(s, x, y)
        jax.block_until_ready((s, m))
        warm = min(warm, time.perf_counter() - t0)
    if flush is not None:
        flush()
    return first - warm


def _compile_section(new_state, x, y, repeats: int, levels) -> dict:
    """Compile times, interleaved (bare, each level, bare, ...), the minimum over repeats."""

    def observed(level):
        fn = jaxobs.observe(_fresh(step_tapped), level=level)
        return fn, fn.flush

    makers = {"bare": lambda: (jax.jit(_fresh(step_bare)), None)}
    makers |= {lv: functools.partial(observed, lv) for lv in levels}
    best = dict.fromkeys(makers, float("inf"))
    for _ in range(repeats):
        for k, make in makers.items():
            best[k] = min(best[k], _compile_s(make, new_state, x, y))
    bare = best.pop("bare")
    seconds = best
    ratios = {lv: round(s / bare, 3) for lv, s in seconds.items()}
    return {
        "bare_s": round(bare, 3),
        "observed_s": {lv: round(s, 3) for lv, s in seconds.items()},
        "ratio_vs_bare": ratios,
        "targets": COMPILE_TARGET,
        "targets_met": {k: ratios[k] <= t for k, t in COMPILE_TARGET.items() if k in ratios},
        "repeats": repeats,
    }


def _summary(times: dict[str, list[float]], bare_key: str) -> dict[str, dict]:
    bare = times[bare_key]
    out: dict[str, dict] = {"ratio": {}, "spread": {}, "totals": {}, "ms": {}}
    for k, v in times.items():
        out["ms"][k] = round(statistics.median(v) * 1e3, 3)
        if k == bare_key:
            continue
        ratios = [t / b for t, b in zip(v, bare, strict=True)]
        out["ratio"][k] = round(statistics.median(ratios), 4)
        if len(ratios) > 1:
            p25, _, p75 = statistics.quantiles(ratios, n=4, method="inclusive")
            out["spread"][k] = [round(p25, 4), round(p75, 4)]
        out["totals"][k] = round(sum(v) / sum(bare), 4)
    return out


def measure(model_name: str, rounds: int, steps: int, names, compile_repeats: int, levels):
    new_state, params, x, y = _problem(model_name)
    norun = [n for n in names if n.startswith("norun:")]
    active = [n for n in names if not n.startswith("norun:")]
    times: dict[str, list[float]] = {}
    t_start = time.perf_counter()
    if norun:  # no run active: observed steps made and called before jaxobs.init
        fns = {"norun:bare": (jax.jit(step_bare), None)} | {n: make_variant(n) for n in norun}
        times |= _time_phase(fns, new_state, x, y, rounds, steps)
        del fns
    compile_section = None
    with tempfile.TemporaryDirectory() as tmp:
        run = jaxobs.init(project="bench", dir=tmp, terminal=False)
        fns = {"bare": (jax.jit(step_bare), None)} | {n: make_variant(n) for n in active}
        times |= _time_phase(fns, new_state, x, y, rounds, steps)
        del fns
        if levels:
            compile_section = _compile_section(new_state, x, y, compile_repeats, levels)
        run.finish()
    run_phase = _summary({k: v for k, v in times.items() if not k.startswith("norun:")}, "bare")
    s = run_phase
    if norun:
        no_run = _summary({k: v for k, v in times.items() if k.startswith("norun:")}, "norun:bare")
        s = {part: s[part] | no_run[part] for part in s}
    backend = jax.default_backend()
    given = TARGETS.get(backend, {}).get(model_name, {})
    targets = {k: t for k, t in given.items() if k in s["ratio"]}
    return {
        "model": model_name,
        "params": sum(p.size for p in jax.tree.leaves(params)),
        "leaves": len(jax.tree.leaves(params)),
        "rounds": rounds,
        "steps_per_round": steps,
        "bare_step_ms": s["ms"]["bare"],
        "ratio_vs_bare": s["ratio"],
        "spread": s["spread"],
        "ratio_of_totals": s["totals"],
        "step_ms": s["ms"],
        "targets": targets,
        "targets_met": {k: s["ratio"][k] <= t for k, t in targets.items()},
        "compile": compile_section,
        "backend": backend,
        "device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "wall_s": round(time.perf_counter() - t_start, 1),
    }


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=("mlp", "cnn", "both"), default="both")
    p.add_argument("--quick", action="store_true", help="fewer variants and rounds")
    p.add_argument("--rounds", type=int, default=None, help="default 10 (--quick: 5)")
    p.add_argument("--steps", type=int, default=10, help="steps per round (a multiple of 10)")
    p.add_argument(
        "--variants",
        default=None,
        help=f"comma-separated subset of: {','.join(ALL_VARIANTS)} (default: all; --quick: "
        f"{','.join(QUICK_VARIANTS)})",
    )
    p.add_argument(
        "--compile-levels",
        default=None,
        help="levels whose compile time is measured, comma-separated ('' for none; default "
        "all; --quick: detailed)",
    )
    p.add_argument("--compile-repeats", type=int, default=None, help="default 2 (--quick: 1)")
    args = p.parse_args(argv)
    quick = args.quick
    rounds = args.rounds or (5 if quick else 10)
    steps = args.steps
    variants = args.variants or ",".join(QUICK_VARIANTS if quick else ALL_VARIANTS)
    names = [n for n in variants.split(",") if n and n != "bare"]
    for n in names:  # fail before any timing on a misspelt variant
        if n not in ("callbacks", "seed003", *FLOORS) and not n.startswith("levanter@"):
            _observe_kwargs(n.removeprefix("norun:"))
    levels_arg = args.compile_levels
    if levels_arg is None:
        levels_arg = "detailed" if quick else ",".join(LEVELS)
    levels = [lv for lv in levels_arg.split(",") if lv]
    repeats = args.compile_repeats or (1 if quick else 2)
    models = ("mlp", "cnn") if args.model == "both" else (args.model,)
    results = []
    for m in models:
        result = measure(m, rounds, steps, names, repeats, levels)
        print(json.dumps(result), flush=True)
        results.append(result)
    return results


if __name__ == "__main__":
    sys.exit(main() and 0)
