"""The errors of jaxobs' file readers: each names the file, the line or field, and what
was expected.
"""

from __future__ import annotations


class TrainLogError(ValueError):
    """A TrainLog (or confusion matrix) file or dict does not have the expected form."""


class SchemaVersionError(TrainLogError):
    """The data was written by a newer major version of the format than this jaxobs reads."""


class CrashDumpError(ValueError):
    """A crash dump file does not have the expected form; the message names the file and the
    field (``recorder.series["train/loss"][3]``)."""


class CrashDumpVersionError(CrashDumpError):
    """The dump was written by a newer major version of the crash format than this jaxobs
    reads."""


class RunDirError(ValueError):
    """A run directory or its events.jsonl cannot be read; the message says where and why."""


class RunDirWarning(UserWarning):
    """Something in a run directory was incomplete but everything else could be read."""


class SyncMarkerError(ValueError):
    """A sync marker (``<run dir>/sync/<tracker>.json``) cannot be read; the message names the
    file and the field, and says how to recover (move the marker away to send the run again).
    """
