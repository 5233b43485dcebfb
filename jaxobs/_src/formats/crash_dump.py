"""The crash dump format: what the flight recorder writes when a run dies, and its reader.

When a run dies (a critical health alert, an exception, SIGTERM, Ctrl-C, a halt) the flight
recorder writes ``<run dir>/crash/crash-<step>.json`` (``"format": "jaxobs.crash"``): the
trigger, the health alerts, the health checker's thresholds, the first layer to diverge,
and the last ``capacity`` steps of every recorded series.

- `write_dump` writes one atomically; `load_dump` reads and checks one into a `CrashDump`;
  `find_dump` picks the newest dump of a run directory.
- `CRASH_FORMAT` and `CRASH_SCHEMA_VERSION` name the format and its version.

What a dump says (the first layer to diverge, the summary, the plot) is worked out in
`jaxobs._src.analysis`; `jaxobs.crash` is the public face of both. Nothing here imports jax
or matplotlib.

Example:
    >>> import math, tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = write_dump(
    ...         folder,
    ...         step=3,
    ...         trigger={"kind": "halt"},
    ...         recorder={"capacity": 8, "steps": [2, 3],
    ...                   "series": {"train/loss": [0.5, math.nan]}},
    ...     )
    ...     dump = load_dump(path)
    >>> path.name, dump.step, dump.trigger_label()
    ('crash-3.json', 3, 'halt')
    >>> dump.series["train/loss"].tolist(), dump.present["train/loss"].tolist()
    ([0.5, nan], [True, True])
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxobs._src.formats.codec import (
    PathLike,
    dumps,
    encode_float,
    kind_of,
    load_json_file,
    write_text_atomic,
)
from jaxobs._src.formats.errors import CrashDumpError, CrashDumpVersionError
from jaxobs._src.formats.fields import (
    CRASH_FORMAT,
    INT64_MAX,
    INT64_MIN,
    NULL,
    REQUIRED,
    FieldReader,
    check_format,
    check_version,
    subscript,
)

__all__ = [
    "CRASH_FORMAT",
    "CRASH_SCHEMA_VERSION",
    "CrashDump",
    "encode_recorded",
    "find_dump",
    "load_dump",
    "write_dump",
]

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


def _fields(data: Any, where: str, source: str) -> FieldReader:
    """The crash dump's field reader: `CrashDumpError`, and null only where a field allows it."""
    return FieldReader(
        data,
        where,
        source,
        error=CrashDumpError,
        missing="missing",
        null_is_missing=False,
        int64=True,
    )


def _check_format(top: FieldReader) -> str:
    check_format(
        top.data,
        top.source,
        CRASH_FORMAT,
        what="a jaxobs crash dump",
        error=CrashDumpError,
        note="the flight recorder writes these as crash/crash-<step>.json",
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
    top: FieldReader,
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    rec = top.nested(top.get("recorder", dict, dict, "an object"), "recorder")
    raw_steps = rec.get("steps", list, list, "a list of integer steps")
    for i, s in enumerate(raw_steps):
        if not isinstance(s, int) or isinstance(s, bool):
            raise rec.fail(f"steps[{i}]", "an integer step", s)
        if not INT64_MIN <= s <= INT64_MAX:
            raise rec.out_of_range(f"steps[{i}]", s)
        if i and s < raw_steps[i - 1]:
            raise rec.problem(
                f"steps[{i}]", f"steps must be ascending, but {s} follows {raw_steps[i - 1]}"
            )
    steps = np.asarray(raw_steps, dtype=np.int64).reshape(-1)
    raw_series = rec.get("series", dict, dict, "an object of value lists")
    series: dict[str, np.ndarray] = {}
    present: dict[str, np.ndarray] = {}
    n = len(raw_steps)
    for name, values in raw_series.items():
        where = f"series{subscript(name)}"
        if not isinstance(values, list):
            raise rec.fail(where, "a list of values", values)
        if len(values) != n:
            raise rec.problem(
                where, f"expected {n} values (one per entry of recorder.steps), got {len(values)}"
            )
        arr = np.full(n, np.nan)
        mask = np.ones(n, dtype=bool)
        for i, v in enumerate(values):
            if v is None:
                mask[i] = False
            else:
                arr[i] = rec.decode_number(v, f"{where}[{i}]")
        series[name] = arr
        present[name] = mask
    return steps, series, present


def _read_first_diverged(top: FieldReader) -> dict[str, Any] | None:
    f = top.child("first_diverged", None, "an object or null", nullable=True)
    if f is None:
        return None
    out = dict(f.data)
    out["layer"] = f.string("layer", REQUIRED, "a layer name")
    out["group"] = f.get("group", (str, NULL), None, "a group name or null")
    out["step"] = f.integer("step", REQUIRED, "an integer step")
    out["ratio"] = f.number("ratio")
    out["baseline"] = f.number("baseline")
    out["nonfinite"] = f.get("nonfinite", bool, False, "a boolean")
    return out


def _read_trigger(top: FieldReader) -> dict[str, Any]:
    trig = top.nested(top.get("trigger", dict, REQUIRED, "an object"), "trigger")
    trigger = dict(trig.data)
    trigger["kind"] = trig.string("kind", REQUIRED)
    trigger["rule"] = trig.get("rule", (str, NULL), None, "a string or null")
    trigger["severity"] = trig.get("severity", (str, NULL), None, "a string or null")
    trigger["message"] = trig.get("message", (str, NULL), None, "a string or null") or ""
    trig.child("error", None, "an object or null", nullable=True)
    return trigger


def _read_alerts(top: FieldReader) -> list[dict[str, Any]]:
    alerts = top.get("alerts", list, list, "a list of objects")
    for i, alert in enumerate(alerts):
        a = top.nested(alert, f"alerts[{i}]")
        a.get("step", (int, NULL), None, "an integer step or null")
        for key in ("rule", "severity", "layer", "message"):
            a.get(key, (str, NULL), None, "a string or null")
    return [dict(a) for a in alerts]


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
      IsADirectoryError: The path is a directory (`find_dump` picks a run directory's dump).
      CrashDumpVersionError: The dump has a newer major ``schema_version``; upgrade jaxobs.
      CrashDumpError: The file is not JSON, not a crash dump, or a field has the wrong form;
        the message names the field, e.g. ``recorder.series["train/loss"][3]``.
    """
    path = pathlib.Path(path)
    source = str(path)
    data = load_json_file(
        path, expected="a jaxobs crash dump (crash/crash-<step>.json)", error=CrashDumpError
    )
    if not isinstance(data, dict):
        raise CrashDumpError(
            f"{source}: not a jaxobs crash dump: expected a JSON object at the top level, "
            f"got {kind_of(data)}"
        )
    top = _fields(data, "", source)
    version = _check_format(top)
    step = top.integer("step", REQUIRED, "an integer step")
    trigger = _read_trigger(top)
    alerts = _read_alerts(top)
    ck = top.child("checkpoint", None, "an object or null", nullable=True)
    if ck is not None:
        ck.string("path", REQUIRED, "a path (string)")
        ck.get("step", (int, NULL), None, "an integer step or null")
    created = top.get("created_ns", (int, NULL), None, "an integer (ns since the epoch)")
    steps, series, present = _read_recorder(top)
    return CrashDump(
        path=path,
        step=step,
        trigger=trigger,
        first_diverged=_read_first_diverged(top),
        thresholds=data.get("thresholds", {}),
        alerts=alerts,
        run=dict(top.get("run", dict, dict, "an object")),
        versions=dict(top.get("versions", dict, dict, "an object")),
        checkpoint=None if ck is None else dict(ck.data),
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
    """Recorded data as JSON: NumPy scalars as Python ones, non-finite floats as sentinels."""
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
