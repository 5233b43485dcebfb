"""`RunSummary`: ``run.summary``, the user's final word on a run, as W&B has it.

Every change is one ``summary`` record in ``events.jsonl`` (``{"summary": {key: value}}``
for assignments, ``{"deleted": [key]}`` for deletions), written before the call returns, so
a killed run keeps it; `jaxobs.read_run` applies them in order into the `TrainLog`'s
``summary``. It is separate from the best and last values jaxobs computes from the series.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any

from jaxobs._src.formats.trainlog import check_summary

__all__ = ["RunSummary"]


class RunSummary(MutableMapping[str, Any]):
    """The summary of a run (``run.summary``): a mapping of names to JSON values.

    Values are converted like a config (`jaxobs.to_config`: numbers, strings, booleans,
    None, lists, dicts, NumPy scalars and small arrays, ...); one that cannot be stored
    raises naming its key. Reading gives a copy of the stored value.

    Args:
      values: The stored summary (the run's own dict, changed once a change is recorded).
      record: Called with ``(assigned, deleted)`` to record a change (the run writes a
        ``summary`` record under its lock and sends it to the sinks).

    Example:
      >>> run.summary["best_val_loss"] = 0.12  # doctest: +SKIP
      >>> run.summary.update({"best_epoch": 7, "note": "early stop"})  # doctest: +SKIP
      >>> del run.summary["note"]  # doctest: +SKIP
    """

    def __init__(self, values: dict[str, Any], record: Callable[[dict[str, Any], list[str]], None]):
        self._values = values
        self._record = record

    def __getitem__(self, key: str) -> Any:
        return json.loads(json.dumps(self._values[key]))

    def __setitem__(self, key: str, value: Any) -> None:
        self.update({key: value})

    def __delitem__(self, key: str) -> None:
        if key not in self._values:
            raise KeyError(f"run.summary has no key {key!r}; it has {sorted(self._values)}")
        self._record({}, [key])
        del self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._values))

    def __len__(self) -> int:
        return len(self._values)

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        """Set several keys at once, in one ``summary`` record (all checked first)."""
        values = dict(other.items() if isinstance(other, Mapping) else other)
        values.update(kwargs)
        converted = check_summary(values, "run.summary")
        if converted:
            self._record(converted, [])
            self._values.update(converted)

    def to_dict(self) -> dict[str, Any]:
        """A copy of the summary as a plain dict."""
        return json.loads(json.dumps(self._values))

    def __repr__(self) -> str:
        return f"RunSummary({self._values!r})"
