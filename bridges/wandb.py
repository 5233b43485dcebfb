"""Weights & Biases bridge: stream a jaxobs run to W&B live, or send a run directory later.

Live:

```python
from jaxobs.bridges.wandb import WandbSink

run = jaxobs.init("digits", config=defaults, sinks=[WandbSink()])
config = run.config  # under a sweep agent: the sweep's values
```

Later (offline machines, a crashed run, a stream that failed):

```sh
jaxobs sync runs/digits/<run id> --to wandb            # or sync(run_dir) from Python
```

What a W&B run receives:

- every `metrics` record as one `run.log` row with its own `trainer/step` (and the
  record's time as `_timestamp`, and as the hidden integer `_jaxobs_ns` that a sync reads
  back); `define_metric("*", step_metric="trainer/step")` makes that the x-axis, and
  `step=` is never passed, so late validation rows and replays are never dropped. A metric
  named like a key W&B or the bridge owns (`trainer/step`, any key starting with `_`) is
  sent as `jaxobs/<name>`, said once;
- best values in `run.summary`: `min` or `max` where the metric's name says which is
  better (the rule of `jaxobs show`: `train/loss`, `val/error_rate` and
  `perf/step_time_s` are minimised, `val/accuracy` and `eval/f1` maximised), and whatever
  `summary=` says; `jaxobs.Run.summary` as set (each assignment and deletion);
- histograms (`jaxobs.Run.log_histograms`, `observe(histograms=N)`) as `wandb.Histogram`;
- health alerts as `health/alert/<rule>` scalars (1 info, 2 warning, 3 danger, 4 critical)
  and a `health/alerts` table; critical ones through `wandb.alert` if `alerts=True`;
- the crash dump's failure-signature plot as an image, and files attached to the run
  (`trainlog.json` at the end, crash dumps, checkpoints) as artifacts named by their jaxobs
  name (every run's `model` is a version of one W&B artifact), with the record as
  metadata; a sync sends only files inside the run directory;
- the run's config at init; config updates as they happen.

Values reach the bridge as host numbers on the run's dispatch thread: W&B never makes the
training loop wait. A W&B failure (wandb not installed, an init error, an exception in a
log call) is reported once and never stops training; the run directory stays complete and
`jaxobs sync` sends it later: the records that W&B's own files of this run lack (read back
from the `.wandb` files, `_wandb_files.py`), else those after the sync marker
(`<run dir>/sync/wandb.json`). A run that did not finish is finished in W&B with exit code
1 and its status (`jaxobs/status`) in the summary.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from jaxobs._src.analysis.summary import direction
from jaxobs._src.formats.events import Event
from jaxobs._src.formats.experiment import RunInfo
from jaxobs._src.formats.rundir import RunRecord, read_run
from jaxobs._src.formats.sync_marker import SyncMarker, SyncResult
from jaxobs._src.host.alerts import SEVERITY_CODE
from jaxobs.bridges._budget import MetricBudget
from jaxobs.bridges._tracker import TrackerSink
from jaxobs.bridges._wandb_files import MARK_KEY, NS_KEY, resume
from jaxobs.bridges._wandb_parts import (
    confined,
    describe_run,
    has_credentials,
    make_artifact,
    safe_keys,
    staging,
    wandb_id,
)

if TYPE_CHECKING:  # wandb is optional and imported where used
    from wandb import Run as WandbRun

__all__ = ["MetricBudget", "WandbSink", "sync"]

logger = logging.getLogger("jaxobs")

STEP_KEY = "trainer/step"
_GOALS = ("min", "max", "mean", "last", "best", "none")
# The W&B runs that sinks started and have not finished, by id(): never adopted by another.
_STARTED: dict[int, Any] = {}


def _wandb() -> Any:  # the wandb module, imported on first use
    try:
        import wandb
    except ImportError:
        raise ImportError("jaxobs.bridges.wandb needs wandb: pip install 'jaxobs[wandb]'") from None
    return wandb


class WandbSink(TrackerSink):
    """A jaxobs sink that streams a run to Weights & Biases.

    Pass it to `jaxobs.init` (`sinks=[WandbSink()]`) or to `jaxobs.Run.add_sink`. When the
    run starts, the sink adopts the active `wandb.run` if you started one (and leaves
    finishing it to you), else starts a W&B run of its own from the jaxobs run's project,
    name, config, tags, group and directory: several jaxobs runs open in one process each
    log to their own W&B run. It honours `WANDB_MODE`, `WANDB_DIR`, `WANDB_PROJECT` and
    `WANDB_RUN_ID`, and stages artifacts inside the run directory (`<run>/wandb/data`,
    unless you set `WANDB_DATA_DIR`).

    Under a W&B sweep agent, the sweep's hyperparameters override the config's defaults in
    W&B; the sink copies them back into the jaxobs run's config (a `config_update`
    record), so `run.config` holds the values the trial really uses.

    Args:
      project: W&B project (default: `WANDB_PROJECT`, else the jaxobs project).
      entity: W&B entity (team or user).
      id: W&B run id (default: `WANDB_RUN_ID`, else the jaxobs run id).
      mode: `"online"`, `"offline"` or `"disabled"` (default: `WANDB_MODE`, else
        online when W&B credentials are configured and offline otherwise).
      dir: Where W&B writes its `wandb/` folder (default: `WANDB_DIR`, else the jaxobs
        run directory).
      summary: `{metric: "min" | "max" | "mean" | "last"}` for `run.summary`, on top of
        the defaults (`min` for losses, errors and times, `max` for accuracies and scores).
      histograms: Send histograms (default True).
      artifacts: Log attached files (crash dumps, checkpoints, `trainlog.json`) as W&B
        artifacts (default True).
      alerts: Also send critical health alerts through `wandb.alert` (default False).
      init_kwargs: More arguments for `wandb.init` (`job_type`, `notes`, `settings`).
      budget: A `MetricBudget` (default: `MetricBudget()`), or False to send every key:
        past it, W&B receives statistics rolled up per layer (`events.jsonl` keeps all).
      marker_every_s: How often the sync marker is saved while streaming (W&B's own files
        are what a later sync trusts; the marker is the fallback where they are gone).

    Raises:
      ValueError: an unknown `mode` or `summary` goal, or a `marker_every_s` that is not
        a positive number.
    """

    tracker = "wandb"
    label = "W&B"
    replay_skips = ("run_start", "tracker")

    def __init__(
        self,
        *,
        project: str | None = None,
        entity: str | None = None,
        id: str | None = None,
        mode: str | None = None,
        dir: str | os.PathLike | None = None,
        summary: Mapping[str, str] | None = None,
        histograms: bool = True,
        artifacts: bool = True,
        alerts: bool = False,
        init_kwargs: Mapping[str, Any] | None = None,
        budget: MetricBudget | bool | None = None,
        marker_every_s: float = 10.0,
    ):
        super().__init__(budget, marker_every_s=marker_every_s)
        if mode not in (None, "online", "offline", "disabled"):
            raise ValueError(f"mode must be 'online', 'offline' or 'disabled', got {mode!r}")
        bad = {k: v for k, v in dict(summary or {}).items() if v not in _GOALS}
        if bad:
            raise ValueError(f"summary: unknown goals {bad}; choose from {list(_GOALS)}")
        self.project = project
        self.entity = entity
        self.id = id
        self.mode = mode
        self.dir = dir
        self.summary = dict(summary or {})
        self.histograms = histograms
        self.artifacts = artifacts
        self.alerts = alerts
        self.init_kwargs = dict(init_kwargs or {})
        self.wandb_run: WandbRun | None = None  # the W&B run, once started or adopted
        self.sweep_id: str | None = None
        self._owns = False
        self._defined: set[str] = set()
        self._renamed: set[str] = set()  # reserved keys already warned about
        self._durable: set[int] = set()  # in a replay: the records W&B's files hold
        self._alert_rows: list[list[Any]] = []
        self._described: dict[str, Any] | None = None

    # -- starting

    @property
    def is_open(self) -> bool:
        """Whether a W&B run was started or adopted."""
        return self.wandb_run is not None

    def _wrun(self) -> WandbRun:
        """The W&B run, for the hooks that run only while the sink is open (`is_open`)."""
        if self.wandb_run is None:
            raise RuntimeError("this W&B sink has no W&B run yet: it is not bound to a run")
        return self.wandb_run

    def _bound(self, run: Any) -> None:
        wrun = self._wrun()
        config = {k: v for k, v in dict(wrun.config).items() if not k.startswith("_")}
        mine = run.config
        changed = {k: v for k, v in config.items() if k not in mine or mine[k] != v}
        if changed:  # a sweep's values (or a config the adopted run had): jaxobs follows W&B
            run.update_config(changed)
        missing = {k: v for k, v in mine.items() if k not in config}
        if missing and not self._owns:  # an adopted run learns the jaxobs config
            wrun.config.update(missing)

    def describe(self) -> dict[str, Any]:
        """Where this sink sends the run: tracker, project, id, mode, directory, sweep."""
        if self._described is None:
            self._described = describe_run(self.wandb_run, self.sweep_id)
        return dict(self._described)

    def _start(self, info: RunInfo, run_dir: pathlib.Path, marker: SyncMarker | None) -> str:
        wandb = _wandb()
        user_run = wandb.run is not None and id(wandb.run) not in _STARTED
        if user_run and not self._replaying:  # the user's own run, not another sink's
            wrun, self._owns = wandb.run, False
        else:
            resume = "allow" if marker is not None and marker.sent_through_ns is not None else None
            # Another run open in this process (the user's, another sink's): a run of its own.
            create_new = self._replaying or wandb.run is not None or bool(_STARTED)
            kwargs = _init_kwargs(self, wandb, info, run_dir, resume, create_new)
            if kwargs.get("dir"):
                pathlib.Path(kwargs["dir"]).mkdir(parents=True, exist_ok=True)
            wrun, self._owns = wandb.init(**kwargs), True
            _STARTED[id(wrun)] = wrun
        self.wandb_run, self._described = wrun, None
        self.sweep_id = getattr(wrun, "sweep_id", None) or os.environ.get("WANDB_SWEEP_ID")
        wrun.define_metric(STEP_KEY)
        wrun.define_metric("*", step_metric=STEP_KEY)
        return f"{wrun.project}/{wrun.id}"

    # -- events

    def _log(self, event: Event, row: dict[str, Any]) -> None:
        row[STEP_KEY] = event.step if event.step is not None else 0
        row["_timestamp"] = event.timestamp_ns / 1e9
        row[NS_KEY] = event.timestamp_ns  # what a replay reads back (_wandb_files.py)
        self._wrun().log(row)

    def _mark(self, event: Event) -> None:
        """Record in W&B's files that `event`, which made no history row, was handled."""
        self._wrun().summary[MARK_KEY] = event.timestamp_ns

    def _on_metrics(self, event: Event) -> None:
        values = safe_keys(dict(event.metrics), self._renamed)
        for key in values:
            if key not in self._defined:
                self._defined.add(key)
                goal = self.summary.get(key) or direction(key)
                if goal is not None:
                    self._wrun().define_metric(key, step_metric=STEP_KEY, summary=goal)
        self._log(event, values)

    def _on_histograms(self, event: Event) -> None:
        if not self.histograms:
            return
        wandb = _wandb()
        row = {}
        for name, h in event.data.get("values", {}).items():
            row[name] = wandb.Histogram(np_histogram=(list(h["counts"]), list(h["edges"])))
        self._log(event, safe_keys(row, self._renamed))

    def _on_epoch_end(self, event: Event) -> None:
        row = {k: float(v) for k, v in event.metrics.items() if isinstance(v, (int, float))}
        row = safe_keys(row, self._renamed)
        if event.epoch is not None:
            row["epoch"] = event.epoch
        self._log(event, row)

    def _on_health_check(self, event: Event) -> None:
        wandb = _wandb()
        rule = str(event.data.get("rule", "alert"))
        severity = str(event.severity or "info").lower()
        message = str(event.message or "")
        self._alert_rows.append([event.step, rule, severity, message])
        table = wandb.Table(columns=["step", "rule", "severity", "message"], data=self._alert_rows)
        self._log(
            event,
            {f"health/alert/{rule}": SEVERITY_CODE.get(severity, 1), "health/alerts": table},
        )
        if self.alerts and severity == "critical":
            self._wrun().alert(
                title=f"jaxobs: {rule} at step {event.step}",
                text=message,
                level=wandb.AlertLevel.ERROR,
            )

    def _confined(self, path: Any, what: str) -> pathlib.Path | None:
        """`path` if this sink may send it (inside the run directory, or given live)."""
        return confined(str(path), self.run_dir, live=not self._replaying, what=what)

    def _on_crash_dump(self, event: Event) -> None:
        plot = event.data.get("plot")
        plot = self._confined(plot, "failure-signature plot") if plot else None
        if plot is not None and plot.is_file():
            with contextlib.suppress(ImportError):  # wandb.Image needs pillow
                self._log(event, {"health/failure_signature": _wandb().Image(str(plot))})
        self._wrun().summary["health/crash_dump"] = str(event.data.get("path"))
        self._mark(event)

    def _on_artifact(self, event: Event) -> None:
        if not self.artifacts:
            return
        record = dict(event.data.get("artifact", {}))
        name = str(record.get("name") or pathlib.Path(str(record.get("path", ""))).name)
        path = self._confined(record.get("path", ""), f"artifact {name!r}")
        kind = str(record.get("kind") or "file")
        paths = [path] if path is not None else []
        if kind == "crash_dump" and path is not None:  # the dump's checkpoint goes with it
            with contextlib.suppress(OSError, ValueError, AttributeError):
                ckpt = (json.loads(path.read_text()).get("checkpoint") or {}).get("path")
                ckpt = ckpt and self._confined(path.parent / ckpt, f"checkpoint of {name!r}")
                if ckpt:
                    paths.append(ckpt)
        if paths:
            self._log_artifact(name, kind, paths, record)
        self._mark(event)

    def _log_artifact(self, name: str, kind: str, paths: list, meta: Mapping[str, Any]) -> None:
        present = [pathlib.Path(p) for p in paths if pathlib.Path(p).exists()]
        if not present:
            logger.warning("jaxobs: W&B artifact %r: %s is missing; not sent", name, paths[0])
            return
        with staging(self.run_dir):
            artifact = make_artifact(_wandb(), self.run_info.run_id, name, kind, present, meta)
            self._wrun().log_artifact(artifact)

    def _on_config_update(self, event: Event) -> None:
        wrun = self._wrun()
        current = dict(wrun.config)
        changed = {
            k: v for k, v in event.data.get("config", {}).items() if current.get(k, _MISSING) != v
        }
        if changed:
            wrun.config.update(changed, allow_val_change=True)
        self._mark(event)

    def _on_summary(self, event: Event) -> None:
        summary = self._wrun().summary
        for key in safe_keys(dict.fromkeys(event.data.get("deleted", [])), self._renamed):
            with contextlib.suppress(KeyError):
                del summary[key]
        values = safe_keys(dict(event.data.get("summary", {})), self._renamed)
        summary.update({**values, MARK_KEY: event.timestamp_ns})  # one record, marked

    def _on_note(self, event: Event) -> None:
        wrun = self._wrun()
        notes = wrun.notes or ""
        wrun.notes = (notes + "\n" if notes else "") + str(event.data.get("text", ""))
        self._mark(event)

    # -- ending

    def handle_event(self, event: Event) -> None:
        if self._replaying and event.timestamp_ns in self._durable and self.is_open:
            if event.type == "metrics":  # W&B has it; the budget counts it as sent
                self._within_budget(event)
            if self._binding is not None:
                self._binding.clock.marker.advance(event)
            return
        super().handle_event(event)

    def _end_run(self, event: Event) -> None:
        status = str(event.data.get("status", "finished"))
        summary = self._wrun().summary
        summary["jaxobs/status"] = status
        if event.data.get("last_step") is not None:
            summary["jaxobs/last_step"] = event.data["last_step"]
        trainlog = self.run_dir / "trainlog.json"
        if self.artifacts and trainlog.is_file():
            self._log_artifact("trainlog", "trainlog", [trainlog], {"description": status})
        self._mark(event)

    def _finish_run(self, event: Event) -> None:
        if self._owns:
            status = str(event.data.get("status", "finished"))
            self._finish(0 if status == "finished" else 1)

    def _finish(self, exit_code: int) -> None:
        wrun, self._owns = self._wrun(), False
        info = self.describe()
        _STARTED.pop(id(wrun), None)
        wrun.finish(exit_code=exit_code)
        self._save_marker(info)  # after finish: what the marker says W&B has, it has

    def flush(self) -> None:
        """Save the marker (W&B has what it was given)."""
        if not self._failed:
            self._save_marker()

    def _close(self) -> None:
        """Finish the W&B run if this sink started it (the run ended without `run_end`)."""
        if self.wandb_run is None:
            return
        if not self._ended:
            with contextlib.suppress(Exception):
                self._save_marker()
        if self._owns:
            self._finish(1 if not self._ended else 0)

    def _end_replay(self, record: RunRecord) -> None:
        self.describe()  # where W&B wrote, kept for the result once the run is finished
        if not self._owns:  # finished by the run's run_end record
            return
        if record.status != "finished":
            self._wrun().summary["jaxobs/status"] = record.status
        self._finish(0 if record.status == "finished" else 1)  # killed: failed in W&B

    def _location(self, marker: SyncMarker) -> str | None:
        return self.describe().get("dir") if self.wandb_run is not None else marker.info.get("dir")

    # -- exactly once

    def _writes(self, kind: str) -> bool:
        """Whether a record of type `kind` leaves a `_jaxobs_ns` in W&B's files."""
        if kind in self.replay_skips or not hasattr(self, f"_on_{kind}"):
            return False
        return (kind != "histograms" or self.histograms) and (kind != "artifact" or self.artifacts)

    def _resume_after(self, marker: SyncMarker, record: RunRecord) -> int | None:
        """The `timestamp_ns` after which records must be sent: what W&B's own files of
        this run hold (`_wandb_files.py`), or the marker's word where there are none.

        The files can hold records past a gap (a live stream whose queue skipped records
        for the sinks, killed before it caught up): the replay starts before the first
        record they lack and leaves out the ones they hold (`_durable`).
        """
        after, self._durable = resume(marker, self.id, self.dir, record, self._writes)
        return after


_MISSING = object()


def _init_kwargs(
    sink: WandbSink,
    wandb: Any,
    info: RunInfo,
    run_dir: pathlib.Path,
    resume: str | None,
    create_new: bool,
) -> dict[str, Any]:
    """The arguments of `wandb.init` for a run that `sink` starts."""
    kwargs: dict[str, Any] = {
        "project": sink.project,
        "entity": sink.entity,
        "name": info.name,
        "config": dict(info.config),
        "tags": list(info.tags) or None,
        "group": info.group or None,
        "dir": os.fspath(sink.dir) if sink.dir else None,
    }
    if not kwargs["project"] and not os.environ.get("WANDB_PROJECT"):
        kwargs["project"] = info.project
    if sink.dir is None and not os.environ.get("WANDB_DIR"):
        kwargs["dir"] = str(run_dir)
    if sink.id is not None:
        kwargs["id"] = sink.id
    elif not os.environ.get("WANDB_RUN_ID"):
        kwargs["id"] = wandb_id(info.run_id)
    mode = sink.mode or os.environ.get("WANDB_MODE") or None
    if mode is None and not has_credentials():
        mode = "offline"
        logger.info(
            "jaxobs: no W&B credentials found, so W&B writes an offline run in %s; "
            "upload it later with `wandb sync`",
            kwargs["dir"] or os.environ.get("WANDB_DIR"),
        )
    kwargs["mode"] = mode
    kwargs["resume"] = resume
    if create_new:  # never finish nor return a W&B run open in this process
        kwargs["reinit"] = "create_new"
    if sink._replaying:  # we report
        kwargs.setdefault("settings", wandb.Settings(silent=True))
    kwargs.update(sink.init_kwargs)
    return {k: v for k, v in kwargs.items() if v is not None}


# ----------------------------------------------------------------------------- sync


def sync(
    run_dir: str | os.PathLike,
    *,
    project: str | None = None,
    entity: str | None = None,
    id: str | None = None,
    mode: str | None = None,
    budget: MetricBudget | bool | None = None,
    wait_s: float = 0.0,
) -> SyncResult:
    """Send a run directory (finished, failed or killed mid-way) to a W&B run.

    Only records that this W&B run has not received are sent: what the `.wandb` files of
    its earlier sessions hold (each history row carries the hidden `_jaxobs_ns`, the time
    of its jaxobs record), else what the sync marker (`<run_dir>/sync/wandb.json`) says.
    Running it twice sends nothing the second time; run again after it was killed, it
    sends every record once. In offline mode (the default without W&B credentials) it
    writes a W&B offline run under `<run_dir>/wandb/` that `wandb sync` uploads; online,
    it sends directly.

    Args:
      run_dir: A jaxobs run directory.
      project: W&B project (default: `WANDB_PROJECT`, else the live W&B run's, else the
        jaxobs project).
      entity: W&B entity.
      id: W&B run id (default: the live W&B run's id when the run streamed to W&B, so that
        a sync completes it; else the jaxobs run id).
      mode: `"online"` or `"offline"` (default: `WANDB_MODE`, else online with
        credentials and offline without).
      budget: A `MetricBudget` (default: `MetricBudget()`), or False to send every key,
        as for `WandbSink(budget=)`.
      wait_s: How long to wait for another sender of this run and W&B run (a live stream,
        another sync) to finish.

    Returns:
      What was sent, and where W&B wrote it.

    Raises:
      jaxobs.RunDirError: not a run directory.
      ImportError: wandb is not installed.
      jaxobs.SyncBusyError: another process still sends there after `wait_s`.
    """
    wandb = _wandb()
    record = read_run(pathlib.Path(run_dir).absolute())
    live: dict[str, Any] = next(
        (
            e
            for e in reversed(record.events)
            if e["event"] == "tracker" and e.get("tracker") == "wandb"
        ),
        {},
    )
    project = (
        project or os.environ.get("WANDB_PROJECT") or live.get("project") or record.info.project
    )
    wid = id or live.get("id") or wandb_id(record.info.run_id)
    sink = WandbSink(project=project, entity=entity, id=wid, mode=mode, budget=budget)
    marker = SyncMarker(record.dir, sink.tracker, f"{project}/{wid}")
    try:
        return sink.replay(record, marker, wait_s=wait_s)
    finally:
        if sink.wandb_run is not None:
            wandb.teardown()  # the offline file is complete when this returns
