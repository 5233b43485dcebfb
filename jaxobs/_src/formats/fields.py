"""Validating and reading the fields of every jaxobs file: one typed field reader, one
format check and one version check, shared by the TrainLog, confusion matrix, crash dump and
sync marker readers.

Each format keeps its own exception classes: the reader raises the ``error`` it is given, and
every message names the file, the field's path (``series[0].values[3]``,
``recorder.series["train/loss"][3]``) and what was expected.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import re
from typing import Any, overload

from jaxobs._src.formats.codec import decode_float, kind_of
from jaxobs._src.formats.errors import SchemaVersionError, TrainLogError

__all__ = [
    "CONFUSION_FORMAT",
    "CRASH_FORMAT",
    "EVENTS_FORMAT",
    "INT64_MAX",
    "INT64_MIN",
    "MARKER_FORMAT",
    "NULL",
    "REQUIRED",
    "TRAINLOG_FORMAT",
    "FieldReader",
    "check_format",
    "check_step",
    "check_version",
    "package_version",
    "subscript",
]

# The "format" field of each jaxobs file: the one home of these names.
TRAINLOG_FORMAT = "jaxobs.trainlog"
CRASH_FORMAT = "jaxobs.crash"
CONFUSION_FORMAT = "jaxobs.confusion_matrix"
MARKER_FORMAT = "jaxobs.sync"
EVENTS_FORMAT = "jaxobs.events"

# What a file of each format is, and how to read it: said when the wrong reader is used.
_READ_WITH = {
    TRAINLOG_FORMAT: (
        "this is a TrainLog: use `jaxobs show {source}` (or jaxobs.TrainLog.read_json)"
    ),
    CRASH_FORMAT: (
        "this is a crash dump: use `jaxobs crash show {source}` (or jaxobs.crash.load_dump)"
    ),
    CONFUSION_FORMAT: (
        "this is a confusion matrix: read it with jaxobs.artifacts.ConfusionMatrix.read_json"
    ),
    MARKER_FORMAT: "this is a sync marker, which records what `jaxobs sync` sent to a tracker",
    EVENTS_FORMAT: "this is a run's event log: use `jaxobs show` on its run directory",
}

# Every integer of a jaxobs file (a step, a count, a timestamp in ns) fits in int64.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def check_step(step: Any) -> int:
    """``step`` as an int, once it is checked to be a non-negative integer that fits int64.

    Raises:
      ValueError: an integer outside the int64 range.
      TypeError: anything else that is not a non-negative integer (a bool, a float, -1).
    """
    if hasattr(step, "__index__") and not INT64_MIN <= step <= INT64_MAX:
        raise ValueError(f"step {step!r} is outside the int64 range [-2**63, 2**63 - 1]")
    if isinstance(step, bool) or not hasattr(step, "__index__") or step < 0:
        raise TypeError(f"step must be a non-negative integer, got {step!r}")
    return int(step)


def _digits(value: int) -> str:
    text = str(value)
    return text if len(text) <= 24 else f"{text[:10]}...{text[-4:]} ({len(text)} digits)"


REQUIRED = object()  # the default of a field that must be present

NULL = type(None)  # in a field's types: the field may be null


def subscript(key: str) -> str:
    """A mapping key as it appears in a field path: ``["train/loss"]``."""
    return f"[{json.dumps(key, ensure_ascii=False)}]"


class FieldReader:
    """Typed access to one JSON object, with errors that name the file and the field path.

    Args:
      data: The parsed JSON value, which must be an object.
      where: Its path in the file: ``""`` for the top level, ``"series[0]"``,
        ``'recorder.series["train/loss"]'``. (A trailing ``.`` is ignored.)
      source: The file (or ``"<data>"``), named first in every message.
      error: The exception class raised for a bad field: `TrainLogError`, `CrashDumpError`,
        `SyncMarkerError`.
      missing: The words for a missing required field, before ``(expected ...)``.
      null_is_missing: Whether a JSON ``null`` counts as an absent field (so it takes the
        default). When False, null is accepted only where the field's types include `NULL`.
      int64: Whether every integer field must fit in 64 bits (`INT64_MIN` to `INT64_MAX`):
        so in the files whose integers become NumPy int64 or that the writer bounds (crash
        dumps, events.jsonl). A TrainLog's steps are Python ints, of any size.

    Raises:
      error: ``data`` is not an object.
    """

    def __init__(
        self,
        data: Any,
        where: str,
        source: str,
        *,
        error: type[Exception] = TrainLogError,
        missing: str = "required field is missing",
        null_is_missing: bool = True,
        int64: bool = False,
    ):
        self.int64 = int64
        self.where = where.rstrip(".")
        self.source = source
        self.error = error
        self.missing = missing
        self.null_is_missing = null_is_missing
        if not isinstance(data, dict):
            raise self.problem("", f"expected an object, got {kind_of(data)}")
        self.data: dict[str, Any] = data
        self.seen: set[str] = set()

    # -- paths and errors

    def path(self, key: str) -> str:
        """The path of ``key`` (a field, or ``steps[3]``) of this object in the file."""
        if not key:
            return self.where
        if not self.where or key.startswith("["):
            return f"{self.where}{key}"
        return f"{self.where}.{key}"

    def problem(self, key: str, text: str) -> Exception:
        """The error to raise for field ``key`` (``""``: this object): ``source: path: text``."""
        return self.error(f"{self.source}: {self.path(key) or 'top level'}: {text}")

    def fail(self, key: str, expected: str, got: Any) -> Exception:
        """The error for field ``key`` holding ``got`` where ``expected`` was expected."""
        return self.problem(key, f"expected {expected}, got {kind_of(got)}")

    def nested(self, value: Any, key: str) -> FieldReader:
        """A reader, with this one's source and error, for ``value`` found at ``key``."""
        return FieldReader(
            value,
            self.path(key),
            self.source,
            error=self.error,
            missing=self.missing,
            null_is_missing=self.null_is_missing,
            int64=self.int64,
        )

    # -- typed access

    def get(self, key: str, kind: type | tuple[type, ...], default: Any, expected: str) -> Any:
        """Field ``key``, checked to be of ``kind`` (a bool is never an int here unless
        ``kind`` names bool). An absent field gives ``default`` (called if callable), or
        raises when ``default`` is `REQUIRED`."""
        self.seen.add(key)
        value = self.data.get(key)
        if key not in self.data or (value is None and self.null_is_missing):
            if default is REQUIRED:
                raise self.problem(key, f"{self.missing} (expected {expected})")
            return default() if callable(default) else default
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise self.fail(key, expected, value)
        if self.int64 and type(value) is int and not INT64_MIN <= value <= INT64_MAX:
            raise self.out_of_range(key, value)
        return value

    def out_of_range(self, key: str, value: int) -> Exception:
        """The error for an integer at ``key`` that does not fit in 64 bits."""
        return self.problem(
            key, f"the integer {_digits(value)} does not fit in 64 bits (expected an integer "
            f"from {INT64_MIN} to {INT64_MAX})"
        )  # fmt: skip

    def string(self, key: str, default: Any = "", expected: str = "a string") -> str:
        """A string field (``default`` when absent)."""
        return self.get(key, str, default, expected)

    def integer(self, key: str, default: Any = REQUIRED, expected: str = "an integer") -> int:
        """An integer field (booleans are refused)."""
        return self.get(key, int, default, expected)

    def child(
        self,
        key: str,
        default: Any = REQUIRED,
        expected: str = "an object",
        *,
        nullable: bool = False,
    ) -> FieldReader | None:
        """A reader for the object in field ``key``; None when it is null (``nullable``) or
        absent with a None default."""
        value = self.get(key, (dict, NULL) if nullable else dict, default, expected)
        return None if value is None else self.nested(value, key)

    def strs(self, key: str) -> list[str]:
        """A list of strings (empty when absent)."""
        items = self.get(key, list, list, "a list of strings")
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise self.fail(f"{key}[{i}]", "a string", item)
        return list(items)

    @overload
    def ints(self, key: str) -> list[int]: ...
    @overload
    def ints(self, key: str, default: None) -> list[int] | None: ...
    def ints(self, key: str, default: Any = list) -> list[int] | None:
        """A list of integers (empty when absent, or None with a None ``default``)."""
        items = self.get(key, list, default, "a list of integers")
        if items is None:
            return None
        for i, item in enumerate(items):
            if not isinstance(item, int) or isinstance(item, bool):
                raise self.fail(f"{key}[{i}]", "an integer", item)
            if self.int64 and not INT64_MIN <= item <= INT64_MAX:
                raise self.out_of_range(f"{key}[{i}]", item)
        return list(items)

    def floats(self, key: str) -> list[float]:
        """A required list of numbers; ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` decode."""
        items = self.get(key, list, REQUIRED, "a list of numbers")
        where = self.path(key)
        try:
            return [decode_float(v, f"{where}[{i}]") for i, v in enumerate(items)]
        except ValueError as e:
            raise self.error(f"{self.source}: {e}") from None

    def number(self, key: str, default: float = math.nan) -> float:
        """One number (or non-finite sentinel); ``default`` when absent or null."""
        self.seen.add(key)
        value = self.data.get(key)
        return default if value is None else self.decode_number(value, key)

    def decode_number(self, value: Any, key: str) -> float:
        """``value``, found at ``key``, as a float (see `decode_float`)."""
        try:
            return decode_float(value, self.path(key))
        except ValueError as e:
            raise self.error(f"{self.source}: {e}") from None

    def build(self, cls: type, **fields: Any) -> Any:
        """``cls(**fields, extra=<unread keys>)``; a constructor error names this object."""
        try:
            return cls(**fields, extra=self.rest())
        except self.error:
            raise
        except (TypeError, ValueError) as e:
            raise self.problem("", str(e)) from None

    def rest(self) -> dict[str, Any]:
        """The keys no accessor asked for: kept as they are, written back unchanged."""
        return {k: v for k, v in self.data.items() if k not in self.seen}


def check_format(
    data: dict[str, Any],
    source: str,
    expected: str,
    *,
    what: str,
    default: str | None = None,
    error: type[Exception] = TrainLogError,
    note: str = "",
) -> None:
    """Refuse ``data`` whose ``format`` field is not ``expected``.

    Args:
      data: The file's top-level object.
      source: The file, named in the message.
      expected: The format this reader reads (``"jaxobs.trainlog"``).
      what: What the reader reads, for the message (``"a TrainLog"``).
      default: The format assumed when the field is absent (None: it must be present).
      error: The exception class raised.
      note: Appended to the message in parentheses (where such files come from).

    Raises:
      error: The format differs; when it is another jaxobs format the message says what the
        file is and how to read it.
    """
    fmt = data.get("format", default)
    if fmt == expected:
        return
    if fmt is None:
        found = "no format field"
    elif isinstance(fmt, str):
        found = f"format {json.dumps(fmt, ensure_ascii=False)}"
    else:
        found = f"format {kind_of(fmt)}"
    text = f'{source}: not {what}: {found}, expected format "{expected}"'
    if note:
        text += f" ({note})"
    hint = _READ_WITH.get(fmt) if isinstance(fmt, str) else None
    if hint:
        text += "; " + hint.format(source="FILE" if source.startswith("<") else source)
    raise error(text)


def package_version() -> str:
    """The installed jaxobs version (from the package metadata)."""
    try:
        return importlib.metadata.version("jaxobs")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - not installed
        return "unknown"


def check_version(
    data: Any,
    source: str,
    what: str,
    *,
    current: str,
    error: type[Exception] = TrainLogError,
    too_new: type[Exception] = SchemaVersionError,
) -> str:
    """The ``schema_version`` of ``data`` (``current`` when absent), checked: a malformed one
    raises ``error``, a newer major version than ``current``'s raises ``too_new``."""
    if not isinstance(data, dict):
        raise error(f"{source}: expected a JSON object at the top level, got {kind_of(data)}")
    version = data.get("schema_version", current)
    if not isinstance(version, str) or not re.fullmatch(r"[0-9]+(\.[0-9]+)*", version):
        raise error(
            f'{source}: schema_version: expected a string like "1.0", got {kind_of(version)}'
        )
    major, supported = int(version.split(".")[0]), int(current.split(".")[0])
    if major > supported:
        raise too_new(
            f"{source}: this {what} has schema_version {version}, but jaxobs "
            f"{package_version()} reads major version {supported} and older; upgrade jaxobs "
            "(pip install -U jaxobs) to read it"
        )
    return version
