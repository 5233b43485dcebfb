"""What each reduction costs on this backend: the building blocks of `jaxobs.stats`.

    python bench/reductions.py [--size 1048576] [--rounds 9]

Times, interleaved over ``--rounds`` rounds of 20 calls each, jitted reductions of one
float32 leaf of ``--size`` elements, and `jaxobs.stats.leaf_stats` with all statistics, and
prints the medians in microseconds as JSON. On XLA:CPU each reduction is its own pass over
the leaf, which is what sets the cost of "every statistic every step" (docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
from jax import lax

from jaxobs.stats import leaf_stats


def _variadic_two(x):
    init = (jnp.float32(0), jnp.float32(0))
    return lax.reduce((x, x * x), init, lambda a, b: (a[0] + b[0], a[1] + b[1]), (0,))


CANDIDATES = {
    "sum": lambda x: jnp.sum(x),
    "sum_and_sumsq": lambda x: (jnp.sum(x), jnp.sum(x * x)),
    "min_and_max": lambda x: (jnp.min(x), jnp.max(x)),
    "zero_count": lambda x: jnp.sum((x == 0).astype(jnp.float32)),
    "isfinite_masked_sum": lambda x: jnp.sum(jnp.where(jnp.isfinite(x), x, 0.0)),
    "five_reductions": lambda x: (
        jnp.sum(x),
        jnp.sum(x * x),
        jnp.min(x),
        jnp.max(x),
        jnp.sum((x == 0).astype(jnp.float32)),
    ),
    "variadic_reduce_two_sums": _variadic_two,
    "leaf_stats_all": lambda x: leaf_stats(x),
}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=1 << 20)
    p.add_argument("--rounds", type=int, default=9)
    args = p.parse_args(argv)
    x = jax.random.normal(jax.random.key(0), (args.size,))
    fns = {k: jax.jit(v) for k, v in CANDIDATES.items()}
    for f in fns.values():
        jax.block_until_ready(f(x))
    times = {k: [] for k in fns}
    for _ in range(args.rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(20):
                y = f(x)
            jax.block_until_ready(y)
            times[k].append((time.perf_counter() - t0) / 20 * 1e6)
    result = {
        "size": args.size,
        "rounds": args.rounds,
        "backend": jax.default_backend(),
        "median_us": {k: round(statistics.median(v), 1) for k, v in times.items()},
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
