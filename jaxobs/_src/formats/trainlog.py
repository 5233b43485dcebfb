"""The TrainLog format: the stable JSON file a run lowers to (``trainlog.json``).

- `Series`: one named scalar metric as stored in a file.
- `RunInfo`: the run's metadata and config; `Artifact`: a file the run produced.
- `TrainLog`: the persisted log (title, steps, series, notes, run metadata, artifacts, the
  user's summary);
  `TrainLog.write_json` and `TrainLog.read_json` are the codec, `TrainLog.dumps` the
  canonical text.
- `schema_path`: the JSON Schema shipped with the package.

The builders that produce a TrainLog (`Curve`, `MetricHistory`, `ExperimentLog`) are in
`jaxobs._src.formats.experiment`.

The format is specified in ``docs/trainlog-format.md``. In short: finite floats are JSON
numbers, non-finite ones the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``; missing
optional fields take their defaults; unknown keys are kept and written back; a file of a
newer major ``schema_version`` is refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Iterable
from typing import Any

import numpy as np

from jaxobs._src.formats.codec import (
    PathLike,
    dumps,
    encode_float,
    encode_tree,
    load_json_file,
    write_text_atomic,
)
from jaxobs._src.formats.config import scalar, to_config
from jaxobs._src.formats.errors import TrainLogError
from jaxobs._src.formats.fields import (
    REQUIRED,
    TRAINLOG_FORMAT,
    FieldReader,
    check_format,
    check_version,
)

SCHEMA_VERSION = "1.1"

# The version a file without ``schema_version`` has, and the first one with ``summary``.
LEGACY_VERSION = "1.0"
SUMMARY_VERSION = (1, 1)


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def check_summary(summary: Any, where: str = "summary") -> dict[str, Any]:
    """``summary`` as plain JSON (the rules of `jaxobs.to_config`), its keys checked.

    Raises:
      TypeError: not a mapping, or a key that is not a non-empty string; a value that
        cannot be stored (`jaxobs.ConfigError`, a TypeError), naming ``<where>.<key>``.
      ValueError: a key that is not valid UTF-8.
    """
    if not isinstance(summary, dict):
        raise TypeError(f"{where} must be a mapping of names to values, got {summary!r}")
    out = {}
    for key, value in summary.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"{where} keys must be non-empty strings, got {key!r}")
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                f"{where} key {key!r} is not valid UTF-8 (a lone surrogate?)"
            ) from None
        out[key] = to_config(value, f"{where}.{key}")
    return out


def schema_path() -> pathlib.Path:
    """Path of the JSON Schema of the TrainLog format shipped inside the package."""
    return pathlib.Path(__file__).parents[2] / "schema" / "trainlog-v1.schema.json"


class JsonEq:
    """Equality by JSON form, so that NaN equals NaN and -0.0 differs from 0.0."""

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return dumps(self.to_json()) == dumps(other.to_json())

    # Compared by value and mutable, so unhashable; typeshed declares `__hash__` as a method,
    # and the standard `__hash__ = None` spelling is not expressible without the ignore.
    __hash__ = None  # type: ignore[assignment]


def as_steps(steps: Iterable[Any] | None, where: str) -> list[int] | None:
    if steps is None:
        return None
    out = []
    for s in steps:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
            raise TypeError(f"{where}: steps must be integers, got {type(s).__name__}: {s!r}")
        out.append(int(s))
    return out


def check_step(step: Any, where: str) -> int:
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        raise TypeError(f"{where}: step must be an integer, got {type(step).__name__}: {step!r}")
    return int(step)


@dataclasses.dataclass(eq=False)
class Series(JsonEq):
    """One named scalar metric as it is stored in a `TrainLog`.

    Attributes:
      name: The metric's key, ``/``-joined (``train/loss``, ``grads/Dense_0/kernel/norm``).
      values: The values, as floats (NaN and infinities allowed).
      steps: The step of each value. ``None`` means the TrainLog's shared ``steps`` (or
        ``0..n-1`` when it has none).
      color: An optional display color for viewers (``"#1f77b4"``, ``"red"``).
      extra: Keys from a file that this version does not know; written back unchanged.
    """

    name: str
    values: list[float]
    steps: list[int] | None = None
    color: str = ""
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(f"Series name must be a string, got {type(self.name).__name__}")
        self.values = [scalar(v, self.name) for v in self.values]
        self.steps = as_steps(self.steps, f"series {self.name!r}")
        if self.steps is not None and len(self.steps) != len(self.values):
            raise ValueError(
                f"series {self.name!r}: {len(self.steps)} steps but {len(self.values)} values"
            )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.steps is not None:
            out["steps"] = list(self.steps)
        out["values"] = [encode_float(v) for v in self.values]
        if self.color:
            out["color"] = self.color
        out.update(encode_tree(self.extra))
        return out

    @classmethod
    def from_json(cls, data: Any, where: str = "series", source: str = "<data>") -> Series:
        r = FieldReader(data, where, source)
        return r.build(
            cls,
            name=r.string("name", REQUIRED),
            values=r.floats("values"),
            steps=r.ints("steps", None),
            color=r.string("color"),
        )


@dataclasses.dataclass(eq=False)
class RunInfo(JsonEq):
    """Metadata of one run, close to the W&B mental model; performs no I/O.

    ``config`` is converted to plain JSON on construction (see `jaxobs.to_config` rules:
    dataclasses, NumPy/jax scalars and small arrays, paths, enums, tuples); values under
    secret-looking keys (``api_key``, ``token``, ``password``, ``secret``) are redacted.

    Attributes:
      project: Project or collection name.
      name: Display name; a `TrainLog` lowered from this run takes it as its title.
      run_id: Stable identifier of the run.
      group: Optional group or sweep name.
      tags: Free-form tags.
      config: Hyperparameters and data/runtime choices.
      extra: Keys from a file that this version does not know; written back unchanged.
    """

    project: str = ""
    name: str = ""
    run_id: str = ""
    group: str = ""
    tags: list[str] = dataclasses.field(default_factory=list)
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for field in ("project", "name", "run_id", "group"):
            if not isinstance(getattr(self, field), str):
                raise TypeError(f"RunInfo.{field} must be a string, got {getattr(self, field)!r}")
        if isinstance(self.tags, str):
            raise TypeError(f"RunInfo.tags must be a list of strings, got the string {self.tags!r}")
        self.tags = [str(t) for t in self.tags]
        config = to_config(dict(self.config or {}), "config")
        self.config = config

    def to_json(self) -> dict[str, Any]:
        out = {
            "project": self.project,
            "name": self.name,
            "run_id": self.run_id,
            "group": self.group,
            "tags": list(self.tags),
            "config": encode_tree(self.config),
        }
        out.update(encode_tree(self.extra))
        return out

    @classmethod
    def from_json(cls, data: Any, where: str = "run", source: str = "<data>") -> RunInfo:
        r = FieldReader(data, where, source)
        # Config is free-form JSON: its strings stay strings (a non-finite float in a config
        # is written as its sentinel string and read back as that string).
        config = r.get("config", dict, dict, "an object")
        return r.build(
            cls,
            project=r.string("project"),
            name=r.string("name"),
            run_id=r.string("run_id"),
            group=r.string("group"),
            tags=r.strs("tags"),
            config=config,
        )


@dataclasses.dataclass(eq=False)
class Artifact(JsonEq):
    """A file produced or consumed by a run.

    Attributes:
      name: Short name, e.g. ``"checkpoint"`` or ``"predictions_csv"``.
      path: Path of the file; relative paths are relative to the run directory.
      kind: Optional kind: ``"model"``, ``"plot"``, ``"dataset"``, ``"report"``, ...
      description: Optional human-readable description.
      extra: Keys from a file that this version does not know.
    """

    name: str
    path: str
    kind: str = ""
    description: str = ""
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"artifact name must be a non-empty string, got {self.name!r}")
        self.path = os.fspath(self.path)

    def to_json(self) -> dict[str, Any]:
        out = {"name": self.name, "path": self.path}
        if self.kind:
            out["kind"] = self.kind
        if self.description:
            out["description"] = self.description
        out.update(encode_tree(self.extra))
        return out

    @classmethod
    def from_json(cls, data: Any, where: str = "artifact", source: str = "<data>") -> Artifact:
        r = FieldReader(data, where, source)
        return r.build(
            cls,
            name=r.string("name", REQUIRED),
            path=r.string("path", REQUIRED),
            kind=r.string("kind"),
            description=r.string("description"),
        )


@dataclasses.dataclass(eq=False)
class TrainLog(JsonEq):
    """The persisted log of a training run: the stable JSON artifact.

    Attributes:
      title: Shown at the top of viewers.
      steps: Step indices shared by the series that carry no steps of their own.
      series: The metrics.
      notes: Free-form notes.
      run: Run metadata and config, when the log comes from an `ExperimentLog`.
      artifacts: Files the run produced.
      summary: The user's summary of the run (``run.summary``): names to JSON values, the
        final word on the run (``{"best_val_loss": 0.12}``). Empty in a 1.0 file.
      schema_version: The format version this log was read with or will be written as (a
        log with a summary is written as at least 1.1).
      extra: Top-level keys this version does not know; written back unchanged.

    Example:
      >>> log = TrainLog("demo", steps=[0, 1], series=[Series("loss", [1.0, float("nan")])])
      >>> TrainLog.from_json(log.to_json()) == log
      True
    """

    title: str = ""
    steps: list[int] = dataclasses.field(default_factory=list)
    series: list[Series] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    run: RunInfo | None = None
    artifacts: list[Artifact] = dataclasses.field(default_factory=list)
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)
    schema_version: str = SCHEMA_VERSION
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.steps = as_steps(self.steps, "TrainLog") or []
        self.series = list(self.series)
        if isinstance(self.notes, str):
            raise TypeError(
                f"TrainLog.notes must be a list of strings, got the string {self.notes!r}"
            )
        self.notes = [str(n) for n in self.notes]
        self.artifacts = list(self.artifacts)
        self.summary = check_summary(self.summary)
        names = [s.name for s in self.series]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"TrainLog {self.title!r}: series names repeat: {dup}")
        for s in self.series:
            if s.steps is None and self.steps and len(s.values) != len(self.steps):
                raise ValueError(
                    f"series {s.name!r} has {len(s.values)} values but the log's shared steps "
                    f"has {len(self.steps)}; give the series its own steps"
                )

    @classmethod
    def two_point(
        cls, initial_loss: float, final_loss: float, steps: int, title: str = "loss"
    ) -> TrainLog:
        """A two-point loss log: the loss at step 0 and after ``steps`` updates."""
        return cls(
            title=title, steps=[0, int(steps)], series=[Series("loss", [initial_loss, final_loss])]
        )

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.series]

    def __getitem__(self, name: str) -> Series:
        for s in self.series:
            if s.name == name:
                return s
        raise KeyError(f"no series named {name!r} in TrainLog {self.title!r}; have {self.names}")

    def steps_of(self, series: Series | str) -> list[int]:
        """The step of each value of ``series``, resolving shared and implicit steps."""
        s = self[series] if isinstance(series, str) else series
        if s.steps is not None:
            return list(s.steps)
        return list(self.steps) if self.steps else list(range(len(s.values)))

    # -- codec

    def to_json(self) -> dict[str, Any]:
        version = self.schema_version
        if self.summary and _version_tuple(version) < SUMMARY_VERSION:
            version = ".".join(map(str, SUMMARY_VERSION))  # a 1.0 reader would drop it
        out: dict[str, Any] = {
            "schema_version": version,
            "format": TRAINLOG_FORMAT,
            "title": self.title,
        }
        if self.run is not None:
            out["run"] = self.run.to_json()
        out["steps"] = list(self.steps)
        out["series"] = [s.to_json() for s in self.series]
        out["notes"] = list(self.notes)
        out["artifacts"] = [a.to_json() for a in self.artifacts]
        if self.summary:
            out["summary"] = encode_tree(self.summary)
        out.update(encode_tree(self.extra))
        return out

    @classmethod
    def from_json(cls, data: Any, source: str = "<data>") -> TrainLog:
        """Decode a TrainLog from parsed JSON; ``source`` names it in error messages.

        Raises:
          SchemaVersionError: the data has a newer major ``schema_version``.
          TrainLogError: the data does not have the TrainLog form; the message names the field.
        """
        version = check_version(data, source, "TrainLog", current=SCHEMA_VERSION)
        if "schema_version" not in data:
            version = LEGACY_VERSION  # written before versions were
        check_format(data, source, TRAINLOG_FORMAT, what="a TrainLog", default=TRAINLOG_FORMAT)
        r = FieldReader(data, "", source)
        r.seen.update({"schema_version", "format"})
        series_data = r.get("series", list, list, "a list of series objects")
        run_data = r.get("run", dict, None, "an object")
        artifacts = r.get("artifacts", list, list, "a list of artifact objects")
        # Free-form JSON like a config: its strings stay strings.
        summary = r.get("summary", dict, dict, "an object of summary values")
        try:
            return cls(
                title=r.string("title"),
                steps=r.ints("steps"),
                series=[
                    Series.from_json(s, f"series[{i}]", source) for i, s in enumerate(series_data)
                ],
                notes=r.strs("notes"),
                run=None if run_data is None else RunInfo.from_json(run_data, "run", source),
                artifacts=[
                    Artifact.from_json(a, f"artifacts[{i}]", source)
                    for i, a in enumerate(artifacts)
                ],
                summary=summary,
                schema_version=version,
                extra=r.rest(),
            )
        except (TypeError, ValueError) as e:
            if isinstance(e, TrainLogError):
                raise
            raise TrainLogError(f"{source}: {e}") from None

    def dumps(self) -> str:
        """The canonical JSON text: one top-level key per line, one series per line."""
        data = self.to_json()
        lines = []
        for key, value in data.items():
            if key == "series" and value:
                inner = ",\n".join(f"    {dumps(s)}" for s in value)
                lines.append(f'  "series": [\n{inner}\n  ]')
            else:
                lines.append(f"  {dumps(key)}: {dumps(value)}")
        return "{\n" + ",\n".join(lines) + "\n}\n"

    @classmethod
    def loads(cls, text: str, source: str = "<string>") -> TrainLog:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise TrainLogError(
                f"{source}:{e.lineno}:{e.colno}: not valid JSON ({e.msg})"
            ) from None
        return cls.from_json(data, source)

    def write_json(self, path: PathLike) -> pathlib.Path:
        """Write the log to ``path`` (parents created; atomic replace). Returns the path."""
        return write_text_atomic(path, self.dumps())

    @classmethod
    def read_json(cls, path: PathLike) -> TrainLog:
        """Read a log written by `write_json` (or by any writer of the documented format)."""
        return cls.from_json(load_json_file(path), str(path))
