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
statistics describe its finite part (NaN when it has no finite element), and other leaves
are never affected. bf16 and f16 leaves are accumulated in float32; integer, boolean,
complex and empty leaves are skipped. Choosing a subset
of statistics computes only that subset. The non-finite count and the finite masks are
computed only when a leaf's sums are not finite (behind `lax.cond`), so healthy steps pay
for plain reductions only.
"""

from __future__ import annotations

import functools
import math
import operator
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
    "histogram",
    "leaf_stats",
    "path_str",
    "tree_histograms",
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
        if not hasattr(leaf, "dtype") or not jnp.issubdtype(leaf.dtype, jnp.floating):
            continue  # integer, boolean and complex leaves are skipped
        if math.prod(leaf.shape) == 0:
            continue
        out.append((path_str(path), leaf))
    return out


def _moments(x: jax.Array, need: set[str]) -> dict[str, jax.Array]:
    """Combinable reductions of one leaf, in float32.

    Returns count (finite elements), nonfinite, and as needed: sum, m2 (sum of squared
    deviations from the leaf's mean, in units of ``scale**2``, for std), scale, norm, min,
    max, zeros.

    Healthy leaves (every sum finite) take one pass of sibling reductions; the variance uses
    a shift by the mean of a small strided sample, so a leaf like ``100 + 0.01 * noise``
    keeps its digits.
    A leaf with NaN/inf elements, or whose squares overflow float32, takes a masked and scaled
    two-pass route instead, behind `lax.cond`, so healthy steps never pay for it.
    """
    x = x.astype(jnp.float32) if x.dtype != jnp.float32 else x
    n = jnp.float32(x.size)
    want_sq = bool(need & {"sumsq", "m2"})
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
        if want_sq and "sumsq" in need:
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
        checks = [jnp.sum(x)]

    def rare(_):
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

    def healthy_(_):
        return {**plain, "nonfinite": jnp.float32(0)}

    healthy = jnp.all(jnp.isfinite(jnp.stack(checks)))
    if isinstance(healthy, jax.core.Tracer):
        out = lax.cond(healthy, healthy_, rare, None)
    else:  # called eagerly: choose in Python, so nothing is compiled per call
        out = healthy_(None) if bool(healthy) else rare(None)
    out["count"] = n - out["nonfinite"]
    return out


_NEEDS = {
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


def _finish(m: Mapping[str, jax.Array], stats: Sequence[str], size: float) -> dict[str, jax.Array]:
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


def _combine(parts: Sequence[Mapping[str, jax.Array]]) -> dict[str, jax.Array]:
    """Moments of several leaves as one (Chan et al.'s parallel variance for m2)."""
    count = sum(p["count"] for p in parts)
    out = {"count": count, "nonfinite": sum(p["nonfinite"] for p in parts)}
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
        combined = _combine([_moments(leaf, need) for leaf in members])
        size = float(sum(math.prod(leaf.shape) for leaf in members))
        for s, v in _finish(combined, stats, size).items():
            out[f"{head}{layer}/{s}"] = v
    return out


HIST_HEAD = 4  # a histogram vector starts with min, max, sum, sum of squares


def histogram(x: jax.Array, bins: int = 64) -> jax.Array:
    """A histogram of the finite elements of ``x`` in ``bins`` equal bins spanning their
    range, as one float32 vector: ``[min, max, sum, sum_squares, count_0, ..., count_{bins-1}]``.

    Only the vector (``bins + 4`` numbers) leaves the device. The bins are those of
    ``numpy.histogram(x, bins, range=(min, max))``; when every finite element is equal, the
    range is widened by 0.5 on each side, as NumPy does (by one float32 step where 0.5 is
    below float32's resolution). Counts are exact up to 2**24 per bin.
    Without finite elements, min and max are NaN and every count is zero.

    Example:
      >>> v = histogram(jnp.array([0.0, 1.0, 1.0, 3.0]), bins=3)
      >>> [float(c) for c in v[4:]]
      [1.0, 2.0, 1.0]
    """
    try:
        bins = operator.index(bins) if not isinstance(bins, bool) else 0
    except TypeError:
        bins = 0
    if bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    if math.prod(jnp.shape(x)) == 0:
        raise ValueError(f"histogram of an empty array (shape {jnp.shape(x)})")
    return _histogram(x, bins)


@functools.partial(jax.jit, static_argnums=1)  # also eagerly: XLA's fused division is exact
def _histogram(x: jax.Array, bins: int) -> jax.Array:
    x = jnp.ravel(x).astype(jnp.float32)
    finite = jnp.isfinite(x)
    lo = jnp.min(jnp.where(finite, x, jnp.inf))
    hi = jnp.max(jnp.where(finite, x, -jnp.inf))
    any_finite = jnp.any(finite)
    same = lo == hi
    # NumPy widens an empty range by 0.5 each side; beyond 2**23 that is below float32's
    # resolution, so the next representable values are used there.
    lo_w = jnp.minimum(lo - 0.5, jnp.nextafter(lo, -jnp.inf))
    hi_w = jnp.maximum(hi + 0.5, jnp.nextafter(hi, jnp.inf))
    lo, hi = jnp.where(same, lo_w, lo), jnp.where(same, hi_w, hi)
    # The range of finite float32 data can exceed float32's maximum: then bin x / 4 (exact).
    wide = ~jnp.isfinite(hi - lo)
    shrink = jnp.where(wide, 0.25, 1.0)
    lo_s, hi_s = lo * shrink, hi * shrink
    span = jnp.where(any_finite, hi_s - lo_s, 1.0)
    # (scaled by 2**-64 and back: no step of the wide case is a denormal, which XLA flushes)
    index = jnp.where(
        wide,
        jnp.floor(((x * shrink - lo_s) * 2.0**-64) * (bins * 2.0**64 / span)),
        jnp.floor((x - lo) / span * bins),
    )
    index = jnp.where(same, bins // 2, index)  # NumPy's bin for a widened single value
    index = jnp.clip(jnp.where(finite, index, 0), 0, bins - 1).astype(jnp.int32)
    counts = jnp.zeros((bins,), jnp.float32).at[index].add(finite.astype(jnp.float32))
    xf = jnp.where(finite, x, 0.0)
    nan = jnp.float32(jnp.nan)
    head = jnp.stack(
        [
            jnp.where(any_finite, lo, nan),
            jnp.where(any_finite, hi, nan),
            jnp.sum(xf),
            jnp.sum(xf * xf),
        ]
    )
    return jnp.concatenate([head, counts])


def tree_histograms(tree: Any, bins: int = 64, *, prefix: str = "") -> dict[str, jax.Array]:
    """`histogram` of every floating-point leaf, keyed ``<prefix>/<path>``."""
    head = f"{prefix}/" if prefix else ""
    return {f"{head}{path}": histogram(leaf, bins) for path, leaf in _float_leaves(tree)}


def histogram_record(vector: Any) -> dict[str, Any] | None:
    """The host form of a `histogram` vector (a NumPy array): ``{"edges", "counts", "sum",
    "sum_squares"}`` as `jaxobs.Run.log_histograms` takes it, or None without finite data."""
    import numpy as np

    vector = np.asarray(vector, dtype=np.float64)
    lo, hi, total, squares = vector[:HIST_HEAD]
    counts = vector[HIST_HEAD:]
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return None
    return {
        "edges": np.linspace(lo, hi, counts.size + 1),
        "counts": counts,
        "sum": float(total),
        "sum_squares": float(squares),
    }


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
    its value is <= 0 for every example and position: for the output of a ReLU that means zero
    everywhere, and for a layer's pre-activation output (what flax's ``Dense`` and ``Conv``
    return, before the ReLU applied outside them) it means a ReLU after it would be dead.

    Args:
      x: The activation.
      stats: From `ACT_STATS`: ``mean``, ``std``, ``max_abs``, ``zero_frac`` (fraction of zero
        elements), ``dead_frac`` (fraction of units dead for this batch, as above),
        ``saturation_frac`` (fraction of elements saturated; needs ``saturation``).
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
        alive = jnp.any(x32 > 0, axis=tuple(a for a in range(x.ndim) if a != axis))
        out["dead_frac"] = jnp.sum(~alive).astype(jnp.float32) / jnp.float32(alive.size)
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
