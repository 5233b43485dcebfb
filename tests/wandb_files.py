"""Read back a W&B offline run directory, as written by wandb 0.31.0, without jaxobs.

A test helper: it decodes what wandb itself wrote, so tests of the W&B bridge can compare
against an independent reference. `wandb.init(mode="offline", dir=D)` writes
`D/wandb/offline-run-YYYYMMDD_HHMMSS-<id>/run-<id>.wandb`. That file is:

- a 7-byte header: b":W&B", uint16 0xBEE1 (little-endian), uint8 format version 0;
- then LevelDB-log framing, in 32 KiB blocks counted from the start of the file. Each chunk
  has a 7-byte header (uint32 CRC, uint16 length, uint8 type: 1 FULL, 2 FIRST, 3 MIDDLE,
  4 LAST) followed by its data; fewer than 7 bytes left in a block are zero padding. wandb
  0.31.0 writes the CRC as zlib.crc32 of the data seeded with the crc32 of the type byte,
  unmasked; the masked form, and LevelDB's own masked CRC-32C, are accepted too, but one file
  must use one variant throughout;
- each reassembled payload is a `wandb.proto.wandb_internal_pb2.Record`; the first is a
  `header` record naming the wandb version that wrote the file.

The format is internal to wandb, so the reader refuses any wandb other than 0.31.0 (both the
installed one, whose protobuf classes it uses, and the one that wrote the file).

Race: right after `run.finish()` the file may hold only its header. Call `wandb.teardown()`
after finish, or use `wait_for_exit` / `read_offline_run(path, timeout=...)`.
"""

from __future__ import annotations

import fnmatch
import gzip
import json
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from wandb.proto.wandb_internal_pb2 import Record

SUPPORTED_WANDB_VERSION = "0.31.0"

FILE_MAGIC = b":W&B"
FILE_IDENT = 0xBEE1
FILE_VERSION = 0
FILE_HEADER = struct.Struct("<4sHB")
BLOCK_SIZE = 32 * 1024
CHUNK_HEADER = struct.Struct("<IHB")

FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
CHUNK_TYPE_NAMES = {FULL: "FULL", FIRST: "FIRST", MIDDLE: "MIDDLE", LAST: "LAST"}


class WandbFormatError(Exception):
    """The file is not a wandb 0.31.0 offline run file, or it is corrupt or incomplete."""


class Chunk(NamedTuple):
    """One framed piece of a record: where its header starts, its type, its data."""

    offset: int
    type: int
    data: bytes


# --- CRC variants ---------------------------------------------------------------------------


def _mask(crc: int) -> int:
    """LevelDB's CRC masking (rotate right by 15 bits, add a constant)."""
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C_TABLE: list[int] = []


def _crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as LevelDB uses; pure Python, only tried as a fallback."""
    if not _CRC32C_TABLE:
        _CRC32C_TABLE.extend(_crc32c_table())
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _ieee_seeded(ctype: int, data: bytes) -> int:
    return zlib.crc32(data, zlib.crc32(bytes([ctype])))


CRC_VARIANTS: dict[str, Callable[[int, bytes], int]] = {
    # What wandb 0.31.0 writes (checked against real files in test_wandb_files.py).
    "ieee-seeded": _ieee_seeded,
    "ieee-seeded-masked": lambda t, d: _mask(_ieee_seeded(t, d)),
    "crc32c-masked": lambda t, d: _mask(_crc32c(bytes([t]) + d)),
}


# --- framing ------------------------------------------------------------------------------------


def check_file_header(data: bytes, *, allow_partial: bool = False) -> bool:
    """Check the 7-byte file header; return False if it is incomplete and allowed to be."""
    if len(data) < FILE_HEADER.size:
        expected = FILE_HEADER.pack(FILE_MAGIC, FILE_IDENT, FILE_VERSION)
        if allow_partial and expected.startswith(data):
            return False
        raise WandbFormatError(f"file too short for the W&B header: {len(data)} bytes")
    magic, ident, version = FILE_HEADER.unpack_from(data)
    if magic != FILE_MAGIC or ident != FILE_IDENT or version != FILE_VERSION:
        raise WandbFormatError(
            f"not a W&B run file: header {data[: FILE_HEADER.size]!r}, expected magic "
            f"{FILE_MAGIC!r}, ident {FILE_IDENT:#x}, version {FILE_VERSION}"
        )
    return True


def iter_chunks(
    data: bytes, *, allow_partial: bool = False, crc_variant: list[str] | None = None
) -> Iterator[Chunk]:
    """Yield the CRC-checked chunks of a whole `.wandb` file's bytes.

    With `allow_partial`, a torn chunk at the end (a file still being written) ends the
    iteration instead of raising. `crc_variant`, if given a list, receives the CRC variant
    name detected on the first chunk.
    """
    if not check_file_header(data, allow_partial=allow_partial):
        return
    variant: Callable[[int, bytes], int] | None = None
    pos = FILE_HEADER.size
    end = len(data)
    while pos < end:
        left = BLOCK_SIZE - pos % BLOCK_SIZE
        if left < CHUNK_HEADER.size:
            if data[pos : pos + left].strip(b"\0"):
                raise WandbFormatError(f"non-zero block padding at offset {pos}")
            pos += left
            continue
        if end - pos < CHUNK_HEADER.size:
            if allow_partial:
                return
            raise WandbFormatError(f"truncated chunk header at offset {pos}")
        crc, length, ctype = CHUNK_HEADER.unpack_from(data, pos)
        if ctype not in CHUNK_TYPE_NAMES:
            raise WandbFormatError(f"bad chunk type {ctype} at offset {pos}")
        if CHUNK_HEADER.size + length > left:
            raise WandbFormatError(f"chunk at offset {pos} ({length} bytes) overruns its block")
        start = pos + CHUNK_HEADER.size
        if start + length > end:
            if allow_partial:
                return
            raise WandbFormatError(f"truncated chunk at offset {pos}: file ends at {end}")
        chunk = data[start : start + length]
        if variant is None:
            for name, fn in CRC_VARIANTS.items():
                if fn(ctype, chunk) == crc:
                    variant = fn
                    if crc_variant is not None:
                        crc_variant.append(name)
                    break
            else:
                raise WandbFormatError(f"CRC mismatch at offset {pos} (no known CRC variant)")
        elif variant(ctype, chunk) != crc:
            raise WandbFormatError(f"CRC mismatch at offset {pos}")
        yield Chunk(pos, ctype, chunk)
        pos = start + length


def iter_payloads(data: bytes, *, allow_partial: bool = False) -> Iterator[bytes]:
    """Yield the reassembled record payloads of a whole `.wandb` file's bytes."""
    pending: bytearray | None = None
    for chunk in iter_chunks(data, allow_partial=allow_partial):
        if chunk.type == FULL:
            if pending is not None:
                raise WandbFormatError(f"FULL chunk inside a fragmented record at {chunk.offset}")
            yield chunk.data
        elif chunk.type == FIRST:
            if pending is not None:
                raise WandbFormatError(f"FIRST chunk inside a fragmented record at {chunk.offset}")
            pending = bytearray(chunk.data)
        else:
            if pending is None:
                name = CHUNK_TYPE_NAMES[chunk.type]
                raise WandbFormatError(f"{name} chunk without a FIRST chunk at {chunk.offset}")
            pending += chunk.data
            if chunk.type == LAST:
                yield bytes(pending)
                pending = None
    if pending is not None and not allow_partial:
        raise WandbFormatError("file ends inside a fragmented record")


# --- records ------------------------------------------------------------------------------------


def _check_installed_wandb() -> None:
    import wandb

    if wandb.__version__ != SUPPORTED_WANDB_VERSION:
        raise WandbFormatError(
            f"wandb_files reads the internal format of wandb {SUPPORTED_WANDB_VERSION}; "
            f"wandb {wandb.__version__} is installed: check the format and update the helper"
        )


def _check_header_record(record: Record) -> None:
    if record.WhichOneof("record_type") != "header":
        raise WandbFormatError(
            f"first record is {record.WhichOneof('record_type')!r}, expected 'header'"
        )
    producer = record.header.version_info.producer
    if producer.split("+", 1)[0] != SUPPORTED_WANDB_VERSION:
        raise WandbFormatError(
            f"file written by wandb {producer!r}; this reader supports only "
            f"{SUPPORTED_WANDB_VERSION}"
        )


def find_offline_runs(root: str | os.PathLike[str]) -> list[Path]:
    """The `offline-run-*` directories holding a `run-*.wandb` file under `root`, sorted."""
    found = set()
    for dirpath, _dirnames, filenames in os.walk(root):  # does not follow the latest-run link
        here = Path(dirpath)
        if here.name.startswith("offline-run-") and any(
            fnmatch.fnmatch(f, "run-*.wandb") for f in filenames
        ):
            found.add(here)
    return sorted(found)


def wandb_file(path: str | os.PathLike[str]) -> Path:
    """The `.wandb` file for a path: the file itself, a run directory, or a root with one run."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"no such file or directory: {path}")
    files = sorted(path.glob("run-*.wandb"))
    if not files:
        runs = find_offline_runs(path)
        if len(runs) != 1:
            raise FileNotFoundError(f"expected one offline run under {path}, found {len(runs)}")
        files = sorted(runs[0].glob("run-*.wandb"))
    if len(files) != 1:
        raise FileNotFoundError(f"expected one run-*.wandb file in {path}, found {len(files)}")
    return files[0]


def read_records(path: str | os.PathLike[str], *, allow_partial: bool = False) -> list[Record]:
    """All protobuf records of a `.wandb` file (or of the run in a directory), in order.

    Raises WandbFormatError on a bad header, a CRC mismatch, a torn file (unless
    `allow_partial`), or a file or installed wandb other than 0.31.0.
    """
    _check_installed_wandb()
    from google.protobuf.message import DecodeError
    from wandb.proto.wandb_internal_pb2 import Record

    data = wandb_file(path).read_bytes()
    records = []
    for payload in iter_payloads(data, allow_partial=allow_partial):
        try:
            record = Record.FromString(payload)
        except DecodeError as e:
            raise WandbFormatError(f"record {len(records)} does not parse: {e}") from e
        if not records:
            _check_header_record(record)
        records.append(record)
    return records


def wait_for_exit(
    path: str | os.PathLike[str], timeout: float = 30.0, interval: float = 0.05
) -> list[Record]:
    """Poll until the run file holds its `exit` record; return the records read then.

    Raises TimeoutError if no exit record appears within `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            records = read_records(path, allow_partial=True)
        except FileNotFoundError:
            records = []
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"no exit record in {path} after {timeout} s ({len(records)} records)"
            )
        time.sleep(interval)


# --- the decoded run ---------------------------------------------------------------------------


@dataclass
class OfflineRun:
    """What an offline run file says, decoded into plain Python values."""

    path: Path
    wandb_version: str
    run_id: str
    entity: str
    project: str
    name: str
    group: str
    job_type: str
    notes: str
    tags: list[str]
    sweep_id: str
    start_time: float
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    metric_definitions: list[dict[str, Any]] = field(default_factory=list)
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)
    exit_code: int | None = None
    telemetry: dict[str, Any] = field(default_factory=dict)


def _key(item: Any) -> str:
    """A history/summary/config item's key: nested_key joined with "/", else key."""
    key = "/".join(item.nested_key) if item.nested_key else item.key
    if not key:
        raise WandbFormatError(f"item without a key: {item}")
    return key


def _value(item: Any) -> Any:
    """An item's value: json-decoded value_json (NaN/Infinity included), else its oneof."""
    if item.value_json:
        return json.loads(item.value_json)
    oneof = item.DESCRIPTOR.oneofs_by_name.get("value")
    which = item.WhichOneof("value") if oneof is not None else None
    if which is None:
        raise WandbFormatError(f"item {_key(item)!r} has no value")
    return None if which == "none" else getattr(item, which)


def _is_wandb_internal(item: Any) -> bool:
    return (item.nested_key[0] if item.nested_key else item.key) == "_wandb"


def _apply_config(config: dict[str, Any], record: Any) -> None:
    """Apply a ConfigRecord: nested_key paths become nested dicts; `_wandb` is left out."""
    for item in record.update:
        if _is_wandb_internal(item):
            continue
        path = list(item.nested_key) or [item.key]
        target = config
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = _value(item)
    for item in record.remove:
        path = list(item.nested_key) or [item.key]
        target = config
        for part in path[:-1]:
            target = target.get(part, {})
        target.pop(path[-1], None)


def _drop_key(flat: dict[str, Any], key: str) -> None:
    flat.pop(key, None)
    for k in [k for k in flat if k.startswith(key + "/")]:
        del flat[k]


def _apply_summary(summary: dict[str, Any], record: Any) -> None:
    """Apply a SummaryRecord to a flat ("/"-joined) summary; `_wandb` is left out."""
    for item in record.update:
        if _is_wandb_internal(item):
            continue
        key = _key(item)
        _drop_key(summary, key)
        summary[key] = _value(item)
    for item in record.remove:
        _drop_key(summary, _key(item))


def _metric(m: Any) -> dict[str, Any]:
    summary_fields = [f.name for f in m.summary.DESCRIPTOR.fields]
    goal = m.DESCRIPTOR.enum_types_by_name["MetricGoal"].values_by_number[m.goal].name
    return {
        "name": m.name or None,
        "glob_name": m.glob_name or None,
        "step_metric": m.step_metric or None,
        "step_metric_index": m.step_metric_index,
        "summary": [f for f in summary_fields if getattr(m.summary, f)],
        "goal": None if goal == "GOAL_UNSET" else goal.removeprefix("GOAL_").lower(),
        "step_sync": m.options.step_sync,
        "hidden": m.options.hidden,
        "defined": m.options.defined,
        "expanded_from_glob": m.expanded_from_glob,
        "overwrite": m._control.overwrite,
    }


def _manifest_entries(manifest: Any) -> list[dict[str, Any]]:
    entries = [
        {
            "path": e.path,
            "digest": e.digest,
            "size": e.size,
            "ref": e.ref or None,
            "local_path": e.local_path or None,
            "extra": {x.key: json.loads(x.value_json) for x in e.extra},
        }
        for e in manifest.contents
    ]
    if manifest.manifest_file_path:
        # Manifests of more than 100,000 entries go to a gzipped JSON-lines file instead.
        with gzip.open(manifest.manifest_file_path, "rt") as f:
            entries.extend(json.loads(line) for line in f if line.strip())
    return entries


def _artifact(a: Any) -> dict[str, Any]:
    entries = _manifest_entries(a.manifest)
    return {
        "name": a.name,
        "type": a.type,
        "digest": a.digest,
        "description": a.description,
        "aliases": list(a.aliases),
        "tags": list(a.tags),
        "metadata": json.loads(a.metadata) if a.metadata else {},
        "paths": [e["path"] for e in entries],
        "entries": entries,
        "manifest_file_path": a.manifest.manifest_file_path or None,
    }


def _files(record: Any) -> list[dict[str, Any]]:
    out = []
    for f in record.files:
        desc = f.DESCRIPTOR
        policy = desc.enum_types_by_name["PolicyType"].values_by_number[f.policy].name
        ftype = desc.enum_types_by_name["FileType"].values_by_number[f.type].name
        out.append({"path": f.path, "policy": policy.lower(), "type": ftype.lower()})
    return out


def offline_run_from_records(path: str | os.PathLike[str], records: list[Record]) -> OfflineRun:
    """Decode already-read records (see `read_records`) into an OfflineRun."""
    from google.protobuf.json_format import MessageToDict

    if not records:
        raise WandbFormatError(f"{path}: no records")
    _check_header_record(records[0])
    runs = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    if not runs:
        raise WandbFormatError(
            f"{path}: no run record ({len(records)} records). wandb may still be writing: call "
            "wandb.teardown() after run.finish(), or read with a timeout"
        )
    rr = runs[0]
    run = OfflineRun(
        path=Path(path),
        wandb_version=records[0].header.version_info.producer,
        run_id=rr.run_id,
        entity=rr.entity,
        project=rr.project,
        name=rr.display_name,
        group=rr.run_group,
        job_type=rr.job_type,
        notes=rr.notes,
        tags=list(rr.tags),
        sweep_id=rr.sweep_id,
        start_time=rr.start_time.seconds + rr.start_time.nanos * 1e-9,
    )
    _apply_config(run.config, rr.config)
    _apply_summary(run.summary, rr.summary)
    if rr.HasField("telemetry"):
        run.telemetry = MessageToDict(rr.telemetry, preserving_proto_field_name=True)
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind == "history":
            run.history.append({_key(item): _value(item) for item in r.history.item})
        elif kind == "summary":
            _apply_summary(run.summary, r.summary)
        elif kind == "config":
            _apply_config(run.config, r.config)
        elif kind == "metric":
            run.metric_definitions.append(_metric(r.metric))
        elif kind == "artifact":
            run.artifacts.append(_artifact(r.artifact))
        elif kind == "alert":
            a = r.alert
            run.alerts.append(
                {"title": a.title, "text": a.text, "level": a.level, "wait": a.wait_duration}
            )
        elif kind == "files":
            run.files.extend(_files(r.files))
        elif kind == "exit":
            run.exit_code = r.exit.exit_code
        elif kind == "telemetry":  # cumulative: the last one holds every feature used
            run.telemetry = MessageToDict(r.telemetry, preserving_proto_field_name=True)
    return run


def read_offline_run(path: str | os.PathLike[str], *, timeout: float | None = None) -> OfflineRun:
    """Read and decode an offline run (a `.wandb` file, its run directory, or a root).

    With `timeout`, first wait (up to that many seconds) for the run's exit record.
    """
    if timeout is not None:
        wait_for_exit(path, timeout=timeout)
    file = wandb_file(path)
    return offline_run_from_records(file, read_records(file))


# --- conveniences --------------------------------------------------------------------------------


def subkeys(row: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The entries of a flat row under `prefix/`, with the prefix stripped.

    A logged `wandb.Histogram` under "h" is stored as "h/_type", "h/bins", "h/values":
    `subkeys(row, "h")` gives back {"_type": "histogram", "bins": [...], "values": [...]}.
    """
    cut = len(prefix) + 1
    return {k[cut:]: v for k, v in row.items() if k.startswith(prefix + "/")}


def step_metric_for(run: OfflineRun, key: str) -> str:
    """The step metric W&B plots `key` against: its define_metric, else a glob's, else _step."""
    named = [m for m in run.metric_definitions if m["name"] == key and m["step_metric"]]
    if named:
        return named[-1]["step_metric"]
    globbed = [
        m
        for m in run.metric_definitions
        if m["glob_name"] and m["step_metric"] and fnmatch.fnmatchcase(key, m["glob_name"])
    ]
    if globbed and globbed[-1]["step_metric"] != key:
        return globbed[-1]["step_metric"]
    return "_step"


def history_column(run: OfflineRun, key: str, step_key: str | None = None) -> list[tuple[Any, Any]]:
    """(step, value) for every history row holding `key`; the step defaults to its step metric."""
    step_key = step_key or step_metric_for(run, key)
    return [(row.get(step_key), row[key]) for row in run.history if key in row]


def isolate(
    mp: Any,
    root: Path,
    names: tuple[str, ...] = ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"),
) -> dict[str, Path]:
    """Point the wandb directories ``names`` into `root` (a pytest MonkeyPatch ``mp`` sets
    them), clear the other W&B variables, and keep wandb offline, quiet and lean."""
    dirs = {name: root / name.lower() for name in names}
    for name, path in dirs.items():
        path.mkdir(parents=True)
        mp.setenv(name, str(path))
    for name in (
        "WANDB_API_KEY",
        "WANDB_BASE_URL",
        "WANDB_ENTITY",
        "WANDB_PROJECT",
        "WANDB_RUN_ID",
        "WANDB_RUN_GROUP",
        "WANDB_NAME",
        "WANDB_TAGS",
        "WANDB_SWEEP_ID",
        "WANDB_SWEEP_PARAM_PATH",
        "WANDB_RESUME",
    ):
        mp.delenv(name, raising=False)
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    mp.setenv("WANDB_DISABLE_GIT", "true")
    mp.setenv("WANDB_DISABLE_CODE", "true")
    mp.setenv("WANDB_CONSOLE", "off")  # no stdout capture fighting pytest's
    mp.setenv("WANDB_X_DISABLE_STATS", "true")  # no system-metrics sampler
    mp.setenv("WANDB_X_DISABLE_MACHINE_INFO", "true")
    return dirs


# --- several sessions of one run, and processes killed while writing ---------------------------


def session_files(root: str | os.PathLike[str], run_id: str) -> list[Path]:
    """Every `run-<id>.wandb` file of W&B run `run_id` under `root` (offline or online), sorted."""
    found = set()
    for dirpath, _dirnames, filenames in os.walk(root):  # does not follow the latest-run link
        here = Path(dirpath)
        if here.name.endswith(f"-{run_id}") and f"run-{run_id}.wandb" in filenames:
            found.add(here / f"run-{run_id}.wandb")
    return sorted(found)


def read_sessions(root: str | os.PathLike[str], run_id: str) -> list[OfflineRun]:
    """Every session of W&B run `run_id` under `root`, each read up to a torn end (a file
    whose writer was killed holds what it wrote before)."""
    runs = []
    for path in session_files(root, run_id):
        records = read_records(path, allow_partial=True)
        if any(r.WhichOneof("record_type") == "run" for r in records):
            runs.append(offline_run_from_records(path, records))
    return runs


def step_counts(runs: list[OfflineRun], key: str, step_key: str = "trainer/step") -> dict:
    """{step: how many history rows of `runs` hold `key` at that step}."""
    counts: dict[Any, int] = {}
    for run in runs:
        for row in run.history:
            if key in row:
                counts[row.get(step_key)] = counts.get(row.get(step_key), 0) + 1
    return counts


def wandb_services_of(pid: int) -> list[int]:
    """The pids of the wandb-core services started by process `pid` that still run (Linux)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"wandb-core") and b"--pid" in args:
            i = args.index(b"--pid")
            if i + 1 < len(args) and args[i + 1] == str(pid).encode():
                found.append(int(entry.name))
    return found


def wait_for_services(pid: int, timeout: float = 60.0) -> None:
    """Wait until the wandb-core services of (killed) process `pid` have written what they
    received and exited; raises TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while wandb_services_of(pid):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"wandb-core of process {pid} still runs after {timeout} s")
        time.sleep(0.05)
