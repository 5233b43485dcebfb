"""The per-layer rules: gradient norms (`LayerGradients`), update/parameter ratios
(`UpdateRatio`), saturated activations (`Saturation`) and dead units (`DeadUnits`)."""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from jaxobs._src.analysis.text import format_value
from jaxobs._src.device.keys import layer_norms, layer_of, split_stat_key
from jaxobs._src.host.alerts import DANGER, WARNING, Alert
from jaxobs._src.host.rules.base import BaseRule

__all__ = ["DeadUnits", "LayerGradients", "Saturation", "UpdateRatio"]


def _stat(values: Mapping[str, float], group: str, stat: str) -> list[tuple[str, float]]:
    """``(leaf path, value)`` of every ``<group>/<leaf path>/<stat>`` in the record."""
    out = []
    for key, v in values.items():
        split = split_stat_key(key, group)
        if split is not None and split[1] == stat:
            out.append((split[0], v))
    return out


def _bad(values: Mapping[str, float]) -> bool:
    """Whether the guard rejected this step (nothing is learned from it)."""
    return values.get("health/bad", 0) > 0


@dataclasses.dataclass(kw_only=True, eq=False)
class LayerGradients(BaseRule):
    """``exploding_gradients`` (danger) and ``vanishing_gradients`` (warning): each layer's
    gradient norm (from its leaves' ``grads/<path>/norm``) against the median of its own
    last ``window`` accepted log norms, or against absolute thresholds. A step the guard
    rejected is neither judged nor learned from (the guard's alert speaks for it).

    A norm above ``explode_thresh`` is seed 001's gradient trigger: its alert also goes to
    ``trigger`` (the checker's `HealthChecker.trigger`, which halts under
    ``action="halt"``); one only above the relative baseline alerts, and does not halt.

    Attributes:
      window: Accepted steps in each layer's baseline.
      min_steps: Accepted steps before the baseline judges.
      explode_factor: Above this multiple of the baseline, a layer is exploding.
      vanish_factor: Below the baseline divided by this, vanishing.
      explode_thresh: An absolute norm above which a layer is exploding (None: off).
      vanish_thresh: An absolute norm below which a layer is vanishing (None: off).
      trigger: Called with an ``exploding_gradients`` alert of a norm above
        ``explode_thresh``.
      logs: Per layer, the accepted log norms.
    """

    fires = ("exploding_gradients", "vanishing_gradients")
    window: int = 128
    min_steps: int = 32
    explode_factor: float = 100.0
    vanish_factor: float = 1000.0
    explode_thresh: float | None = None
    vanish_thresh: float | None = None
    trigger: Callable[[Alert], None] | None = dataclasses.field(default=None, repr=False)
    logs: dict[str, collections.deque] = dataclasses.field(default_factory=dict, init=False)

    def reset(self) -> None:
        super().reset()
        self.logs = {}

    def check(self, step: int, values: Mapping[str, float]) -> list[Alert]:
        if _bad(values):
            return []  # the guard's alert speaks for a bad step
        nonfinite = {layer_of(path) for path, v in _stat(values, "grads", "nonfinite") if v > 0}
        out = []
        for layer, norm in layer_norms(_stat(values, "grads", "norm")).items():
            if layer in nonfinite or not math.isfinite(norm):
                continue
            out += self._judge(step, layer, norm)
        return out

    def _judge(self, step: int, layer: str, norm: float) -> list[Alert]:
        logs = self.logs.setdefault(layer, collections.deque(maxlen=self.window))
        base = float(np.median(logs)) if len(logs) >= self.min_steps else None
        log_n = math.log(norm) if norm > 0 else -math.inf
        over = self.explode_thresh is not None and norm > self.explode_thresh
        explode = over or (base is not None and log_n - base > math.log(self.explode_factor))
        vanish = (self.vanish_thresh is not None and norm < self.vanish_thresh) or (
            base is not None and base - log_n > math.log(self.vanish_factor)
        )
        baseline = math.exp(base) if base is not None else None
        out = self.fire(
            "exploding_gradients",
            layer,
            explode,
            lambda: Alert(
                "exploding_gradients",
                DANGER,
                step,
                f"gradient norm of {layer} is {format_value(norm)}"
                + (f", x{format_value(norm / baseline)} its baseline" if baseline else "")
                + f" at step {step}. Likely cause: a learning rate too high or an "
                "unstable layer; fix: clip gradients, lower the learning rate, add "
                "normalisation.",
                layer=layer,
                values={"norm": norm, "baseline": baseline},
            ),
        )
        if out and over and self.trigger is not None:
            self.trigger(out[0])
        out += self.fire(
            "vanishing_gradients",
            layer,
            vanish,
            lambda: Alert(
                "vanishing_gradients",
                WARNING,
                step,
                f"gradient norm of {layer} fell to {format_value(norm)}"
                + (f" (baseline {format_value(baseline)})" if baseline else "")
                + f" at step {step}: the layer has almost stopped learning. Likely "
                "cause: dead or saturated units, or a vanishing path; fix: check "
                "activations, initialisation and residual/normalisation layers.",
                layer=layer,
                values={"norm": norm, "baseline": baseline},
            ),
        )
        if norm > 0:
            logs.append(log_n)
        return out


@dataclasses.dataclass(kw_only=True, eq=False)
class UpdateRatio(BaseRule):
    """``update_ratio`` (warning): a layer's ``updates/<layer>/update_ratio`` above
    ``max_ratio`` for ``patience`` consecutive accepted statistics steps.

    Attributes:
      max_ratio: The ratio above which an update is too large (about 1e-3 is typical).
      patience: Consecutive values that must all be above it.
      history: Per layer, the last ``patience`` accepted ratios.
    """

    fires = ("update_ratio",)
    max_ratio: float = 0.1
    patience: int = 20
    history: dict[str, collections.deque] = dataclasses.field(default_factory=dict, init=False)

    def reset(self) -> None:
        super().reset()
        self.history = {}

    def check(self, step: int, values: Mapping[str, float]) -> list[Alert]:
        bad = _bad(values)
        out = []
        for layer, v in _stat(values, "updates", "update_ratio"):
            hist = self.history.setdefault(layer, collections.deque(maxlen=self.patience))
            if not bad:
                hist.append(v)
            high = len(hist) == self.patience and min(hist) > self.max_ratio
            out += self.fire(
                "update_ratio",
                layer,
                high,
                lambda layer=layer, v=v: Alert(
                    "update_ratio",
                    WARNING,
                    step,
                    f"update/parameter ratio of {layer} has stayed above "
                    f"{self.max_ratio:g} for {self.patience} steps (now {format_value(v)}; "
                    "about 1e-3 is typical): the learning rate is likely too high for this "
                    "layer.",
                    layer=layer,
                    values={"update_ratio": v},
                ),
            )
        return out


@dataclasses.dataclass(kw_only=True, eq=False)
class Saturation(BaseRule):
    """``saturation`` (warning): a layer's mean ``acts/<layer>/saturation_frac`` over the
    last ``patience`` statistics steps above ``pct`` percent.

    Attributes:
      pct: The percentage of saturated activations above which the layer alerts.
      patience: Steps the mean is taken over.
      history: Per layer, the last ``patience`` fractions.
    """

    fires = ("saturation",)
    pct: float = 50.0
    patience: int = 20
    history: dict[str, collections.deque] = dataclasses.field(default_factory=dict, init=False)

    def reset(self) -> None:
        super().reset()
        self.history = {}

    def check(self, step: int, values: Mapping[str, float]) -> list[Alert]:
        out = []
        for layer, v in _stat(values, "acts", "saturation_frac"):
            hist = self.history.setdefault(layer, collections.deque(maxlen=self.patience))
            hist.append(v)
            mean = sum(hist) / len(hist)
            high = len(hist) == self.patience and mean * 100 > self.pct
            out += self.fire(
                "saturation",
                layer,
                high,
                lambda layer=layer, mean=mean: Alert(
                    "saturation",
                    WARNING,
                    step,
                    f"{mean:.0%} of the activations of {layer} are saturated "
                    f"(mean over {self.patience} steps): their gradients vanish. Fix: lower "
                    "the learning rate, normalise the inputs of the layer, or use a "
                    "non-saturating activation.",
                    layer=layer,
                    values={"saturation_frac": mean},
                ),
            )
        return out


@dataclasses.dataclass(kw_only=True, eq=False)
class DeadUnits(BaseRule):
    """``dead_units`` (warning): at the end of each dead-unit window
    (``health/dead_batches == window``), a layer with more than ``pct`` percent of units
    never active over it (``health/dead/<layer>``, from the guard).

    The layers' order is the order in which the record carries their ``health/dead/*``
    keys: the guard writes them in the network's forward order, so the last one is the
    output layer, which is left out unless ``layers`` names it.

    Attributes:
      window: Batches per window (the guard's ``dead_window``).
      pct: The percentage of dead units above which a layer alerts.
      layers: The layers to judge; None for all but the last (the output).
    """

    fires = ("dead_units",)
    window: int = 100
    pct: float = 30.0
    layers: Sequence[str] | None = None

    def check(self, step: int, values: Mapping[str, float]) -> list[Alert]:
        if values.get("health/dead_batches") != self.window:
            return []
        head = "health/dead/"
        probed = [k[len(head) :] for k in values if k.startswith(head)]  # forward order
        if self.layers is None:
            chosen = probed[:-1]  # the last probed layer is the network's output
        else:
            chosen = [layer for layer in probed if layer in self.layers]
        out = []
        for layer in chosen:
            frac = values[head + layer]
            out += self.fire(
                "dead_units",
                layer,
                frac * 100 > self.pct,
                lambda layer=layer, frac=frac: Alert(
                    "dead_units",
                    WARNING,
                    step,
                    f"{frac:.0%} of the units of {layer} were never active over the last "
                    f"{self.window} batches (threshold {self.pct:g}%): dead ReLUs. Likely "
                    "cause: a learning rate too high; fix: lower it, or use leaky_relu/gelu "
                    "and check the initialisation.",
                    layer=layer,
                    values={"dead_frac": frac, "batches": self.window},
                ),
            )
        return out
