"""What the W&B run's own files hold: the resume point of an exactly-once sync.

W&B has no flush barrier short of `finish()`, so a sync marker saved while streaming can
count records that W&B never wrote (the process was killed before they left it), and a sync
killed mid-way saves no marker at all. The files W&B wrote are the authority: every history
row the bridge logs carries the hidden integer `_jaxobs_ns` (the `timestamp_ns` of the jaxobs
record it came from), and the run summary's `_jaxobs_mark_ns` is set for each record that made
no row. `resume_point` reads the `.wandb` file of every earlier session of one W&B run id
(`<wandb dir>/*run-*-<id>/run-<id>.wandb`, offline and online alike) and returns every value
found: a replay sends only the records they lack.

The `.wandb` file is W&B's transaction log: a 7-byte header (b":W&B", uint16 0xBEE1, uint8
version 0), then LevelDB-log framing in 32 KiB blocks (a 7-byte chunk header: uint32 CRC,
uint16 length, uint8 type 1 full / 2 first / 3 middle / 4 last), each reassembled payload a
`wandb.proto.wandb_internal_pb2.Record`, decoded with W&B's own protobuf classes. A torn end
(a process killed while writing) ends the reading of that file; what came before counts.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import pathlib
import struct
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from jaxobs._src.formats.rundir import RunRecord
from jaxobs._src.formats.sync_marker import SyncMarker

__all__ = ["MARK_KEY", "NS_KEY", "WandbFiles", "resume", "resume_point", "session_files"]

logger = logging.getLogger("jaxobs")

NS_KEY = "_jaxobs_ns"  # hidden in W&B's UI (a leading underscore); kept in its files
# Set in the summary for a record that made no row. Not NS_KEY: W&B copies the last row's
# values into the summary before it writes the row, so a summary NS_KEY proves nothing.
MARK_KEY = "_jaxobs_mark_ns"

_HEADER = struct.Struct("<4sHB")
_MAGIC, _IDENT, _VERSION = b":W&B", 0xBEE1, 0
_BLOCK = 32 * 1024
_CHUNK = struct.Struct("<IHB")
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


class WandbFiles:
    """What the `.wandb` files of one W&B run id hold about the jaxobs records they got.

    Attributes:
      files: The files read.
      through_ns: The largest `_jaxobs_ns` found (None: none).
      seen: Every `_jaxobs_ns` found: the records the files hold.
      rows: History rows found, with the key or without.
      unmarked: History rows without `_jaxobs_ns` (written by an older jaxobs, or not by
        jaxobs at all): the files cannot say which records they hold.
      unreadable: Files whose header is not a W&B run file this reader knows.
    """

    def __init__(self) -> None:
        self.files: list[pathlib.Path] = []
        self.through_ns: int | None = None
        self.seen: set[int] = set()
        self.rows = 0
        self.unmarked = 0
        self.unreadable: list[pathlib.Path] = []

    def _see(self, value: Any) -> None:
        if isinstance(value, int) and not isinstance(value, bool):
            self.seen.add(value)
            self.through_ns = value if self.through_ns is None else max(self.through_ns, value)


def session_files(roots: Iterable[str | pathlib.Path], wandb_id: str) -> list[pathlib.Path]:
    """The `.wandb` files of W&B run `wandb_id` under the W&B folders `roots`, each once."""
    found: dict[pathlib.Path, pathlib.Path] = {}
    for root in roots:
        root = pathlib.Path(root)
        if not root.is_dir():
            continue
        for path in root.glob(f"*run-*-{wandb_id}/run-{wandb_id}.wandb"):
            if path.is_file() and not path.parent.is_symlink():  # not the latest-run link
                found.setdefault(path.resolve(), path)
    return sorted(found.values())


def settle(paths: list[pathlib.Path], quiet_s: float = 2.0, limit_s: float = 60.0) -> None:
    """Wait (up to `limit_s`) until none of `paths` changed for `quiet_s` seconds.

    W&B's service process (`wandb-core`) writes a session's `.wandb` file, and it can go on
    writing for a moment after the process that started it was killed, outside the sync
    lock: a sync reads the files only once they are quiet.
    """
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        newest = 0.0
        for path in paths:
            with contextlib.suppress(OSError):
                newest = max(newest, path.stat().st_mtime)
        quiet = time.time() - newest
        if quiet >= quiet_s:
            return
        time.sleep(min(quiet_s - quiet, 0.5))
    logger.warning(
        "jaxobs: W&B files %s were still being written after %g s; reading them as they are",
        ", ".join(map(str, paths)),
        limit_s,
    )


def resume_point(roots: Iterable[str | pathlib.Path], wandb_id: str) -> WandbFiles:
    """Read every `.wandb` file of W&B run `wandb_id` under `roots` (see the module), once
    they are quiet (`settle`)."""
    out = WandbFiles()
    paths = session_files(roots, wandb_id)
    settle(paths)
    for path in paths:
        out.files.append(path)
        try:
            for record in _records(path.read_bytes()):
                _scan(record, out)
        except _NotARunFile:
            out.unreadable.append(path)
        except OSError as e:
            logger.warning("jaxobs: cannot read the W&B file %s (%s); it is left out", path, e)
            out.unreadable.append(path)
    return out


def wandb_roots(marker: SyncMarker, sink_dir: Any = None) -> list[pathlib.Path]:
    """The W&B folders where earlier sessions of a marker's W&B run may have written."""
    roots = [marker.path.parent.parent / "wandb"]  # <run dir>/wandb
    if marker.info.get("dir"):  # <wandb folder>/<offline-run-...-id>
        roots.insert(0, pathlib.Path(str(marker.info["dir"])).parent)
    for base in (sink_dir, os.environ.get("WANDB_DIR")):
        if base:
            roots.append(pathlib.Path(base) / "wandb")
    return roots


def resume(
    marker: SyncMarker,
    wandb_id: str | None,
    sink_dir: Any,
    record: RunRecord,
    writes: Callable[[str], bool],
) -> tuple[int | None, set[int]]:
    """Where a replay of `record` to `marker`'s W&B run starts, and what it leaves out.

    Returns `(after, durable)`: send the records after the `timestamp_ns` `after` except
    those in `durable`, which W&B's files hold. The files can hold records past a gap (a
    live stream whose queue skipped records for the sinks, killed before it caught up): the
    replay starts before the first record they lack. Where there are no files (or none this
    reader knows), the marker's word: `marker.sent_through_ns`.

    Args:
      marker: The destination's marker.
      wandb_id: The W&B run id (default: the marker's).
      sink_dir: The sink's `dir` (where W&B writes its `wandb/` folder), if any.
      record: The run directory, read.
      writes: Whether a record of a type leaves a `_jaxobs_ns` in W&B's files.
    """
    wid = wandb_id or marker.info.get("id") or marker.destination.rsplit("/", 1)[-1]
    found = resume_point(wandb_roots(marker, sink_dir), str(wid))
    if not found.files or found.unreadable or (found.unmarked and not found.seen):
        if found.unreadable:
            logger.warning(
                "jaxobs: W&B files %s are not in a format this jaxobs reads; the sync "
                "starts after what the sync marker %s says",
                ", ".join(map(str, found.unreadable)),
                marker.path,
            )
        return marker.sent_through_ns, set()
    stamps = [e.get("timestamp_ns") or 0 for e in record.events if writes(e["event"])]
    missing = [ns for ns in stamps if ns not in found.seen]
    last = max((e.get("timestamp_ns") or 0 for e in record.events), default=None)
    after = min(missing) - 1 if missing else last
    if after != marker.sent_through_ns:
        logger.info(
            "jaxobs: W&B's files of %s lack the records after %s (the sync marker said %s); "
            "the sync sends them",
            wid,
            after,
            marker.sent_through_ns,
        )
    return after, found.seen


class _NotARunFile(Exception):
    pass


def _scan(record: Any, out: WandbFiles) -> None:
    kind = record.WhichOneof("record_type")
    if kind == "history":
        out.rows += 1
        values = [i for i in record.history.item if _key(i) == NS_KEY]
        if not values:
            out.unmarked += 1
        for item in values:
            out._see(_value(item))
    elif kind == "summary":
        for item in record.summary.update:
            if _key(item) == MARK_KEY:
                out._see(_value(item))


def _key(item: Any) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def _value(item: Any) -> Any:
    try:
        return json.loads(item.value_json) if item.value_json else None
    except ValueError:
        return None


def _records(data: bytes) -> Iterator[Any]:
    """The records of a `.wandb` file's bytes, up to a torn or corrupt end."""
    record_type: Any = importlib.import_module("wandb.proto.wandb_internal_pb2").Record

    if len(data) < _HEADER.size:
        return
    if _HEADER.unpack_from(data) != (_MAGIC, _IDENT, _VERSION):
        raise _NotARunFile
    for payload in _payloads(data):
        try:
            record = record_type.FromString(payload)
        except Exception:  # protobuf's DecodeError: a corrupt record ends the file
            return
        yield record


def _payloads(data: bytes) -> Iterator[bytes]:
    pos, end, pending = _HEADER.size, len(data), None
    while pos < end:
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK.size:  # block padding
            pos += left
            continue
        if end - pos < _CHUNK.size:
            return
        crc, length, kind = _CHUNK.unpack_from(data, pos)
        start = pos + _CHUNK.size
        if kind not in (_FULL, _FIRST, _MIDDLE, _LAST) or start + length > min(end, pos + left):
            return  # torn (or zero-filled) end
        chunk = data[start : start + length]
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != crc:
            return
        pos = start + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = bytearray(chunk)
        elif pending is not None:
            pending += chunk
            if kind == _LAST:
                yield bytes(pending)
                pending = None
