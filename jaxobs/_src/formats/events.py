"""Events and levels: the records of ``events.jsonl`` as the sinks receive them."""

from __future__ import annotations

import dataclasses
import enum
import os
import types
from collections.abc import Mapping
from typing import Any


class Level(enum.IntEnum):
    """How much a run records. An event is recorded when its level is at most the run's."""

    BASIC = 0
    DETAILED = 1
    EXPERT = 2
    DEBUG = 3

    @classmethod
    def parse(cls, value: Level | str | int) -> Level:
        """The level named by ``value`` (a `Level`, its name in any case, or its number).

        Raises:
          ValueError: no level has that name or number; the message lists them.
        """
        if isinstance(value, Level):
            return value
        if isinstance(value, str):
            try:
                return cls[value.strip().upper()]
            except KeyError:
                pass
        elif isinstance(value, int) and not isinstance(value, bool):
            try:
                return cls(value)
            except ValueError:
                pass
        names = ", ".join(m.name for m in cls)
        raise ValueError(f"unknown level {value!r}; expected one of {names}")


LEVEL_ENV = "JAXOBS_LEVEL"


DEFAULT_LEVEL = Level.DETAILED


def level_from_env(environ: Mapping[str, str] | None = None) -> Level:
    """The level named by ``JAXOBS_LEVEL`` (default DETAILED); a bad value is an error."""
    value = (os.environ if environ is None else environ).get(LEVEL_ENV, "")
    if not value.strip():
        return DEFAULT_LEVEL
    try:
        return Level.parse(value)
    except ValueError as e:
        raise ValueError(f"environment variable {LEVEL_ENV}: {e}") from None


# The known event types and their levels (read-only: a run's level decides what it records).
EVENT_LEVELS: Mapping[str, Level] = types.MappingProxyType(
    {
        "run_start": Level.BASIC,  # first record of a run: metadata, config, environment
        "run_end": Level.BASIC,  # last record: status, error, drop counts
        "metrics": Level.BASIC,  # `Run.log`: scalars at a step
        "artifact": Level.BASIC,  # a file attached to the run
        "summary": Level.BASIC,  # `Run.summary`: keys set (``summary``) or deleted (``deleted``)
        "train_start": Level.BASIC,
        "train_end": Level.BASIC,
        "epoch_start": Level.BASIC,
        "epoch_end": Level.BASIC,
        "health_check": Level.BASIC,  # an alert of the health rules (rule, severity, message)
        "crash_dump": Level.BASIC,  # the flight recorder was dumped (path, plot)
        "rollback": Level.BASIC,  # the last good state was restored
        "tracker": Level.BASIC,  # a bridge started or adopted a tracker's run (W&B id, sweep)
        "media": Level.BASIC,  # `Run.log_image(s)`, `Run.log_table`: files under media/
        "histograms": Level.DETAILED,  # `Run.log_histograms`: binned distributions at a step
        "batch_start": Level.DETAILED,
        "batch_end": Level.DETAILED,
        "layer_forward": Level.EXPERT,
        "layer_backward": Level.EXPERT,
        "gradient_computed": Level.EXPERT,
        "weight_updated": Level.EXPERT,
    }
)


CUSTOM_EVENT_LEVEL = Level.DETAILED


STREAM_TYPES = frozenset(
    {
        "metrics",
        "histograms",
        "batch_start",
        "batch_end",
        "layer_forward",
        "layer_backward",
        "gradient_computed",
        "weight_updated",
    }
)


# The fields of every record; a payload may not use them.
RECORD_FIELDS = frozenset({"event", "level", "step", "timestamp_ns"})


# The types the run records itself (`Run.log`, `Run.add_note`, ...), which `read_run` reads
# a meaning into; `check_event` refuses them.
RUN_TYPES = frozenset(
    {
        "run_start",
        "run_end",
        "metrics",
        "histograms",
        "artifact",
        "note",
        "config_update",
        "summary",
        "media",
    }
)


def check_event(event_type: Any, level: Level | str | None, payload: Mapping[str, Any]) -> Level:
    """The level of an event a user records (`Run.emit`), once its type and payload are checked.

    Args:
      event_type: The event's type: an identifier, not one of `RUN_TYPES`.
      level: Its level, or None for its entry in `EVENT_LEVELS` (`CUSTOM_EVENT_LEVEL` for a
        type not listed there).
      payload: Its payload, whose keys may not be `RECORD_FIELDS`.

    Raises:
      ValueError: a bad type, a payload key that is a record field, or an unknown level.
    """
    if not isinstance(event_type, str) or not event_type.isidentifier():
        raise ValueError(f"event type must be an identifier, got {event_type!r}")
    if event_type in RUN_TYPES:
        raise ValueError(f"{event_type!r} is recorded by the run itself; use the Run methods")
    clash = sorted(RECORD_FIELDS & set(payload))
    if clash:
        raise ValueError(
            f"emit({event_type!r}): payload keys {clash} are the record's own fields; rename them"
        )
    if level is not None:
        return Level.parse(level)
    return EVENT_LEVELS.get(event_type, CUSTOM_EVENT_LEVEL)


@dataclasses.dataclass(frozen=True)
class Event:
    """One thing that happened in a run, as sinks receive it.

    Attributes:
      type: The event type (``"epoch_end"``, ``"metrics"``, ``"health_check"``, ...).
      level: Its `Level`.
      step: The training step it belongs to, if any.
      timestamp_ns: Wall-clock time (``time.time_ns()``) when it was recorded.
      data: The payload, plain JSON data (e.g. ``{"values": {"train/loss": 0.3}}``).
    """

    type: str
    level: Level
    step: int | None
    timestamp_ns: int
    data: Mapping[str, Any]

    @property
    def epoch(self) -> int | None:
        return self.data.get("epoch")

    @property
    def severity(self) -> str | None:
        return self.data.get("severity")

    @property
    def message(self) -> str | None:
        return self.data.get("message")

    @property
    def metrics(self) -> Mapping[str, float]:
        """The scalars of a ``metrics`` event (or an event's ``metrics`` payload), else {}."""
        return self.data.get("values") or self.data.get("metrics") or {}

    def to_record(self) -> dict[str, Any]:
        """The JSON-lines record of this event."""
        out: dict[str, Any] = {"event": self.type, "level": self.level.name}
        if self.step is not None:
            out["step"] = self.step
        out["timestamp_ns"] = self.timestamp_ns
        for key, value in self.data.items():  # the payload never overrides the fields above
            out.setdefault(key, value)
        return out
