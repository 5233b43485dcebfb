"""The data model of a training run and its stable JSON format.

The pieces, smallest first:

- `Series`: one named scalar metric as stored in a file.
- `Curve`: a builder for one metric over steps.
- `MetricHistory`: a builder for several metrics logged in aligned rows.
- `TrainLog`: the persisted artifact (title, steps, series, notes, plus run metadata and
  artifacts); `TrainLog.write_json` and `TrainLog.read_json` are the codec.
- `RunInfo`, `Artifact`, `ExperimentLog`: run metadata, config and files, lowering to a
  `TrainLog` with `ExperimentLog.to_trainlog`.
- `LogDestination`: where a routine sends its log (a JSON path, or disabled).
- `ConfusionMatrix`: a classification confusion matrix with its own small JSON codec.

The format is specified in ``docs/trainlog-format.md`` and shipped as a JSON Schema
(`schema_path`). In short: finite floats are JSON numbers, non-finite ones the strings
``"NaN"``, ``"Infinity"`` and ``"-Infinity"``; missing optional fields take their defaults;
unknown keys are kept and written back; a file of a newer major ``schema_version`` is refused.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from jaxobs import _jsonable
from jaxobs._jsonable import decode_float, encode_float

__all__ = [
    "SCHEMA_VERSION",
    "Artifact",
    "ConfusionMatrix",
    "Curve",
    "ExperimentLog",
    "LogDestination",
    "MetricHistory",
    "RunInfo",
    "SchemaVersionError",
    "Series",
    "TrainLog",
    "TrainLogError",
    "schema_path",
]

SCHEMA_VERSION = "1.0"
TRAINLOG_FORMAT = "jaxobs.trainlog"
CONFUSION_FORMAT = "jaxobs.confusion_matrix"
_MAJOR = int(SCHEMA_VERSION.split(".")[0])

PathLike = str | os.PathLike


class TrainLogError(ValueError):
    """A TrainLog (or confusion matrix) file or dict does not have the expected form."""


class SchemaVersionError(TrainLogError):
    """The data was written by a newer major version of the format than this jaxobs reads."""


def schema_path() -> pathlib.Path:
    """Path of the JSON Schema of the TrainLog format shipped inside the package."""
    return pathlib.Path(__file__).parent / "schema" / "trainlog-v1.schema.json"


# ----------------------------------------------------------------------------- reading helpers


class _Reader:
    """Typed access to one JSON object, with errors that name the source and the field."""

    def __init__(self, data: Any, where: str, source: str):
        if not isinstance(data, dict):
            name = where.rstrip(".") or "top level"
            raise TrainLogError(f"{source}: {name}: expected an object, got {_kind(data)}")
        self.data, self.where, self.source = data, where, source
        self.seen: set[str] = set()

    def _fail(self, key: str, expected: str, got: Any) -> TrainLogError:
        return TrainLogError(
            f"{self.source}: {self.where}{key}: expected {expected}, got {_kind(got)}"
        )

    def get(self, key: str, kind: type | tuple[type, ...], default: Any, expected: str) -> Any:
        self.seen.add(key)
        if key not in self.data or self.data[key] is None:
            if default is _REQUIRED:
                raise TrainLogError(f"{self.source}: {self.where}{key}: required field is missing")
            return default() if callable(default) else default
        value = self.data[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _tuple(kind)):
            raise self._fail(key, expected, value)
        return value

    def str(self, key: str, default: Any = "") -> str:
        return self.get(key, str, default, "a string")

    def strs(self, key: str) -> list[str]:
        items = self.get(key, list, list, "a list of strings")
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise self._fail(f"{key}[{i}]", "a string", item)
        return list(items)

    def ints(self, key: str, default: Any = list) -> list[int] | None:
        items = self.get(key, list, default, "a list of integers")
        if items is None:
            return None
        for i, item in enumerate(items):
            if not isinstance(item, int) or isinstance(item, bool):
                raise self._fail(f"{key}[{i}]", "an integer", item)
        return list(items)

    def floats(self, key: str) -> list[float]:
        items = self.get(key, list, _REQUIRED, "a list of numbers")
        where = f"{self.source}: {self.where}{key}"
        try:
            return [decode_float(v, f"{where}[{i}]") for i, v in enumerate(items)]
        except ValueError as e:
            raise TrainLogError(str(e)) from None

    def build(self, cls: type, **fields: Any) -> Any:
        """``cls(**fields, extra=<unread keys>)``; a constructor error names this object."""
        try:
            return cls(**fields, extra=self.rest())
        except TrainLogError:
            raise
        except (TypeError, ValueError) as e:
            name = self.where.rstrip(".") or "top level"
            raise TrainLogError(f"{self.source}: {name}: {e}") from None

    def rest(self) -> dict[str, Any]:
        """The keys no accessor asked for: kept as they are, written back unchanged."""
        return {k: v for k, v in self.data.items() if k not in self.seen}


_REQUIRED = object()


def _tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind(value: Any) -> str:
    names = {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        type(None): "null",
    }
    return f"{names.get(type(value), type(value).__name__)} ({_short(value)})"


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_version(data: Any, source: str, what: str) -> str:
    if not isinstance(data, dict):
        raise TrainLogError(f"{source}: expected a JSON object at the top level, got {_kind(data)}")
    version = data.get("schema_version", SCHEMA_VERSION)
    if not isinstance(version, str) or not re.fullmatch(r"[0-9]+(\.[0-9]+)*", version):
        raise TrainLogError(
            f'{source}: schema_version: expected a string like "1.0", got {_kind(version)}'
        )
    major = int(version.split(".")[0])
    if major > _MAJOR:
        from jaxobs import __version__

        raise SchemaVersionError(
            f"{source}: this {what} has schema_version {version}, but jaxobs {__version__} reads "
            f"major version {_MAJOR} and older; upgrade jaxobs (pip install -U jaxobs) to read it"
        )
    return version


def _load_json_file(path: PathLike) -> Any:
    path = pathlib.Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except UnicodeDecodeError as e:
        raise TrainLogError(
            f"{path}: not UTF-8 text (byte {e.start}); expected a JSON file"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise TrainLogError(
            f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg}); expected a TrainLog JSON file"
        ) from None


def _write_text_atomic(path: PathLike, text: str) -> pathlib.Path:
    """Write via a temporary file and rename, so a reader never sees half a file."""
    path = pathlib.Path(path)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start : e.end].encode("unicode_escape").decode()
        raise ValueError(f"{path}: cannot write {bad!r} as UTF-8 (a lone surrogate?)") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(", ", ": "))


class _JsonEq:
    """Equality by JSON form, so that NaN equals NaN and -0.0 differs from 0.0."""

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return _dumps(self.to_json()) == _dumps(other.to_json())  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]


def _as_steps(steps: Iterable[Any] | None, where: str) -> list[int] | None:
    if steps is None:
        return None
    out = []
    for s in steps:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
            raise TypeError(f"{where}: steps must be integers, got {type(s).__name__}: {s!r}")
        out.append(int(s))
    return out


def _check_step(step: Any, where: str) -> int:
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        raise TypeError(f"{where}: step must be an integer, got {type(step).__name__}: {step!r}")
    return int(step)


# ----------------------------------------------------------------------------- Series, Curve


@dataclasses.dataclass(eq=False)
class Series(_JsonEq):
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

    def __post_init__(self):
        if not isinstance(self.name, str):
            raise TypeError(f"Series name must be a string, got {type(self.name).__name__}")
        self.values = [_jsonable.scalar(v, self.name) for v in self.values]
        self.steps = _as_steps(self.steps, f"series {self.name!r}")
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
        out.update(_jsonable.encode_tree(self.extra))
        return out

    @classmethod
    def from_json(cls, data: Any, where: str = "series", source: str = "<data>") -> Series:
        r = _Reader(data, f"{where}.", source)
        return r.build(
            cls,
            name=r.str("name", _REQUIRED),
            values=r.floats("values"),
            steps=r.ints("steps", None),
            color=r.str("color"),
        )


@dataclasses.dataclass(eq=False)
class Curve(_JsonEq):
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

    def __post_init__(self):
        self.steps = _as_steps(self.steps, f"curve {self.name!r}") or []
        self.values = [_jsonable.scalar(v, self.name) for v in self.values]
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
        step = self.next_step if step is None else _check_step(step, f"curve {self.name!r}")
        self.values.append(_jsonable.scalar(value, self.name))
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


# ----------------------------------------------------------------------------- MetricHistory


class MetricHistory(_JsonEq):
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
        return max((c.next_step for c in self.curves.values()), default=0)

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
        step = self.next_step if step is None else _check_step(step, "row")
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
        converted = {name: _jsonable.scalar(v, name) for name, v in row.items()}
        for name, value in converted.items():
            self.add_metric(name).append(value, step)
        return step

    def log(self, name: str, value: Any, step: int | None = None) -> int:
        """Append a single value of one metric; new names are added. Returns the step."""
        curve = self.add_metric(name)
        step = curve.next_step if step is None else _check_step(step, f"metric {name!r}")
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


# ----------------------------------------------------------------------------- RunInfo, Artifact


@dataclasses.dataclass(eq=False)
class RunInfo(_JsonEq):
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

    def __post_init__(self):
        for field in ("project", "name", "run_id", "group"):
            if not isinstance(getattr(self, field), str):
                raise TypeError(f"RunInfo.{field} must be a string, got {getattr(self, field)!r}")
        if isinstance(self.tags, str):
            raise TypeError(f"RunInfo.tags must be a list of strings, got the string {self.tags!r}")
        self.tags = [str(t) for t in self.tags]
        config = _jsonable.to_config(dict(self.config or {}), "config")
        self.config = config

    def to_json(self) -> dict[str, Any]:
        out = {
            "project": self.project,
            "name": self.name,
            "run_id": self.run_id,
            "group": self.group,
            "tags": list(self.tags),
            "config": _jsonable.encode_tree(self.config),
        }
        out.update(_jsonable.encode_tree(self.extra))
        return out

    @classmethod
    def from_json(cls, data: Any, where: str = "run", source: str = "<data>") -> RunInfo:
        r = _Reader(data, f"{where}.", source)
        # Config is free-form JSON: its strings stay strings (a non-finite float in a config
        # is written as its sentinel string and read back as that string).
        config = r.get("config", dict, dict, "an object")
        return r.build(
            cls,
            project=r.str("project"),
            name=r.str("name"),
            run_id=r.str("run_id"),
            group=r.str("group"),
            tags=r.strs("tags"),
            config=config,
        )


@dataclasses.dataclass(eq=False)
class Artifact(_JsonEq):
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

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"artifact name must be a non-empty string, got {self.name!r}")
        self.path = os.fspath(self.path)

    def to_json(self) -> dict[str, Any]:
        out = {"name": self.name, "path": self.path}
        if self.kind:
            out["kind"] = self.kind
        if self.description:
            out["description"] = self.description
        out.update(_jsonable.encode_tree(self.extra))
        return out

    @classmethod
    def from_json(cls, data: Any, where: str = "artifact", source: str = "<data>") -> Artifact:
        r = _Reader(data, f"{where}.", source)
        return r.build(
            cls,
            name=r.str("name", _REQUIRED),
            path=r.str("path", _REQUIRED),
            kind=r.str("kind"),
            description=r.str("description"),
        )


# ----------------------------------------------------------------------------- TrainLog


@dataclasses.dataclass(eq=False)
class TrainLog(_JsonEq):
    """The persisted log of a training run: the stable JSON artifact.

    Attributes:
      title: Shown at the top of viewers.
      steps: Step indices shared by the series that carry no steps of their own.
      series: The metrics.
      notes: Free-form notes.
      run: Run metadata and config, when the log comes from an `ExperimentLog`.
      artifacts: Files the run produced.
      schema_version: The format version this log was read with or will be written as.
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
    schema_version: str = SCHEMA_VERSION
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.steps = _as_steps(self.steps, "TrainLog") or []
        self.series = list(self.series)
        if isinstance(self.notes, str):
            raise TypeError(
                f"TrainLog.notes must be a list of strings, got the string {self.notes!r}"
            )
        self.notes = [str(n) for n in self.notes]
        self.artifacts = list(self.artifacts)
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
        out: dict[str, Any] = {
            "schema_version": self.schema_version,
            "format": TRAINLOG_FORMAT,
            "title": self.title,
        }
        if self.run is not None:
            out["run"] = self.run.to_json()
        out["steps"] = list(self.steps)
        out["series"] = [s.to_json() for s in self.series]
        out["notes"] = list(self.notes)
        out["artifacts"] = [a.to_json() for a in self.artifacts]
        out.update(_jsonable.encode_tree(self.extra))
        return out

    @classmethod
    def from_json(cls, data: Any, source: str = "<data>") -> TrainLog:
        """Decode a TrainLog from parsed JSON; ``source`` names it in error messages.

        Raises:
          SchemaVersionError: the data has a newer major ``schema_version``.
          TrainLogError: the data does not have the TrainLog form; the message names the field.
        """
        version = _check_version(data, source, "TrainLog")
        fmt = data.get("format", TRAINLOG_FORMAT)
        if fmt != TRAINLOG_FORMAT:
            raise TrainLogError(f"{source}: format is {fmt!r}, expected {TRAINLOG_FORMAT!r}")
        r = _Reader(data, "", source)
        r.seen.update({"schema_version", "format"})
        series_data = r.get("series", list, list, "a list of series objects")
        run_data = r.get("run", dict, None, "an object")
        artifacts = r.get("artifacts", list, list, "a list of artifact objects")
        try:
            return cls(
                title=r.str("title"),
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
                inner = ",\n".join(f"    {_dumps(s)}" for s in value)
                lines.append(f'  "series": [\n{inner}\n  ]')
            else:
                lines.append(f"  {_dumps(key)}: {_dumps(value)}")
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
        return _write_text_atomic(path, self.dumps())

    @classmethod
    def read_json(cls, path: PathLike) -> TrainLog:
        """Read a log written by `write_json` (or by any writer of the documented format)."""
        return cls.from_json(_load_json_file(path), str(path))


# ----------------------------------------------------------------------------- ExperimentLog


@dataclasses.dataclass(eq=False)
class ExperimentLog(_JsonEq):
    """A W&B-shaped local experiment record that lowers to a `TrainLog`.

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

    def log_metric(self, name: str, value: Any, step: int | None = None) -> int:
        """Append one scalar; new metric names are added lazily. Returns the step used."""
        return self.history.log(name, value, step)

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
        )

    def to_json(self) -> dict[str, Any]:
        return self.to_trainlog().to_json()

    def write_json(self, path: PathLike) -> pathlib.Path:
        return self.to_trainlog().write_json(path)

    @classmethod
    def read_json(cls, path: PathLike) -> ExperimentLog:
        return cls.from_trainlog(TrainLog.read_json(path))


# ----------------------------------------------------------------------------- LogDestination


@dataclasses.dataclass(frozen=True)
class LogDestination:
    """Where a training routine sends its log: a JSON path, or nowhere.

    Example:
      >>> LogDestination.parse("off").enabled
      False
      >>> LogDestination.parse("out/log.json").path
      PosixPath('out/log.json')
    """

    path: pathlib.Path | None = None

    DISABLED_WORDS: ClassVar[frozenset[str]] = frozenset(
        {"false", "off", "none", "no", "disabled", "0"}
    )

    @classmethod
    def disabled(cls) -> LogDestination:
        return cls(None)

    @classmethod
    def json(cls, path: PathLike) -> LogDestination:
        return cls(pathlib.Path(path))

    @classmethod
    def parse(cls, value: str) -> LogDestination:
        """Parse a command-line value: false/off/none/no/disabled/0 (any case) disable logging;
        anything else is a JSON path."""
        if not isinstance(value, str):
            raise TypeError(f"log destination must be a string, got {type(value).__name__}")
        text = value.strip()
        if not text:
            raise ValueError("empty log destination: give a JSON path, or 'off' to disable")
        return cls.disabled() if text.lower() in cls.DISABLED_WORDS else cls.json(text)

    @classmethod
    def parse_optional(cls, value: str | None, default: PathLike) -> LogDestination:
        """Like `parse`, with ``default`` as the path when no value is given."""
        return cls.json(default) if value is None else cls.parse(value)

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def path_or(self, default: PathLike) -> pathlib.Path:
        """The JSON path, or ``default`` when logging is disabled."""
        return self.path if self.path is not None else pathlib.Path(default)

    def write(self, log: TrainLog | ExperimentLog) -> pathlib.Path | None:
        """Write ``log`` here; a disabled destination writes nothing and returns None."""
        if self.path is None:
            return None
        return log.write_json(self.path)

    def __str__(self) -> str:
        return "disabled" if self.path is None else str(self.path)


# ----------------------------------------------------------------------------- ConfusionMatrix


@dataclasses.dataclass(eq=False)
class ConfusionMatrix(_JsonEq):
    """Counts of (true class, predicted class) pairs; rows are true classes.

    Example:
      >>> cm = ConfusionMatrix.from_predictions([0, 1, 1], [0, 1, 0], labels=["cat", "dog"])
      >>> cm.matrix
      [[1, 0], [1, 1]]
    """

    labels: list[str]
    matrix: list[list[int]]
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.labels = [str(label) for label in self.labels]
        n = len(self.labels)
        rows = [list(row) for row in self.matrix]
        if len(rows) != n or any(len(row) != n for row in rows):
            shape = (len(rows), *sorted({len(row) for row in rows}))
            raise ValueError(f"confusion matrix must be {n}x{n} for {n} labels, got rows {shape}")
        for i, row in enumerate(rows):
            for j, v in enumerate(row):
                if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                    raise ValueError(
                        f"confusion matrix [{i}][{j}]: expected a count >= 0, got {v!r}"
                    )
        self.matrix = [[int(v) for v in row] for row in rows]

    @classmethod
    def from_predictions(
        cls, y_true: Any, y_pred: Any, labels: Sequence[str] | int | None = None
    ) -> ConfusionMatrix:
        """Count predictions. ``labels``: names, a number of classes, or inferred."""
        t_raw, p_raw = np.asarray(y_true), np.asarray(y_pred)
        if t_raw.shape != p_raw.shape:
            raise ValueError(f"y_true has shape {t_raw.shape} but y_pred has shape {p_raw.shape}")
        for what, arr in (("y_true", t_raw), ("y_pred", p_raw)):
            if arr.size and (arr.dtype.kind not in "biuf" or np.any(arr != np.round(arr))):
                raise ValueError(f"{what} must hold integer class indices, got {arr.dtype} values")
        t, p = t_raw.astype(np.int64).ravel(), p_raw.astype(np.int64).ravel()
        if labels is None:
            n = int(max(t.max(initial=-1), p.max(initial=-1)) + 1)
            names = [str(i) for i in range(n)]
        elif isinstance(labels, int):
            names = [str(i) for i in range(labels)]
        else:
            names = [str(x) for x in labels]
        n = len(names)
        if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= n):
            raise ValueError(f"class indices must lie in [0, {n}) for {n} labels")
        counts = np.bincount(t * n + p, minlength=n * n).reshape(n, n)
        return cls(names, counts.tolist())

    @property
    def total(self) -> int:
        return sum(map(sum, self.matrix))

    @property
    def accuracy(self) -> float:
        """Fraction on the diagonal (NaN for an empty matrix)."""
        total = self.total
        return (
            sum(self.matrix[i][i] for i in range(len(self.labels))) / total if total else math.nan
        )

    def to_json(self) -> dict[str, Any]:
        out = {
            "schema_version": SCHEMA_VERSION,
            "format": CONFUSION_FORMAT,
            "labels": list(self.labels),
            "matrix": [list(r) for r in self.matrix],
        }
        out.update(_jsonable.encode_tree(self.extra))
        return out

    @classmethod
    def from_json(cls, data: Any, source: str = "<data>") -> ConfusionMatrix:
        _check_version(data, source, "confusion matrix")
        fmt = data.get("format", CONFUSION_FORMAT)
        if fmt != CONFUSION_FORMAT:
            raise TrainLogError(f"{source}: format is {fmt!r}, expected {CONFUSION_FORMAT!r}")
        r = _Reader(data, "", source)
        r.seen.update({"schema_version", "format"})
        labels = r.strs("labels")
        matrix = r.get("matrix", list, _REQUIRED, "a list of rows")
        try:
            return cls(labels, matrix, extra=r.rest())
        except (TypeError, ValueError) as e:
            raise TrainLogError(f"{source}: {e}") from None

    def write_json(self, path: PathLike) -> pathlib.Path:
        return _write_text_atomic(path, _dumps(self.to_json()) + "\n")

    @classmethod
    def read_json(cls, path: PathLike) -> ConfusionMatrix:
        return cls.from_json(_load_json_file(path), str(path))
