"""Packing one step's statistics into one vector for one transfer, and unpacking it on
the host.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxobs._src.device.histogram import HIST_HEAD


@jax.tree_util.register_pytree_node_class
class Packed:
    """One step's statistics: a float32 vector and the step, and the histograms as a second
    vector; the keys ride along as static data, so they come back with the jit's outputs."""

    def __init__(
        self,
        step: Any,
        valid: Any,
        vector: Any,
        hvalid: Any,
        hvector: Any,
        keys: tuple[str, ...],
        n_always: int = 0,
        hnames: tuple[str, ...] = (),
    ):
        self.step, self.valid, self.vector = step, valid, vector
        self.hvalid, self.hvector = hvalid, hvector
        self.keys, self.n_always, self.hnames = keys, n_always, hnames

    @property
    def arrays(self) -> tuple[Any, Any, Any, Any, Any]:
        return (self.step, self.valid, self.vector, self.hvalid, self.hvector)

    def tree_flatten(self):
        return self.arrays, (self.keys, self.n_always, self.hnames)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children, *aux)


def pack(
    step: Any,
    valid: Any,
    values: Mapping[str, Any],
    always: Iterable[str] = (),
    hists: Mapping[str, Any] | None = None,
    hvalid: Any = False,
) -> Packed:
    """Pack values into one vector; the ``always`` keys come first and are delivered at every
    step, the others (statistics) only where ``valid`` (every=N). Histogram vectors are
    concatenated into a second vector, delivered where ``hvalid``."""
    always = set(always)
    first = [k for k in values if k in always]
    keys = (*first, *(k for k in values if k not in always))
    vector = (
        jnp.stack([jnp.asarray(values[k], jnp.float32).reshape(()) for k in keys])
        if keys
        else jnp.zeros((0,), jnp.float32)
    )
    hists = dict(hists or {})
    hvector = (
        jnp.concatenate([jnp.asarray(v, jnp.float32) for v in hists.values()])
        if hists
        else jnp.zeros((0,), jnp.float32)
    )
    return Packed(
        jnp.asarray(step, jnp.int32),
        jnp.asarray(valid),
        vector,
        jnp.asarray(hvalid),
        hvector,
        keys,
        len(first),
        tuple(hists),
    )


def unpack(
    step: Any,
    valid: Any,
    vector: Any,
    hvalid: Any,
    hvector: Any,
    keys: Sequence[str],
    n_always: int,
    hnames: Sequence[str] = (),
) -> tuple[int, dict[str, float], dict[str, Any]]:
    """(step, values to log, histograms to log): every value at a valid step, else the
    always-delivered ones; the histograms at a histogram step."""
    vector = np.asarray(vector)
    count = len(keys) if bool(valid) else n_always
    values = {k: float(v) for k, v in zip(keys[:count], vector[:count], strict=True)}
    hists: dict[str, Any] = {}
    if hnames and bool(hvalid):
        for name, part in zip(hnames, np.split(np.asarray(hvector), len(hnames)), strict=True):
            record = histogram_record(part)
            if record is not None:  # a leaf without finite values has no histogram
                hists[name] = record
    return int(step), values, hists


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
