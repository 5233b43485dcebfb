"""Key-path naming: the one rule that turns a pytree path into a metric key and
a key into its layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax


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


def group_by_layer(path: str) -> str:
    """The layer a leaf belongs to: its path without the last part (``Dense_0/kernel`` ->
    ``Dense_0``); a top-level leaf is its own layer."""
    return path.rsplit("/", 1)[0] if "/" in path else path
