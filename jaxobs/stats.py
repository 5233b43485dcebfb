"""Pure pytree statistics, for use inside jitted code.

Every function here is a pure function of arrays: pytree in, small dict of scalars out. They
run under `jax.jit`, `jax.vmap` and on sharded inputs, and add no host callbacks.

Keys are ``/``-joined paths built from the pytree path (``jax.tree_util.keystr`` with ``/``
as separator), so they match the user's module names: the kernel of a flax ``Dense_0`` in
``{"params": {"Dense_0": {"kernel": ...}}}`` is ``params/Dense_0/kernel``.

Statistics (`STATS`), each a float32 scalar:

==============  ==========================================================================
``norm``        L2 norm, over the finite elements
``rms``         root mean square of the finite elements
``mean``        mean of the finite elements
``std``         standard deviation of the finite elements (population)
``min``         smallest finite element
``max``         largest finite element
``max_abs``     largest finite absolute value
``zero_frac``   fraction of elements exactly zero
``nonfinite``   number of NaN or infinite elements
==============  ==========================================================================

A leaf with NaN or infinite elements is reported as such (``nonfinite`` > 0) while its other
statistics describe its finite part, and other leaves are never affected. bf16 and f16 leaves
are accumulated in float32; integer, boolean and empty leaves are skipped. Choosing a subset
of statistics computes only that subset. The non-finite count and the finite masks are
computed only when a leaf's sums are not finite (behind `lax.cond`), so healthy steps pay
for plain reductions only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

__all__ = [
    "ACT_STATS",
    "STATS",
    "activation_stats",
    "flatten_stats",
    "global_norm",
    "group_by_layer",
    "leaf_stats",
    "path_str",
    "tree_stats",
    "update_ratio",
]

STATS = ("norm", "rms", "mean", "std", "min", "max", "max_abs", "zero_frac", "nonfinite")
ACT_STATS = ("mean", "std", "max_abs", "zero_frac", "dead_frac", "saturation_frac")


def _check_stats(stats: Iterable[str], known: Sequence[str] = STATS) -> tuple[str, ...]:
    stats = (stats,) if isinstance(stats, str) else tuple(stats)
    unknown = [s for s in stats if s not in known]
    if unknown or not stats:
        raise ValueError(f"unknown statistics {unknown}; choose from {list(known)}")
    return stats


def path_str(path: Sequence[Any]) -> str:
    """A pytree key path as a ``/``-joined string: ``params/Dense_0/kernel``."""
    parts = []
    for key in path:
        if isinstance(key, jax.tree_util.DictKey):
            parts.append(str(key.key))
        elif isinstance(key, jax.tree_util.GetAttrKey):
            parts.append(key.name)
        elif isinstance(key, jax.tree_util.SequenceKey):
            parts.append(str(key.idx))
        elif isinstance(key, jax.tree_util.FlattenedIndexKey):
            parts.append(str(key.key))
        else:
            parts.append(jax.tree_util.keystr((key,)).strip(".[]'\""))
    return "/".join(parts)


def _float_leaves(tree: Any) -> list[tuple[str, jax.Array]]:
    """(path, leaf) for every floating-point, non-empty leaf."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if not hasattr(leaf, "dtype") or not jnp.issubdtype(leaf.dtype, jnp.inexact):
            continue
        if math.prod(leaf.shape) == 0:
            continue
        out.append((path_str(path), leaf))
    return out


def _moments(x: jax.Array, need: set[str]) -> dict[str, jax.Array]:
    """Raw reductions of ``x`` (float32): sum, sumsq, min, max, zeros, count, nonfinite."""
    x = x.astype(jnp.float32) if x.dtype != jnp.float32 else x
    n = jnp.float32(x.size)
    plain: dict[str, jax.Array] = {}
    if need & {"sum"}:
        plain["sum"] = jnp.sum(x)
    if need & {"sumsq"}:
        plain["sumsq"] = jnp.sum(x * x)
    if need & {"min"}:
        plain["min"] = jnp.min(x)
    if need & {"max"}:
        plain["max"] = jnp.max(x)
    if need & {"zeros"}:
        plain["zeros"] = jnp.sum((x == 0).astype(jnp.float32))
    checks = [v for k, v in plain.items() if k in ("sum", "sumsq")]
    if not checks:  # min/max/zeros alone: a non-finite check needs a sum
        checks = [jnp.sum(x)]

    def finite_only(_):
        finite = jnp.isfinite(x)
        out = {}
        if "sum" in plain:
            out["sum"] = jnp.sum(jnp.where(finite, x, 0.0))
        if "sumsq" in plain:
            out["sumsq"] = jnp.sum(jnp.where(finite, x * x, 0.0))
        if "min" in plain:
            out["min"] = jnp.min(jnp.where(finite, x, jnp.inf))
        if "max" in plain:
            out["max"] = jnp.max(jnp.where(finite, x, -jnp.inf))
        if "zeros" in plain:
            out["zeros"] = plain["zeros"]
        out["nonfinite"] = jnp.sum((~finite).astype(jnp.float32))
        return out

    def all_finite(_):
        return {**plain, "nonfinite": jnp.float32(0)}

    healthy = jnp.all(jnp.isfinite(jnp.stack(checks)))
    out = lax.cond(healthy, all_finite, finite_only, None)
    out["count"] = n - out["nonfinite"]
    return out


_NEEDS = {
    "norm": {"sumsq"},
    "rms": {"sumsq"},
    "mean": {"sum"},
    "std": {"sum", "sumsq"},
    "min": {"min"},
    "max": {"max"},
    "max_abs": {"min", "max"},
    "zero_frac": {"zeros"},
    "nonfinite": set(),
}


def _finish(m: Mapping[str, jax.Array], stats: Sequence[str], size: float) -> dict[str, jax.Array]:
    count = jnp.maximum(m["count"], 1.0)
    out = {}
    for s in stats:
        if s == "norm":
            out[s] = jnp.sqrt(m["sumsq"])
        elif s == "rms":
            out[s] = jnp.sqrt(m["sumsq"] / count)
        elif s == "mean":
            out[s] = m["sum"] / count
        elif s == "std":
            mean = m["sum"] / count
            out[s] = jnp.sqrt(jnp.maximum(m["sumsq"] / count - mean * mean, 0.0))
        elif s == "min":
            out[s] = m["min"]
        elif s == "max":
            out[s] = m["max"]
        elif s == "max_abs":
            out[s] = jnp.maximum(jnp.abs(m["min"]), jnp.abs(m["max"]))
        elif s == "zero_frac":
            out[s] = m["zeros"] / jnp.float32(size)
        elif s == "nonfinite":
            out[s] = m["nonfinite"]
    return out


def leaf_stats(x: jax.Array, stats: Iterable[str] = STATS) -> dict[str, jax.Array]:
    """Statistics of one array (see the module docstring for their definitions).

    Example:
      >>> out = leaf_stats(jnp.array([3.0, 4.0, 0.0, jnp.nan]), ["norm", "zero_frac", "nonfinite"])
      >>> {k: float(v) for k, v in out.items()}
      {'norm': 5.0, 'zero_frac': 0.25, 'nonfinite': 1.0}
    """
    stats = _check_stats(stats)
    need = set().union(*(_NEEDS[s] for s in stats))
    return _finish(_moments(jnp.asarray(x), need), stats, float(math.prod(jnp.shape(x))))


def group_by_layer(path: str) -> str:
    """The layer a leaf belongs to: its path without the last part (``Dense_0/kernel`` ->
    ``Dense_0``); a top-level leaf is its own layer."""
    return path.rsplit("/", 1)[0] if "/" in path else path


def tree_stats(
    tree: Any,
    stats: Iterable[str] = STATS,
    *,
    per: str = "leaf",
    prefix: str = "",
) -> dict[str, jax.Array]:
    """Statistics of every floating-point leaf (``per="leaf"``) or of every layer
    (``per="layer"``: the leaves of one module combined, e.g. kernel and bias of ``Dense_0``).

    Args:
      tree: Any pytree of arrays.
      stats: Which statistics (default: all of `STATS`); only these are computed.
      per: ``"leaf"`` or ``"layer"``.
      prefix: Prepended to every key with a ``/`` (e.g. ``"grads"``).

    Returns:
      ``{"<prefix>/<path>/<stat>": float32 scalar}``, a flat dict.

    Example:
      >>> g = {"Dense_0": {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)}}
      >>> out = tree_stats(g, ["norm"], per="layer", prefix="grads")
      >>> {k: float(v) for k, v in out.items()}
      {'grads/Dense_0/norm': 2.0}
    """
    stats = _check_stats(stats)
    if per not in ("leaf", "layer"):
        raise ValueError(f"per must be 'leaf' or 'layer', got {per!r}")
    need = set().union(*(_NEEDS[s] for s in stats))
    leaves = _float_leaves(tree)
    head = f"{prefix}/" if prefix else ""
    if per == "leaf":
        out = {}
        for path, leaf in leaves:
            for s, v in leaf_stats(leaf, stats).items():
                out[f"{head}{path}/{s}"] = v
        return out
    groups: dict[str, list[jax.Array]] = {}
    for path, leaf in leaves:
        groups.setdefault(group_by_layer(path), []).append(leaf)
    out = {}
    for layer, members in groups.items():
        parts = [_moments(leaf, need) for leaf in members]
        combined = {
            "count": sum(p["count"] for p in parts),
            "nonfinite": sum(p["nonfinite"] for p in parts),
        }
        for key in ("sum", "sumsq", "zeros"):
            if key in parts[0]:
                combined[key] = sum(p[key] for p in parts)
        if "min" in parts[0]:
            combined["min"] = jnp.min(jnp.stack([p["min"] for p in parts]))
        if "max" in parts[0]:
            combined["max"] = jnp.max(jnp.stack([p["max"] for p in parts]))
        size = float(sum(math.prod(leaf.shape) for leaf in members))
        for s, v in _finish(combined, stats, size).items():
            out[f"{head}{layer}/{s}"] = v
    return out


def global_norm(tree: Any) -> jax.Array:
    """L2 norm of all floating-point leaves together (float32 accumulation).

    Unlike `tree_stats`, a non-finite element makes the result non-finite: this is the
    number to compare with a clipping threshold.
    """
    leaves = _float_leaves(tree)
    if not leaves:
        return jnp.float32(0)
    return jnp.sqrt(sum(jnp.sum(jnp.square(leaf.astype(jnp.float32))) for _, leaf in leaves))


def update_ratio(
    updates: Any, params: Any, *, per: str = "layer", prefix: str = "", eps: float = 1e-12
) -> dict[str, jax.Array]:
    """``||update|| / ||param||`` per layer (or per leaf), keyed ``<prefix>/<path>/update_ratio``.

    ``updates`` and ``params`` must have the same structure (e.g. optax updates and the
    parameters they apply to, or ``new_params - old_params``).
    """
    u = tree_stats(updates, ["norm"], per=per)
    p = tree_stats(params, ["norm"], per=per)
    if set(u) != set(p):
        raise ValueError(
            f"update_ratio: updates and params have different leaves: {sorted(set(u) ^ set(p))[:5]}"
        )
    head = f"{prefix}/" if prefix else ""
    return {f"{head}{k[: -len('/norm')]}/update_ratio": u[k] / (p[k] + eps) for k in u}


def activation_stats(
    x: jax.Array,
    stats: Iterable[str] = ACT_STATS,
    *,
    unit_axis: int = -1,
    saturation: str | None = None,
) -> dict[str, jax.Array]:
    """Statistics of one activation: moments plus per-unit dead and saturation fractions.

    A unit is one index of ``unit_axis`` (the features of a Dense layer, the channels of a
    convolution); every other axis is batch (and space). A unit is *dead for this batch* when
    it is zero for every example and position.

    Args:
      x: The activation.
      stats: From `ACT_STATS`: ``mean``, ``std``, ``max_abs``, ``zero_frac`` (fraction of zero
        elements), ``dead_frac`` (fraction of units dead for this batch), ``saturation_frac``
        (fraction of elements saturated; needs ``saturation``).
      unit_axis: The axis of units.
      saturation: ``"tanh"`` (``|x| > 0.99``) or ``"sigmoid"`` (``x < 0.01`` or
        ``x > 0.99``) to compute ``saturation_frac``; None skips it.
    """
    stats = _check_stats(stats, ACT_STATS)
    x = jnp.asarray(x)
    x32 = x.astype(jnp.float32)
    base = [s for s in stats if s in STATS]
    out = leaf_stats(x32, base) if base else {}
    if "dead_frac" in stats:
        axis = unit_axis % x.ndim
        alive = jnp.any(x32 != 0, axis=tuple(a for a in range(x.ndim) if a != axis))
        out["dead_frac"] = 1.0 - jnp.mean(alive.astype(jnp.float32))
    if "saturation_frac" in stats and saturation is not None:
        if saturation == "tanh":
            sat = jnp.abs(x32) > 0.99
        elif saturation == "sigmoid":
            sat = (x32 < 0.01) | (x32 > 0.99)
        else:
            raise ValueError(f"saturation must be 'tanh' or 'sigmoid', got {saturation!r}")
        out["saturation_frac"] = jnp.mean(sat.astype(jnp.float32))
    return {s: out[s] for s in stats if s in out}


def flatten_stats(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": x}}`` -> ``{"a/b": x}`` (for scalars returned as nested dicts)."""
    out: dict[str, Any] = {}
    for key, value in nested.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten_stats(value, name))
        else:
            out[name] = value
    return out
