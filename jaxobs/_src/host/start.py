"""Starting a run: `init`."""

from __future__ import annotations

import datetime as _dt
import os
import pathlib
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

from jaxobs._src.formats.config import to_config
from jaxobs._src.formats.events import Level, level_from_env
from jaxobs._src.formats.experiment import RunInfo
from jaxobs._src.host.checker import HealthChecker
from jaxobs._src.host.environment import snapshot
from jaxobs._src.host.lifecycle import ACTIVE
from jaxobs._src.host.recording import NullRecording, Recording
from jaxobs._src.host.run import NAME_RE, Run
from jaxobs._src.host.sink_worker import SinkTimeouts

__all__ = ["init"]


def _new_run_id() -> str:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{secrets.token_hex(3)}"


def init(
    project: str,
    *,
    name: str = "",
    config: Mapping[str, Any] | Any = None,
    dir: str | os.PathLike = "runs",
    tags: Iterable[str] = (),
    group: str = "",
    id: str | None = None,
    level: Level | str | None = None,
    sinks: Iterable[Any] = (),
    terminal: bool | None = None,
    total_steps: int | None = None,
    queue_size: int = 1024,
    health: HealthChecker | None = None,
    sink_timeouts: SinkTimeouts | None = None,
) -> Run:
    """Start a run that records into ``<dir>/<project>/<run_id>/``.

    Every argument after ``project`` is keyword-only.

    Args:
      project: Project name; a folder under ``dir``.
      name: Display name (default: the run id).
      config: Hyperparameters: a mapping or a dataclass. Converted to JSON as described in
        `RunInfo`; secrets are redacted (by key name, token format, URL credentials and
        secret flags: see "Secrets" in the concepts guide).
      dir: Root folder of run directories.
      tags: Free-form tags.
      group: Group or sweep name.
      id: Run id (default: ``YYYYmmdd-HHMMSS-xxxxxx``). Letters, digits, ``.``, ``_``, ``-``.
      level: Which events are recorded (default: ``JAXOBS_LEVEL``, else DETAILED).
      sinks: Extra sinks (objects with ``handle_<event_type>`` methods).
      terminal: Show the rich terminal display (default: yes). It stays quiet, except for
        health alerts, when stdout is not a terminal.
      total_steps: Expected number of steps, for the progress bar's ETA.
      queue_size: Capacity of each sink's queue (each sink has its own, and its own
        thread). An event that finds a sink's queue full is skipped for that sink only
        (never for ``events.jsonl``; a tracker bridge sends it from the file when the run
        ends); training never waits on a sink.
      health: Health rules to apply to every record `Run.log` writes (yours and those of
        `jaxobs.observe`): the same as ``run.add_monitor(health)``, which attaches a
        supervisor with a flight recorder of the last 256 steps.
      sink_timeouts: How long a sink's ``bind``, ``flush`` and ``close`` may take before
        the sink is abandoned and reported (default: `SinkTimeouts()`: 30 s, 5 s, 10 s).

    Returns:
      The `Run`, also the active run (`active_run`) until it finishes. Use it as a context
      manager to finish it (and fsync, and record the error) however the block ends.

    In a multi-process job, call this after ``jax.distributed.initialize()``: the environment
    snapshot asks JAX for its devices (starting its backend), and the process index decides
    that only process 0 writes.

    Raises:
      ValueError: a bad project, id or level, or a run directory that already exists.
      TypeError: a config that is not a mapping or a dataclass, a ``health`` that is not
        a `HealthChecker`, or ``sink_timeouts`` that are not `SinkTimeouts`.
      jaxobs.ConfigError: a config value that cannot be stored, naming its key.
    """
    if (
        not isinstance(project, str)
        or not project.strip()
        or project in (".", "..")
        or any(c in project for c in "/\\\0")
    ):
        raise ValueError(
            f"project must be a folder name under dir (no slashes, not '.' or '..'), "
            f"got {project!r}"
        )
    run_id = _new_run_id() if id is None else id
    if not isinstance(run_id, str) or not NAME_RE.fullmatch(run_id):
        raise ValueError(f"run id {run_id!r} must be letters, digits, '.', '_' or '-'")
    if sink_timeouts is not None and not isinstance(sink_timeouts, SinkTimeouts):
        raise TypeError(
            f"sink_timeouts must be a jaxobs.SinkTimeouts, got {type(sink_timeouts).__name__}"
        )
    if health is not None and not isinstance(health, HealthChecker):
        raise TypeError(
            f"health must be a jaxobs.HealthChecker, got {type(health).__name__}; "
            "pass other monitors to run.add_monitor"
        )
    if config is not None and not isinstance(config, Mapping):
        config = to_config(config, "config")
        if not isinstance(config, dict):
            raise TypeError(f"config must be a mapping or a dataclass, got {type(config).__name__}")
    info = RunInfo(
        project=project,
        name=name or run_id,
        run_id=run_id,
        group=group,
        tags=list(tags),
        config=dict(config or {}),
    )
    level = level_from_env() if level is None else Level.parse(level)
    env = snapshot()
    primary = (env.get("jax") or {}).get("process_index", 0) == 0
    all_sinks = list(sinks)
    if primary and (terminal is None or terminal):
        from jaxobs._src.sinks.terminal import TerminalSink

        all_sinks.insert(0, TerminalSink(total_steps=total_steps))
    # Absolute, so that a later chdir (Hydra does one) cannot lose the run directory.
    directory = (pathlib.Path(dir) / project / run_id).absolute()
    out: Recording | NullRecording = NullRecording()
    if primary:  # the only step that creates a file, after everything that can fail
        settings = {"level": level.name, "total_steps": total_steps, "dir": str(directory)}
        out = Recording(directory, info, env, settings, queue_size, sink_timeouts)
    run = Run(info, directory, out, level=level)
    for sink in all_sinks:  # each gets run_start first; a bind may record (config, tracker)
        run.add_sink(sink)
    if health is not None:
        run.add_monitor(health)
    ACTIVE.set(run)
    return run
