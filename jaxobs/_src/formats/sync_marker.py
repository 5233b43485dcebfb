"""Sending a run directory to a tracker later, exactly once: what `jaxobs sync` is built on.

A run directory's ``events.jsonl`` holds every record the run made, in order, each with its
wall-clock ``timestamp_ns``. A tracker bridge replays those records as the `Event` objects a
live sink receives, so a replay and a live stream write the same things.

What has been sent is kept in a *sync marker*, ``<run dir>/sync/<tracker>.json``: for each
destination (a W&B project and run id, a TensorBoard log directory), the timestamp of the
last record sent. A second sync sends only the records after it, so running a sync twice
never duplicates data, and a run that was still going (or was killed) can be synced again
as it grows. Live bridges advance the same marker as they stream (every few seconds and when
they close), so a later sync of a run whose live stream broke off sends only the rest.

Nothing here imports a tracker: the bridges (`jaxobs.bridges.wandb`,
`jaxobs.bridges.tensorboard`) do.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import tempfile
import time
from typing import Any

from jaxobs._src.formats.config import to_config
from jaxobs._src.formats.events import Event

MARKER_DIR = "sync"


MARKER_FORMAT = "jaxobs.sync"


MARKER_VERSION = 1


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
        entry = self._load().get(destination, {})
        self.sent_through_ns: int | None = entry.get("sent_through_ns")
        self.records: int = int(entry.get("records", 0))
        self.last_step: int | None = entry.get("last_step")
        self.info: dict[str, Any] = dict(entry.get("info", {}))

    def _load(self) -> dict[str, Any]:
        if not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(
                f"{self.path}: unreadable sync marker ({e}); it records what was already sent "
                "to this tracker. Delete it to send the whole run again."
            ) from None
        if not isinstance(data, dict) or data.get("format") != MARKER_FORMAT:
            raise ValueError(f"{self.path}: not a jaxobs sync marker (format {MARKER_FORMAT!r})")
        if int(data.get("version", 0)) > MARKER_VERSION:
            raise ValueError(
                f"{self.path}: sync marker version {data.get('version')} is newer than this "
                f"jaxobs understands ({MARKER_VERSION}); upgrade jaxobs"
            )
        return dict(data.get("destinations", {}))

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
        destinations = self._load()
        destinations[self.destination] = {
            "sent_through_ns": self.sent_through_ns,
            "records": self.records,
            "last_step": self.last_step,
            "updated_ns": time.time_ns(),
            "info": to_config(self.info, "sync marker"),
        }
        data = {"format": MARKER_FORMAT, "version": MARKER_VERSION, "destinations": destinations}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".marker-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            pathlib.Path(tmp).unlink(missing_ok=True)
            raise
