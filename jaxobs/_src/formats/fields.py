"""The typed field reader and the version check shared by every jaxobs file format."""

from __future__ import annotations

import importlib.metadata
import re
from typing import Any

from jaxobs._src.formats.codec import decode_float, kind_of
from jaxobs._src.formats.errors import SchemaVersionError, TrainLogError


class FieldReader:
    """Typed access to one JSON object, with errors that name the source and the field."""

    def __init__(self, data: Any, where: str, source: str):
        if not isinstance(data, dict):
            name = where.rstrip(".") or "top level"
            raise TrainLogError(f"{source}: {name}: expected an object, got {kind_of(data)}")
        self.data, self.where, self.source = data, where, source
        self.seen: set[str] = set()

    def _fail(self, key: str, expected: str, got: Any) -> TrainLogError:
        return TrainLogError(
            f"{self.source}: {self.where}{key}: expected {expected}, got {kind_of(got)}"
        )

    def get(self, key: str, kind: type | tuple[type, ...], default: Any, expected: str) -> Any:
        self.seen.add(key)
        if key not in self.data or self.data[key] is None:
            if default is REQUIRED:
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
        items = self.get(key, list, REQUIRED, "a list of numbers")
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


REQUIRED = object()


def _tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


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
