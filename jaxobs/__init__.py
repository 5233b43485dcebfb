"""jaxobs: JAX/Flax-first training observability.

The public API lives here; everything else is an implementation detail.

Example:
    >>> import jaxobs
    >>> with jaxobs.init(project="demo", dir="runs", config={"lr": 0.05}) as run:
    ...     for step in range(3):
    ...         run.log({"train/loss": 1.0 / (step + 1)}, step=step)
"""

from jaxobs._jsonable import ConfigError, looks_secret, to_config
from jaxobs.events import EVENT_LEVELS, Event, Level
from jaxobs.health import Alert, HealthChecker, TrainingHalted
from jaxobs.log import (
    SCHEMA_VERSION,
    Artifact,
    ConfusionMatrix,
    Curve,
    ExperimentLog,
    LogDestination,
    MetricHistory,
    RunInfo,
    SchemaVersionError,
    Series,
    TrainLog,
    TrainLogError,
    schema_path,
)
from jaxobs.recorder import FlightRecorder
from jaxobs.run import (
    Run,
    RunDirError,
    RunDirWarning,
    RunRecord,
    Terminated,
    active_run,
    init,
    read_run,
)
from jaxobs.sinks import TerminalSink

__version__ = "0.1.0"

# The engine imports jax; load it on first use so that the data model and the `jaxobs`
# command start without it.
_LAZY = {"observe": "jaxobs.engine", "tap": "jaxobs.engine", "Observed": "jaxobs.engine"}


def __getattr__(name: str):
    import importlib

    if name in ("stats", "crash"):
        return importlib.import_module(f"jaxobs.{name}")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'jaxobs' has no attribute {name!r}")


__all__ = [
    "EVENT_LEVELS",
    "SCHEMA_VERSION",
    "Alert",
    "Artifact",
    "ConfigError",
    "ConfusionMatrix",
    "Curve",
    "Event",
    "ExperimentLog",
    "FlightRecorder",
    "HealthChecker",
    "Level",
    "LogDestination",
    "MetricHistory",
    "Observed",
    "Run",
    "RunDirError",
    "RunDirWarning",
    "RunInfo",
    "RunRecord",
    "SchemaVersionError",
    "Series",
    "TerminalSink",
    "Terminated",
    "TrainLog",
    "TrainLogError",
    "TrainingHalted",
    "active_run",
    "crash",
    "init",
    "looks_secret",
    "observe",
    "read_run",
    "schema_path",
    "stats",
    "tap",
    "to_config",
]
