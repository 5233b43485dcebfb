"""TensorBoard bridge (through tensorboardX): event files for a jaxobs run, live or later.

Live:

```python
from jaxobs.bridges.tensorboard import TensorBoardSink

run = jaxobs.init("digits", sinks=[TensorBoardSink()])  # <run dir>/tensorboard/
```

Later:

```sh
jaxobs sync runs/digits/<run id> --to tensorboard [--logdir D]
```

What the event files hold:

- scalars: every `metrics` record, at its step and with its wall time;
- histograms (`jaxobs.Run.log_histograms`, `observe(histograms=N)`), with their exact
  bins, count, sum and sum of squares;
- text: the config (`config`), health alerts (`health/alerts`), notes (`notes`) and the
  run's summary (`summary`, `jaxobs.Run.summary` as JSON, again at each change);
  alerts also as `health/alert/<rule>` scalars (1 info, 2 warning, 3 danger, 4 critical);
- an image: the crash dump's failure-signature plot (`health/failure_signature`);
- hparams, written when the run ends into the fixed sub-directory `hparams/`: the config's
  scalar values with the final value of every `train/*`, `val/*`, `test/*` and
  `eval/*` metric, and the numbers of the run's summary under their own keys.

The sink writes its event files itself, on its own thread (tensorboardX's record format
and protobufs, not its asynchronous `SummaryWriter`, whose `flush()` is not a barrier):
every `flush_secs` seconds it fsyncs them and saves the sync marker with each file's size,
so the marker never counts a record the files do not hold. A sync first cuts this run's
files back to what the marker recorded (and removes those written by a sender killed before
its first save), then writes the rest: killed at any point and run again, it writes every
record once. A failure is reported once and never stops training; `jaxobs sync` writes
what the live stream had not.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import pathlib
import struct
import sys
from collections.abc import Mapping
from typing import Any

from jaxobs._src.device.keys import flatten_mapping
from jaxobs._src.formats.events import Event
from jaxobs._src.formats.experiment import RunInfo
from jaxobs._src.formats.rundir import RunRecord, read_run
from jaxobs._src.formats.sync_marker import SyncMarker, SyncMarkerError, SyncResult
from jaxobs._src.host.alerts import SEVERITY_CODE
from jaxobs.bridges._budget import MetricBudget
from jaxobs.bridges._tb_files import EventFiles, reconcile, run_tag
from jaxobs.bridges._tracker import TrackerSink

__all__ = ["MetricBudget", "TensorBoardSink", "sync"]

HPARAMS_DIR = "hparams"
_FINAL_PREFIXES = ("train/", "val/", "test/", "eval/")


def _tensorboardx() -> Any:  # the tensorboardX module (it ships no type information)
    try:
        import tensorboardX
    except ImportError:
        raise ImportError(
            "jaxobs.bridges.tensorboard needs tensorboardX: pip install 'jaxobs[tensorboard]'"
        ) from None
    return tensorboardX


def _png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's header."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG file")
    return struct.unpack(">II", data[16:24])


def _hparam_value(value: Any) -> bool | int | float | str:
    if isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, sort_keys=True)


def _hparams(config: Mapping[str, Any]) -> dict[str, bool | int | float | str]:
    """The config as TensorBoard hparams: `.`-joined keys, non-scalars as JSON text."""
    return {k: _hparam_value(v) for k, v in flatten_mapping(config, sep=".").items()}


class TensorBoardSink(TrackerSink):
    """A jaxobs sink that writes TensorBoard event files with tensorboardX.

    Args:
      logdir: Where the event files go (default: `<run dir>/tensorboard`).
      histograms: Write histograms (default True).
      hparams: Write the hparams summary when the run ends (default True).
      flush_secs: How often the files are fsynced and the sync marker saved (the run's
        end always does both).
      budget: A `MetricBudget` (default: `MetricBudget()`), or False to write every key:
        past it, scalars are rolled up per layer (`events.jsonl` keeps all).
    """

    tracker = "tensorboard"
    label = "TensorBoard"
    durable_marker = True

    def __init__(
        self,
        logdir: str | os.PathLike | None = None,
        *,
        histograms: bool = True,
        hparams: bool = True,
        flush_secs: float = 10.0,
        budget: MetricBudget | bool | None = None,
    ):
        super().__init__(budget, marker_every_s=flush_secs)
        self.logdir = pathlib.Path(logdir) if logdir is not None else None
        self.histograms = histograms
        self.hparams = hparams
        self.flush_secs = flush_secs
        self.writer: EventFiles | None = None
        self._known: dict[str, int] = {}  # this run's files as a replay found them
        self._final: dict[str, float] = {}
        self._config: dict[str, Any] = {}
        self._summary: dict[str, Any] = {}  # the run's summary (`Run.summary`), as it is now

    # -- starting

    @property
    def is_open(self) -> bool:
        """Whether the writer is open (from `bind` until the run ends)."""
        return self.writer is not None

    def describe(self) -> dict[str, Any]:
        """Where this sink writes: tracker and log directory."""
        return {"tracker": "tensorboard", "logdir": str(self.logdir)}

    def _marker_info(self) -> dict[str, Any]:
        return {"logdir": str(self.logdir)}

    def _make_durable(self) -> dict[str, Any]:
        if self.writer is None:
            return {}
        return {"files": self.writer.flush()}

    def _resume_after(self, marker: SyncMarker, record: RunRecord) -> int | None:
        logdir = self.logdir or pathlib.Path(str(marker.info.get("logdir")))
        files = marker.info.get("files", {})
        if not isinstance(files, dict):
            raise SyncMarkerError(
                f"{marker.path}: destinations[{marker.destination!r}].info.files: expected an "
                f"object of event files and their sizes, got {type(files).__name__}; move the "
                "marker away and the next sync writes the whole run again"
            )
        self._known = reconcile(logdir, run_tag(marker.path.parent.parent), files)
        return marker.sent_through_ns

    def _start(self, info: RunInfo, run_dir: pathlib.Path, marker: SyncMarker | None) -> str:
        _tensorboardx()
        if self.logdir is None:
            self.logdir = run_dir / "tensorboard"
        self.logdir = self.logdir.absolute()
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.writer = EventFiles(self.logdir, run_tag(run_dir), self._known)
        self._config = dict(info.config)
        return _destination(self.logdir, run_dir)

    # -- writing

    def _files(self) -> EventFiles:
        if self.writer is None:
            raise RuntimeError("this TensorBoard sink is not open")
        return self.writer

    def _add_scalar(self, tag: str, value: float, global_step: int, walltime: float) -> None:
        from tensorboardX.proto.summary_pb2 import Summary

        summary = Summary(value=[Summary.Value(tag=tag, simple_value=value)])
        self._files().add_summary(summary, global_step, walltime)

    def _add_text(self, tag: str, text: str, global_step: int, walltime: float) -> None:
        from tensorboardX.summary import text as text_summary

        self._files().add_summary(text_summary(tag, text), global_step, walltime)

    # -- events

    @staticmethod
    def _when(event: Event) -> dict[str, Any]:
        return {"global_step": event.step or 0, "walltime": event.timestamp_ns / 1e9}

    def _on_run_start(self, event: Event) -> None:
        run = self.run_info
        lines = [f"**{run.project}/{run.run_id}** ({run.name})"]
        if run.group:
            lines.append(f"group: {run.group}")
        if run.tags:
            lines.append("tags: " + ", ".join(run.tags))
        self._add_text("run", "  \n".join(lines), **self._when(event))
        self._write_config(event)

    def _write_config(self, event: Event) -> None:
        text = json.dumps(self._config, indent=2, sort_keys=True, default=str)
        self._add_text("config", "```\n" + text + "\n```", **self._when(event))

    def _on_config_update(self, event: Event) -> None:
        self._config.update(event.data.get("config", {}))
        self._write_config(event)

    def _on_metrics(self, event: Event) -> None:
        from tensorboardX.proto.summary_pb2 import Summary

        # One event per record, holding every scalar: what add_scalar writes, one call per
        # record instead of one per metric (ten times faster for a record of 100 metrics).
        values = []
        for key, value in event.metrics.items():
            values.append(Summary.Value(tag=key, simple_value=value))
            if key.startswith(_FINAL_PREFIXES) and math.isfinite(value):
                self._final[key] = value
        self._add_summary(Summary(value=values), **self._when(event))

    def _add_summary(self, summary: Any, global_step: int, walltime: float) -> None:
        self._files().add_summary(summary, global_step, walltime)

    def _on_epoch_end(self, event: Event) -> None:
        when = self._when(event)
        for key, value in event.metrics.items():
            if isinstance(value, (int, float)):
                self._add_scalar(key, float(value), **when)

    def _on_histograms(self, event: Event) -> None:
        if not self.histograms:
            return
        when = self._when(event)
        for name, h in event.data.get("values", {}).items():
            edges, counts = list(h["edges"]), list(h["counts"])
            centres = [(a + b) / 2 for a, b in itertools.pairwise(edges)]
            total = h.get("sum")
            squares = h.get("sum_squares")
            if total is None:  # estimated from the bins when the samples are gone
                total = sum(c * x for c, x in zip(counts, centres, strict=True))
            if squares is None:
                squares = sum(c * x * x for c, x in zip(counts, centres, strict=True))
            from tensorboardX.summary import histogram_raw

            summary = histogram_raw(
                name,
                min=edges[0],
                max=edges[-1],
                num=sum(counts),
                sum=total,
                sum_squares=squares,
                bucket_limits=edges[1:],
                bucket_counts=counts,
            )
            self._add_summary(summary, **when)

    def _on_health_check(self, event: Event) -> None:
        when = self._when(event)
        rule = str(event.data.get("rule", "alert"))
        severity = str(event.severity or "info").lower()
        self._add_scalar(f"health/alert/{rule}", SEVERITY_CODE.get(severity, 1), **when)
        self._add_text(
            "health/alerts", f"**{severity.upper()}** `{rule}`: {event.message or ''}", **when
        )

    def _on_crash_dump(self, event: Event) -> None:
        when = self._when(event)
        self._add_text("health/crash_dump", str(event.data.get("path")), **when)
        plot = event.data.get("plot")
        if plot and pathlib.Path(plot).is_file():
            self._add_png("health/failure_signature", pathlib.Path(plot).read_bytes(), **when)

    def _add_png(self, tag: str, data: bytes, global_step: int, walltime: float) -> None:
        """An encoded PNG as an image summary (no decoding, no pillow)."""
        from tensorboardX.proto.summary_pb2 import Summary

        width, height = _png_size(data)
        image = Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=data)
        summary = Summary(value=[Summary.Value(tag=tag, image=image)])
        self._add_summary(summary, global_step, walltime)

    def _on_summary(self, event: Event) -> None:
        self._summary.update(event.data.get("summary", {}))
        for key in event.data.get("deleted", []):
            self._summary.pop(key, None)
        text = json.dumps(self._summary, indent=2, ensure_ascii=False, default=str)
        self._add_text("summary", "```\n" + text + "\n```", **self._when(event))

    def _on_note(self, event: Event) -> None:
        self._add_text("notes", str(event.data.get("text", "")), **self._when(event))

    # -- ending

    def _end_run(self, event: Event) -> None:
        if self.hparams:
            hparams = _hparams(self._config) or {"run_id": self.run_info.run_id}
            metrics = dict(self._final)
            for key, value in self._summary.items():  # the summary's numbers, as set
                number = isinstance(value, (int, float)) and not isinstance(value, bool)
                if number and abs(value) <= sys.float_info.max:  # finite, fits a float
                    metrics[key] = float(value)
            from tensorboardX.proto.summary_pb2 import Summary
            from tensorboardX.summary import hparams as hparams_summaries

            files, now = self._files(), event.timestamp_ns / 1e9
            for summary in hparams_summaries(hparams, metrics):  # experiment, session start/end
                files.add_summary(summary, 0, now, sub=HPARAMS_DIR)
            for key, value in metrics.items():
                scalar = Summary(value=[Summary.Value(tag=key, simple_value=value)])
                files.add_summary(scalar, event.step or 0, now, sub=HPARAMS_DIR)

    def _close(self) -> None:
        """Close the files (the run ended, or the run's dispatcher is shutting down), then
        save the marker: what it says is on disk, is."""
        if self.writer is not None:
            self._save_marker()  # flushes and fsyncs the files first
            self.writer.close()
            self.writer = None

    def flush(self) -> None:
        """Write what was sent to the event files and fsync them."""
        if self.writer is not None and not self._failed:
            self.writer.flush()

    def _before_replay(self, record: RunRecord) -> None:
        self._config = dict(record.info.config)  # every config update applied
        self._summary = dict(record.log.summary)  # as it ended (replayed records redo it)
        for key, curve in record.log.history.curves.items():  # hparams: the final values
            finite = [v for v in curve.values if math.isfinite(v)]
            if key.startswith(_FINAL_PREFIXES) and finite:
                self._final[key] = finite[-1]

    def _location(self, marker: SyncMarker) -> str | None:
        return str(self.logdir)


def _destination(logdir: pathlib.Path, run_dir: pathlib.Path) -> str:
    """The marker's key for a log directory: relative to the run directory when inside it."""
    with contextlib.suppress(ValueError):
        return str(logdir.resolve().relative_to(run_dir.resolve()))
    return str(logdir.resolve())


def sync(
    run_dir: str | os.PathLike,
    *,
    logdir: str | os.PathLike | None = None,
    wait_s: float = 0.0,
    flush_secs: float = 10.0,
    budget: MetricBudget | bool | None = None,
) -> SyncResult:
    """Write a run directory (finished, failed or killed mid-way) as TensorBoard event files.

    Only records this log directory has not received are written, exactly once: running it
    twice writes nothing the second time, and a sync killed at any point, run again, cuts
    this run's files back to what its marker recorded and writes the rest. One sync (or
    live sink) at a time writes a run to one log directory; another waits ``wait_s``.

    Args:
      run_dir: A jaxobs run directory.
      logdir: Where to write (default: `<run_dir>/tensorboard`).
      wait_s: How long to wait for another sender of this run and log directory.
      flush_secs: How often the files are fsynced and the marker saved while it writes.
      budget: A `MetricBudget` (default: the live sink's default), or False: every key.

    Returns:
      What was written, and the log directory.

    Raises:
      jaxobs.RunDirError: not a run directory.
      jaxobs.SyncBusyError: another process still writes there after ``wait_s``.
      ImportError: tensorboardX is not installed.
    """
    record = read_run(pathlib.Path(run_dir).absolute())
    target = (
        pathlib.Path(logdir).absolute()
        if logdir is not None
        else record.dir.absolute() / "tensorboard"
    )
    sink = TensorBoardSink(target, flush_secs=flush_secs, budget=budget)
    marker = SyncMarker(record.dir, sink.tracker, _destination(target, record.dir))
    return sink.replay(record, marker, wait_s=wait_s)
