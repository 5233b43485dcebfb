"""Last and best values of every metric of a `TrainLog`."""

from __future__ import annotations

import dataclasses
import math
import re

from jaxobs._src.formats.trainlog import TrainLog

__all__ = ["MetricSummary", "direction", "summarize"]


_MIN_WORDS = {
    "loss",
    "error",
    "err",
    "perplexity",
    "ppl",
    "mse",
    "mae",
    "rmse",
    "nll",
    "cer",
    "wer",
    "time",
    "latency",
    "regret",
}


_MAX_WORDS = {
    "accuracy",
    "acc",
    "f1",
    "precision",
    "recall",
    "auc",
    "auroc",
    "score",
    "reward",
    "return",
    "bleu",
    "rouge",
    "iou",
    "map",
    "r2",
}


_UNITS = {"s", "ms", "us", "ns", "sec", "secs", "seconds", "pct", "percent", "frac"}


def direction(name: str) -> str | None:
    """``"min"`` or ``"max"`` when the metric's name says which is better, else None.

    The last word of the last segment decides, after unit suffixes (``_s``, ``_ms``, ``_pct``)
    and ``_rate`` are dropped: ``val/loss``, ``perf/step_time_s`` and ``eval/error_rate`` -> min,
    ``val/top1_accuracy`` -> max; ``optim/learning_rate``,
    ``train/loss_scale`` and statistics such as ``grads/.../norm`` have no direction.
    """
    words = [w for w in re.split(r"[^a-z0-9]+", name.rsplit("/", 1)[-1].lower()) if w]
    while len(words) > 1 and words[-1] in _UNITS | {"rate"}:  # step_time_s, error_rate
        words.pop()
    last = words[-1] if words else ""
    if last in _MIN_WORDS:
        return "min"
    if last in _MAX_WORDS:
        return "max"
    return None


@dataclasses.dataclass(frozen=True)
class MetricSummary:
    """One metric in a few numbers. ``best`` follows `direction`; NaN values never win."""

    name: str
    count: int
    last: float
    last_step: int
    direction: str | None
    best: float | None
    best_step: int | None
    nonfinite: int


def summarize(log: TrainLog) -> list[MetricSummary]:
    """One `MetricSummary` per series that has values, in the log's order."""
    out = []
    for series in log.series:
        if not series.values:
            continue
        steps = log.steps_of(series)
        how = direction(series.name)
        best = best_step = None
        finite = [(v, s) for v, s in zip(series.values, steps, strict=True) if not math.isnan(v)]
        if how is not None and finite:
            pick = min if how == "min" else max
            best, best_step = pick(finite, key=lambda vs: vs[0])
        out.append(
            MetricSummary(
                name=series.name,
                count=len(series.values),
                last=series.values[-1],
                last_step=steps[-1],
                direction=how,
                best=best,
                best_step=best_step,
                nonfinite=sum(not math.isfinite(v) for v in series.values),
            )
        )
    return out
