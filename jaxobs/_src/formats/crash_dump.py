"""Reading flight-recorder crash dumps: load, find the first layer to diverge, summarise, plot.

When a run dies (a critical health alert, an exception, SIGTERM, Ctrl-C, a halt) the flight
recorder writes ``<run dir>/crash/crash-<step>.json``: the trigger, the health alerts, the
health checker's thresholds, and the last ``capacity`` steps of every recorded series. This
module reads such a file back and turns it into an answer to "what broke first?".

- `load_dump` reads and validates a dump into a `CrashDump`.
- `layer_norms` combines per-leaf norms into one norm per layer, marking non-finite steps.
- `first_diverged` names the first layer whose norm blew up (also used by the recorder
  when it writes a dump, so it takes plain NumPy arrays).
- `summary` is a plain-text report; `plot` draws the failure signature as a PNG.

The command line exposes the last two as ``jaxobs crash show`` and ``jaxobs crash plot``.

Nothing here imports jax; `plot` imports matplotlib when called.

Example:
    >>> import numpy as np
    >>> steps = np.arange(10)
    >>> series = {
    ...     "grads/Dense_0/kernel/norm": np.ones(10),
    ...     "grads/Dense_1/kernel/norm": np.r_[np.ones(6), 50.0, np.inf, np.nan, np.nan],
    ... }
    >>> hit = first_diverged(steps, series)
    >>> hit["layer"], hit["step"], hit["ratio"]
    ('Dense_1', 6, 50.0)
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxobs._src.formats.codec import (
    PathLike,
    decode_float,
    dumps,
    encode_float,
    kind_of,
    write_text_atomic,
)
from jaxobs._src.formats.errors import CrashDumpError, CrashDumpVersionError
from jaxobs._src.formats.fields import check_version

CRASH_FORMAT = "jaxobs.crash"


CRASH_SCHEMA_VERSION = "1.0"


_DUMP_NAME = re.compile(r"crash-(-?[0-9]+)\.json")


@dataclasses.dataclass(frozen=True, eq=False)
class CrashDump:
    """One crash dump, as read by `load_dump`.

    The recorder's values are float64 arrays aligned with `steps`: a value that was not
    recorded at a step is NaN there and False in `present`, so that a recorded NaN (True in
    `present`) can be told from a gap.

    Attributes:
      path: The file the dump was read from.
      step: The step at which the trigger fired.
      trigger: ``kind`` (alert, exception, sigterm, interrupt, halt), ``rule``, ``severity``,
        ``message`` and ``error`` (``{"type", "message"}`` or None); missing keys are filled
        with None (``message`` with ""), unknown ones kept.
      first_diverged: The recorder's verdict, ``{"layer", "group", "step", "ratio",
        "baseline", "nonfinite"}`` with ratio and baseline as floats, or None.
      thresholds: The health checker's settings, as written.
      alerts: The health alerts that led up to the trigger, oldest first.
      run: ``project``, ``run_id``, ``name``, ``dir`` of the run.
      versions: Versions of Python, jaxobs, jax and friends.
      checkpoint: ``{"path", "step"}`` of the checkpoint saved with the dump (path relative to
        the run directory; see `checkpoint_path`), or None.
      steps: The recorded steps, ascending, int64.
      series: Recorded values per key, float64, NaN where not recorded.
      present: Per key, whether a value was recorded at each step.
      schema_version: The version of the crash format the file was written with.
      created_ns: When the dump was written (ns since the epoch), or None.
    """

    path: pathlib.Path
    step: int
    trigger: dict[str, Any]
    first_diverged: dict[str, Any] | None
    thresholds: Any
    alerts: list[dict[str, Any]]
    run: dict[str, Any]
    versions: dict[str, Any]
    checkpoint: dict[str, Any] | None
    steps: np.ndarray
    series: dict[str, np.ndarray]
    present: dict[str, np.ndarray]
    schema_version: str = CRASH_SCHEMA_VERSION
    created_ns: int | None = None

    @property
    def run_name(self) -> str:
        """The run's name, else its id, else the dump's file name."""
        return str(self.run.get("name") or self.run.get("run_id") or self.path.name)

    @property
    def checkpoint_path(self) -> pathlib.Path | None:
        """Where the checkpoint saved with the dump is, or None.

        A relative path is taken relative to the run directory: the folder above ``crash/``
        when the dump still lies there (so a moved run directory still works), else the
        run's recorded ``dir``.
        """
        if not self.checkpoint or not isinstance(self.checkpoint.get("path"), str):
            return None
        path = pathlib.Path(self.checkpoint["path"])
        if path.is_absolute():
            return path
        if self.path.parent.name == "crash":
            base = self.path.parent.parent
        elif isinstance(self.run.get("dir"), str):
            base = pathlib.Path(self.run["dir"])
        else:
            base = self.path.parent
        return base / path

    def trigger_label(self) -> str:
        """The trigger's rule when it has one (``nonfinite``), else its kind (``sigterm``)."""
        return str(self.trigger.get("rule") or self.trigger.get("kind") or "unknown")


def _key(key: str) -> str:
    return json.dumps(key, ensure_ascii=False)


class _Fields:
    """Checked access to one JSON object, with errors naming the file and the field path."""

    def __init__(self, data: Any, where: str, source: str):
        self.source = source
        self.where = where
        if not isinstance(data, dict):
            raise self.error(where or "top level", "an object", data)
        self.data = data

    def error(self, where: str, expected: str, got: Any) -> CrashDumpError:
        return CrashDumpError(f"{self.source}: {where}: expected {expected}, got {kind_of(got)}")

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, expected: str, ok, default: Any = None, required: bool = False):
        if key not in self.data:
            if required:
                raise CrashDumpError(
                    f"{self.source}: {self.path(key)}: missing (expected {expected})"
                )
            return default
        value = self.data[key]
        if not ok(value):
            raise self.error(self.path(key), expected, value)
        return value


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_obj(v: Any) -> bool:
    return isinstance(v, dict)


def _is_obj_or_null(v: Any) -> bool:
    return v is None or isinstance(v, dict)


def _is_str_or_null(v: Any) -> bool:
    return v is None or isinstance(v, str)


def _is_int_or_null(v: Any) -> bool:
    return v is None or _is_int(v)


def _read_json(path: pathlib.Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file or directory") from None
    except IsADirectoryError:
        raise IsADirectoryError(
            f"{path}: is a directory; pass a crash dump (crash/crash-<step>.json) or a run "
            "directory"
        ) from None
    except UnicodeDecodeError as e:
        raise CrashDumpError(
            f"{path}: not UTF-8 text (byte {e.start}); expected a jaxobs crash dump (JSON)"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise CrashDumpError(
            f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg}); expected a jaxobs crash "
            "dump (crash/crash-<step>.json)"
        ) from None


def _decode(value: Any, where: str, source: str) -> float:
    try:
        return decode_float(value, where)
    except ValueError as e:
        raise CrashDumpError(f"{source}: {e}") from None


def _check_format(top: _Fields) -> str:
    fmt = top.data.get("format")
    if fmt != CRASH_FORMAT:
        found = "no format field" if fmt is None else f"format {kind_of(fmt)}"
        raise CrashDumpError(
            f'{top.source}: not a jaxobs crash dump: {found}, expected format "{CRASH_FORMAT}" '
            "(the flight recorder writes these as crash/crash-<step>.json)"
        )
    return check_version(
        top.data,
        top.source,
        "crash dump",
        current=CRASH_SCHEMA_VERSION,
        error=CrashDumpError,
        too_new=CrashDumpVersionError,
    )


def _read_recorder(
    top: _Fields,
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    rec_data = top.get("recorder", "an object", _is_obj, {})
    rec = _Fields(rec_data, "recorder", top.source)
    raw_steps = rec.get("steps", "a list of integer steps", lambda v: isinstance(v, list), [])
    for i, s in enumerate(raw_steps):
        if not _is_int(s):
            raise rec.error(f"recorder.steps[{i}]", "an integer step", s)
        if i and s < raw_steps[i - 1]:
            raise CrashDumpError(
                f"{top.source}: recorder.steps[{i}]: steps must be ascending, but {s} follows "
                f"{raw_steps[i - 1]}"
            )
    steps = np.asarray(raw_steps, dtype=np.int64).reshape(-1)
    raw_series = rec.get("series", "an object of value lists", _is_obj, {})
    series: dict[str, np.ndarray] = {}
    present: dict[str, np.ndarray] = {}
    n = len(raw_steps)
    for name, values in raw_series.items():
        where = f"recorder.series[{_key(name)}]"
        if not isinstance(values, list):
            raise rec.error(where, "a list of values", values)
        if len(values) != n:
            raise CrashDumpError(
                f"{top.source}: {where}: expected {n} values (one per entry of recorder.steps), "
                f"got {len(values)}"
            )
        arr = np.full(n, np.nan)
        mask = np.ones(n, dtype=bool)
        for i, v in enumerate(values):
            if v is None:
                mask[i] = False
            else:
                arr[i] = _decode(v, f"{where}[{i}]", top.source)
        series[name] = arr
        present[name] = mask
    return steps, series, present


def _read_first_diverged(top: _Fields) -> dict[str, Any] | None:
    data = top.get("first_diverged", "an object or null", _is_obj_or_null)
    if data is None:
        return None
    f = _Fields(data, "first_diverged", top.source)
    out = dict(data)
    out["layer"] = f.get("layer", "a layer name", _is_str, required=True)
    out["group"] = f.get("group", "a group name or null", _is_str_or_null)
    out["step"] = f.get("step", "an integer step", _is_int, required=True)
    for key in ("ratio", "baseline"):
        value = data.get(key)
        out[key] = math.nan if value is None else _decode(value, f.path(key), top.source)
    out["nonfinite"] = bool(f.get("nonfinite", "a boolean", lambda v: isinstance(v, bool), False))
    return out


def load_dump(path: PathLike) -> CrashDump:
    """Read and check a crash dump written by the flight recorder.

    Unknown keys anywhere are ignored, so a dump from a newer minor version still reads.

    Args:
      path: A ``crash-<step>.json`` file (see `find_dump` to pick one in a run directory).

    Returns:
      The dump, with the recorder's values decoded into float64 arrays (``"NaN"``,
      ``"Infinity"``, ``"-Infinity"`` become non-finite floats; ``null`` becomes NaN with
      False in ``present``).

    Raises:
      FileNotFoundError: There is no such file.
      CrashDumpVersionError: The dump has a newer major ``schema_version``; upgrade jaxobs.
      CrashDumpError: The file is not JSON, not a crash dump, or a field has the wrong form;
        the message names the field, e.g. ``recorder.series["train/loss"][3]``.
    """
    path = pathlib.Path(path)
    source = str(path)
    data = _read_json(path)
    if not isinstance(data, dict):
        raise CrashDumpError(
            f"{source}: not a jaxobs crash dump: expected a JSON object at the top level, "
            f"got {kind_of(data)}"
        )
    top = _Fields(data, "", source)
    version = _check_format(top)
    step = top.get("step", "an integer step", _is_int, required=True)
    trig = _Fields(top.get("trigger", "an object", _is_obj, required=True), "trigger", source)
    trigger = dict(trig.data)
    trigger["kind"] = trig.get("kind", "a string", _is_str, required=True)
    trigger["rule"] = trig.get("rule", "a string or null", _is_str_or_null)
    trigger["severity"] = trig.get("severity", "a string or null", _is_str_or_null)
    trigger["message"] = trig.get("message", "a string or null", _is_str_or_null) or ""
    error = trig.get("error", "an object or null", _is_obj_or_null)
    if error is not None:
        _Fields(error, "trigger.error", source)
    alerts = top.get("alerts", "a list of objects", lambda v: isinstance(v, list), [])
    for i, alert in enumerate(alerts):
        a = _Fields(alert, f"alerts[{i}]", source)
        a.get("step", "an integer step or null", _is_int_or_null)
        a.get("rule", "a string or null", _is_str_or_null)
        a.get("severity", "a string or null", _is_str_or_null)
        a.get("layer", "a string or null", _is_str_or_null)
        a.get("message", "a string or null", _is_str_or_null)
    checkpoint = top.get("checkpoint", "an object or null", _is_obj_or_null)
    if checkpoint is not None:
        ck = _Fields(checkpoint, "checkpoint", source)
        ck.get("path", "a path (string)", _is_str, required=True)
        ck.get("step", "an integer step or null", _is_int_or_null)
    created = top.get("created_ns", "an integer (ns since the epoch)", _is_int_or_null)
    steps, series, present = _read_recorder(top)
    return CrashDump(
        path=path,
        step=step,
        trigger=trigger,
        first_diverged=_read_first_diverged(top),
        thresholds=data.get("thresholds", {}),
        alerts=[dict(a) for a in alerts],
        run=dict(top.get("run", "an object", _is_obj, {})),
        versions=dict(top.get("versions", "an object", _is_obj, {})),
        checkpoint=None if checkpoint is None else dict(checkpoint),
        steps=steps,
        series=series,
        present=present,
        schema_version=version,
        created_ns=created,
    )


def find_dump(path: PathLike) -> pathlib.Path:
    """The crash dump a path names: the file itself, or the newest dump of a run directory.

    Args:
      path: A crash dump file, a run directory (its ``crash/crash-<step>.json`` files are
        searched), or a ``crash/`` folder itself.

    Returns:
      The path of the file, or of the dump with the largest step in the directory.

    Raises:
      FileNotFoundError: The path does not exist, or the directory holds no crash dump.
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if not path.is_dir():
        return path
    for folder in (path / "crash", path):
        dumps = []
        if folder.is_dir():
            for candidate in folder.iterdir():
                match = _DUMP_NAME.fullmatch(candidate.name)
                if match and candidate.is_file():
                    dumps.append((int(match.group(1)), candidate.name, candidate))
        if dumps:
            return max(dumps)[2]
    raise FileNotFoundError(
        f"{path}: no crash dumps here (looked for crash/crash-<step>.json); the flight recorder "
        "writes one when a run stops on a critical alert, an exception or a signal"
    )


def encode_recorded(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return encode_float(float(value))
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): encode_recorded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode_recorded(v) for v in value]
    return value


def write_dump(
    directory: PathLike,
    *,
    step: int,
    trigger: Mapping[str, Any],
    recorder: Mapping[str, Any],
    first_diverged: Mapping[str, Any] | None = None,
    thresholds: Mapping[str, Any] | None = None,
    alerts: Sequence[Mapping[str, Any]] = (),
    run: Mapping[str, Any] | None = None,
    versions: Mapping[str, Any] | None = None,
    checkpoint: Mapping[str, Any] | None = None,
) -> pathlib.Path:
    """Write ``<directory>/crash-<step>.json`` atomically (the format `load_dump` reads).

    ``recorder`` holds ``capacity``, ``steps`` (ascending) and ``series``: per key, one value
    per step, None where the key was not recorded. A dump for the same step is replaced.
    """
    doc = {
        "format": CRASH_FORMAT,
        "schema_version": CRASH_SCHEMA_VERSION,
        "created_ns": time.time_ns(),
        "step": int(step),
        "trigger": dict(trigger),
        "first_diverged": encode_recorded(first_diverged),
        "thresholds": encode_recorded(dict(thresholds or {})),
        "alerts": [encode_recorded(dict(a)) for a in alerts],
        "run": dict(run or {}),
        "versions": dict(versions or {}),
        "checkpoint": dict(checkpoint) if checkpoint else None,
        "recorder": {
            "capacity": int(recorder["capacity"]),
            "steps": [int(s) for s in recorder["steps"]],
            "series": {
                key: [None if v is None else encode_float(float(v)) for v in values]
                for key, values in recorder["series"].items()
            },
        },
    }
    path = pathlib.Path(directory) / f"crash-{int(step)}.json"
    write_text_atomic(path, dumps(doc) + "\n")
    return path
