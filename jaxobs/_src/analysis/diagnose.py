"""Crash forensics, offline and NumPy only: per-layer norms from a dump's per-leaf norms,
the first layer to diverge, and the ranking of layers by their peak.

Keys and layers follow the one naming rule of `jaxobs._src.device.keys`: a per-leaf statistic
is ``<group>/<leaf path>/<stat>`` and a leaf's layer is its path without the last part.

Example:
    >>> import numpy as np
    >>> steps = np.arange(10)
    >>> series = {
    ...     "grads/Dense_0/kernel/norm": np.ones(10),
    ...     "grads/Dense_1/kernel/norm": np.r_[np.ones(6), 50.0, np.inf, np.nan, np.nan],
    ... }
    >>> hit = first_diverged(steps, series)
    >>> hit["layer"], hit["step"], hit["ratio"]
    ('Dense_1', 6, 50.0)
    >>> rank_by_peak(layer_norms(series))
    ['Dense_1', 'Dense_0']
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxobs._src.device.keys import layer_of, split_stat_key
from jaxobs._src.formats.crash_dump import CrashDump

__all__ = [
    "diagnosis",
    "first_diverged",
    "layer_norms",
    "layer_stat",
    "rank_by_peak",
    "recorded_mask",
]


def recorded_mask(
    name: str, series: Mapping[str, np.ndarray], present: Mapping[str, np.ndarray] | None
) -> np.ndarray:
    """Where ``series[name]`` was recorded: ``present[name]``, else where it is not NaN."""
    if present is not None and name in present:
        return np.asarray(present[name], dtype=bool)
    return ~np.isnan(series[name])


def _l2(stack: np.ndarray) -> np.ndarray:
    """sqrt(sum of squares) over axis 0 of finite values, scaled so that it cannot
    overflow."""
    scale = np.max(np.abs(stack), axis=0)
    safe = np.where(scale > 0, scale, 1.0)
    return safe * np.sqrt(np.sum(np.square(stack / safe), axis=0))


def layer_norms(
    series: Mapping[str, Any],
    *,
    group: str = "grads",
    present: Mapping[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Per layer, the L2 norm of its leaves' norms: ``sqrt(sum(norm_leaf ** 2))``.

    Leaves are read from keys ``<group>/<leaf path>/norm`` and ``<group>/<leaf
    path>/nonfinite``; a leaf's layer is its path without the last component
    (``Conv_0/kernel`` -> ``Conv_0``; a one-part path is its own layer).

    At a step where any leaf of a layer has ``nonfinite > 0`` or a recorded non-finite norm,
    the layer's value is ``+inf`` (the leaf norms cover only finite elements, so they would
    hide the NaN). Where none of its leaves was recorded, the value is NaN.

    Args:
      series: Values per key, all of the same length, NaN where not recorded (as in
        `CrashDump.series`). Other keys are ignored.
      group: ``grads``, ``params`` or ``updates``.
      present: Optional recorded-masks per key (as in `CrashDump.present`). Without them a
        NaN norm counts as not recorded, unless the leaf's ``nonfinite`` count was recorded
        at that step.

    Returns:
      ``{layer: float64 array}``, layers in the order they first appear in ``series``.

    Example:
      >>> norms = layer_norms({"grads/D/kernel/norm": [3.0], "grads/D/bias/norm": [4.0]})
      >>> norms["D"].tolist()
      [5.0]
    """
    arrays = {k: np.asarray(v, dtype=np.float64).reshape(-1) for k, v in series.items()}
    leaves: dict[str, dict[str, dict[str, str]]] = {}  # layer -> leaf -> stat -> key
    for name in arrays:
        split = split_stat_key(name, group)
        if split is None or split[1] not in ("norm", "nonfinite"):
            continue
        leaf, stat = split
        leaves.setdefault(layer_of(leaf), {}).setdefault(leaf, {})[stat] = name
    out: dict[str, np.ndarray] = {}
    with np.errstate(invalid="ignore"):
        for layer, members in leaves.items():
            n = len(arrays[next(iter(next(iter(members.values())).values()))])
            recorded = np.zeros(n, dtype=bool)
            bad = np.zeros(n, dtype=bool)
            finite_norms = []
            for stats in members.values():
                leaf_recorded = np.zeros(n, dtype=bool)
                for key in stats.values():
                    if len(arrays[key]) != n:
                        raise ValueError(
                            f"{key}: {len(arrays[key])} values, but other series of layer "
                            f"{layer!r} have {n}"
                        )
                    leaf_recorded |= recorded_mask(key, arrays, present)
                recorded |= leaf_recorded
                if "nonfinite" in stats:
                    bad |= arrays[stats["nonfinite"]] > 0
                if "norm" in stats:
                    norm = arrays[stats["norm"]]
                    ok = np.isfinite(norm)
                    bad |= leaf_recorded & ~ok
                    finite_norms.append(np.where(ok, norm, 0.0))
            value = _l2(np.stack(finite_norms)) if finite_norms else np.full(n, np.nan)
            out[layer] = np.where(bad, np.inf, np.where(recorded, value, np.nan))
    return out


def first_diverged(
    steps: Any,
    series: Mapping[str, Any],
    *,
    groups: Sequence[str] = ("grads", "params"),
    factor: float = 10.0,
    baseline_steps: int = 8,
    present: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The first layer whose norm became non-finite or grew past ``factor`` × its baseline.

    For each group and each layer of `layer_norms`, the layer diverges at the earliest
    recorded step from which every later value is non-finite or greater than ``factor``
    times its baseline (the median of the finite values of the ``baseline_steps`` recorded
    steps just before that step), or at its first non-finite value if that comes earlier.
    Finite growth that does not last until the end of the recording (early training, a
    transient spike) is not a divergence. The earliest step wins; at the same step
    the larger ratio (non-finite counts as infinite); then the earlier group in ``groups``
    and the layer that appears first in ``series`` (forward order).

    Args:
      steps: The step of each position of the arrays in ``series``.
      series: Values per key, NaN where not recorded (e.g. `CrashDump.series`).
      groups: Which per-leaf statistic groups to look at, in order of preference.
      factor: How many times its baseline a layer's norm must exceed.
      baseline_steps: How many of a layer's first recorded steps form its baseline.
      present: Optional recorded-masks per key (see `layer_norms`).

    Returns:
      ``{"layer", "group", "step", "ratio", "baseline", "nonfinite"}`` (``ratio`` is inf and
      ``nonfinite`` True for a non-finite layer; ``baseline`` is NaN when the layer had no
      finite value in its baseline window), or None when no layer diverged.

    Raises:
      ValueError: ``factor`` or ``baseline_steps`` is not positive, or an array's length
        differs from ``steps``.
    """
    if not factor > 0:
        raise ValueError(f"factor must be positive, got {factor!r}")
    if baseline_steps < 1:
        raise ValueError(f"baseline_steps must be at least 1, got {baseline_steps!r}")
    steps_arr = np.asarray(steps).reshape(-1)
    best: tuple[tuple[int, float, int], dict[str, Any]] | None = None
    order = 0
    for group in groups:
        norms = layer_norms(series, group=group, present=present)
        for layer, values in norms.items():
            order += 1
            if len(values) != len(steps_arr):
                raise ValueError(
                    f"series of {group}/{layer}: {len(values)} values, but {len(steps_arr)} steps"
                )
            hit = _divergence(values, factor, baseline_steps)
            if hit is None:
                continue
            index, ratio, baseline = hit
            rank = (int(steps_arr[index]), -ratio, order)
            if best is None or rank < best[0]:
                best = (
                    rank,
                    {
                        "layer": layer,
                        "group": group,
                        "step": int(steps_arr[index]),
                        "ratio": ratio,
                        "baseline": baseline,
                        "nonfinite": math.isinf(ratio) and math.isinf(values[index]),
                    },
                )
    return None if best is None else best[1]


def _divergence(
    values: np.ndarray, factor: float, baseline_steps: int
) -> tuple[int, float, float] | None:
    """(index, ratio, baseline) where one layer's values diverged for good, or None.

    The onset is the first non-finite value, or the earliest recorded step from which
    *every* later recorded value is non-finite or above ``factor`` times the baseline (the
    median of the finite values of the ``baseline_steps`` recorded steps just before it),
    whichever comes first. A finite growth that does not last to the end of the recording
    (early training) is not a divergence.
    """
    recorded = np.flatnonzero(~np.isnan(values))
    if recorded.size == 0:
        return None
    v = values[recorded]
    # suffix[k]: the smallest value from position k to the end (inf counts as inf).
    suffix = np.minimum.accumulate(v[::-1])[::-1]
    first_inf = np.flatnonzero(np.isinf(v))
    for pos in range(len(v)):
        if first_inf.size and pos == first_inf[0]:  # a non-finite value counts even if alone
            suffix[pos] = math.inf
        prior = v[max(0, pos - baseline_steps) : pos]
        prior = prior[np.isfinite(prior)]
        baseline = float(np.median(prior)) if prior.size else math.nan
        if math.isinf(suffix[pos]) or (baseline > 0 and suffix[pos] > factor * baseline):
            value = float(v[pos])
            ratio = math.inf if math.isinf(value) else value / baseline
            return int(recorded[pos]), ratio, baseline
    return None


def layer_stat(series: Mapping[str, np.ndarray], group: str, stat: str) -> dict[str, np.ndarray]:
    """Per-layer statistics that are recorded per layer: ``<group>/<layer>/<stat>``."""
    out = {}
    for name, values in series.items():
        split = split_stat_key(name, group)
        if split is not None and split[1] == stat:
            out[split[0]] = np.asarray(values, dtype=np.float64)
    return out


def rank_by_peak(norms: Mapping[str, Any], window: slice = slice(None)) -> list[str]:
    """Layer names, largest first: those with an infinite value in ``window`` first, then by
    their largest finite value there (a layer with none comes last). Ties keep the order of
    ``norms``.

    Args:
      norms: Per-layer values, as from `layer_norms` (inf: non-finite, NaN: not recorded).
      window: Which positions to look at (default: all).
    """

    def peak(item: tuple[str, Any]) -> tuple[bool, float]:
        values = np.asarray(item[1], dtype=np.float64)[window]
        finite = values[np.isfinite(values)]
        return bool(np.isinf(values).any()), float(finite.max()) if finite.size else -math.inf

    return [name for name, _ in sorted(norms.items(), key=peak, reverse=True)]


def diagnosis(dump: CrashDump) -> tuple[dict[str, Any] | None, bool]:
    """The dump's first-diverged record, else one computed from its recorder; and whether it
    was computed here."""
    if dump.first_diverged is not None:
        return dump.first_diverged, False
    return first_diverged(dump.steps, dump.series, present=dump.present), True
