"""Statistics of pytrees, pure and jittable (documented in `jaxobs.stats`)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxobs._src.device.keys import layer_norms
from jaxobs._src.device.paths import group_by_layer
from jaxobs._src.device.reductions import (
    NEEDS,
    combine,
    finish_stats,
    float_leaves,
    moments,
)

__all__ = [
    "ACT_STATS",
    "PER",
    "STATS",
    "activation_stats",
    "flatten_stats",
    "global_norm",
    "leaf_stats",
    "saturation_bound",
    "tree_stats",
    "update_ratio",
    "update_ratio_from_norms",
]


PER = ("leaf", "layer", "global")


STATS = ("norm", "rms", "mean", "std", "min", "max", "max_abs", "zero_frac", "nonfinite")


ACT_STATS = (
    "mean",
    "std",
    "max_abs",
    "zero_frac",
    "dead_frac",
    "saturation_frac",
    "min",
    "max",
    "nonfinite",
)

# The nonlinearities whose saturation `activation_stats` and `saturation_bound` know.
SATURATING = ("tanh", "sigmoid")


def check_stats(stats: Iterable[str], known: Sequence[str] = STATS) -> tuple[str, ...]:
    stats = (stats,) if isinstance(stats, str) else tuple(stats)
    unknown = [s for s in stats if s not in known]
    if unknown or not stats:
        raise ValueError(f"unknown statistics {unknown}; choose from {list(known)}")
    return stats


def leaf_stats(x: jax.Array, stats: Iterable[str] = STATS) -> dict[str, jax.Array]:
    """Statistics of one array (see the module docstring for their definitions).

    Example:
      >>> out = leaf_stats(jnp.array([3.0, 4.0, 0.0, jnp.nan]), ["norm", "zero_frac", "nonfinite"])
      >>> {k: float(v) for k, v in out.items()}
      {'norm': 5.0, 'zero_frac': 0.25, 'nonfinite': 1.0}
    """
    stats = check_stats(stats)
    need = set().union(*(NEEDS[s] for s in stats))
    return finish_stats(moments(jnp.asarray(x), need), stats, float(math.prod(jnp.shape(x))))


def tree_stats(
    tree: Any,
    stats: Iterable[str] = STATS,
    *,
    per: str = "leaf",
    prefix: str = "",
    with_global_norm: bool = False,
    masked: bool = True,
) -> dict[str, jax.Array]:
    """Statistics of every floating-point leaf (``per="leaf"``), of every layer
    (``per="layer"``: the leaves of one module combined, e.g. kernel and bias of ``Dense_0``),
    or of the whole tree (``per="global"``: keys ``<prefix>/global_<stat>``).

    Args:
      tree: Any pytree of arrays.
      stats: Which statistics (default: all of `STATS`); only these are computed.
      per: ``"leaf"``, ``"layer"`` or ``"global"``.
      prefix: Prepended to every key with a ``/`` (e.g. ``"grads"``).
      with_global_norm: Also give ``<prefix>/global_norm``, the L2 norm of the whole tree, derived
        from the per-leaf norms (no further pass; needs ``"norm"`` in ``stats``).
      masked: With False, no masked route for leaves with NaN/inf elements (nor its
        `lax.cond`): such a leaf's sums and norm are then non-finite and its ``nonfinite``
        is not counted. `jaxobs.observe` uses it for norm-only sets, where the cond costs
        more than the reductions on XLA:CPU.

    Returns:
      ``{"<prefix>/<path>/<stat>": float32 scalar}``, a flat dict.

    Example:
      >>> g = {"Dense_0": {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)}}
      >>> out = tree_stats(g, ["norm"], per="layer", prefix="grads")
      >>> {k: float(v) for k, v in out.items()}
      {'grads/Dense_0/norm': 2.0}
    """
    stats = check_stats(stats)
    if per not in PER:
        raise ValueError(f"per must be one of {PER}, got {per!r}")
    need = set().union(*(NEEDS[s] for s in stats))
    leaves = float_leaves(tree)
    head = f"{prefix}/" if prefix else ""
    groups: dict[str, list[jax.Array]] = {}
    for path, leaf in leaves:
        name = path if per == "leaf" else group_by_layer(path) if per == "layer" else ""
        groups.setdefault(name, []).append(leaf)
    out: dict[str, jax.Array] = {}
    parts: list[dict[str, jax.Array]] = []
    for name, members in groups.items():
        mine = [moments(leaf, need, masked=masked) for leaf in members]
        parts += mine
        combined = mine[0] if len(members) == 1 else combine(mine)
        size = float(sum(math.prod(leaf.shape) for leaf in members))
        for s, v in finish_stats(combined, stats, size).items():
            out[_stat_key(head, per, name, s)] = v
    if with_global_norm and per != "global" and "norm" in stats and parts:
        keep = ("count", "nonfinite", "norm")
        out[f"{head}global_norm"] = combine([{k: p[k] for k in keep} for p in parts])["norm"]
    return out


def _stat_key(head: str, per: str, name: str, stat: str) -> str:
    """A `tree_stats` key: ``<head>global_<stat>`` for the whole tree, else
    ``<head><name>/<stat>``, or ``<head><stat>`` for a bare array (its path is empty)."""
    if per == "global":
        return f"{head}global_{stat}"
    return f"{head}{name}/{stat}" if name else f"{head}{stat}"


def global_norm(tree: Any) -> jax.Array:
    """L2 norm of all floating-point leaves together (float32 accumulation).

    Unlike `tree_stats`, a non-finite element makes the result non-finite: this is the
    number to compare with a clipping threshold.
    """
    leaves = float_leaves(tree)
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
    # (a bare array's norm is keyed "norm": its ratio is "<prefix>/update_ratio")
    return {f"{head}{k[: -len('norm')]}update_ratio": u[k] / (p[k] + eps) for k in u}


def update_ratio_from_norms(
    update_norms: Mapping[str, Any],
    param_norms: Mapping[str, Any],
    *,
    prefix: str = "",
    eps: float = 1e-12,
) -> dict[str, jax.Array]:
    """``||update|| / ||param||`` per layer from per-leaf L2 norms already computed (no
    second pass over the trees): what `update_ratio` gives with ``per="layer"``.

    Args:
      update_norms: ``{leaf path: norm of its update}``.
      param_norms: ``{leaf path: norm of the parameter}``, for at least the same paths.
      prefix: Prepended to every key with a ``/``.
      eps: Added to the parameter norm.

    Returns:
      ``{"<prefix>/<layer>/update_ratio": ratio}``.
    """
    missing = sorted(set(update_norms) - set(param_norms))
    if missing:
        raise ValueError(f"update_ratio_from_norms: no parameter norm for {missing[:5]}")
    u = layer_norms(update_norms.items(), sqrt=jnp.sqrt)
    p = layer_norms(((path, param_norms[path]) for path in update_norms), sqrt=jnp.sqrt)
    head = f"{prefix}/" if prefix else ""
    return {f"{head}{layer}/update_ratio": u[layer] / (p[layer] + eps) for layer in u}


def saturation_bound(kind: str, threshold: float) -> float:
    """The ``|z|`` above which ``kind(z)`` is saturated at ``threshold``: for ``"tanh"``,
    ``|tanh(z)| > threshold`` exactly when ``|z| > atanh(threshold)``; for ``"sigmoid"``,
    ``sigmoid(z) > threshold`` or ``< 1 - threshold`` exactly when
    ``|z| > log(threshold / (1 - threshold))``.

    Args:
      kind: ``"tanh"`` or ``"sigmoid"``.
      threshold: In (0.5, 1): how close to its bounds the output must be.

    Raises:
      ValueError: An unknown ``kind``, or a ``threshold`` outside (0.5, 1).

    Example:
      >>> round(saturation_bound("tanh", 0.97), 4)
      2.0923
    """
    if kind not in SATURATING:
        raise ValueError(f"saturation must be one of {SATURATING}, got {kind!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise ValueError(f"saturation threshold must be a number in (0.5, 1), got {threshold!r}")
    if not 0.5 < threshold < 1:
        raise ValueError(f"saturation threshold must be in (0.5, 1), got {threshold!r}")
    if kind == "tanh":
        return math.atanh(threshold)
    return math.log(threshold / (1.0 - threshold))


def activation_stats(
    x: jax.Array,
    stats: Iterable[str] = ACT_STATS,
    *,
    unit_axis: int = -1,
    saturation: str | float | None = None,
) -> dict[str, jax.Array]:
    """Statistics of one activation: moments plus per-unit dead and saturation fractions.

    A unit is one index of ``unit_axis`` (the features of a Dense layer, the channels of a
    convolution); every other axis is batch (and space). A unit is *dead for this batch* when
    its value is <= 0 for every example and position: for the output of a ReLU that means zero
    everywhere, and for a layer's pre-activation output (what flax's ``Dense`` and ``Conv``
    return, before the ReLU applied outside them) it means a ReLU after it would be dead.

    Like `leaf_stats`, ``mean``, ``std``, ``min``, ``max`` and ``max_abs`` describe the
    finite elements, and ``nonfinite`` counts the others: a NaN inside an activation shows
    there, not as a silently smaller mean.

    Args:
      x: The activation.
      stats: From `ACT_STATS`: ``mean``, ``std``, ``min``, ``max``, ``max_abs``,
        ``zero_frac`` (fraction of zero elements), ``nonfinite`` (number of NaN or infinite
        elements), ``dead_frac`` (fraction of units dead for this batch, as above),
        ``saturation_frac`` (fraction of elements saturated; needs ``saturation``).
      unit_axis: The axis of units.
      saturation: What saturated means, to compute ``saturation_frac``: ``"tanh"``
        (``x`` is a tanh's output: ``|x| > 0.99``), ``"sigmoid"`` (a sigmoid's output:
        ``x < 0.01`` or ``x > 0.99``), or a number ``c`` (``x`` is the input of the
        nonlinearity, a pre-activation: ``|x| > c``; see `saturation_bound`). None skips it.
    """
    stats = check_stats(stats, ACT_STATS)
    x = jnp.asarray(x)
    x32 = x.astype(jnp.float32)
    base = [s for s in stats if s in STATS]
    out = leaf_stats(x32, base) if base else {}
    if "dead_frac" in stats:
        axis = unit_axis % x.ndim
        alive = jnp.any(x32 > 0, axis=tuple(a for a in range(x.ndim) if a != axis))
        out["dead_frac"] = jnp.sum(~alive).astype(jnp.float32) / jnp.float32(alive.size)
    if "saturation_frac" in stats and saturation is not None:
        if saturation == "tanh":
            sat = jnp.abs(x32) > 0.99
        elif saturation == "sigmoid":
            sat = (x32 < 0.01) | (x32 > 0.99)
        elif isinstance(saturation, (int, float)) and not isinstance(saturation, bool):
            sat = jnp.abs(x32) > jnp.float32(saturation)
        else:
            raise ValueError(
                f"saturation must be 'tanh', 'sigmoid' or a bound on |x|, got {saturation!r}"
            )
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
