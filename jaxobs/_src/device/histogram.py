"""Histograms computed on the device: only the bins leave it."""

from __future__ import annotations

import functools
import math
import operator
from typing import Any

import jax
import jax.numpy as jnp

from jaxobs._src.device.reductions import float_leaves

HIST_HEAD = 4  # a histogram vector starts with min, max, sum, sum of squares


def histogram(x: jax.Array, bins: int = 64) -> jax.Array:
    """A histogram of the finite elements of ``x`` in ``bins`` equal bins spanning their
    range, as one float32 vector: ``[min, max, sum, sum_squares, count_0, ..., count_{bins-1}]``.

    Only the vector (``bins + 4`` numbers) leaves the device. The bins are those of
    ``numpy.histogram(x, bins, range=(min, max))``; when every finite element is equal, the
    range is widened by 0.5 on each side, as NumPy does (by one float32 step where 0.5 is
    below float32's resolution). Counts are exact up to 2**24 per bin.
    Without finite elements, min and max are NaN and every count is zero.

    Examples:
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
    return {f"{head}{path}": histogram(leaf, bins) for path, leaf in float_leaves(tree)}
