"""jaxobs: JAX/Flax-first training observability.

This module is the public API; the implementation lives in `jaxobs._src`, whose layout and
names may change in any release. Topic modules: `jaxobs.stats` (pure pytree statistics),
`jaxobs.health` (rules, the on-device guard), `jaxobs.crash` (crash dumps and forensics),
`jaxobs.testing` (capturing a run in your own tests), `jaxobs.artifacts` (confusion
matrices, log destinations), `jaxobs.presets` (option sets: production, debug), and the
tracker bridges in `jaxobs.bridges`.

`observe`, `tap` and `Observed` import JAX; they and the topic modules are loaded on first
use, so that the run record and the `jaxobs` command start without it.

Example:
    >>> import jaxobs
    >>> with jaxobs.init(project="demo", dir="runs", config={"lr": 0.05}) as run:
    ...     for step in range(3):
    ...         run.log({"train/loss": 1.0 / (step + 1)}, step=step)
"""

from __future__ import annotations

import importlib
import importlib.metadata
import warnings
from typing import TYPE_CHECKING, Any

from jaxobs._src.analysis.ascii_image import ascii_image, looks_like_images
from jaxobs._src.device.guard import GuardState
from jaxobs._src.engine.levels import LogLevel
from jaxobs._src.formats.config import ConfigError
from jaxobs._src.formats.errors import (
    RunDirError,
    RunDirWarning,
    SchemaVersionError,
    TrainLogError,
)
from jaxobs._src.formats.events import Event, Level
from jaxobs._src.formats.experiment import Artifact, Curve, ExperimentLog, MetricHistory, RunInfo
from jaxobs._src.formats.rundir import RunRecord, read_run
from jaxobs._src.formats.sync_marker import SyncBusyError, SyncMarkerError
from jaxobs._src.formats.trainlog import SCHEMA_VERSION, Series, TrainLog, schema_path
from jaxobs._src.host.alerts import Alert, TrainingHalted
from jaxobs._src.host.checker import HealthChecker
from jaxobs._src.host.recorder import FlightRecorder
from jaxobs._src.host.run import Run, Terminated, active_run
from jaxobs._src.host.sink_worker import SinkTimeouts
from jaxobs._src.host.start import init
from jaxobs._src.sinks.terminal import TerminalSink

if TYPE_CHECKING:
    from jaxobs import artifacts as artifacts
    from jaxobs import crash as crash
    from jaxobs import health as health
    from jaxobs import presets as presets
    from jaxobs import stats as stats
    from jaxobs import testing as testing
    from jaxobs._src.engine.collect import tap
    from jaxobs._src.engine.observe import Observed, observe

try:
    __version__ = importlib.metadata.version("jaxobs")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree
    __version__ = "0+unknown"

_LAZY = {
    "observe": "jaxobs._src.engine.observe",
    "Observed": "jaxobs._src.engine.observe",
    "tap": "jaxobs._src.engine.collect",
}
_MODULES = ("artifacts", "crash", "health", "presets", "stats", "testing")
# Names that moved out of the headline API: still reachable here, with a warning.
_MOVED = {"ConfusionMatrix": "jaxobs.artifacts", "LogDestination": "jaxobs.artifacts"}


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        value: Any = importlib.import_module(f"jaxobs.{name}")
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _MOVED:
        warnings.warn(
            f"jaxobs.{name} moved to {_MOVED[name]}.{name}; import it from there",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(_MOVED[name]), name)
    else:
        raise AttributeError(f"module 'jaxobs' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *_MODULES})


__all__ = [
    "SCHEMA_VERSION",
    "Alert",
    "Artifact",
    "ConfigError",
    "Curve",
    "Event",
    "ExperimentLog",
    "FlightRecorder",
    "GuardState",
    "HealthChecker",
    "Level",
    "LogLevel",
    "MetricHistory",
    "Observed",
    "Run",
    "RunDirError",
    "RunDirWarning",
    "RunInfo",
    "RunRecord",
    "SchemaVersionError",
    "Series",
    "SinkTimeouts",
    "SyncBusyError",
    "SyncMarkerError",
    "TerminalSink",
    "Terminated",
    "TrainLog",
    "TrainLogError",
    "TrainingHalted",
    "__version__",
    "active_run",
    "ascii_image",
    "init",
    "looks_like_images",
    "observe",
    "read_run",
    "schema_path",
    "tap",
]
