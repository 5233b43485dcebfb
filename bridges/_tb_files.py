"""The TensorBoard bridge's event files: written synchronously, and cut back to the marker.

tensorboardX's `SummaryWriter` hands events to a background thread through a queue, and its
`flush()` does not wait for that queue: after it returns, events may still be missing from
the file, so a marker saved then could count records a crash loses. This module writes the
event files itself, with tensorboardX's record framing (`RecordWriter`) and protobufs, on the
sink's own thread: after `EventFiles.flush` returns, every event written so far is in the
file and fsynced, and the sizes it returns are record boundaries.

Exactly once: the marker stores, with what it counts as sent, the size of each of the
destination's files at that moment (`EventFiles.flush`). Before a sync sends anything,
`reconcile` makes the log directory agree with the marker: a file the marker knows is cut
back to its recorded size (what a killed writer added after the marker is dropped, to be
sent again), and a file of this run that the marker does not know (written by a sender
killed before its first marker save) is removed. Files are this run's when their name holds
its tag (`run_tag`): other runs' files in a shared log directory are never touched.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import socket
import time
from collections.abc import Mapping
from typing import Any

__all__ = ["EventFiles", "reconcile", "run_tag"]

logger = logging.getLogger("jaxobs")


def run_tag(run_dir: pathlib.Path) -> str:
    """The tag in the names of the event files written for the run at ``run_dir``."""
    digest = hashlib.sha1(str(run_dir.resolve()).encode("utf-8", "surrogatepass"))
    return f"jaxobs-{digest.hexdigest()[:10]}"


def _ours(logdir: pathlib.Path, tag: str) -> list[pathlib.Path]:
    """This run's event files in ``logdir`` and its sub-directories (hparams)."""
    if not logdir.is_dir():
        return []
    return sorted(p for p in logdir.rglob(f"*tfevents*.{tag}.*") if p.is_file())


def reconcile(logdir: pathlib.Path, tag: str, files: Mapping[str, Any]) -> dict[str, int]:
    """Make this run's event files in ``logdir`` hold exactly what the marker counts.

    Args:
      logdir: The log directory.
      tag: This run's tag (`run_tag`).
      files: The marker's record: each file (relative to ``logdir``) and its size.

    Returns:
      The files kept and their sizes (what a new marker save starts from).
    """
    kept: dict[str, int] = {}
    for path in _ours(logdir, tag):
        name = path.relative_to(logdir).as_posix()
        size = path.stat().st_size
        recorded = files.get(name)
        if isinstance(recorded, bool) or not isinstance(recorded, int) or recorded < 0:
            path.unlink()  # written after the last marker save: everything is sent again
            logger.info("jaxobs: removed %s (written by a sync that did not finish)", path)
            continue
        if size > recorded:
            with open(path, "r+b") as f:
                f.truncate(recorded)
                f.flush()
                os.fsync(f.fileno())
            logger.info("jaxobs: cut %s back to %d bytes (the sync marker's)", path, recorded)
        elif size < recorded:
            logger.warning(
                "jaxobs: %s holds %d bytes, fewer than the %d the sync marker recorded "
                "(it was changed outside jaxobs); what is missing is not sent again",
                path,
                size,
                recorded,
            )
        kept[name] = min(size, recorded)
    return kept


class _File:
    """One event file: tensorboardX's record framing, written in the caller's thread."""

    def __init__(self, path: pathlib.Path) -> None:
        from tensorboardX.proto import event_pb2
        from tensorboardX.record_writer import RecordWriter

        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._event_pb2 = event_pb2
        self._writer = RecordWriter(str(path))
        first = event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")
        self._writer.write(first.SerializeToString())

    def add_summary(self, summary: Any, step: int, walltime: float) -> None:
        event = self._event_pb2.Event(wall_time=walltime, step=step, summary=summary)
        self._writer.write(event.SerializeToString())

    def flush(self) -> None:
        self._writer.flush()  # file flush and fsync

    def close(self) -> None:
        self._writer.flush()
        self._writer.close()


class EventFiles:
    """The event files one sender writes for one run into one log directory.

    Files are opened on first use: the main one in ``logdir``, others (``hparams``) in
    sub-directories.

    Args:
      logdir: The log directory.
      tag: This run's tag (`run_tag`).
      known: The files earlier senders left, as `reconcile` kept them.
    """

    def __init__(self, logdir: pathlib.Path, tag: str, known: Mapping[str, int] | None = None):
        self.logdir = logdir
        self.tag = tag
        self.known = dict(known or {})
        self._open: dict[str, _File] = {}
        self._stamp = f"{os.getpid()}.{time.time_ns()}"

    def file(self, sub: str = "") -> _File:
        """The file this sender writes in ``logdir/sub``."""
        if sub not in self._open:
            host = socket.gethostname().replace("/", "_")
            name = f"events.out.tfevents.{int(time.time())}.{host}.{self.tag}.{self._stamp}"
            self._open[sub] = _File(self.logdir / sub / name if sub else self.logdir / name)
        return self._open[sub]

    def add_summary(self, summary: Any, step: int, walltime: float, sub: str = "") -> None:
        """Append one summary event."""
        self.file(sub).add_summary(summary, step, walltime)

    def flush(self) -> dict[str, int]:
        """Write everything to disk (fsync) and return every file's size: the marker's
        record of where the destination ends."""
        sizes = dict(self.known)
        for f in self._open.values():
            f.flush()
            sizes[f.path.relative_to(self.logdir).as_posix()] = f.path.stat().st_size
        return sizes

    def close(self) -> dict[str, int]:
        """Flush and close every file; returns the sizes, as `flush` does."""
        sizes = self.flush()
        for f in self._open.values():
            f.close()
        self.known = sizes
        self._open.clear()
        return sizes
