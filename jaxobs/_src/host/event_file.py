"""The write-ahead event file of a run: ``events.jsonl``, one JSON object per line.

Every record is written to the operating system (one unbuffered ``write``) before
`EventFile.write` returns, so a process killed with ``kill -9`` loses nothing it had
recorded; `EventFile.fsync` bounds what a power loss can take. The file is created
exclusively: two runs given the same id can never share it.

A write that fails (a full disk, the file size limit, a quota) leaves the file as it was
before the record: the part of the line that did get written is truncated away (at once,
or before the next record when the truncation fails too), so the file only ever holds whole
lines and a record logged again after the failure is in it exactly once.
"""

from __future__ import annotations

import errno
import os
import pathlib
import threading
from collections.abc import Mapping
from typing import Any

from jaxobs._src.formats.codec import json_line

__all__ = ["EventFile", "EventWriteError"]

_CAUSES = {
    errno.ENOSPC: "the disk is full",
    errno.EFBIG: "the file size limit is reached (ulimit -f)",
    errno.EDQUOT: "the disk quota is exceeded",
}


class EventWriteError(OSError):
    """A record could not be written to ``events.jsonl`` (an `OSError` with the ``errno``
    and the ``filename`` of the failure). The record is not in the file."""


def _encode(record: Mapping[str, Any]) -> bytes:
    # backslashreplace: a non-UTF-8 argv or path cannot stop the run from recording.
    return (json_line(record) + "\n").encode("utf-8", "backslashreplace")


def _describe(record: Mapping[str, Any]) -> str:
    """``a 'metrics' record at step 12``, for an error message."""
    what = f"a {record.get('event', 'record')!r} record"
    return what if record.get("step") is None else f"{what} at step {record['step']}"


class EventFile:
    """An open ``events.jsonl``, created with its first record and fsynced.

    Thread-safe: each record is one whole line, whichever thread writes it.

    Args:
      path: The file to create (its folder is created too).
      first: The first record (the run's ``run_start``). It is encoded before the file is
        created, so a record that cannot be encoded leaves nothing behind.

    Raises:
      ValueError: ``path`` exists already (the run directory holds a run).
      EventWriteError: the first record could not be written (the file is removed again).
    """

    def __init__(self, path: pathlib.Path, first: Mapping[str, Any]):
        data = _encode(first)
        path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        try:
            # O_EXCL: exclusive creation, so two processes given the same id cannot share it.
            self._fd: int | None = os.open(path, flags, 0o666)
        except FileExistsError:
            raise ValueError(
                f"run directory {path.parent} already holds a run; choose another id"
            ) from None
        self.path = path
        self._lock = threading.Lock()
        self._size = 0  # bytes of whole lines in the file
        self._torn = False  # a failed write left a partial line after them
        try:
            self._append(data, first)
            self.fsync()
        except OSError:
            self.close()
            path.unlink(missing_ok=True)  # a failed start must not block the id
            raise

    @property
    def closed(self) -> bool:
        return self._fd is None

    def write(self, record: Mapping[str, Any]) -> None:
        """Append ``record`` as one line, written to the operating system.

        Raises:
          ValueError: the file is closed.
          EventWriteError: the line could not be written; nothing of it is left in the file.
        """
        data = _encode(record)
        with self._lock:
            self._append(data, record)

    def fsync(self) -> None:
        """fsync: what was written survives a power loss.

        Raises:
          EventWriteError: the operating system could not write the file out.
        """
        with self._lock:
            if self._fd is not None:
                try:
                    os.fsync(self._fd)
                except OSError as e:
                    raise self._error(
                        e,
                        "the file out to disk (fsync)",
                        "the records may not survive a power loss",
                    ) from e

    def close(self) -> None:
        """Close the file (safe to call more than once)."""
        with self._lock:
            if self._fd is not None:
                fd, self._fd = self._fd, None
                os.close(fd)

    # -- internals (under the lock)

    def _append(self, data: bytes, record: Mapping[str, Any]) -> None:
        if self._fd is None:
            raise ValueError(f"{self.path} is closed: the run has ended")
        if self._torn and not self._roll_back():
            raise EventWriteError(
                errno.EIO,
                f"jaxobs could not write {_describe(record)}: the file still ends in the "
                "partial line of an earlier failed write, which could not be removed",
                str(self.path),
            )
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as e:
            self._torn = len(view) < len(data)  # part of the line is in the file
            left = (
                "nothing of it is in the file"
                if not self._torn or self._roll_back()
                else "its partial line is removed before the next record is written"
            ) + "; free space (or raise the limit) and log it again"
            raise self._error(e, _describe(record), left) from e
        self._size += len(data)

    def _roll_back(self) -> bool:
        """Truncate the file to its whole lines and write on from there; False if that fails
        too (it is tried again before the next record)."""
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, self._size)
            os.lseek(self._fd, self._size, os.SEEK_SET)
        except OSError:
            return False
        self._torn = False
        return True

    def _error(self, e: OSError, what: str, left: str) -> EventWriteError:
        cause = e.strerror or str(e)
        if e.errno in _CAUSES:
            cause = f"{_CAUSES[e.errno]}: {cause}"
        return EventWriteError(
            e.errno,
            f"jaxobs could not write {what} ({cause}); {left}",
            str(self.path),
        )
