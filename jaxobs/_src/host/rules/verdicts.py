"""The rules about whole steps: the first loss (`InitLoss`), the guard's verdicts
(`GuardVerdicts`: non-finite, early blow-up, spike), which also judge a hand-logged loss
and hand-logged gradient norms, and seed 001's loss trigger (`LossSpike`: the loss above a
multiple of its moving average)."""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from jaxobs._src.analysis.text import format_value
from jaxobs._src.device.keys import split_stat_key
from jaxobs._src.device.validate import LOSS_SPIKE_SETTINGS, check_settings
from jaxobs._src.host.alerts import CRITICAL, DANGER, WARNING, Alert
from jaxobs._src.host.rules.base import BaseRule, is_finite, logged_value

__all__ = ["GuardVerdicts", "InitLoss", "LossSpike"]

# A verdict's consumer: ``judge(step, bad=, alerts=, on_device=) -> the policy's alerts``
# (`HealthChecker.judge`, which hands it to the `ActionPolicy`).
Judge = Callable[..., list[Alert]]
# A host trigger's consumer: ``trigger(alert)`` (`HealthChecker.trigger`: under
# ``action="halt"`` the alert halts the run, as seed 001's triggers do).
Trigger = Callable[[Alert], None]


@dataclasses.dataclass(kw_only=True, eq=False)
class InitLoss(BaseRule):
    """``init_loss``: the loss of the first step against ``ln(num_classes)``, the
    cross-entropy of a classifier at initialisation. Judged once, on the first record with
    a loss.

    Attributes:
      num_classes: The class count; None turns the rule off.
      factor: Alert when the first loss is above this multiple of ``ln(num_classes)``.
      loss_keys: Where the loss is read, first found first: the guard's ``health/loss``,
        then the logged training loss (a run without ``observe``).
    """

    fires = ("init_loss",)
    num_classes: int | None = None
    factor: float = 2.0
    loss_keys: Sequence[str] = ("health/loss", "train/loss", "loss")
    checked: bool = dataclasses.field(default=False, init=False)

    def reset(self) -> None:
        super().reset()
        self.checked = False

    def check(self, step: int, values: Mapping[str, float]) -> list[Alert]:
        found = logged_value(values, self.loss_keys)
        if self.checked or found is None or self.num_classes is None:
            return []
        self.checked = True
        loss = found[1]
        expected = math.log(self.num_classes)
        if math.isfinite(loss) and loss <= self.factor * expected:
            return []
        return [
            Alert(
                "init_loss",
                DANGER,
                step,
                f"loss at the first step is {loss:.4g}, expected about ln({self.num_classes})"
                f" = {expected:.3g} for {self.num_classes} classes: the initial weights or "
                "logits are too large. Check the initialisation scale (the last layer can "
                "start near zero) and the input normalisation.",
                values={"loss": loss, "expected": expected},
            )
        ]


@dataclasses.dataclass(kw_only=True, eq=False)
class GuardVerdicts(BaseRule):
    """``nonfinite`` (critical), ``blowup`` (danger) and ``spike`` (warning): the device
    guard's verdict on each step (the record's ``health/*`` values), handed on to ``judge``.

    A record without the guard's values (a run without ``observe``, or with
    ``health=None``) is judged on its logged loss (``loss_keys``): a NaN or infinite one is
    ``nonfinite``, and nothing was skipped. Once the guard's values have been seen, its
    verdicts speak for every step, and logged losses are not judged again (no double
    alert).

    Attributes:
      window: The guard's window (named in the spike message).
      spike_z: The guard's spike threshold (named in the spike message).
      skips_on_device: Whether a bad step was skipped on the device (the checker's
        action is not ``warn``).
      loss_keys: The logged losses judged without the guard.
      judge: Called with each step's verdict; returns the action policy's alerts.
      first_diverged: Called, when a ``nonfinite`` alert is raised, for the first layer to
        diverge (the flight recorder's analysis: a dict with ``layer``, ``group``,
        ``step``, ``ratio``, or None).
      guarded: Whether the guard's values have been seen.
    """

    fires = ("nonfinite", "blowup", "spike")
    window: int = 128
    spike_z: float = 6.0
    skips_on_device: bool = False
    loss_keys: Sequence[str] = ("train/loss", "loss")
    judge: Judge | None = dataclasses.field(default=None, repr=False)
    first_diverged: Callable[[], Mapping[str, Any] | None] | None = dataclasses.field(
        default=None, repr=False
    )
    guarded: bool = dataclasses.field(default=False, init=False)

    def reset(self) -> None:
        super().reset()
        self.guarded = False

    def check(self, step: int, values: Mapping[str, float]) -> list[Alert]:
        if "health/bad" in values:
            self.guarded = True
            return self._check_guard(step, values)
        if self.guarded:
            return []
        return self._check_logged(step, values)

    def _check_guard(self, step: int, values: Mapping[str, float]) -> list[Alert]:
        bad = values["health/bad"] > 0
        skipped = bad and self.skips_on_device
        grad = "health/grad_norm" in values
        norm_key = "health/grad_norm" if grad else "health/update_norm"
        what_norm = "gradient norm" if grad else "update norm"
        did = " The update was skipped on the device." if skipped else ""
        nf = [
            name
            for name, key in (
                ("loss", "health/nonfinite_loss"),
                ("gradients", "health/nonfinite_grads"),
                ("new parameters", "health/nonfinite_params"),
            )
            if values.get(key, 0) > 0
        ]
        loss, norm = values.get("health/loss"), values.get(norm_key)
        zl = values.get("health/loss_z", 0.0)
        zn = values.get(norm_key + "_z", 0.0)
        out = self.fire("nonfinite", None, bool(nf), lambda: self._nonfinite(step, nf, skipped))
        out += self.fire(
            "blowup",
            None,
            values.get("health/blowup", 0) > 0 and not nf,
            lambda: Alert(
                "blowup",
                DANGER,
                step,
                f"loss {format_value(loss)} / {what_norm} {format_value(norm)} far above "
                f"their first values before a baseline exists (step {step}).{did} Likely "
                "cause: the learning rate is too high for this initialisation; fix: lower "
                "it or add warm-up.",
                values={"loss": loss, "norm": norm, "skipped": skipped},
            ),
        )
        out += self.fire(
            "spike",
            None,
            values.get("health/spike", 0) > 0 and not nf,
            lambda: Alert(
                "spike",
                WARNING,
                step,
                f"spike at step {step}: loss z={zl:.1f}, {what_norm} z={zn:.1f} "
                f"(robust z-score against the last {self.window} accepted steps, "
                f"threshold {self.spike_z:g}).{did} Likely cause: an unusual or corrupted "
                "batch, or a learning rate at the edge of stability.",
                values={"loss_z": zl, "norm_z": zn, "skipped": skipped},
            ),
        )
        return out + self._verdict(step, bad, out, on_device=True)

    def _check_logged(self, step: int, values: Mapping[str, float]) -> list[Alert]:
        present = [key for key in self.loss_keys if key in values]
        grads = _logged_gradients(values)
        if not present and not grads:
            return []
        nf = [key for key in present if not is_finite(values[key])]
        nf += [key for key, bad in grads if bad]
        out = self.fire("nonfinite", None, bool(nf), lambda: self._nonfinite(step, nf, False))
        return out + self._verdict(step, bool(nf), out, on_device=False)

    def _verdict(self, step: int, bad: bool, alerts: list[Alert], on_device: bool) -> list[Alert]:
        """The action policy's alerts for this step's verdict (none without a ``judge``)."""
        if self.judge is None:
            return []
        return self.judge(step, bad=bad, alerts=alerts, on_device=on_device)

    def _nonfinite(self, step: int, what: Sequence[str], skipped: bool) -> Alert:
        where = self.first_diverged() if self.first_diverged is not None else None
        layer = where.get("layer") if where else None
        first = (
            f" First layer to diverge: {layer} ({where['group']}, step {where['step']}"
            f", x{format_value(where['ratio'])} its baseline)."
            if where
            else ""
        )
        did = " The update was skipped on the device." if skipped else ""
        return Alert(
            "nonfinite",
            CRITICAL,
            step,
            f"non-finite {', '.join(what)} at step {step}.{first}{did} Likely cause: a "
            "learning rate too high or a bad batch; fix: lower the learning rate, clip "
            "gradients (optax.clip_by_global_norm), check the inputs.",
            layer=layer,
            values={"nonfinite": list(what), "first_diverged": where, "skipped": skipped},
        )


def _logged_gradients(values: Mapping[str, float]) -> list[tuple[str, bool]]:
    """``(key, non-finite)`` of each gradient norm or count a record logs by hand: every
    ``grads/<path>/norm`` and ``grads/global_norm`` (bad when not finite), and every
    ``grads/<path>/nonfinite`` (bad when above 0)."""
    out = []
    for key, v in values.items():
        if key == "grads/global_norm":
            out.append((key, not is_finite(v)))
            continue
        split = split_stat_key(key, "grads")
        if split is None:
            continue
        if split[1] == "norm":
            out.append((key, not is_finite(v)))
        elif split[1] == "nonfinite":
            out.append((key, not is_finite(v) or v > 0))
    return out


@dataclasses.dataclass(kw_only=True, eq=False)
class LossSpike(BaseRule):
    """``loss_spike`` (warning): seed 001's trigger, the loss above ``factor`` times the
    moving average of the last ``window`` losses (off while ``factor`` is None).

    The average is taken over accepted losses only: finite and not themselves a spike, so
    one bad step cannot raise the baseline that judges the next; a step the guard rejected
    (``health/bad``) is neither judged nor learned from. A loss is judged once the window is
    full and its average is positive. Under ``action="halt"`` the alert halts the run
    (through ``trigger``).

    Attributes:
      factor: The multiple of the moving average above which a loss is a spike (None: off).
      window: Losses in the moving average.
      loss_keys: Where the loss is read, first found first: the guard's ``health/loss``,
        then the logged training loss (a run without ``observe``).
      trigger: Called with each alert (the checker's `HealthChecker.trigger`).
      history: The last ``window`` accepted losses.
    """

    fires = ("loss_spike",)
    factor: float | None = None
    window: int = 50
    loss_keys: Sequence[str] = ("health/loss", "train/loss", "loss")
    trigger: Trigger | None = dataclasses.field(default=None, repr=False)
    history: collections.deque = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_settings("LossSpike", self, LOSS_SPIKE_SETTINGS)
        self.history = collections.deque(maxlen=self.window)

    def reset(self) -> None:
        super().reset()
        self.history = collections.deque(maxlen=self.window)

    def check(self, step: int, values: Mapping[str, float]) -> list[Alert]:
        found = logged_value(values, self.loss_keys)
        if self.factor is None or found is None or values.get("health/bad", 0) > 0:
            return []  # off, no loss, or a step the guard rejected (its alert speaks)
        key, loss = found[0], float(found[1])
        if not math.isfinite(loss):
            return []  # the nonfinite rule speaks for it; the episode stays as it is
        full = len(self.history) == self.window
        mean = sum(self.history) / len(self.history) if self.history else math.nan
        spike = full and mean > 0 and loss > self.factor * mean
        if not spike:
            self.history.append(loss)
        out = self.fire(
            "loss_spike",
            None,
            spike,
            lambda: Alert(
                "loss_spike",
                WARNING,
                step,
                f"{key} = {format_value(loss)} at step {step} is x{format_value(loss / mean)} "
                f"its moving average over the last {self.window} steps "
                f"({format_value(mean)}; spike_factor={self.factor:g}). Likely cause: an "
                "unusual or corrupted batch, or a learning rate at the edge of stability.",
                values={"loss": loss, "moving_average": mean, "factor": self.factor},
            ),
        )
        if out and self.trigger is not None:
            self.trigger(out[0])
        return out
