"""What every host rule shares: the `Rule` protocol, a `BaseRule`, and `Episodes`.

A rule is a small object with its own state and ``check(step, values) -> list[Alert]``; a
`HealthChecker` runs its rules in order on each record, like structlog's processor chain,
and owns what they share: the alert episodes, severity overrides, the alert list and the
action policy.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

from jaxobs._src.host.alerts import Alert

__all__ = ["BaseRule", "Episodes", "Rule", "logged_value"]


@runtime_checkable
class Rule(Protocol):
    """A host health rule.

    ``check`` sees each record once, in step order (``values``: the record's keys in the
    order it carries them), and returns the alerts it raises for it; ``reset`` forgets
    everything it has seen.
    """

    def check(self, step: int, values: Mapping[str, float]) -> list[Alert]: ...

    def reset(self) -> None: ...


class Episodes:
    """Fire once per episode: an alert is raised when its condition becomes true, and the
    rule is re-armed when the condition is false again. Keyed by ``(rule, layer)``."""

    def __init__(self) -> None:
        self.firing: set[tuple[str, str | None]] = set()

    def fire(
        self, rule: str, layer: str | None, cond: bool, alert: Callable[..., Alert]
    ) -> list[Alert]:
        """``[alert()]`` when ``cond`` has just become true for ``(rule, layer)``, else [].

        ``alert`` is called only then, so a costly message is built once per episode.
        """
        key = (rule, layer)
        if not cond:
            self.firing.discard(key)
            return []
        if key in self.firing:
            return []
        self.firing.add(key)
        return [alert()]

    def forget(self, rules: Iterable[str]) -> None:
        """Re-arm every episode of ``rules``."""
        names = set(rules)
        self.firing = {key for key in self.firing if key[0] not in names}

    def clear(self) -> None:
        """Re-arm every episode."""
        self.firing.clear()


@dataclasses.dataclass(kw_only=True, eq=False)
class BaseRule:
    """A rule whose alerts fire once per episode.

    Subclasses name the alerts they raise in ``fires`` and implement ``check``; those with
    state of their own extend ``reset``.

    Attributes:
      episodes: The episodes it fires through: the checker's (shared by all its rules), or
        its own when it is used alone.
    """

    fires: ClassVar[tuple[str, ...]] = ()
    episodes: Episodes = dataclasses.field(default_factory=Episodes, repr=False)

    def check(self, step: int, values: Mapping[str, float]) -> list[Alert]:
        """The alerts this rule raises for the record of ``step``."""
        raise NotImplementedError

    def reset(self) -> None:
        """Forget what this rule has seen, and re-arm its episodes."""
        self.episodes.forget(self.fires)

    def fire(
        self, rule: str, layer: str | None, cond: bool, alert: Callable[..., Alert]
    ) -> list[Alert]:
        """See `Episodes.fire`."""
        return self.episodes.fire(rule, layer, cond, alert)


def logged_value(values: Mapping[str, float], keys: Sequence[str]) -> tuple[str, Any] | None:
    """The first of ``keys`` that the record holds, with its value; None when none is."""
    for key in keys:
        if key in values:
            return key, values[key]
    return None


def is_finite(x: Any) -> bool:
    """Whether ``x`` is a finite number."""
    return math.isfinite(float(x))
