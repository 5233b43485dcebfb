"""The validation rules: `Stagnation` (Keras ``EarlyStopping`` semantics) and `Overfitting`
(Prechelt's generalization loss, and the seed's val/train ratio). Both read the monitored
metric (``val/loss``) from any record that holds it: one the engine delivered or one the
user logged by hand."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

from jaxobs._src.analysis.text import format_value
from jaxobs._src.host.alerts import INFO, WARNING, Alert
from jaxobs._src.host.rules.base import BaseRule

__all__ = ["Overfitting", "Stagnation"]


def _monitored(values: Mapping[str, float], key: str) -> float | None:
    """The record's finite value of ``key``; None when it has none (not a check)."""
    v = values.get(key)
    return v if v is not None and math.isfinite(v) else None


@dataclasses.dataclass(kw_only=True, eq=False)
class Stagnation(BaseRule):
    """``stagnation`` (info): ``monitor`` has not improved by more than ``eps`` for
    ``patience`` checks. Keras ``EarlyStopping`` semantics: only an improvement larger than
    ``eps`` (``min_delta``) moves the best; after an alert, a further ``patience`` checks
    pass before the next.

    Attributes:
      monitor: The metric to watch (lower is better).
      patience: Checks without an improvement before the alert.
      eps: The smallest improvement that counts.
      best: The best value so far.
      wait: Checks since the best moved.
    """

    fires = ("stagnation",)
    monitor: str = "val/loss"
    patience: int = 10
    eps: float = 1e-5
    best: float | None = dataclasses.field(default=None, init=False)
    wait: int = dataclasses.field(default=0, init=False)

    def reset(self) -> None:
        super().reset()
        self.best, self.wait = None, 0

    def check(self, step: int, values: Mapping[str, float]) -> list[Alert]:
        val = _monitored(values, self.monitor)
        if val is None:
            return []
        if self.best is None or val < self.best - self.eps:
            self.best, self.wait = val, 0
        else:
            self.wait += 1
        if self.wait < self.patience:
            return []
        self.wait = 0  # re-armed: a further `patience` checks before the next alert
        return [
            Alert(
                "stagnation",
                INFO,
                step,
                f"{self.monitor} has not improved by more than {self.eps:g} for "
                f"{self.patience} checks (best {format_value(self.best)}): consider early "
                "stopping or a lower learning rate.",
                values={"best": self.best, "value": val},
            )
        ]


@dataclasses.dataclass(kw_only=True, eq=False)
class Overfitting(BaseRule):
    """``overfitting`` (info): Prechelt's generalization loss ``100 * (val / best - 1)``
    above ``generalization_loss`` for ``patience`` consecutive checks; and the seed's rule
    ``overfit_ratio`` (warning): ``val`` over the mean training loss since the last check
    above ``ratio`` (off when None).

    Attributes:
      monitor: The validation metric (lower is better).
      train_key: The training loss, for the ratio.
      generalization_loss: The threshold of the generalization loss, in percent.
      patience: Consecutive checks it must stay above the threshold.
      ratio: The val/train ratio above which ``overfit_ratio`` alerts (None: off).
      best: The best validation value so far.
      high: Consecutive checks above the threshold.
    """

    fires = ("overfitting", "overfit_ratio")
    monitor: str = "val/loss"
    train_key: str = "train/loss"
    generalization_loss: float = 5.0
    patience: int = 3
    ratio: float | None = None
    best: float | None = dataclasses.field(default=None, init=False)
    high: int = dataclasses.field(default=0, init=False)
    train_sum: float = dataclasses.field(default=0.0, init=False, repr=False)
    train_count: int = dataclasses.field(default=0, init=False, repr=False)

    def reset(self) -> None:
        super().reset()
        self.best, self.high = None, 0
        self.train_sum, self.train_count = 0.0, 0

    def check(self, step: int, values: Mapping[str, float]) -> list[Alert]:
        train = _monitored(values, self.train_key)
        if train is not None and self.ratio is not None:
            self.train_sum += train
            self.train_count += 1
        val = _monitored(values, self.monitor)
        if val is None:
            return []
        self.best = val if self.best is None else min(self.best, val)
        best = self.best
        gl = 100.0 * (val / best - 1.0) if best > 0 else 0.0
        self.high = self.high + 1 if gl > self.generalization_loss else 0
        high = self.high
        out = self.fire(
            "overfitting",
            None,
            high >= self.patience,
            lambda: Alert(
                "overfitting",
                INFO,
                step,
                f"{self.monitor} = {format_value(val)} is {gl:.1f}% above its best "
                f"{format_value(best)}, and has stayed above it by more than "
                f"{self.generalization_loss:g}% for {high} checks (Prechelt's "
                "generalization loss): the model is overfitting. Fix: stop early (restore "
                "the best checkpoint), add regularisation or data.",
                values={"generalization_loss": gl, "best": best, "value": val},
            ),
        )
        if self.ratio is not None and self.train_count:
            out += self._ratio(step, val, self.train_sum / self.train_count)
        self.train_sum, self.train_count = 0.0, 0
        return out

    def _ratio(self, step: int, val: float, train_mean: float) -> list[Alert]:
        assert self.ratio is not None  # called only when the rule is on
        ratio = val / train_mean if train_mean > 0 else math.inf
        return self.fire(
            "overfit_ratio",
            None,
            ratio > self.ratio,
            lambda: Alert(
                "overfit_ratio",
                WARNING,
                step,
                f"{self.monitor} / {self.train_key} = {ratio:.2f} exceeds "
                f"overfit_ratio={self.ratio:g}.",
                values={"ratio": ratio, "val": val, "train": train_mean},
            ),
        )
