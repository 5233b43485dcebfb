r"""Run health: the on-device guard, the host rules, and the alerts they raise.

Two halves, on either side of the transport:

- **The guard** (`guard_init`, `guard_update`): pure functions that run inside the jitted
  step on a `GuardState` that `jaxobs.observe` threads through it. They decide, before the
  update lands, whether this step is *bad*: a non-finite loss, gradient or new parameter;
  an early blow-up (loss or gradient norm far above its step-0 value before a baseline
  exists); or a spike (a one-sided robust z-score of log loss or log gradient norm against
  a window of accepted, finite steps: ``(x - median) / (1.4826 * MAD)``). A bad step never
  enters the window, so one NaN cannot poison the baseline. With ``action="skip"`` the step
  leaves parameters and optimizer state unchanged (`jax.lax.cond`) and training goes on.
- **The rules** (`HealthChecker.check`): host-side, on each step's record as it arrives
  (one step late; the device never waits), one object per rule (`InitLoss`,
  `GuardVerdicts`, `LayerGradients`, `LossSpike`, `UpdateRatio`, `Saturation`,
  `DeadUnits`, `Stagnation`, `Overfitting`; `default_rules` builds them), run in order.
  They turn the guard's verdicts into `Alert`\ s and add the per-layer rules (exploding/vanishing
  gradients, dead units, saturation, update/parameter ratio) and the validation rules
  (stagnation, overfitting). `GuardConfig` is what the guard sees of a checker.

The thresholds come from measurements on the scikit-learn digits (healthy runs raise no
alert of severity warning or higher); see the health page of the docs.
"""

from jaxobs._src.device.guard import GuardConfig, GuardState, guard_init, guard_update, robust_z
from jaxobs._src.host.actions import ActionPolicy, RollbackRequest
from jaxobs._src.host.alerts import ACTIONS, SEVERITIES, Alert, TrainingHalted
from jaxobs._src.host.checker import HealthChecker, default_rules
from jaxobs._src.host.rules import (
    BaseRule,
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

__all__ = [
    "ACTIONS",
    "SEVERITIES",
    "ActionPolicy",
    "Alert",
    "BaseRule",
    "DeadUnits",
    "Episodes",
    "GuardConfig",
    "GuardState",
    "GuardVerdicts",
    "HealthChecker",
    "InitLoss",
    "LayerGradients",
    "LossSpike",
    "Overfitting",
    "RollbackRequest",
    "Rule",
    "Saturation",
    "Stagnation",
    "TrainingHalted",
    "UpdateRatio",
    "default_rules",
    "guard_init",
    "guard_update",
    "robust_z",
]
