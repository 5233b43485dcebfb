"""Builders of a run's record in memory, each lowering to the stable `TrainLog`.

- `Curve`: one metric over steps; `MetricHistory`: several metrics logged in aligned rows.
- `ExperimentLog`: a W&B-shaped record (`RunInfo`, a `MetricHistory`, `Artifact` files,
  notes, the user's summary) with `ExperimentLog.to_trainlog` and its inverse
  `ExperimentLog.from_trainlog`.

`RunInfo` and `Artifact` are defined with the format in `jaxobs._src.formats.trainlog` and
importable from here too. Nothing here reads or writes a file except through `TrainLog`.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from jaxobs._src.formats.codec import PathLike
from jaxobs._src.formats.config import scalar
from jaxobs._src.formats.trainlog import (
    Artifact,
    JsonEq,
    RunInfo,
    Series,
    TrainLog,
    as_steps,
    check_step,
)

__all__ = ["Artifact", "Curve", "ExperimentLog", "MetricHistory", "RunInfo"]


@dataclasses.dataclass(eq=False)
class Curve(JsonEq):
    """A builder for one scalar metric over steps.

    Example:
      >>> c = Curve("train/loss")
      >>> c.append(2.3); c.append(1.9); c.append(1.2, step=10)
      >>> c.steps, c.values
      ([0, 1, 10], [2.3, 1.9, 1.2])
    """

    name: str
    steps: list[int] = dataclasses.field(default_factory=list)
    values: list[float] = dataclasses.field(default_factory=list)
    color: str = ""
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.steps = as_steps(self.steps, f"curve {self.name!r}") or []
        self.values = [scalar(v, self.name) for v in self.values]
        if len(self.steps) != len(self.values):
            raise ValueError(
                f"curve {self.name!r}: {len(self.steps)} steps but {len(self.values)} values"
            )

    def __len__(self) -> int:
        return len(self.values)

    @property
    def next_step(self) -> int:
        """The step a value appended without one gets: one past the last step, or 0."""
        return self.steps[-1] + 1 if self.steps else 0

    def append(self, value: Any, step: int | None = None) -> None:
        """Append one value at ``step`` (default: `next_step`)."""
        step = self.next_step if step is None else check_step(step, f"curve {self.name!r}")
        self.values.append(scalar(value, self.name))
        self.steps.append(step)

    def to_series(self) -> Series:
        return Series(self.name, list(self.values), list(self.steps), self.color, dict(self.extra))

    def to_json(self) -> dict[str, Any]:
        return self.to_series().to_json()

    def to_trainlog(self, title: str = "") -> TrainLog:
        """A one-series `TrainLog`, titled ``title`` (default: the curve's name)."""
        return TrainLog(
            title=title or self.name,
            steps=list(self.steps),
            series=[Series(self.name, list(self.values), color=self.color)],
        )


class MetricHistory(JsonEq):
    """A builder for several metrics logged together, row by row.

    Rows are aligned: `append` takes one value per metric (a sequence in the order of
    `names`, or a mapping by name) at one step. A sequence of the wrong width raises a
    `ValueError`; nothing is silently dropped. Single values (`log`) may also be logged at
    their own cadence, e.g. validation every 100 steps beside training every step.

    Example:
      >>> h = MetricHistory(["loss", "accuracy"])
      >>> h.append([0.9, 0.5])  # returns the step used
      0
      >>> h.append({"loss": 0.7, "accuracy": 0.6}, step=1)
      1
      >>> h.curves["loss"].values
      [0.9, 0.7]
    """

    def __init__(self, names: Iterable[str] = (), colors: Mapping[str, str] | None = None):
        self.curves: dict[str, Curve] = {}
        colors = dict(colors or {})
        for name in names:
            self.add_metric(name, colors.get(name, ""))

    @property
    def names(self) -> list[str]:
        """The metric names, in the order they were added."""
        return list(self.curves)

    @property
    def next_step(self) -> int:
        """One past the largest step logged so far (0 for an empty history)."""
        return max((max(c.steps) + 1 for c in self.curves.values() if c.steps), default=0)

    def add_metric(self, name: str, color: str = "") -> Curve:
        """Add a metric (no-op if present) and return its curve."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"metric names must be non-empty strings, got {name!r}")
        if name not in self.curves:
            self.curves[name] = Curve(name, color=color)
        return self.curves[name]

    def append(self, values: Sequence[Any] | Mapping[str, Any], step: int | None = None) -> int:
        """Append one aligned row at ``step`` (default: `next_step`) and return the step.

        Raises:
          ValueError: a sequence row whose length is not the number of metrics.
        """
        step = self.next_step if step is None else check_step(step, "row")
        if isinstance(values, Mapping):
            row = {str(k): v for k, v in values.items()}
        else:
            values = list(values)
            if len(values) != len(self.curves):
                raise ValueError(
                    f"row at step {step} has {len(values)} values but the history has "
                    f"{len(self.curves)} metrics {self.names}; pass a dict to log a subset"
                )
            row = dict(zip(self.curves, values, strict=True))
        for name in row:  # validate the whole row before changing anything
            if not name:
                raise ValueError(f"row at step {step}: metric names must be non-empty strings")
        converted = {name: scalar(v, name) for name, v in row.items()}
        for name, value in converted.items():
            self.add_metric(name).append(value, step)
        return step

    def log(self, name: str, value: Any, step: int | None = None) -> int:
        """Append a single value of one metric; new names are added. Returns the step."""
        curve = self.add_metric(name)
        step = curve.next_step if step is None else check_step(step, f"metric {name!r}")
        curve.append(value, step)
        return step

    def to_series(self) -> tuple[list[int], list[Series]]:
        """Shared steps and series: shared when every metric has the same steps."""
        curves = list(self.curves.values())
        if curves and all(c.steps == curves[0].steps for c in curves):
            return list(curves[0].steps), [
                Series(c.name, list(c.values), color=c.color, extra=dict(c.extra)) for c in curves
            ]
        return [], [c.to_series() for c in curves]

    def to_trainlog(self, title: str = "") -> TrainLog:
        steps, series = self.to_series()
        return TrainLog(title=title, steps=steps, series=series)

    def to_json(self) -> dict[str, Any]:
        return self.to_trainlog().to_json()

    @classmethod
    def from_series(cls, steps: Sequence[int], series: Iterable[Series]) -> MetricHistory:
        """Rebuild a history from stored series (the inverse of `to_series`)."""
        history = cls()
        for s in series:
            s_steps = (
                s.steps
                if s.steps is not None
                else (list(steps) if steps else list(range(len(s.values))))
            )
            history.curves[s.name] = Curve(
                s.name, list(s_steps), list(s.values), s.color, dict(s.extra)
            )
        return history


@dataclasses.dataclass(eq=False)
class ExperimentLog(JsonEq):
    """A W&B-shaped local experiment record that lowers to a `TrainLog`.

    ``summary`` is the user's summary of the run (``run.summary``: names to JSON values,
    the TrainLog's ``summary``); `read_run` fills it from the run's ``summary`` records.

    Example:
      >>> exp = ExperimentLog(run=RunInfo(project="digits", name="cnn", config={"lr": 0.05}))
      >>> exp.log_metric("train/loss", 2.3)  # returns the step used
      0
      >>> exp.log_row({"val/loss": 2.1, "val/accuracy": 0.2}, step=0)
      0
      >>> exp.to_trainlog().title
      'cnn'
    """

    run: RunInfo = dataclasses.field(default_factory=RunInfo)
    history: MetricHistory = dataclasses.field(default_factory=MetricHistory)
    artifacts: list[Artifact] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    title: str = ""
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)

    def log_metric(self, name: str, value: Any, step: int | None = None) -> int:
        """Append one scalar; new metric names are added lazily. Returns the step used.

        Without a step, the value goes to the history's next step (`MetricHistory.next_step`:
        one past the largest step logged so far, by `log_metric` or `log_row`, any metric),
        as `log_row` does and a W&B ``log`` call would: a metric logged for the first time
        after 100 rows lands at step 100, not 0.
        """
        return self.history.log(name, value, self.history.next_step if step is None else step)

    def log_row(self, values: Sequence[Any] | Mapping[str, Any], step: int | None = None) -> int:
        """Append one aligned row (see `MetricHistory.append`). Returns the step used."""
        return self.history.append(values, step)

    def add_artifact(
        self,
        artifact: Artifact | str,
        path: PathLike | None = None,
        kind: str = "",
        description: str = "",
    ) -> Artifact:
        """Attach a file: ``add_artifact(Artifact(...))`` or ``add_artifact(name, path, ...)``."""
        if not isinstance(artifact, Artifact):
            if path is None:
                raise TypeError(f"add_artifact({artifact!r}) needs a path")
            artifact = Artifact(artifact, os.fspath(path), kind, description)
        self.artifacts.append(artifact)
        return artifact

    def to_trainlog(self, title: str | None = None) -> TrainLog:
        """Lower to the stable `TrainLog`; the title defaults to `title`, then the run name,
        then the project."""
        steps, series = self.history.to_series()
        return TrainLog(
            title=title if title is not None else (self.title or self.run.name or self.run.project),
            steps=steps,
            series=series,
            notes=list(self.notes),
            run=self.run,
            artifacts=list(self.artifacts),
            summary=dict(self.summary),
            extra=dict(self.extra),
        )

    @classmethod
    def from_trainlog(cls, log: TrainLog) -> ExperimentLog:
        """The inverse of `to_trainlog`, up to layout: every value keeps its step, the title and
        unknown keys are kept, and steps are shared again on lowering only when every series has
        the same steps. A log without run metadata gets ``RunInfo(name=log.title)``; the lowered
        log is written with this version's ``schema_version``."""
        return cls(
            run=log.run if log.run is not None else RunInfo(name=log.title),
            history=MetricHistory.from_series(log.steps, log.series),
            artifacts=list(log.artifacts),
            notes=list(log.notes),
            title=log.title,
            extra=dict(log.extra),
            summary=dict(log.summary),
        )

    def to_json(self) -> dict[str, Any]:
        return self.to_trainlog().to_json()

    def write_json(self, path: PathLike) -> pathlib.Path:
        return self.to_trainlog().write_json(path)

    @classmethod
    def read_json(cls, path: PathLike) -> ExperimentLog:
        return cls.from_trainlog(TrainLog.read_json(path))
