"""Alerts: what a health rule finds, and the exception that stops training."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

# Severities, least to most severe. They are plain strings because they are written into
# files (events, crash dumps); compare with these names, not with literals.
INFO = "info"
WARNING = "warning"
DANGER = "danger"
CRITICAL = "critical"  # writes a crash dump
SEVERITIES = (INFO, WARNING, DANGER, CRITICAL)
# Severities as numbers (1-4) for trackers that plot them.
SEVERITY_CODE = {name: i for i, name in enumerate(SEVERITIES, start=1)}

# What a bad step leads to (``HealthChecker(action=...)``; see `ActionPolicy`).
WARN = "warn"
SKIP = "skip"
HALT = "halt"
ROLLBACK = "rollback"
ACTIONS = (WARN, SKIP, HALT, ROLLBACK)


@dataclasses.dataclass(frozen=True)
class Alert:
    """One finding of a health rule.

    Attributes:
      rule: The rule's name (``nonfinite``, ``spike``, ``dead_units``, ...).
      severity: ``info``, ``warning``, ``danger`` or ``critical``.
      step: The step it concerns.
      message: One line: what happened, the likely cause and the fix.
      layer: The layer concerned, when there is one.
      values: The numbers that triggered it.
    """

    rule: str
    severity: str
    step: int
    message: str
    layer: str | None = None
    values: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        from jaxobs._src.formats.codec import encode_tree

        return {
            "rule": self.rule,
            "severity": self.severity,
            "step": self.step,
            "layer": self.layer,
            "message": self.message,
            "values": encode_tree({k: _plain(v) for k, v in self.values.items()}),
        }


def _plain(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


class TrainingHalted(RuntimeError):
    """Raised by an observed step after a critical alert when the checker's action is
    ``halt`` (or when skipping or rolling back could not save the run).

    Attributes:
      alert: The alert that stopped training.
      dump_path: The crash dump written for it (None when none could be written).
    """

    def __init__(self, alert: Alert, dump_path: Any = None):
        where = f"; crash dump: {dump_path}" if dump_path else ""
        super().__init__(f"training halted at step {alert.step}: {alert.message}{where}")
        self.alert = alert
        self.dump_path = dump_path
