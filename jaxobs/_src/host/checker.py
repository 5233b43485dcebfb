r"""Run health: the on-device guard, the host rules, and the alerts they raise.

Two halves, on either side of the transport:

- **The guard** (`guard_init`, `guard_update`): pure functions that run inside the jitted
  step on a `GuardState` that `jaxobs.observe` threads through it. They decide, before the
  update lands, whether this step is *bad*: a non-finite loss, gradient or new parameter;
  an early blow-up (loss or gradient norm far above its step-0 value before a baseline
  exists); or a spike (a one-sided robust z-score of log loss or log gradient norm against
  a window of accepted, finite steps: ``(x - median) / (1.4826 * MAD)``). A bad step never
  enters the window, so one NaN cannot poison the baseline. With ``action="skip"`` the step
  leaves parameters and optimizer state unchanged (`jax.lax.cond`).
- **The rules** (`HealthChecker.check`): host-side, on each step's record as it arrives
  (one step late; the device never waits). They turn the guard's verdicts into `Alert`\ s
  and add the per-layer rules (exploding/vanishing gradients, dead units, saturation,
  update/parameter ratio) and the validation rules (stagnation, overfitting).

The thresholds come from measurements on the scikit-learn digits (healthy runs raise no
alert of severity warning or higher); see the health page of the docs.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from jaxobs._src.host.actions import ActionPolicy
from jaxobs._src.host.alerts import ACTIONS, SEVERITIES, Alert

_SEED_NAMES = (
    "patience",
    "overfit_ratio",
    "stagnation_eps",
    "gradient_vanish_thresh",
    "gradient_explode_thresh",
    "dead_neuron_pct",
)


@dataclasses.dataclass
class HealthChecker:
    """Health rules and the actions they take. Pass it to ``jaxobs.observe(health=...)``.

    Every argument of neurogebra's ``SmartHealthChecker`` is accepted under its own name
    (``patience``, ``overfit_ratio``, ``stagnation_eps``, ``gradient_vanish_thresh``,
    ``gradient_explode_thresh``, ``dead_neuron_pct``); the defaults differ where
    measurement showed they raise false alarms (absolute gradient thresholds are off, the
    val/train loss ratio is off in favour of Prechelt's generalization loss).

    Args:
      action: What a bad step (non-finite, spike, early blow-up) does. ``"warn"``: alerts
        only. ``"skip"``: the step leaves parameters and optimizer state unchanged (on the
        device, before the update lands); after ``max_skips`` consecutive skips the run is
        halted. ``"halt"``: the first bad step is skipped on the device, writes a crash
        dump and raises `TrainingHalted` from the next call of the step (and so does a
        critical alert under ``skip`` and ``rollback``). ``"rollback"``: like ``skip``,
        and after ``rollback_after`` consecutive skips the last good state (kept in host
        memory every ``snapshot_every`` steps) is restored; the data loop learns how many batches to
        skip from ``train_step.batches_to_skip``.
      num_classes: When known, the loss at the first step is checked against
        ``ln(num_classes)`` (a classifier's cross-entropy at initialisation).
      loss_key: The name of the loss in the step's metrics dict (or a scalar ``tap``).
      window: Accepted steps in the spike baseline (median/MAD).
      min_steps: Accepted steps before spikes are judged; before that, the early blow-up
        rule compares with the first step.
      spike_z: Robust z-score above which a step is a spike.
      mad_floor: Smallest scale (in log units) of the z-score's denominator.
      blowup_factor: Early blow-up: loss above this multiple of its first value.
      norm_blowup_factor: Early blow-up: gradient norm above this multiple of its first value.
      init_loss_factor: Alert when the first loss is above this multiple of ``ln(C)``.
      explode_factor: A layer's gradient norm above this multiple of its own baseline
        (median over the last ``window`` accepted steps) is exploding.
      vanish_factor: ... below the baseline divided by this, vanishing.
      gradient_explode_thresh: Absolute per-layer gradient norm that is exploding (off).
      gradient_vanish_thresh: Absolute per-layer gradient norm that is vanishing (off).
      dead_neuron_pct: Alert when more than this percentage of a layer's units were never
        active over ``dead_window`` batches (needs ``observe(activations=True)``).
      dead_window: Batches over which "never active" is accumulated.
      dead_layers: Layers to check; default all but the last probed layer (the output).
      saturation_pct: Alert when a layer's mean ``saturation_frac`` over ``ratio_patience``
        steps exceeds this percentage (needs saturation statistics).
      update_ratio_max: Alert when a layer's update/parameter ratio stays above this for
        ``ratio_patience`` consecutive statistics steps.
      ratio_patience: See above.
      monitor: The validation metric for stagnation and overfitting.
      train_key: The training loss, for ``overfit_ratio``.
      patience: Stagnation: checks of ``monitor`` without an improvement larger than
        ``stagnation_eps`` (Keras ``EarlyStopping`` semantics; re-armed after it fires).
      stagnation_eps: See above (Keras ``min_delta``).
      generalization_loss: Overfitting (Prechelt's GL): ``100 * (val / best_val - 1)``
        above this.
      overfit_patience: Consecutive checks of ``monitor`` the generalization loss must
        stay above its threshold (one noisy evaluation is not overfitting).
      overfit_ratio: The seed's rule: ``val / train`` loss above this (off by default:
        it fires on healthy runs).
      max_skips: Consecutive skips after which ``skip`` gives up and halts.
      rollback_after: Consecutive skips after which ``rollback`` restores the last good state.
      max_rollbacks: Rollbacks after which ``rollback`` gives up and halts.
      snapshot_every: Steps between host snapshots of the state (default 100 for
        ``rollback``, off otherwise). A snapshot is also saved with orbax in a crash dump.
      rollback_skip_batches: Batches the data loop should skip after a rollback.
      plot: Write the failure-signature PNG beside each crash dump (needs matplotlib).
      severities: Per rule, a severity to report it with instead of its own (e.g.
        ``{"overfitting": "warning", "stagnation": "warning"}``; a ``critical`` alert writes
        a crash dump).
    """

    action: str = "warn"
    num_classes: int | None = None
    loss_key: str = "loss"
    window: int = 128
    min_steps: int = 32
    spike_z: float = 6.0
    mad_floor: float = 0.01
    blowup_factor: float = 10.0
    norm_blowup_factor: float = 1000.0
    init_loss_factor: float = 2.0
    explode_factor: float = 100.0
    vanish_factor: float = 1000.0
    gradient_explode_thresh: float | None = None
    gradient_vanish_thresh: float | None = None
    dead_neuron_pct: float = 30.0
    dead_window: int = 100
    dead_layers: Sequence[str] | None = None
    saturation_pct: float = 50.0
    update_ratio_max: float = 0.1
    ratio_patience: int = 20
    monitor: str = "val/loss"
    train_key: str = "train/loss"
    patience: int = 10
    stagnation_eps: float = 1e-5
    generalization_loss: float = 5.0
    overfit_patience: int = 3
    overfit_ratio: float | None = None
    max_skips: int = 10
    rollback_after: int = 3
    max_rollbacks: int = 3
    snapshot_every: int | None = None
    rollback_skip_batches: int = 0
    plot: bool = True
    severities: Mapping[str, str] | None = None

    def __post_init__(self):
        if self.action not in ACTIONS:
            raise ValueError(f"HealthChecker(action={self.action!r}): choose one of {ACTIONS}")
        for name in (
            "window",
            "min_steps",
            "dead_window",
            "ratio_patience",
            "patience",
            "max_skips",
            "rollback_after",
            "max_rollbacks",
            "overfit_patience",
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"HealthChecker({name}={v!r}): must be a positive integer")
        if self.min_steps > self.window:
            raise ValueError(
                f"HealthChecker(min_steps={self.min_steps}) exceeds window={self.window}"
            )
        for name in (
            "spike_z",
            "blowup_factor",
            "norm_blowup_factor",
            "init_loss_factor",
            "explode_factor",
            "vanish_factor",
            "update_ratio_max",
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"HealthChecker({name}={v!r}): must be a positive number")
        for name in ("dead_neuron_pct", "saturation_pct"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0 <= v <= 100:
                raise ValueError(f"HealthChecker({name}={v!r}): a percentage in [0, 100]")
        for name in (
            "mad_floor",
            "generalization_loss",
            "overfit_ratio",
            "gradient_explode_thresh",
            "gradient_vanish_thresh",
            "rollback_skip_batches",
        ):
            v = getattr(self, name)
            if v is not None and (
                isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0
            ):
                raise ValueError(f"HealthChecker({name}={v!r}): must be a number >= 0")
        if self.num_classes is not None and (
            isinstance(self.num_classes, bool)
            or not isinstance(self.num_classes, int)
            or self.num_classes < 2
        ):
            raise ValueError(f"HealthChecker(num_classes={self.num_classes!r}): an integer >= 2")
        if self.snapshot_every is None and self.action == "rollback":
            self.snapshot_every = 100
        if self.snapshot_every is not None and (
            not isinstance(self.snapshot_every, int) or self.snapshot_every < 1
        ):
            raise ValueError(
                f"HealthChecker(snapshot_every={self.snapshot_every!r}): a positive integer"
            )
        self.severities = dict(self.severities or {})
        wrong = {r: v for r, v in self.severities.items() if v not in SEVERITIES}
        if wrong:
            raise ValueError(f"HealthChecker(severities={wrong}): choose from {SEVERITIES}")
        self._lock = threading.RLock()
        self.reset()

    # -- settings as JSON (for the crash dump and the run record)

    def settings(self) -> dict[str, Any]:
        """The checker's settings as plain JSON data."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, (list, tuple)) else v
        return out

    @property
    def skips_on_device(self) -> bool:
        """Whether bad steps are skipped on the device (every action but ``warn``)."""
        return self.action != "warn"

    # -- host state

    def reset(self) -> None:
        """Forget everything the host rules have seen (the device guard is not affected)."""
        with self._lock:
            self.alerts: list[Alert] = []
            self._firing: set[tuple[str, str | None]] = set()
            self._init_checked = False
            self._layer_logs: dict[str, collections.deque] = {}
            self._ratio: dict[str, collections.deque] = {}
            self._sat: dict[str, collections.deque] = {}
            self._keras_best: float | None = None
            self._best: float | None = None
            self._wait = 0
            self._gl_high = 0
            self._train_losses: list[float] = []
            self._dead_layers_seen: list[str] = []
            self.actions = ActionPolicy(
                self.action,
                max_skips=self.max_skips,
                rollback_after=self.rollback_after,
                max_rollbacks=self.max_rollbacks,
            )

    def _fire(self, rule: str, layer: str | None, cond: bool, alert: Callable[[], Alert]):
        """Raise ``alert()`` when ``cond`` becomes true; re-arm when it is false again."""
        key = (rule, layer)
        if not cond:
            self._firing.discard(key)
            return None
        if key in self._firing:
            return None
        self._firing.add(key)
        return alert()

    def check(self, step: int, values: Mapping[str, float], diverged: Callable | None = None):
        """Apply the host rules to one step's record; returns the new alerts.

        Args:
          step: The record's step.
          values: The record (``train/loss``, ``health/*``, ``grads/...``, ``val/loss``...).
          diverged: Called without arguments for the first layer to diverge (the flight
            recorder's analysis) when a non-finite alert is raised.
        """
        with self._lock:
            found: list[Alert] = []
            for rule in (
                self._check_init,
                self._check_guard,
                self._check_layers,
                self._check_dead,
                self._check_validation,
            ):
                found.extend(a for a in rule(step, values, diverged) if a is not None)
            found = [
                dataclasses.replace(a, severity=self.severities[a.rule])
                if a.rule in self.severities
                else a
                for a in found
            ]
            halt = self.actions.halt
            if halt is not None and halt.rule in self.severities:
                self.actions.halt = next((a for a in found if a.rule == halt.rule), halt)
            self.alerts.extend(found)
            return found

    # -- individual rules

    def _check_init(self, step, values, _):
        loss = values.get("health/loss")
        if self._init_checked or loss is None or self.num_classes is None:
            return ()
        self._init_checked = True
        expected = math.log(self.num_classes)
        if not math.isfinite(loss) or loss > self.init_loss_factor * expected:
            return (
                Alert(
                    "init_loss",
                    "danger",
                    step,
                    f"loss at the first step is {loss:.4g}, expected about ln({self.num_classes})"
                    f" = {expected:.3g} for {self.num_classes} classes: the initial weights or "
                    "logits are too large. Check the initialisation scale (the last layer can "
                    "start near zero) and the input normalisation.",
                    values={"loss": loss, "expected": expected},
                ),
            )
        return ()

    def _check_guard(self, step, values, diverged):
        if "health/bad" not in values:
            return ()
        bad = values["health/bad"] > 0
        skipped = bad and self.skips_on_device
        out = []
        norm_key = "health/grad_norm" if "health/grad_norm" in values else "health/update_norm"
        what_norm = "gradient norm" if norm_key == "health/grad_norm" else "update norm"
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

        def nonfinite_alert():
            where = diverged() if diverged is not None else None
            layer = where.get("layer") if where else None
            first = (
                f" First layer to diverge: {layer} ({where['group']}, step {where['step']}"
                f", x{_fmt(where['ratio'])} its baseline)."
                if where
                else ""
            )
            return Alert(
                "nonfinite",
                "critical",
                step,
                f"non-finite {', '.join(nf)} at step {step}.{first}{did} Likely cause: a "
                "learning rate too high or a bad batch; fix: lower the learning rate, clip "
                "gradients (optax.clip_by_global_norm), check the inputs.",
                layer=layer,
                values={"nonfinite": nf, "first_diverged": where, "skipped": skipped},
            )

        out.append(self._fire("nonfinite", None, bool(nf), nonfinite_alert))
        blow = values.get("health/blowup", 0) > 0 and not nf
        out.append(
            self._fire(
                "blowup",
                None,
                blow,
                lambda: Alert(
                    "blowup",
                    "danger",
                    step,
                    f"loss {_fmt(values.get('health/loss'))} / {what_norm} "
                    f"{_fmt(values.get(norm_key))} far above their first values before a "
                    f"baseline exists (step {step}).{did} Likely cause: the learning rate is "
                    "too high for this initialisation; fix: lower it or add warm-up.",
                    values={
                        "loss": values.get("health/loss"),
                        "norm": values.get(norm_key),
                        "skipped": skipped,
                    },
                ),
            )
        )
        spike = values.get("health/spike", 0) > 0 and not nf
        zl = values.get("health/loss_z", 0.0)
        zn = values.get(norm_key + "_z", 0.0)
        out.append(
            self._fire(
                "spike",
                None,
                spike,
                lambda: Alert(
                    "spike",
                    "warning",
                    step,
                    f"spike at step {step}: loss z={zl:.1f}, {what_norm} z={zn:.1f} "
                    f"(robust z-score against the last {self.window} accepted steps, "
                    f"threshold {self.spike_z:g}).{did} Likely cause: an unusual or corrupted "
                    "batch, or a learning rate at the edge of stability.",
                    values={"loss_z": zl, "norm_z": zn, "skipped": skipped},
                ),
            )
        )
        out.extend(self.actions.judge(step, bad=bad, alerts=[a for a in out if a is not None]))
        return out

    def _check_layers(self, step, values, _):
        bad = values.get("health/bad", 0) > 0
        sq: dict[str, float] = {}
        nonfinite: set[str] = set()
        for key, v in values.items():
            if key.startswith("grads/") and key.endswith("/norm"):
                layer = _layer_of(key[len("grads/") : -len("/norm")])
                sq[layer] = sq.get(layer, 0.0) + v * v
            elif key.startswith("grads/") and key.endswith("/nonfinite") and v > 0:
                nonfinite.add(_layer_of(key[len("grads/") : -len("/nonfinite")]))
        out = []
        for layer, s in sq.items():
            norm = math.sqrt(s)
            if bad or layer in nonfinite or not math.isfinite(norm):
                continue  # the guard's alert speaks for a bad step
            logs = self._layer_logs.setdefault(layer, collections.deque(maxlen=self.window))
            base = float(np.median(logs)) if len(logs) >= self.min_steps else None
            log_n = math.log(norm) if norm > 0 else -math.inf
            explode = (
                self.gradient_explode_thresh is not None and norm > self.gradient_explode_thresh
            ) or (base is not None and log_n - base > math.log(self.explode_factor))
            vanish = (
                self.gradient_vanish_thresh is not None and norm < self.gradient_vanish_thresh
            ) or (base is not None and base - log_n > math.log(self.vanish_factor))
            baseline = math.exp(base) if base is not None else None
            out.append(
                self._fire(
                    "exploding_gradients",
                    layer,
                    explode,
                    lambda layer=layer, norm=norm, baseline=baseline: Alert(
                        "exploding_gradients",
                        "danger",
                        step,
                        f"gradient norm of {layer} is {_fmt(norm)}"
                        + (f", x{_fmt(norm / baseline)} its baseline" if baseline else "")
                        + f" at step {step}. Likely cause: a learning rate too high or an "
                        "unstable layer; fix: clip gradients, lower the learning rate, add "
                        "normalisation.",
                        layer=layer,
                        values={"norm": norm, "baseline": baseline},
                    ),
                )
            )
            out.append(
                self._fire(
                    "vanishing_gradients",
                    layer,
                    vanish,
                    lambda layer=layer, norm=norm, baseline=baseline: Alert(
                        "vanishing_gradients",
                        "warning",
                        step,
                        f"gradient norm of {layer} fell to {_fmt(norm)}"
                        + (f" (baseline {_fmt(baseline)})" if baseline else "")
                        + f" at step {step}: the layer has almost stopped learning. Likely "
                        "cause: dead or saturated units, or a vanishing path; fix: check "
                        "activations, initialisation and residual/normalisation layers.",
                        layer=layer,
                        values={"norm": norm, "baseline": baseline},
                    ),
                )
            )
            if not bad and norm > 0:
                logs.append(log_n)
        for key, v in values.items():
            if key.startswith("updates/") and key.endswith("/update_ratio"):
                layer = key[len("updates/") : -len("/update_ratio")]
                hist = self._ratio.setdefault(layer, collections.deque(maxlen=self.ratio_patience))
                if not bad:
                    hist.append(v)
                high = len(hist) == self.ratio_patience and min(hist) > self.update_ratio_max
                out.append(
                    self._fire(
                        "update_ratio",
                        layer,
                        high,
                        lambda layer=layer, v=v: Alert(
                            "update_ratio",
                            "warning",
                            step,
                            f"update/parameter ratio of {layer} has stayed above "
                            f"{self.update_ratio_max:g} for {self.ratio_patience} steps "
                            f"(now {_fmt(v)}; about 1e-3 is typical): the learning rate is "
                            "likely too high for this layer.",
                            layer=layer,
                            values={"update_ratio": v},
                        ),
                    )
                )
            elif key.startswith("acts/") and key.endswith("/saturation_frac"):
                layer = key[len("acts/") : -len("/saturation_frac")]
                hist = self._sat.setdefault(layer, collections.deque(maxlen=self.ratio_patience))
                hist.append(v)
                mean = sum(hist) / len(hist)
                high = len(hist) == self.ratio_patience and mean * 100 > self.saturation_pct
                out.append(
                    self._fire(
                        "saturation",
                        layer,
                        high,
                        lambda layer=layer, mean=mean: Alert(
                            "saturation",
                            "warning",
                            step,
                            f"{mean:.0%} of the activations of {layer} are saturated "
                            f"(mean over {self.ratio_patience} steps): their gradients "
                            "vanish. Fix: lower the learning rate, normalise the inputs of "
                            "the layer, or use a non-saturating activation.",
                            layer=layer,
                            values={"saturation_frac": mean},
                        ),
                    )
                )
        return out

    def _check_dead(self, step, values, _):
        if values.get("health/dead_batches") != self.dead_window:
            return ()
        layers = [k[len("health/dead/") :] for k in values if k.startswith("health/dead/")]
        chosen = (
            [layer for layer in layers if layer in self.dead_layers]
            if self.dead_layers is not None
            else layers[:-1]  # the last probed layer is the network's output
        )
        out = []
        for layer in chosen:
            frac = values[f"health/dead/{layer}"]
            out.append(
                self._fire(
                    "dead_units",
                    layer,
                    frac * 100 > self.dead_neuron_pct,
                    lambda layer=layer, frac=frac: Alert(
                        "dead_units",
                        "warning",
                        step,
                        f"{frac:.0%} of the units of {layer} were never active over the last "
                        f"{self.dead_window} batches (threshold {self.dead_neuron_pct:g}%): "
                        "dead ReLUs. Likely cause: a learning rate too high; fix: lower it, "
                        "or use leaky_relu/gelu and check the initialisation.",
                        layer=layer,
                        values={"dead_frac": frac, "batches": self.dead_window},
                    ),
                )
            )
        return out

    def _check_validation(self, step, values, _):
        train = values.get(self.train_key)
        if train is not None and math.isfinite(train):
            self._train_losses.append(train)
        val = values.get(self.monitor)
        if val is None or not math.isfinite(val):
            return ()
        out = []
        # Stagnation, with Keras EarlyStopping semantics: the best moves only on an
        # improvement larger than stagnation_eps (min_delta).
        if self._keras_best is None or val < self._keras_best - self.stagnation_eps:
            self._keras_best = val
            self._wait = 0
        else:
            self._wait += 1
        if self._wait >= self.patience:
            self._wait = 0  # re-armed: a further `patience` checks before the next alert
            out.append(
                Alert(
                    "stagnation",
                    "info",
                    step,
                    f"{self.monitor} has not improved by more than {self.stagnation_eps:g} "
                    f"for {self.patience} checks (best {_fmt(self._keras_best)}): consider early "
                    "stopping or a lower learning rate.",
                    values={"best": self._keras_best, "value": val},
                )
            )
        self._best = val if self._best is None else min(self._best, val)
        gl = 100.0 * (val / self._best - 1.0) if self._best > 0 else 0.0
        self._gl_high = self._gl_high + 1 if gl > self.generalization_loss else 0
        out.append(
            self._fire(
                "overfitting",
                None,
                self._gl_high >= self.overfit_patience,
                lambda: Alert(
                    "overfitting",
                    "info",
                    step,
                    f"{self.monitor} = {_fmt(val)} is {gl:.1f}% above its best "
                    f"{_fmt(self._best)}, and has stayed above it by more than "
                    f"{self.generalization_loss:g}% for {self._gl_high} checks (Prechelt's "
                    "generalization loss): the model is overfitting. Fix: stop early (restore "
                    "the best checkpoint), add regularisation or data.",
                    values={"generalization_loss": gl, "best": self._best, "value": val},
                ),
            )
        )
        if self.overfit_ratio is not None and self._train_losses:
            train_mean = sum(self._train_losses) / len(self._train_losses)
            ratio = val / train_mean if train_mean > 0 else math.inf
            out.append(
                self._fire(
                    "overfit_ratio",
                    None,
                    ratio > self.overfit_ratio,
                    lambda: Alert(
                        "overfit_ratio",
                        "warning",
                        step,
                        f"{self.monitor} / {self.train_key} = {ratio:.2f} exceeds "
                        f"overfit_ratio={self.overfit_ratio:g}.",
                        values={"ratio": ratio, "val": val, "train": train_mean},
                    ),
                )
            )
        self._train_losses.clear()
        return out


def _layer_of(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else path


def _fmt(x: Any) -> str:
    if x is None:
        return "?"
    x = float(x)
    if not math.isfinite(x):
        return str(x)
    return f"{x:.3g}"
