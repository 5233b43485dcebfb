"""The host health rules, one object each; `HealthChecker` composes them (see
`jaxobs._src.host.checker.default_rules`)."""

from jaxobs._src.host.rules.base import BaseRule, Episodes, Rule
from jaxobs._src.host.rules.layers import DeadUnits, LayerGradients, Saturation, UpdateRatio
from jaxobs._src.host.rules.validation import Overfitting, Stagnation
from jaxobs._src.host.rules.verdicts import GuardVerdicts, InitLoss, LossSpike

__all__ = [
    "BaseRule",
    "DeadUnits",
    "Episodes",
    "GuardVerdicts",
    "InitLoss",
    "LayerGradients",
    "LossSpike",
    "Overfitting",
    "Rule",
    "Saturation",
    "Stagnation",
    "UpdateRatio",
]
