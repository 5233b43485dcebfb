"""Comparing runs: the config keys that differ, last/best values of chosen metrics, the
values around a step, and one overview row per run directory (for `jaxobs list`)."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from jaxobs._src.analysis.summary import MetricSummary, direction, summarize
from jaxobs._src.device.keys import flatten_mapping
from jaxobs._src.formats.rundir import RunRecord
from jaxobs._src.formats.trainlog import TrainLog

__all__ = [
    "MISSING",
    "RunOverview",
    "config_diff",
    "groups_of",
    "main_metrics",
    "metric_table",
    "overview",
    "shared_metrics",
    "window",
]

_STAT_PREFIXES = ("grads/", "params/", "updates/", "acts/")
_EVAL_PREFIXES = ("val/", "eval/", "test/")


class _Missing:
    """The value of a config key a run does not have."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def _canonical(value: Any) -> str:
    """A value as canonical JSON, so that ``1`` and ``1.0`` or ``True`` and ``1`` differ."""
    try:
        return json.dumps(value, sort_keys=True, default=repr)
    except (TypeError, ValueError, RecursionError):
        return repr(value)


def config_diff(configs: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """The config keys whose values differ between runs.

    Nested keys are flattened with dots (``optimizer.lr``). A key that some runs lack
    differs too; those runs get `MISSING`.

    Args:
      configs: One config per run.

    Returns:
      ``{key: [value of each run]}``, keys in the order they first appear.
    """
    flat = [flatten_mapping(c, sep=".") for c in configs]
    keys = dict.fromkeys(k for f in flat for k in f)
    out: dict[str, list[Any]] = {}
    for key in keys:
        values = [f.get(key, MISSING) for f in flat]
        texts = {"\0missing" if v is MISSING else _canonical(v) for v in values}
        if len(texts) > 1:
            out[key] = values
    return out


def main_metrics(names: Sequence[str]) -> list[str]:
    """The metrics whose best value sums a run up: evaluation metrics (``val/``, ``eval/``,
    ``test/``) that have a `direction`, then training losses (``train/`` names that are
    better when smaller, like ``train/loss``), each group in the given order."""
    evals = [n for n in names if n.startswith(_EVAL_PREFIXES) and direction(n) is not None]
    train = [n for n in names if n.startswith("train/") and direction(n) == "min"]
    return evals + train


def shared_metrics(logs: Sequence[TrainLog], limit: int = 20) -> list[str]:
    """The metrics every log has (with values), at most ``limit``: ``train/`` and ``val/``
    first, per-layer statistics (``grads/``, ``params/``, ...) last, else in the first
    log's order."""
    if not logs:
        return []
    common = set.intersection(*({s.name for s in log.series if s.values} for log in logs))
    names = [s.name for s in logs[0].series if s.name in common]
    names = list(dict.fromkeys(names))

    def rank(name: str) -> int:
        if name.startswith(("train/", "val/")):
            return 0
        return 2 if name.startswith(_STAT_PREFIXES) else 1

    return sorted(names, key=rank)[:limit]


def metric_table(
    logs: Sequence[TrainLog], metrics: Sequence[str]
) -> dict[str, list[MetricSummary | None]]:
    """The `MetricSummary` of each metric in each log (None where a log lacks it).

    Raises:
      ValueError: A metric that no log has; the message lists some that they have.
    """
    summaries = [{s.name: s for s in summarize(log)} for log in logs]
    known = dict.fromkeys(name for per_run in summaries for name in per_run)
    out: dict[str, list[MetricSummary | None]] = {}
    for metric in metrics:
        if metric not in known:
            some = ", ".join(list(known)[:8]) + (" ..." if len(known) > 8 else "")
            raise ValueError(
                f"unknown metric {metric!r}: none of the runs logged it; they have: "
                f"{some or 'no metrics'}"
            )
        out[metric] = [per_run.get(metric) for per_run in summaries]
    return out


def window(log: TrainLog, step: int, width: int) -> dict[str, list[tuple[int, float]]]:
    """Every series' ``(step, value)`` pairs at steps within ``step ± width``, in order.

    Series with no value in the window are left out.

    Raises:
      ValueError: ``width`` is negative.
    """
    if width < 0:
        raise ValueError(f"the window must be 0 or more steps, got {width}")
    out: dict[str, list[tuple[int, float]]] = {}
    for series in log.series:
        pairs = [
            (s, v)
            for s, v in zip(log.steps_of(series), series.values, strict=True)
            if abs(s - step) <= width
        ]
        if pairs:
            out.setdefault(series.name, []).extend(pairs)
    return out


def groups_of(group_names: Sequence[str]) -> dict[str, list[int]]:
    """``{group: [indices of its runs]}`` in order of first appearance, or ``{}`` when no
    run has a group (runs without one are under ``""``)."""
    if not any(group_names):
        return {}
    out: dict[str, list[int]] = {}
    for i, name in enumerate(group_names):
        out.setdefault(name, []).append(i)
    return out


@dataclasses.dataclass(frozen=True)
class RunOverview:
    """One run directory in a few fields (a row of `jaxobs list`).

    Attributes:
      path: The run directory.
      project, run_id, name, group: From its metadata.
      status: ``finished``, ``failed``, ``interrupted``, ``terminated`` or ``incomplete``.
      last_step: The largest step of any metric, or None.
      duration_s: From the ``run_end`` record, else the time from the first record to the
        last; None when the records carry no times.
      start_ns: The ``timestamp_ns`` of the ``run_start`` record (0 if absent).
      start_time: The start time the environment snapshot recorded (ISO 8601), or "".
      config: The run's config.
      best: The best value of each of its `main_metrics`.
    """

    path: str
    project: str
    run_id: str
    name: str
    group: str
    status: str
    last_step: int | None
    duration_s: float | None
    start_ns: int
    start_time: str
    config: dict[str, Any]
    best: dict[str, MetricSummary]


def overview(record: RunRecord) -> RunOverview:
    """The `RunOverview` of a run directory read back by `read_run`."""
    log = record.log.to_trainlog()
    summaries = {s.name: s for s in summarize(log)}
    best = {
        name: summaries[name]
        for name in main_metrics(list(summaries))
        if summaries[name].best is not None
    }
    times = [r["timestamp_ns"] for r in record.events if type(r.get("timestamp_ns")) is int]
    duration = record.end.get("duration_s") if record.end else None
    if not isinstance(duration, (int, float)) or isinstance(duration, bool):
        duration = (times[-1] - times[0]) / 1e9 if len(times) > 1 else None
    elif not math.isfinite(duration):
        duration = None
    start = record.events[0].get("timestamp_ns") if record.events else None
    info = record.info
    return RunOverview(
        path=str(record.dir),
        project=info.project,
        run_id=info.run_id,
        name=info.name,
        group=info.group,
        status=record.status,
        last_step=record.last_step,
        duration_s=None if duration is None else float(duration),
        start_ns=start if type(start) is int else 0,
        start_time=str(record.env.get("start_time", "")),
        config=dict(info.config),
        best=best,
    )
