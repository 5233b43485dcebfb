"""The write-ahead event file of a run: ``events.jsonl``, one JSON object per line.

Every record is written and flushed to the operating system before `EventFile.write`
returns, so a process killed with ``kill -9`` loses nothing it had recorded; `EventFile.fsync`
bounds what a power loss can take. The file is created exclusively: two runs given the same
id can never share it.
"""

from __future__ import annotations

import os
import pathlib
import threading
from collections.abc import Mapping
from typing import Any

from jaxobs._src.formats.codec import json_line

__all__ = ["EventFile"]


class EventFile:
    """An open ``events.jsonl``, created with its first record and fsynced.

    Thread-safe: each record is one whole line, whichever thread writes it.

    Args:
      path: The file to create (its folder is created too).
      first: The first record (the run's ``run_start``). It is encoded before the file is
        created, so a record that cannot be encoded leaves nothing behind.

    Raises:
      ValueError: ``path`` exists already (the run directory holds a run).
    """

    def __init__(self, path: pathlib.Path, first: Mapping[str, Any]):
        line = json_line(first) + "\n"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # "x": exclusive creation, so two processes given the same id cannot share a file.
            # backslashreplace: a non-UTF-8 argv or path cannot stop the run from recording.
            self._file = open(  # noqa: SIM115 - held open for the whole run
                path, "x", encoding="utf-8", errors="backslashreplace"
            )
        except FileExistsError:
            raise ValueError(
                f"run directory {path.parent} already holds a run; choose another id"
            ) from None
        self.path = path
        self._lock = threading.Lock()
        self._file.write(line)
        self.fsync()

    @property
    def closed(self) -> bool:
        return self._file.closed

    def write(self, record: Mapping[str, Any]) -> None:
        """Append ``record`` as one line and flush it to the operating system.

        Raises:
          ValueError: the file is closed.
        """
        line = json_line(record) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()

    def fsync(self) -> None:
        """Flush and fsync: what was written survives a power loss."""
        with self._lock:
            if not self._file.closed:
                self._file.flush()
                os.fsync(self._file.fileno())

    def close(self) -> None:
        """Close the file (safe to call more than once)."""
        with self._lock:
            self._file.close()
