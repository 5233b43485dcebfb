"""`HealthChecker`: the settings of run health, and the host rules that judge each record.

A checker holds every threshold (validated once), gives the device guard its frozen
`GuardConfig`, composes one rule object per rule (`jaxobs._src.host.rules`, built by
`default_rules`) like a processor chain, applies severity overrides and alert episodes, and
owns the skip / halt / rollback `ActionPolicy`. The rules judge any record: one from an
observed step or one logged by hand with ``run.log``. The public documentation is in
`jaxobs.health`.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from jaxobs._src.device.guard import GuardConfig, check_guard_settings
from jaxobs._src.device.validate import (
    LOSS_SPIKE_SETTINGS,
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    PERCENTAGE,
    POSITIVE_INT,
    POSITIVE_NUMBER,
    Requirement,
    check_settings,
    is_integer,
    optional,
)
from jaxobs._src.host.actions import ActionPolicy
from jaxobs._src.host.alerts import ACTIONS, ROLLBACK, SEVERITIES, WARN, Alert
from jaxobs._src.host.rules import (
    DeadUnits,
    Episodes,
    GuardVerdicts,
    InitLoss,
    LayerGradients,
    LossSpike,
    Overfitting,
    Rule,
    Saturation,
    Stagnation,
    UpdateRatio,
)

__all__ = ["HealthChecker", "default_rules"]

# `HealthChecker(rules=...)`: a function of the checker that returns its rules, or the rules.
RulesSpec = Callable[["HealthChecker"], Sequence[Rule]] | Sequence[Rule] | None

# What each setting must be, beside the guard's own (`GUARD_SETTINGS`), in checking order.
SETTINGS: dict[str, Requirement] = {
    **{
        name: POSITIVE_INT
        for name in (
            "ratio_patience",
            "patience",
            "max_skips",
            "rollback_after",
            "max_rollbacks",
            "overfit_patience",
        )
    },
    **{
        name: POSITIVE_NUMBER
        for name in ("init_loss_factor", "explode_factor", "vanish_factor", "update_ratio_max")
    },
    "dead_neuron_pct": PERCENTAGE,
    "saturation_pct": PERCENTAGE,
    "generalization_loss": NON_NEGATIVE,
    "rollback_skip_batches": NON_NEGATIVE_INT,
    "overfit_ratio": optional(NON_NEGATIVE),
    "gradient_explode_thresh": optional(NON_NEGATIVE),
    "gradient_vanish_thresh": optional(NON_NEGATIVE),
    "num_classes": optional(Requirement("an integer >= 2", lambda v: is_integer(v) and v >= 2)),
    "snapshot_every": optional(POSITIVE_INT),
    # seed 001's loss trigger: the rule's own table, under the checker's names
    **{f"spike_{name}": requirement for name, requirement in LOSS_SPIKE_SETTINGS.items()},
}


@dataclasses.dataclass(kw_only=True)
class HealthChecker:
    """Health rules and the actions they take. Pass it to ``jaxobs.observe(health=...)``,
    or attach it to a run without ``observe``: every record the run logs is judged.

    Every argument of neurogebra's ``SmartHealthChecker`` is accepted under its own name
    (``patience``, ``overfit_ratio``, ``stagnation_eps``, ``gradient_vanish_thresh``,
    ``gradient_explode_thresh``, ``dead_neuron_pct``); the defaults differ where
    measurement showed they raise false alarms (absolute gradient thresholds are off, the
    val/train loss ratio is off in favour of Prechelt's generalization loss).

    Args:
      action: What a bad step (non-finite, spike, early blow-up) does. ``"warn"``: alerts
        only; nothing halts. ``"skip"``: the step leaves parameters and optimizer state
        unchanged (on the device, before the update lands) and training goes on; after
        ``max_skips`` consecutive skips the run is halted. ``"halt"``: the first bad step
        is skipped on the device, writes a crash dump and raises `TrainingHalted` from the
        next call of the step; so does any critical alert, and a host trigger (a
        ``loss_spike``, or a layer's gradient norm above ``gradient_explode_thresh``).
        ``"rollback"``: like ``skip``, and after ``rollback_after`` consecutive skips the
        last good state (kept in host memory every ``snapshot_every`` steps) is restored;
        the data loop learns how many batches to skip from
        ``train_step.take_batches_to_skip()``. Under ``skip`` and ``rollback`` a critical
        alert halts only when the device did not skip the step it reports (a hand-logged
        NaN loss, a rule of your own): a skipped NaN step is what they are for.
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
      spike_factor: Seed 001's loss trigger (off by default): ``loss_spike`` when the loss
        is above this multiple (> 1) of its moving average over the last ``spike_window``
        accepted losses; under ``action="halt"`` it halts the run. The guard's robust
        ``spike`` rule is the one tuned against false alarms; this one is for seed 001's
        semantics.
      spike_window: Losses in ``spike_factor``'s moving average.
      explode_factor: A layer's gradient norm above this multiple of its own baseline
        (median over the last ``window`` accepted steps) is exploding.
      vanish_factor: ... below the baseline divided by this, vanishing.
      gradient_explode_thresh: Absolute per-layer gradient norm that is exploding (off);
        seed 001's gradient trigger: under ``action="halt"`` it halts the run.
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
      rules: The host rules, in the order they run: a function of the checker that returns
        them (``lambda c: [*default_rules(c), MyRule()]``), or a sequence of rule objects
        (used as given: give each checker its own). Default: `default_rules`.

    Attributes:
      chain: The rules, in the order they run on each record.
      alerts: Every alert raised so far.
      actions: The `ActionPolicy` that turns verdicts into skips, rollbacks and halts.
      episodes: The alert episodes the rules fire through (once, re-armed when clear).
      guard_config: The `GuardConfig`: all that the on-device guard sees.

    Raises:
      ValueError: For a bad setting, naming it.
      TypeError: For a positional argument (every argument is a keyword).
    """

    action: str = WARN
    num_classes: int | None = None
    loss_key: str = "loss"
    window: int = GuardConfig.window
    min_steps: int = GuardConfig.min_steps
    spike_z: float = GuardConfig.spike_z
    mad_floor: float = GuardConfig.mad_floor
    blowup_factor: float = GuardConfig.blowup_factor
    norm_blowup_factor: float = GuardConfig.norm_blowup_factor
    init_loss_factor: float = 2.0
    spike_factor: float | None = None
    spike_window: int = 50
    explode_factor: float = 100.0
    vanish_factor: float = 1000.0
    gradient_explode_thresh: float | None = None
    gradient_vanish_thresh: float | None = None
    dead_neuron_pct: float = 30.0
    dead_window: int = GuardConfig.dead_window
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
    severities: Mapping[str, str] = dataclasses.field(default_factory=dict)

    rules: RulesSpec = dataclasses.field(default=None, compare=False, repr=False)
    # The state, made by __post_init__ and `reset`:
    chain: list[Rule] = dataclasses.field(init=False, compare=False, repr=False)
    alerts: list[Alert] = dataclasses.field(init=False, compare=False, repr=False)
    actions: ActionPolicy = dataclasses.field(init=False, compare=False, repr=False)
    episodes: Episodes = dataclasses.field(init=False, compare=False, repr=False)
    _lock: Any = dataclasses.field(init=False, compare=False, repr=False)
    _diverged: Callable[[], Any] | None = dataclasses.field(
        default=None, init=False, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"HealthChecker(action={self.action!r}): choose one of {ACTIONS}")
        check_guard_settings("HealthChecker", self)
        if self.snapshot_every is None and self.action == ROLLBACK:
            self.snapshot_every = 100
        check_settings("HealthChecker", self, SETTINGS)
        self.severities = dict(self.severities or {})  # None is accepted as no overrides
        wrong = {r: v for r, v in self.severities.items() if v not in SEVERITIES}
        if wrong:
            raise ValueError(f"HealthChecker(severities={wrong}): choose from {SEVERITIES}")
        self._lock = threading.RLock()
        self.alerts, self.episodes = [], Episodes()
        self.actions = self._new_policy()
        spec = default_rules if self.rules is None else self.rules
        self.chain = list(spec(self) if callable(spec) else spec)
        not_rules = [r for r in self.chain if not isinstance(r, Rule)]
        if not_rules:
            raise TypeError(
                f"HealthChecker(rules=...): {not_rules[0]!r} is not a rule; a rule has "
                "check(step, values) -> list[Alert] and reset()"
            )

    def _new_policy(self) -> ActionPolicy:
        return ActionPolicy(
            self.action,
            max_skips=self.max_skips,
            rollback_after=self.rollback_after,
            max_rollbacks=self.max_rollbacks,
        )

    # -- settings

    def settings(self) -> dict[str, Any]:
        """The checker's settings as plain JSON data (the constructor's arguments but
        ``rules``)."""
        out = {}
        for f in dataclasses.fields(self):
            if not f.init or f.name == "rules":
                continue
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, (list, tuple)) else v
        return out

    @property
    def guard_config(self) -> GuardConfig:
        """The on-device guard's settings, frozen: what `jit` sees."""
        return GuardConfig.of(self)

    @property
    def skips_on_device(self) -> bool:
        """Whether bad steps are skipped on the device (every action but ``warn``)."""
        return self.action != WARN

    # -- host state

    def reset(self) -> None:
        """Forget everything the host rules have seen (the device guard is not affected)."""
        with self._lock:
            self.alerts = []
            self.episodes.clear()
            for rule in self.chain:
                rule.reset()
            self.actions = self._new_policy()

    def check(
        self,
        step: int,
        values: Mapping[str, float],
        diverged: Callable[[], Any] | None = None,
    ) -> list[Alert]:
        """Apply the host rules to one step's record; returns the new alerts.

        Args:
          step: The record's step.
          values: The record (``train/loss``, ``health/*``, ``grads/...``, ``val/loss``...),
            its keys in the order the record carries them: the guard's ``health/dead/*``
            values come in the network's forward order.
          diverged: Called without arguments for the first layer to diverge (the flight
            recorder's analysis) when a non-finite alert is raised.

        Returns:
          The alerts of this record, in rule order, with ``severities`` applied.
        """
        with self._lock:
            self._diverged = diverged
            try:
                found = [alert for rule in self.chain for alert in rule.check(step, values)]
            finally:
                self._diverged = None
            found = [
                dataclasses.replace(a, severity=self.severities[a.rule])
                if a.rule in self.severities
                else a
                for a in found
            ]
            halt = self.actions.halt
            if halt is not None and halt.rule in self.severities:
                self.actions.halt = next((a for a in found if a.rule == halt.rule), halt)
            self.actions.on_alerts(found)  # a critical alert may halt (see ActionPolicy)
            self.alerts.extend(found)
            return found

    # -- what the rules call back (see `default_rules`)

    def judge(
        self, step: int, *, bad: bool, alerts: Sequence[Alert] = (), on_device: bool = True
    ) -> list[Alert]:
        """Hand a step's verdict to the action policy; returns the policy's alerts (see
        `ActionPolicy.judge`). The `GuardVerdicts` rule calls it for each verdict."""
        return self.actions.judge(step, bad=bad, alerts=alerts, on_device=on_device)

    def trigger(self, alert: Alert) -> None:
        """A host trigger fired (`LossSpike`, a gradient norm above
        ``gradient_explode_thresh``): hand it to the action policy, which halts under
        ``action="halt"`` (see `ActionPolicy.trigger`)."""
        self.actions.trigger(alert)

    def first_diverged(self) -> Any:
        """The first layer to diverge, from the ``diverged`` given to the `check` in
        progress; None when none was given."""
        return self._diverged() if self._diverged is not None else None


def default_rules(checker: HealthChecker) -> list[Rule]:
    """The built-in rules, configured from ``checker``'s settings, in the order they run.

    They fire through the checker's episodes, and the guard's verdicts go to its action
    policy. Seed 001's loss trigger, `LossSpike`, is among them only when
    ``spike_factor`` is set. Add or drop rules with ``HealthChecker(rules=lambda c:
    [...])``; see the health page of the docs.
    """
    c, shared = checker, {"episodes": checker.episodes}
    spike: list[Rule] = []
    if c.spike_factor is not None:
        spike.append(
            LossSpike(
                factor=c.spike_factor,
                window=c.spike_window,
                loss_keys=("health/loss", c.train_key, c.loss_key),
                trigger=c.trigger,
                **shared,
            )
        )
    return [
        InitLoss(
            num_classes=c.num_classes,
            factor=c.init_loss_factor,
            loss_keys=("health/loss", c.train_key, c.loss_key),
            **shared,
        ),
        GuardVerdicts(
            window=c.window,
            spike_z=c.spike_z,
            skips_on_device=c.skips_on_device,
            loss_keys=(c.train_key, c.loss_key),
            judge=c.judge,
            first_diverged=c.first_diverged,
            **shared,
        ),
        LayerGradients(
            window=c.window,
            min_steps=c.min_steps,
            explode_factor=c.explode_factor,
            vanish_factor=c.vanish_factor,
            explode_thresh=c.gradient_explode_thresh,
            vanish_thresh=c.gradient_vanish_thresh,
            trigger=c.trigger,
            **shared,
        ),
        *spike,
        UpdateRatio(max_ratio=c.update_ratio_max, patience=c.ratio_patience, **shared),
        Saturation(pct=c.saturation_pct, patience=c.ratio_patience, **shared),
        DeadUnits(window=c.dead_window, pct=c.dead_neuron_pct, layers=c.dead_layers, **shared),
        Stagnation(monitor=c.monitor, patience=c.patience, eps=c.stagnation_eps, **shared),
        Overfitting(
            monitor=c.monitor,
            train_key=c.train_key,
            generalization_loss=c.generalization_loss,
            patience=c.overfit_patience,
            ratio=c.overfit_ratio,
            **shared,
        ),
    ]
