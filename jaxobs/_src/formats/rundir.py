"""Reading a run directory back: ``events.jsonl`` (finished or not) and ``trainlog.json``."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import warnings
from typing import Any

from jaxobs._src.formats.codec import decode_float
from jaxobs._src.formats.errors import RunDirError, RunDirWarning, SchemaVersionError, TrainLogError
from jaxobs._src.formats.events import RECORD_FIELDS, Event, Level
from jaxobs._src.formats.experiment import Artifact, ExperimentLog, RunInfo
from jaxobs._src.formats.fields import check_version
from jaxobs._src.formats.trainlog import SCHEMA_VERSION, TrainLog

EVENTS_FILE = "events.jsonl"


TRAINLOG_FILE = "trainlog.json"


EVENTS_FORMAT = "jaxobs.events"


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
      log: Metrics, artifacts and notes as an `ExperimentLog`.
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
            record = json.loads(line.decode("utf-8"))
            if not isinstance(record, dict) or not isinstance(record.get("event"), str):
                raise ValueError("not an event object")
        except (ValueError, UnicodeDecodeError) as e:
            if number == len(lines) and not raw.endswith(b"\n"):
                torn = True
                problems.append(
                    f"{path}:{number}: the last line is incomplete (the process was "
                    f"killed while writing it); ignored, {len(records)} records kept"
                )
                break
            raise RunDirError(
                f"{path}:{number}: corrupt record ({e}); expected one JSON object "
                "per line with an 'event' field"
            ) from None
        records.append(record)
    if not records or records[0]["event"] != "run_start":
        raise RunDirError(f"{path}:1: expected a run_start record first")
    start = records[0]
    try:
        check_version(start, str(path), "run", current=SCHEMA_VERSION)
        info = RunInfo.from_json(start.get("run", {}), "run", f"{path}:1")
    except SchemaVersionError:
        raise
    except (TrainLogError, TypeError, ValueError) as e:
        raise RunDirError(f"{path}:1: bad run_start record: {e}") from None
    exp = ExperimentLog(run=info)
    curves: dict[str, Any] = {}
    end = None
    for number, rec in enumerate(records[1:], start=2):
        kind = rec["event"]
        try:
            if kind == "metrics":  # validated when written: append without re-checking
                step = rec["step"]
                for key, value in rec["values"].items():
                    curve = curves.get(key) or exp.history.add_metric(key)
                    curves[key] = curve
                    curve.steps.append(step)
                    curve.values.append(value if type(value) is float else decode_float(value, key))
            elif kind == "artifact":
                exp.add_artifact(
                    Artifact.from_json(rec["artifact"], "artifact", f"{path}:{number}")
                )
            elif kind == "note":
                exp.notes.append(str(rec["text"]))
            elif kind == "config_update":
                info.config.update(rec["config"])
            elif kind == "run_end":
                end = rec
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise RunDirError(
                f"{path}:{number}: bad {kind} record ({type(e).__name__}: {e})"
            ) from None
    if torn and warn:
        warnings.warn(problems[-1], RunDirWarning, stacklevel=2)
    if end is None:
        problems.append(f"{path}: no run_end record: the run is still going or was killed")
    return RunRecord(
        dir=directory,
        info=info,
        env=start.get("env", {}),
        settings=start.get("settings", {}),
        status=end["status"] if end else "incomplete",
        end=end,
        log=exp,
        events=records,
        warnings=problems,
    )


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
        timestamp = int(rec.get("timestamp_ns", 0))
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
