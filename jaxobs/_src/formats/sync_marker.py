"""The sync marker: what a tracker has already received from a run directory.

A run directory's ``events.jsonl`` holds every record the run made, in order, each with its
wall-clock ``timestamp_ns``. What has been sent to a tracker is kept in a *sync marker*,
``<run dir>/sync/<tracker>.json``: for each destination (a W&B project and run id, a
TensorBoard log directory), the timestamp of the last record sent, how many records were
sent, the last step, and what the tracker said about the destination. ``jaxobs sync`` sends
only the records after it, so a sync run twice never duplicates data; live bridges advance
the same marker as they stream.

The file (``"format": "jaxobs.sync"``, ``"schema_version": "1.0"``) is read with the shared
field reader and version check; markers written by older jaxobs, with the integer
``"version": 1``, still read. Nothing here imports a tracker: the bridges
(`jaxobs.bridges.wandb`, `jaxobs.bridges.tensorboard`) do.

**One sender per destination** (`SyncLock`): whoever sends a run to a destination (a live
bridge for the whole run, a ``jaxobs sync``) holds an exclusive lock on
``<run dir>/sync/<tracker>.<key>.lock`` (``flock``: released by the kernel when the process
dies, ``kill -9`` included); a second sender waits for it up to a limit, then is refused
with `SyncBusyError`. The marker file itself is rewritten under a short lock of its own, so
senders to two destinations of one tracker never lose each other's entries.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import pathlib
import time
from collections.abc import Iterator
from typing import Any

from jaxobs._src.formats.codec import kind_of, load_json_file, write_text_atomic
from jaxobs._src.formats.config import to_config
from jaxobs._src.formats.errors import SyncMarkerError
from jaxobs._src.formats.events import Event
from jaxobs._src.formats.fields import (
    MARKER_FORMAT,
    FieldReader,
    check_format,
    check_version,
    subscript,
)

__all__ = [
    "MARKER_DIR",
    "MARKER_FORMAT",
    "MARKER_VERSION",
    "SyncBusyError",
    "SyncLock",
    "SyncMarker",
    "SyncMarkerError",
    "SyncResult",
]

MARKER_DIR = "sync"


MARKER_VERSION = "1.0"


# Markers written before the shared version check hold ``"version": 1`` (an integer).
_LEGACY_VERSION = 1


_REMEDY = (
    "it records what was already sent to this tracker: move it away (or delete it) and the "
    "next sync sends the whole run again"
)


_NOT_A_MARKER = (
    "jaxobs keeps sync/<tracker>.json to record what it sent to that tracker; move this file "
    "away and the next sync sends the whole run again"
)


class SyncBusyError(SyncMarkerError):
    """Another process is sending this run to the same destination (a live bridge or a
    ``jaxobs sync``); the message names the destination and that process."""


@contextlib.contextmanager
def _flock(path: pathlib.Path, wait_s: float, busy: str | None = None) -> Iterator[int]:
    """Hold an exclusive ``flock`` on ``path`` (created), waiting up to ``wait_s``.

    Raises:
      SyncBusyError: still held by another process after ``wait_s`` (``busy`` names it).
    """
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
                    raise SyncBusyError(
                        f"{busy or path}: another process{f' ({holder})' if holder else ''} "
                        f"is sending this run there (lock {path}); wait for it to end, or "
                        "give a longer wait"
                    ) from None
                time.sleep(0.05)
        yield fd
    finally:
        os.close(fd)  # releases the lock


class SyncLock:
    """The exclusive right to send a run to one destination of a tracker.

    Use it as a context manager, or `acquire` / `release` (a live bridge holds it for the
    whole run). The kernel releases it when the holding process dies.

    Args:
      run_dir: The run directory.
      tracker: ``"wandb"`` or ``"tensorboard"``.
      destination: The destination's key in the marker.
      wait_s: How long `acquire` waits for another sender to finish.
    """

    def __init__(
        self, run_dir: str | os.PathLike, tracker: str, destination: str, wait_s: float = 0.0
    ):
        key = hashlib.sha1(destination.encode("utf-8", "surrogatepass")).hexdigest()[:12]
        self.path = pathlib.Path(run_dir) / MARKER_DIR / f"{tracker}.{key}.lock"
        self.what = f"{tracker} {destination}"
        self.wait_s = wait_s
        self._held: contextlib.ExitStack | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._held is not None

    def acquire(self) -> None:
        """Take the lock (waiting up to ``wait_s``).

        Raises:
          SyncBusyError: another process holds it.
        """
        if self._held is not None:
            return
        stack = contextlib.ExitStack()
        fd = stack.enter_context(_flock(self.path, self.wait_s, self.what))
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        self._held = stack

    def release(self) -> None:
        """Give the lock back (nothing when it is not held)."""
        held, self._held = self._held, None
        if held is not None:
            held.close()

    def __enter__(self) -> SyncLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclasses.dataclass(frozen=True)
class SyncResult:
    """What a sync sent.

    Attributes:
      tracker: ``"wandb"`` or ``"tensorboard"``.
      destination: Where (``project/id``, a log directory).
      records: How many records were sent this time (0: it was up to date).
      last_step: The last step the destination now holds.
      location: The W&B offline run directory or URL, or the TensorBoard log directory.
      status: The jaxobs run's status (``incomplete`` for a run that was killed).
    """

    tracker: str
    destination: str
    records: int
    last_step: int | None
    location: str | None
    status: str


class SyncMarker:
    """What one destination of one tracker has received from a run directory.

    Args:
      run_dir: The run directory (the marker is ``<run_dir>/sync/<tracker>.json``).
      tracker: ``"wandb"`` or ``"tensorboard"``.
      destination: A key naming where the records go (``"<project>/<run id>"``, a log
        directory).

    Attributes:
      sent_through_ns: The ``timestamp_ns`` of the last record sent there, or None.
      info: What the tracker said about the destination (its run id, directory, mode, ...).
    """

    def __init__(self, run_dir: str | os.PathLike, tracker: str, destination: str):
        self.path = pathlib.Path(run_dir) / MARKER_DIR / f"{tracker}.json"
        self.tracker = tracker
        self.destination = destination
        self.reload()

    def reload(self) -> None:
        """Read this destination's entry again from disk (after taking its `SyncLock`)."""
        entry = self._entry()
        self.sent_through_ns: int | None = entry.get("sent_through_ns")
        self.records: int = entry.get("records", 0)
        self.last_step: int | None = entry.get("last_step")
        self.info: dict[str, Any] = dict(entry.get("info", {}))

    def _entry(self) -> dict[str, Any]:
        """This destination's entry of the marker on disk, checked ({} when there is none)."""
        destinations = self._load()
        if self.destination not in destinations:
            return {}
        where = f"destinations{subscript(self.destination)}"
        try:
            entry = FieldReader(
                destinations[self.destination], where, str(self.path), error=SyncMarkerError
            )
            return {
                "sent_through_ns": entry.get(
                    "sent_through_ns", int, None, "an integer (ns since the epoch) or null"
                ),
                "records": entry.get("records", int, 0, "an integer"),
                "last_step": entry.get("last_step", int, None, "an integer step or null"),
                "info": entry.get("info", dict, dict, "an object"),
            }
        except SyncMarkerError as e:
            raise SyncMarkerError(f"{e}; {_REMEDY}") from None

    def _load(self) -> dict[str, Any]:
        """The marker's destinations as stored (empty when there is no marker yet)."""
        if not self.path.is_file():
            return {}
        source = str(self.path)
        try:
            data = load_json_file(self.path, expected="a jaxobs sync marker", error=SyncMarkerError)
        except SyncMarkerError as e:
            raise SyncMarkerError(f"{e}; {_REMEDY}") from None
        except OSError as e:
            raise SyncMarkerError(f"{source}: unreadable sync marker ({e}); {_REMEDY}") from None
        if not isinstance(data, dict):
            raise SyncMarkerError(
                f"{source}: not a jaxobs sync marker: expected a JSON object, got "
                f"{kind_of(data)}; {_NOT_A_MARKER}"
            )
        check_format(
            data,
            source,
            MARKER_FORMAT,
            what="a jaxobs sync marker",
            error=SyncMarkerError,
            note=_NOT_A_MARKER,
        )
        _check_marker_version(data, source)
        top = FieldReader(data, "", source, error=SyncMarkerError)
        return dict(top.get("destinations", dict, dict, "an object of destinations"))

    def advance(self, event: Event) -> None:
        """Count ``event`` as sent (in memory; `save` writes it)."""
        if self.sent_through_ns is None or event.timestamp_ns > self.sent_through_ns:
            self.sent_through_ns = event.timestamp_ns
        self.records += 1
        if event.step is not None and event.type != "run_end":
            self.last_step = max(event.step, self.last_step or 0)

    def save(self, **info: Any) -> None:
        """Write the marker (atomically: a crash leaves the old one or the new one)."""
        self.info.update({k: v for k, v in info.items() if v is not None})
        entry = {
            "sent_through_ns": self.sent_through_ns,
            "records": self.records,
            "last_step": self.last_step,
            "updated_ns": time.time_ns(),
            "info": to_config(self.info, "sync marker"),
        }
        # The other destinations' entries are read and written back under the file's lock.
        with _flock(self.path.with_name(self.path.name + ".lock"), 30.0):
            destinations = self._load()
            destinations[self.destination] = entry
            data = {
                "format": MARKER_FORMAT,
                "schema_version": MARKER_VERSION,
                "destinations": destinations,
            }
            write_text_atomic(self.path, json.dumps(data, indent=1, sort_keys=True))


def _check_marker_version(data: dict[str, Any], source: str) -> str:
    """The marker's version: its ``schema_version``, or ``"1.0"`` for an old marker with the
    integer ``version`` 1. A newer major version is refused."""
    if "schema_version" in data or "version" not in data:
        return check_version(
            data,
            source,
            "sync marker",
            current=MARKER_VERSION,
            error=SyncMarkerError,
            too_new=SyncMarkerError,
        )
    legacy = data["version"]
    if isinstance(legacy, bool) or not isinstance(legacy, int):
        raise SyncMarkerError(
            f'{source}: version: expected the integer 1 (or a "schema_version" string like '
            f'"1.0"), got {kind_of(legacy)}; {_REMEDY}'
        )
    if legacy > _LEGACY_VERSION:
        raise SyncMarkerError(
            f"{source}: sync marker version {legacy} is newer than this jaxobs understands "
            f"({_LEGACY_VERSION}); upgrade jaxobs (pip install -U jaxobs)"
        )
    return f"{legacy}.0"
