"""Checks of constructor settings: one table per class instead of loops of repeated tests.

No JAX here, like `keys`: any layer may use it.

Example:
  >>> check_settings("Box", {"size": 0}, {"size": POSITIVE_INT})
  Traceback (most recent call last):
  ...
  ValueError: Box(size=0): must be a positive integer
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "ABOVE_ONE",
    "LOSS_SPIKE_SETTINGS",
    "NON_NEGATIVE",
    "NON_NEGATIVE_INT",
    "PERCENTAGE",
    "POSITIVE_INT",
    "POSITIVE_NUMBER",
    "Requirement",
    "check_settings",
    "optional",
]


@dataclasses.dataclass(frozen=True)
class Requirement:
    """What a setting must be: a test and the words that say it (``must be ...``)."""

    what: str
    test: Callable[[Any], bool]


def is_integer(v: Any) -> bool:
    """An ``int`` that is not a ``bool``."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """An ``int`` or ``float`` that is not a ``bool`` (NaN included: compare it)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


POSITIVE_INT = Requirement("must be a positive integer", lambda v: is_integer(v) and v >= 1)
POSITIVE_NUMBER = Requirement("must be a positive number", lambda v: is_number(v) and v > 0)
NON_NEGATIVE_INT = Requirement("must be an integer >= 0", lambda v: is_integer(v) and v >= 0)
NON_NEGATIVE = Requirement("must be a number >= 0", lambda v: is_number(v) and v >= 0)
PERCENTAGE = Requirement("a percentage in [0, 100]", lambda v: is_number(v) and 0 <= v <= 100)
ABOVE_ONE = Requirement("must be a number > 1", lambda v: is_number(v) and v > 1)


def optional(requirement: Requirement) -> Requirement:
    """``requirement``, or None (the setting is off)."""
    return Requirement(f"{requirement.what}, or None", lambda v: v is None or requirement.test(v))


# Seed 001's loss trigger (``HealthChecker(spike_factor=, spike_window=)``, and the rule
# `LossSpike(factor=, window=)` on its own): the names are the rule's.
LOSS_SPIKE_SETTINGS: dict[str, Requirement] = {
    "factor": optional(ABOVE_ONE),
    "window": POSITIVE_INT,
}


def check_settings(owner: str, settings: Any, table: Mapping[str, Requirement]) -> None:
    """Check each setting named in ``table`` (in table order) against its requirement.

    Args:
      owner: The class, as the message names it (``HealthChecker``).
      settings: An object with the settings as attributes, or a mapping of them.
      table: Setting name -> `Requirement`.

    Raises:
      ValueError: For the first setting that fails, naming it, its value and what it must be.
    """
    get = settings.get if isinstance(settings, Mapping) else lambda n: getattr(settings, n)
    for name, requirement in table.items():
        value = get(name)
        if not requirement.test(value):
            raise ValueError(f"{owner}({name}={value!r}): {requirement.what}")
