"""Reading a run directory back: ``events.jsonl`` (finished or not) and ``trainlog.json``."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import warnings
from typing import Any

from jaxobs._src.formats.codec import decode_float, kind_of, parse_json
from jaxobs._src.formats.errors import RunDirError, RunDirWarning, TrainLogError
from jaxobs._src.formats.events import RECORD_FIELDS, Event, Level
from jaxobs._src.formats.experiment import Artifact, ExperimentLog, RunInfo
from jaxobs._src.formats.fields import (
    EVENTS_FORMAT,
    REQUIRED,
    FieldReader,
    check_format,
    check_version,
    subscript,
)
from jaxobs._src.formats.trainlog import SCHEMA_VERSION, TrainLog

EVENTS_FILE = "events.jsonl"


TRAINLOG_FILE = "trainlog.json"


@dataclasses.dataclass
class RunRecord:
    """A run directory read back (by `read_run`).

    Attributes:
      dir: The run directory.
      info: Run metadata and config (with every ``config_update`` applied).
      env: The environment snapshot taken at the start.
      settings: The run's settings (level, total_steps).
      status: ``finished``, ``failed``, ``interrupted``, ``terminated``, or ``incomplete``
        when there is no ``run_end`` record (the run is still going, or was killed).
      end: The ``run_end`` record, if any.
      log: Metrics, artifacts, notes and the user's summary (every ``summary`` record
        applied in order: the last assignment of a key wins, a deletion removes it) as an
        `ExperimentLog`.
      events: Every record of ``events.jsonl`` in order, as stored (non-finite floats are
        the strings "NaN", "Infinity", "-Infinity").
      warnings: What was incomplete (e.g. a torn last line).
    """

    dir: pathlib.Path
    info: RunInfo
    env: dict[str, Any]
    settings: dict[str, Any]
    status: str
    end: dict[str, Any] | None
    log: ExperimentLog
    events: list[dict[str, Any]]
    warnings: list[str]

    @property
    def last_step(self) -> int | None:
        """The largest step of any metric, or None."""
        steps = [c.steps[-1] for c in self.log.history.curves.values() if c.steps]
        return max(steps) if steps else None


def read_run(directory: str | os.PathLike, *, warn: bool = True) -> RunRecord:
    """Read a run directory back from its ``events.jsonl``, finished or not.

    A torn last line (the process was killed while writing it) is skipped with a
    `RunDirWarning`; every complete line before it is kept.

    Args:
      directory: The run directory (``<dir>/<project>/<run_id>``).
      warn: Issue the `RunDirWarning` for a torn last line. With False the problem is only
        listed in the record's ``warnings``.

    Returns:
      The `RunRecord`.

    Raises:
      RunDirError: no ``events.jsonl``, a corrupt line before the last, or a first record
        that is not ``run_start``; the message names the file and line.
      SchemaVersionError: the run was written by a newer major version of jaxobs.
    """
    directory = pathlib.Path(directory)
    path = directory / EVENTS_FILE
    if not path.is_file():
        hint = ""
        if directory.is_dir():
            runs = sorted(p.name for p in directory.iterdir() if (p / EVENTS_FILE).is_file())
            if runs:
                hint = f"; it holds runs: {', '.join(runs[:5])}" + (" ..." if len(runs) > 5 else "")
        raise RunDirError(f"{directory}: not a jaxobs run directory (no {EVENTS_FILE}){hint}")
    with open(path, "rb") as f:
        raw = f.read()
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    problems: list[str] = []
    torn = False
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(_parse_line(line, path, number))
        except RunDirError:
            if number == len(lines) and not raw.endswith(b"\n"):
                torn = True
                problems.append(
                    f"{path}:{number}: the last line is incomplete (the process was "
                    f"killed while writing it); ignored, {len(records)} records kept"
                )
                break
            raise
    if not records or records[0]["event"] != "run_start":
        raise RunDirError(f"{path}:1: expected a run_start record first")
    start = _fields(records[0], path, 1)
    check_version(start.data, str(path), "run", current=SCHEMA_VERSION, error=RunDirError)
    check_format(
        start.data, f"{path}:1", EVENTS_FORMAT, what="a jaxobs event log",
        default=EVENTS_FORMAT, error=RunDirError,
    )  # fmt: skip
    try:
        info = RunInfo.from_json(start.get("run", dict, dict, "an object"), "run", f"{path}:1")
    except (TrainLogError, TypeError, ValueError) as e:
        raise RunDirError(f"{path}:1: bad run_start record: {e}") from None
    env = start.get("env", dict, dict, "an object (the environment)")
    settings = start.get("settings", dict, dict, "an object (the run's settings)")
    exp = ExperimentLog(run=info)
    curves: dict[str, Any] = {}
    end = None
    status = "incomplete"
    for number, rec in enumerate(records[1:], start=2):
        r = _fields(rec, path, number)
        kind = rec["event"]
        if kind == "metrics":
            step = r.integer("step", REQUIRED, "an integer step")
            values = r.child("values", REQUIRED, "an object of metric values")
            assert values is not None
            for key, value in values.data.items():
                curve = curves.get(key)
                if curve is None:
                    curve = curves[key] = exp.history.add_metric(key)
                curve.steps.append(step)
                if type(value) is not float:
                    value = values.decode_number(value, subscript(key))
                curve.values.append(value)
        elif kind == "artifact":
            artifact = r.get("artifact", dict, REQUIRED, "an artifact object")
            try:
                exp.add_artifact(Artifact.from_json(artifact, "artifact", f"{path}:{number}"))
            except TrainLogError as e:
                raise RunDirError(str(e)) from None
        elif kind == "note":
            exp.notes.append(r.string("text", REQUIRED, "the note's text (a string)"))
        elif kind == "config_update":
            info.config.update(r.get("config", dict, REQUIRED, "an object"))
        elif kind == "summary":
            exp.summary.update(r.get("summary", dict, dict, "an object of summary values"))
            for key in r.strs("deleted"):
                exp.summary.pop(key, None)
        elif kind == "run_end":
            end = rec
            error = r.child("error", None, "an object or null", nullable=True)
            if error is not None:
                error.string("type", "", "the exception's type name (a string)")
                error.string("message", "", "a string")
            status = r.string("status", "", "a string (finished, failed, ...)") or "incomplete"
            if status == "incomplete":
                problems.append(
                    f"{path}:{number}: the run_end record has no status; read as incomplete"
                )
    if torn and warn:
        warnings.warn(problems[0], RunDirWarning, stacklevel=2)
    if end is None:
        problems.append(f"{path}: no run_end record: the run is still going or was killed")
    return RunRecord(
        dir=directory,
        info=info,
        env=env,
        settings=settings,
        status=status,
        end=end,
        log=exp,
        events=records,
        warnings=problems,
    )


def _fields(record: dict[str, Any], path: pathlib.Path, number: int) -> FieldReader:
    return FieldReader(record, "", f"{path}:{number}", error=RunDirError, int64=True)


def _parse_line(line: bytes, path: pathlib.Path, number: int) -> dict[str, Any]:
    """One record of events.jsonl, its record fields checked."""
    expected = "one JSON object per line with an 'event' field"
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RunDirError(
            f"{path}:{number}: corrupt record (not UTF-8 text at byte {e.start}); expected "
            f"{expected}"
        ) from None
    where = f"{path}:{number}: "
    try:
        record = parse_json(text, str(path), expected, RunDirError, line=number)
    except RunDirError as e:
        raise RunDirError(where + "corrupt record: " + str(e).removeprefix(where)) from None
    if not isinstance(record, dict):
        raise RunDirError(f"{where}corrupt record: got {kind_of(record)}; expected {expected}")
    r = FieldReader(record, "", where[:-2], error=RunDirError, int64=True)
    r.string("event", REQUIRED, "the event's type (a string)")
    r.get("step", int, None, "an integer step or null")
    r.get("timestamp_ns", int, None, "an integer (ns since the epoch)")
    r.string("level", "BASIC", "a level name (a string)")
    return record


def load_trainlog(path: str | os.PathLike) -> tuple[TrainLog, RunRecord | None]:
    """A TrainLog from a run directory (its events, which are complete even after a crash) or
    from a TrainLog JSON file; the `RunRecord` too when it came from a run directory."""
    path = pathlib.Path(path)
    if path.is_dir():
        record = read_run(path)
        return record.log.to_trainlog(), record
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    return TrainLog.read_json(path), None


def events_of(record: RunRecord, after_ns: int | None = None) -> list[Event]:
    """The records of a run directory as the events a live sink receives, in order; only
    those recorded after ``after_ns`` when it is given.

    Metric values come back as floats (non-finite ones from their ``"NaN"``/``"Infinity"``
    strings); other payloads as stored.
    """
    out = []
    for rec in record.events:
        timestamp = rec.get("timestamp_ns") or 0
        if after_ns is not None and timestamp <= after_ns:
            continue
        data = {k: v for k, v in rec.items() if k not in RECORD_FIELDS}
        kind = rec["event"]
        if kind == "metrics":
            data["values"] = {
                k: v if type(v) is float else decode_float(v, k)
                for k, v in data.get("values", {}).items()
            }
        try:
            level = Level[str(rec.get("level", "BASIC"))]
        except KeyError:
            level = Level.DETAILED
        out.append(Event(kind, level, rec.get("step"), timestamp, data))
    return out
