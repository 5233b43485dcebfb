"""Metric keys as strings: the one naming rule every layer shares (no JAX needed).

A statistic's key is ``<group>/<leaf path>/<stat>`` (``grads/Dense_0/kernel/norm``); the
layer of a leaf path is the path without its last part (``Dense_0/kernel`` -> ``Dense_0``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["flatten_mapping", "layer_norms", "layer_of", "split_stat_key"]


def layer_of(path: str) -> str:
    """The layer a leaf belongs to: its path without the last part (``Dense_0/kernel`` ->
    ``Dense_0``); a top-level leaf is its own layer."""
    return path.rsplit("/", 1)[0] if "/" in path else path


def split_stat_key(key: str, group: str) -> tuple[str, str] | None:
    """``("Dense_0/kernel", "norm")`` for ``grads/Dense_0/kernel/norm`` and ``group="grads"``;
    None when ``key`` is not a per-leaf statistic of ``group``."""
    head = group + "/"
    if not key.startswith(head):
        return None
    path, _, stat = key[len(head) :].rpartition("/")
    if not path or not stat:
        return None
    return path, stat


def layer_norms(leaf_norms: Iterable[tuple[str, Any]], sqrt: Any = math.sqrt) -> dict[str, Any]:
    """Per-layer L2 norms from per-leaf L2 norms: ``sqrt(sum of squares)`` over each layer's
    leaves. ``leaf_norms`` yields ``(leaf path, norm)``; the norms may be floats, NumPy or
    JAX arrays (pass ``sqrt=jnp.sqrt`` for traced values)."""
    squares: dict[str, Any] = {}
    for path, norm in leaf_norms:
        layer = layer_of(path)
        squares[layer] = squares.get(layer, 0.0) + norm * norm
    return {layer: sqrt(total) for layer, total in squares.items()}


def flatten_mapping(nested: Mapping[str, Any], prefix: str = "", sep: str = "/") -> dict[str, Any]:
    """``{"a": {"b": x}}`` -> ``{"a/b": x}``; an empty mapping is kept as a value."""
    out: dict[str, Any] = {}
    for key, value in nested.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(flatten_mapping(value, name, sep))
        else:
            out[name] = value
    return out
