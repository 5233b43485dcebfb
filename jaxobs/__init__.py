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

__all__ = [
    "EVENT_LEVELS",
    "SCHEMA_VERSION",
    "Artifact",
    "ConfigError",
    "ConfusionMatrix",
    "Curve",
    "Event",
    "ExperimentLog",
    "Level",
    "LogDestination",
    "MetricHistory",
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
    "active_run",
    "init",
    "looks_secret",
    "read_run",
    "schema_path",
    "to_config",
]
