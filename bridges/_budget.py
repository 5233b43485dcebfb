"""A metric budget for the tracker bridges: per-layer roll-ups once a run sends too much.

`observe` at the EXPERT level logs every statistic of every leaf: about 150 keys a step
for a small CNN, tens of thousands for a real model. W&B accepts at most 100,000 values a
minute and 100,000 metrics a project; TensorBoard takes minutes to list 12,000 tags. A
`MetricBudget` keeps a bridge under limits below those: while a run stays within it, every
record goes to the tracker as it is; from the first record that would break it, the
tracker receives, for the statistics of the groups ``params``, ``updates``, ``grads`` and
``acts``, one roll-up per layer instead of one key per leaf (`rolled_up`), plus every
statistic of the few leaves that stood out when it happened. `events.jsonl` keeps every
key whatever the budget: only what the bridges send changes.

The decision depends only on the records (their keys and their own timestamps), never on
the clock of the machine sending them, so `jaxobs sync` of a run sends the keys the live
stream sent. Once a run is rolled up it stays rolled up: the keys a tracker receives do
not change from one record to the next.

Example:
  >>> meter = MetricBudget(values_per_minute=4, top_k=0).meter()
  >>> record = {"train/loss": 0.5, "grads/Dense_0/kernel/norm": 3.0,
  ...           "grads/Dense_0/bias/norm": 4.0}
  >>> sorted(meter.send(record, step=0, time_s=0.0))  # 3 values: within the budget
  ['grads/Dense_0/bias/norm', 'grads/Dense_0/kernel/norm', 'train/loss']
  >>> meter.send(record, step=1, time_s=1.0)  # 6 values within a minute: rolled up
  {'train/loss': 0.5, 'grads/Dense_0/norm': 5.0}
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from jaxobs._src.device.keys import layer_of, split_stat_key

__all__ = ["BudgetMeter", "BudgetTrip", "MetricBudget", "rolled_up"]

GROUPS = ("params", "updates", "grads", "acts")  # the statistics a budget rolls up
WINDOW_S = 60.0  # the rate is the count of values in the last minute of records


def _max(values: list[float]) -> float:
    return math.nan if any(math.isnan(v) for v in values) else max(values)


def _min(values: list[float]) -> float:
    return math.nan if any(math.isnan(v) for v in values) else min(values)


# How a layer's statistic follows from its leaves'. The others (mean, rms, std, zero_frac,
# ...) need the leaves' sizes, which a record does not hold: a layer of several leaves
# drops them.
ROLLUPS: dict[str, Callable[[list[float]], float]] = {
    "norm": lambda values: math.sqrt(sum(v * v for v in values)),
    "max": _max,
    "max_abs": _max,
    "min": _min,
    "nonfinite": sum,
}
_RANK_BY = ("max_abs", "norm", "max")  # what makes a leaf stand out, first one present


@dataclass(frozen=True)
class MetricBudget:
    """How much a tracker bridge sends before it rolls statistics up per layer.

    Pass one to a bridge (`WandbSink(budget=...)`, `TensorBoardSink(budget=...)`); the
    default, `MetricBudget()`, stays below W&B's limits (100,000 values a minute, 100,000
    metrics a project) and below the tag counts where TensorBoard slows down. `budget=False`
    sends every key.

    Args:
      values_per_minute: The most values (all keys of all `metrics` records) the tracker
        receives within any minute of the records' own time.
      max_keys: The most distinct keys the tracker receives over the run.
      top_k: How many leaves of each group keep every statistic under their own keys once
        the run is rolled up: those with the largest ``max_abs`` (else ``norm``, else
        ``max``; non-finite first) in the record that broke the budget.

    Raises:
      ValueError: a limit that is not a positive integer, or a negative `top_k`.
    """

    values_per_minute: int = 60_000
    max_keys: int = 10_000
    top_k: int = 3

    def __post_init__(self) -> None:
        for name in ("values_per_minute", "max_keys", "top_k"):
            value = getattr(self, name)
            low = 0 if name == "top_k" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(
                    f"MetricBudget({name}={value!r}): expected an integer >= {low}"
                    + (" (use budget=False on the sink to send every key)" if low else "")
                )

    def meter(self) -> BudgetMeter:
        """A fresh `BudgetMeter` for one run (a sink makes one each time it opens a run)."""
        return BudgetMeter(self)


@dataclass(frozen=True)
class BudgetTrip:
    """When and why a run was rolled up.

    Attributes:
      step: The step of the record that broke the budget.
      time_s: Its time (seconds since the epoch).
      reason: ``"values_per_minute"`` or ``"max_keys"``.
      values_per_minute: The values of the minute up to that record, with it.
      keys: The distinct keys up to that record, with it.
      top: The leaves kept whole, as ``<group>/<leaf path>``.
    """

    step: int | None
    time_s: float
    reason: str
    values_per_minute: int
    keys: int
    top: tuple[str, ...]


class BudgetMeter:
    """A `MetricBudget` applied to one run: it counts what was sent and decides what to send.

    Feed it every `metrics` record of the run in order (`send`); it reads no clock, so the
    same records give the same answers, live or in a sync.

    Args:
      budget: The limits.

    Attributes:
      trip: None while the run is within the budget; then when and why it was rolled up.
    """

    def __init__(self, budget: MetricBudget):
        self.budget = budget
        self.trip: BudgetTrip | None = None
        self._window: deque[tuple[float, int]] = deque()  # (time, values) of the last minute
        self._in_window = 0
        self._latest = -math.inf
        self._keys: set[str] = set()
        self._top: frozenset[str] = frozenset()

    def send(
        self, metrics: Mapping[str, float], step: int | None = None, time_s: float = 0.0
    ) -> dict[str, float]:
        """What the tracker receives of one `metrics` record.

        Args:
          metrics: The record's values, ``{key: float}``.
          step: Its step (for `trip`).
          time_s: Its own time in seconds (``timestamp_ns / 1e9``).

        Returns:
          The record itself while the run is within the budget; else its roll-up
          (`rolled_up`), keeping every statistic of the `trip`'s top leaves.
        """
        if self.trip is None:
            reason = self._count(metrics, time_s)
            if reason is None or not any(_stat_key(k) for k in metrics):
                return dict(metrics)
            self._top = frozenset(outliers(metrics, self.budget.top_k))
            self.trip = BudgetTrip(
                step, time_s, reason, self._in_window, len(self._keys), tuple(sorted(self._top))
            )
        return rolled_up(metrics, keep=self._top)

    def _count(self, metrics: Mapping[str, float], time_s: float) -> str | None:
        """Count the record; the limit it breaks, if any."""
        self._window.append((time_s, len(metrics)))
        self._in_window += len(metrics)
        self._latest = max(self._latest, time_s)
        while self._window and self._window[0][0] <= self._latest - WINDOW_S:
            self._in_window -= self._window.popleft()[1]
        self._keys.update(metrics)
        if self._in_window > self.budget.values_per_minute:
            return "values_per_minute"
        if len(self._keys) > self.budget.max_keys:
            return "max_keys"
        return None


def _stat_key(key: str) -> tuple[str, str, str] | None:
    """``(group, leaf path, stat)`` of a statistic a budget may roll up, else None."""
    for group in GROUPS:
        parts = split_stat_key(key, group)
        if parts is not None:
            return group, parts[0], parts[1]
    return None


def _by_path(metrics: Mapping[str, float]) -> dict[str, dict[str, dict[str, float]]]:
    """``{group: {path: {stat: value}}}`` of the statistics of `metrics`."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for key, value in metrics.items():
        parts = _stat_key(key)
        if parts is not None:
            group, path, stat = parts
            out.setdefault(group, {}).setdefault(path, {})[stat] = value
    return out


def _layers(paths: Iterable[str]) -> tuple[set[str], dict[str, list[str]]]:
    """The paths that are already layers (the layer of another path: ``updates/<layer>/
    update_ratio`` next to per-leaf norms) and ``{layer: its leaves}`` of the others."""
    paths = list(paths)
    layers = {layer_of(p) for p in paths if layer_of(p) != p}
    members: dict[str, list[str]] = {}
    for p in paths:
        if p not in layers:
            members.setdefault(layer_of(p), []).append(p)
    return layers, members


def rolled_up(metrics: Mapping[str, float], keep: Iterable[str] = ()) -> dict[str, float]:
    """`metrics` with the statistics of ``params``, ``updates``, ``grads`` and ``acts``
    combined per layer (``grads/Dense_0/kernel/norm`` and ``grads/Dense_0/bias/norm`` ->
    ``grads/Dense_0/norm``).

    A layer's ``norm`` is the square root of the sum of its leaves' squared norms, ``max``
    and ``max_abs`` the largest, ``min`` the smallest, ``nonfinite`` the sum; statistics
    that need the leaves' sizes (``mean``, ``rms``, ``std``, ``zero_frac``, ...) are
    dropped, except for a layer of one leaf, which keeps them all. Every other key (``train/
    *``, ``val/*``, ``health/*``, ``window/*``, global norms, statistics of other taps) and
    every statistic that is already per layer is kept as it is.

    Args:
      metrics: One record, ``{key: float}``.
      keep: Leaves (``<group>/<leaf path>``) that also keep every statistic as they are.

    Returns:
      The record to send.
    """
    keep = set(keep)
    out = {k: v for k, v in metrics.items() if _stat_key(k) is None}
    for group, paths in _by_path(metrics).items():
        layers, members = _layers(paths)
        for path in layers & set(paths):  # already per layer: as it is
            out.update({f"{group}/{path}/{s}": v for s, v in paths[path].items()})
        for layer, leaves in members.items():
            if len(leaves) == 1:  # a layer of one leaf is that leaf: every statistic, exact
                rolled = dict(paths[leaves[0]])
            else:
                rolled = {}
                for stat, combine in ROLLUPS.items():
                    values = [paths[p][stat] for p in leaves if stat in paths[p]]
                    if values:
                        rolled[stat] = combine(values)
            for stat, value in rolled.items():
                out.setdefault(f"{group}/{layer}/{stat}", value)
            for p in leaves:
                if f"{group}/{p}" in keep:
                    out.update({f"{group}/{p}/{s}": v for s, v in paths[p].items()})
    return out


def outliers(metrics: Mapping[str, float], k: int) -> list[str]:
    """The `k` leaves of each group (``<group>/<leaf path>``) of `metrics` that stand out
    most: the largest ``max_abs`` (else ``norm``, else ``max``), non-finite values first,
    among the leaves that share their layer with others (a layer of one leaf is sent whole
    anyway).

    Args:
      metrics: One record, ``{key: float}``.
      k: How many leaves per group.

    Returns:
      The leaves, by group, the most outlying first.
    """
    chosen: list[str] = []
    for group, paths in sorted(_by_path(metrics).items()):
        _, members = _layers(paths)
        leaves = [p for ps in members.values() if len(ps) > 1 for p in ps]
        stat = next((s for s in _RANK_BY if any(s in paths[p] for p in leaves)), None)
        if stat is None or k == 0:
            continue
        ranked = [(paths[p][stat], p) for p in leaves if stat in paths[p]]
        ranked.sort(key=lambda vp: (math.isfinite(vp[0]), -abs(vp[0]), vp[1]))
        chosen += [f"{group}/{p}" for _, p in ranked[:k]]
    return chosen
