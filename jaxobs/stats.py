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

from jaxobs._src.device.histogram import HIST_HEAD, histogram, tree_histograms
from jaxobs._src.device.paths import group_by_layer, path_str
from jaxobs._src.device.stats import (
    ACT_STATS,
    STATS,
    activation_stats,
    flatten_stats,
    global_norm,
    leaf_stats,
    saturation_bound,
    tree_stats,
    update_ratio,
)
from jaxobs._src.engine.packing import histogram_record

__all__ = [
    "ACT_STATS",
    "HIST_HEAD",
    "STATS",
    "activation_stats",
    "flatten_stats",
    "global_norm",
    "group_by_layer",
    "histogram",
    "histogram_record",
    "leaf_stats",
    "path_str",
    "saturation_bound",
    "tree_histograms",
    "tree_stats",
    "update_ratio",
]
