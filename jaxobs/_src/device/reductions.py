"""One-pass reductions of a leaf (sums, extrema, counts) and the statistics derived
from them; pure and jittable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxobs._src.device.paths import path_str


def float_leaves(tree: Any) -> list[tuple[str, jax.Array]]:
    """(path, leaf) for every floating-point, non-empty leaf."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if not hasattr(leaf, "dtype") or not jnp.issubdtype(leaf.dtype, jnp.floating):
            continue  # integer, boolean and complex leaves are skipped
        if math.prod(leaf.shape) == 0:
            continue
        out.append((path_str(path), leaf))
    return out


def moments(x: jax.Array, need: set[str], *, masked: bool = True) -> dict[str, jax.Array]:
    """Combinable reductions of one leaf, in float32.

    Returns count (finite elements), nonfinite, and as needed: sum, m2 (sum of squared
    deviations from the leaf's mean, in units of ``scale**2``, for std), scale, norm, min,
    max, zeros.

    Healthy leaves (every sum finite) take one pass of sibling reductions; the variance uses
    a shift by the mean of a small strided sample, so a leaf like ``100 + 0.01 * noise``
    keeps its digits.
    A leaf with NaN/inf elements, or whose squares overflow float32, takes a masked and scaled
    two-pass route instead, behind `lax.cond`, so healthy steps never pay for its passes.
    With ``masked=False`` there is no such route (nor its cond, which costs a step on XLA:CPU
    more than the reductions do: see the performance docs): a leaf with a non-finite element
    then has a non-finite sum and norm, and ``nonfinite`` is not counted (0).
    """
    x = x.astype(jnp.float32) if x.dtype != jnp.float32 else x
    plain, checks = _fast(x, need)

    def healthy_(_):
        return {**plain, "nonfinite": jnp.float32(0)}

    def rare_(_):
        return _rare(x, need, plain)

    if not masked:
        out = healthy_(None)
    else:
        healthy = jnp.all(jnp.isfinite(jnp.stack(checks)))
        if isinstance(healthy, jax.core.Tracer):
            out = lax.cond(healthy, healthy_, rare_, None)
        else:  # called eagerly: choose in Python, so nothing is compiled per call
            out = healthy_(None) if bool(healthy) else rare_(None)
    out["count"] = jnp.float32(x.size) - out["nonfinite"]
    return out


def _fast(x: jax.Array, need: set[str]) -> tuple[dict[str, jax.Array], list[jax.Array]]:
    """The one-pass reductions of a healthy leaf, and the sums whose finiteness says it is."""
    n = jnp.float32(x.size)
    plain: dict[str, jax.Array] = {}
    checks: list[jax.Array] = []
    if "m2" in need:
        # Shifted sums by the mean of a strided sample (at most 256 elements): values far from
        # zero keep their digits, one outlier barely moves the shift, and the plain sum and
        # sum of squares follow from the same two reductions (all terms there are >= 0 but
        # the small c * dsum, so nothing cancels).
        flat = x.reshape(-1)
        stride = max(1, flat.size // 256)
        c = jnp.mean(flat[::stride][:256])
        d = x - c
        dsum, dssq = jnp.sum(d), jnp.sum(d * d)
        checks += [dsum, dssq]
        plain["m2"] = jnp.maximum(dssq - dsum * dsum / n, 0.0)
        plain["scale"] = jnp.float32(1.0)
        plain["sum"] = dsum + n * c
        if "sumsq" in need:
            plain["norm"] = jnp.sqrt(jnp.maximum(dssq + 2.0 * c * dsum + n * c * c, 0.0))
    else:
        if "sum" in need or not need:
            plain["sum"] = jnp.sum(x)
            checks.append(plain["sum"])
        if "sumsq" in need:
            sumsq = jnp.sum(x * x)
            checks.append(sumsq)
            plain["norm"] = jnp.sqrt(sumsq)
    if not need:
        plain.pop("sum", None)
    if "min" in need:
        plain["min"] = jnp.min(x)
    if "max" in need:
        plain["max"] = jnp.max(x)
    if "zeros" in need:
        plain["zeros"] = jnp.sum((x == 0).astype(jnp.float32))
    if not checks:  # min/max/zeros alone: a finiteness check needs a sum
        checks = [plain["sum"] if "sum" in plain else jnp.sum(x)]
    return plain, checks


def _rare(x: jax.Array, need: set[str], plain: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """The masked, scaled reductions of a leaf with non-finite elements (or overflowing
    squares), with the keys of the fast route."""
    n = jnp.float32(x.size)
    want_sq = bool(need & {"sumsq", "m2"})
    finite = jnp.isfinite(x)
    xf = jnp.where(finite, x, 0.0)
    count = jnp.sum(finite.astype(jnp.float32))
    out = {"nonfinite": n - count}
    if "sum" in plain:
        out["sum"] = jnp.sum(xf)
    if want_sq or "m2" in plain:
        scale = jnp.max(jnp.abs(xf))
        scale = jnp.where(scale > 0, scale, 1.0)
        if "norm" in plain:  # the same keys as the fast path
            out["norm"] = scale * jnp.sqrt(jnp.sum(jnp.square(xf / scale)))
        if "m2" in plain:
            mean = jnp.sum(xf / scale) / jnp.maximum(count, 1.0)
            dev = jnp.where(finite, x / scale - mean, 0.0)
            out["m2"] = jnp.sum(dev * dev)  # in units of scale**2: no overflow
            out["scale"] = scale
    if "min" in plain:
        out["min"] = jnp.min(jnp.where(finite, x, jnp.inf))
    if "max" in plain:
        out["max"] = jnp.max(jnp.where(finite, x, -jnp.inf))
    if "zeros" in plain:
        out["zeros"] = plain["zeros"]
    return out


NEEDS = {
    "norm": {"sumsq"},
    "rms": {"sumsq"},
    "mean": {"sum"},
    "std": {"sum", "m2"},
    "min": {"min"},
    "max": {"max"},
    "max_abs": {"min", "max"},
    "zero_frac": {"zeros"},
    "nonfinite": set(),
}


def finish_stats(
    m: Mapping[str, jax.Array], stats: Sequence[str], size: float
) -> dict[str, jax.Array]:
    count = m["count"]
    empty = count == 0  # no finite element: statistics of the finite part are undefined
    safe = jnp.maximum(count, 1.0)
    nan = jnp.float32(jnp.nan)
    out = {}
    for s in stats:
        if s == "norm":
            out[s] = m["norm"]
        elif s == "rms":
            out[s] = jnp.where(empty, nan, m["norm"] / jnp.sqrt(safe))
        elif s == "mean":
            out[s] = jnp.where(empty, nan, m["sum"] / safe)
        elif s == "std":
            out[s] = jnp.where(empty, nan, m["scale"] * jnp.sqrt(m["m2"] / safe))
        elif s == "min":
            out[s] = jnp.where(empty, nan, m["min"])
        elif s == "max":
            out[s] = jnp.where(empty, nan, m["max"])
        elif s == "max_abs":
            out[s] = jnp.where(empty, nan, jnp.maximum(jnp.abs(m["min"]), jnp.abs(m["max"])))
        elif s == "zero_frac":
            out[s] = m["zeros"] / jnp.float32(size)
        elif s == "nonfinite":
            out[s] = m["nonfinite"]
    return out


def combine(parts: Sequence[Mapping[str, jax.Array]]) -> dict[str, jax.Array]:
    """Moments of several leaves as one (Chan et al.'s parallel variance for m2)."""
    count = sum(p["count"] for p in parts)
    out: dict[str, Any] = {"count": count, "nonfinite": sum(p["nonfinite"] for p in parts)}
    if "sum" in parts[0]:
        out["sum"] = sum(p["sum"] for p in parts)
    if "norm" in parts[0]:  # scaled by the largest, so squares cannot overflow
        norms = jnp.stack([p["norm"] for p in parts])
        top = jnp.max(norms)
        top = jnp.where((top > 0) & jnp.isfinite(top), top, 1.0)
        out["norm"] = top * jnp.sqrt(jnp.sum(jnp.square(norms / top)))
    if "m2" in parts[0]:
        mean = out["sum"] / jnp.maximum(count, 1.0)
        scale = jnp.max(jnp.stack([p["scale"] for p in parts]))
        out["scale"] = scale
        out["m2"] = sum(
            jnp.square(p["scale"] / scale) * p["m2"]
            + p["count"] * jnp.square((p["sum"] / jnp.maximum(p["count"], 1.0) - mean) / scale)
            for p in parts
        )
    if "zeros" in parts[0]:
        out["zeros"] = sum(p["zeros"] for p in parts)
    if "min" in parts[0]:
        out["min"] = jnp.min(jnp.stack([p["min"] for p in parts]))
    if "max" in parts[0]:
        out["max"] = jnp.max(jnp.stack([p["max"] for p in parts]))
    return out
