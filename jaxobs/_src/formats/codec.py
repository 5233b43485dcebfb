"""The JSON codec every jaxobs file goes through: non-finite sentinels, JSON-safe trees,
encoding, reading a JSON file with errors that name it, and atomic writes.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
import secrets
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
    try:
        text = json.dumps(value, ensure_ascii=False, default=repr)
    except (ValueError, RecursionError):  # an int beyond the int-string limit; a cycle
        return "..."
    return text if len(text) <= 40 else text[:37] + "..."


# Deeper than this, a JSON value is refused when read: no jaxobs file nests more than a few
# levels (a config perhaps ten), and every reader may walk the data recursively.
MAX_DEPTH = 100

# Python refuses to turn a longer run of digits into an int (sys.get_int_max_str_digits).
_LONG_INT = re.compile(r"-?[0-9]{4301,}")


def parse_json(
    text: str, source: str, expected: str, error: type[Exception], *, line: int | None = None
) -> Any:
    """``text`` parsed as JSON, nested at most `MAX_DEPTH` deep.

    Args:
      text: The JSON text.
      source: The file it comes from, first in every message (``path:line:column``).
      expected: What it should have been, for the messages.
      error: The exception class raised.
      line: The line of the file ``text`` is (for one line of a JSON-lines file); None when
        ``text`` is the whole file.

    Raises:
      error: Not valid JSON, an integer of more than 4,300 digits, or nested too deeply.
    """
    where = source if line is None else f"{source}:{line}"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        if line is None:
            raise error(
                f"{source}:{e.lineno}:{e.colno}: not valid JSON ({e.msg}); expected {expected}"
            ) from None
        raise error(
            f"{where}: not valid JSON ({e.msg} at column {e.colno}); expected {expected}"
        ) from None
    except RecursionError:
        raise error(
            f"{where}: JSON nested too deeply to parse (jaxobs reads at most {MAX_DEPTH} "
            f"levels); expected {expected}"
        ) from None
    except ValueError:  # an integer longer than Python's int-string limit
        match = _LONG_INT.search(text)
        index = match.start() if match else 0
        number = text.count("\n", 0, index) + 1 if line is None else line
        column = index - (text.rfind("\n", 0, index) + 1) + 1
        digits = len(match.group().lstrip("-")) if match else "over 4300"
        raise error(
            f"{source}:{number}:{column}: an integer of {digits} digits, too long for any "
            f"field of a jaxobs file; expected {expected}"
        ) from None
    path = deeper_than(value, MAX_DEPTH)
    if path is not None:
        path = path if len(path) <= 60 else path[:57] + "..."
        raise error(
            f"{where}: {path}: JSON nested more than {MAX_DEPTH} levels deep; expected {expected}"
        )
    return value


_CONTAINERS = (list, dict)


def deeper_than(value: Any, limit: int) -> str | None:
    """The path (``a.b[3]``) of the first container more than ``limit`` levels inside
    ``value``, or None. Iterative, so any depth is safe."""
    stack: list[tuple[Any, int, str]] = [(value, 0, "")]
    while stack:
        item, depth, path = stack.pop()
        if depth > limit:
            return path
        if isinstance(item, dict):
            values = item.values()
            if dict in set(map(type, values)) or list in set(map(type, values)):
                for key, v in item.items():
                    if isinstance(v, _CONTAINERS):
                        stack.append((v, depth + 1, f"{path}.{key}" if path else str(key)))
        elif isinstance(item, list):
            kinds = set(map(type, item))
            if dict in kinds or list in kinds:
                for i, v in enumerate(item):
                    if isinstance(v, _CONTAINERS):
                        stack.append((v, depth + 1, f"{path}[{i}]"))
    return None


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
      error: The file is not UTF-8 text, not valid JSON (``path:line:column``), holds an
        integer of more than 4,300 digits, or is nested more than `MAX_DEPTH` deep.
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
    return parse_json(text, str(path), expected, error)


def write_atomic(path: PathLike, data: bytes) -> pathlib.Path:
    """Write ``data`` via a temporary file, fsync and rename, so that a reader never sees
    half a file and a crash right after leaves either the old or the new file.

    The temporary file (``.<name>.<random>.tmp`` in the target's folder) is always a new
    file (``O_CREAT | O_EXCL``), so nothing planted in the folder, such as a symlink at a
    guessable name, is ever written through.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _new_file(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


_EXCLUSIVE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)


def _new_file(path: pathlib.Path) -> tuple[int, pathlib.Path]:
    """A new file next to ``path``, opened for writing, with the mode a plain ``open`` gives
    (0666 less the umask; `tempfile.mkstemp` would give 0600)."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, _EXCLUSIVE | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: could not create a temporary file for {path.name}")


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
