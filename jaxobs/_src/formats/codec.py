"""The JSON codec every jaxobs file goes through: non-finite sentinels, JSON-safe trees,
encoding, reading a JSON file with errors that name it, and atomic writes.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import threading
from collections.abc import Mapping
from typing import Any

from jaxobs._src.formats.errors import TrainLogError

PathLike = str | os.PathLike

# Floats that JSON cannot hold are written as these strings (the TrainLog contract).
NAN, POS_INF, NEG_INF = "NaN", "Infinity", "-Infinity"


_SENTINELS = {NAN: math.nan, POS_INF: math.inf, NEG_INF: -math.inf}


def encode_float(x: float) -> float | str:
    """A float as JSON: the number when finite, else "NaN", "Infinity" or "-Infinity"."""
    if math.isfinite(x):
        return x
    if math.isnan(x):
        return NAN
    return POS_INF if x > 0 else NEG_INF


def decode_float(v: Any, where: str) -> float:
    """The inverse of `encode_float`; ``where`` names the field in the error message."""
    if isinstance(v, bool):
        raise ValueError(f"{where}: expected a number, got a boolean ({v!r})")
    if isinstance(v, (int, float)):
        try:
            return float(v)
        except OverflowError:
            raise ValueError(
                f"{where}: the integer {str(v)[:20]}... is too large for a float"
            ) from None
    if isinstance(v, str) and v in _SENTINELS:
        return _SENTINELS[v]
    raise ValueError(
        f'{where}: expected a number or one of "NaN", "Infinity", "-Infinity", got {v!r}'
    )


def encode_tree(value: Any) -> Any:
    """Replace non-finite floats anywhere inside plain JSON data by their sentinel strings."""
    if isinstance(value, float):
        return encode_float(value)
    if isinstance(value, dict):
        return {k: encode_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [encode_tree(v) for v in value]
    return value


def kind_of(value: Any) -> str:
    """What a JSON value is, for an error message: ``a string ("lots")``, ``null``."""
    if value is None:
        return "null"
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


def load_json_file(
    path: PathLike,
    *,
    expected: str = "a TrainLog JSON file",
    error: type[Exception] = TrainLogError,
) -> Any:
    """The parsed JSON of a file, with errors that name the file, the line and column, and
    what the file should have been.

    Args:
      path: The file.
      expected: What the caller reads, for the messages (``"a jaxobs crash dump
        (crash/crash-<step>.json)"``).
      error: The exception class for a file that is not UTF-8 JSON (each format has its
        own: `TrainLogError`, `CrashDumpError`, ...).

    Raises:
      FileNotFoundError: There is no such file.
      IsADirectoryError: The path is a directory.
      error: The file is not UTF-8 text, or not valid JSON (``path:line:column``).
    """
    path = pathlib.Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file or directory") from None
    except IsADirectoryError:
        raise IsADirectoryError(f"{path}: is a directory; expected {expected}") from None
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (byte {e.start}); expected {expected}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(
            f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg}); expected {expected}"
        ) from None


def write_atomic(path: PathLike, data: bytes) -> pathlib.Path:
    """Write ``data`` via a temporary file, fsync and rename, so that a reader never sees
    half a file and a crash right after leaves either the old or the new file."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(path: PathLike, text: str) -> pathlib.Path:
    """`write_atomic` of UTF-8 text; a string that cannot be UTF-8 is a ValueError."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start : e.end].encode("unicode_escape").decode()
        raise ValueError(f"{path}: cannot write {bad!r} as UTF-8 (a lone surrogate?)") from None
    return write_atomic(path, data)


def dumps(value: Any) -> str:
    """JSON text of plain data (already JSON-safe) as jaxobs writes its files."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(", ", ": "))


def json_line(record: Mapping[str, Any]) -> str:
    """One compact line of JSON for ``events.jsonl``; non-finite floats become sentinels."""
    try:  # the common case: every float is finite, so nothing needs re-encoding
        return json.dumps(record, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except ValueError:
        pass
    return json.dumps(
        encode_tree(dict(record)), ensure_ascii=False, allow_nan=False, separators=(",", ":")
    )
