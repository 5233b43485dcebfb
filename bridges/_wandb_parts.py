"""Pieces of the W&B bridge that need no W&B run: keys, artifact names and paths, staging.

- `safe_keys`: W&B owns `_step`, `_runtime` and `_timestamp` (it overwrites them), hides every
  key that starts with `_`, and the bridge writes `trainer/step` and `_jaxobs_ns` itself. A
  metric with such a name is sent as `jaxobs/<name>` (`_step` as `jaxobs/_step`), said once.
- `artifact_name`: the user's artifact name, within W&B's rules (letters, digits, `-`, `_`,
  `.`; at most 128 characters), so that every run of a project logging `model` adds a version
  of one W&B artifact `model`.
- `confined`: the files an artifact record may send. A path must resolve (symlinks followed)
  inside the run directory; an absolute path outside it is sent only live, where it came from
  the run's own `add_artifact` call, never in a sync, where it was read from a file anyone
  who could write the run directory could have forged.
- `staging`: W&B stages artifact files in `WANDB_DATA_DIR`, read from the environment when
  the artifact is built and logged; the bridge sets it to the run's folder for just that
  time, under a lock, and puts it back (a value the user set is left alone).
"""

from __future__ import annotations

import contextlib
import logging
import netrc
import os
import pathlib
import re
import threading
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = [
    "RENAMED_PREFIX",
    "artifact_name",
    "confined",
    "describe_run",
    "has_credentials",
    "make_artifact",
    "safe_keys",
    "staging",
    "wandb_id",
]

logger = logging.getLogger("jaxobs")

STEP_KEY = "trainer/step"
RENAMED_PREFIX = "jaxobs/"
_STAGING_LOCK = threading.Lock()
_DATA_DIR = "WANDB_DATA_DIR"
_ARTIFACT_TYPES = {"crash_dump": "crash", "checkpoint": "model", "image": "image"}


def reserved(key: str) -> bool:
    """Whether W&B (or the bridge) owns the key `key`, so a metric cannot keep the name."""
    return key.startswith("_") or key == STEP_KEY


def safe_keys(row: dict, said: set[str]) -> dict:
    """`row` with the keys W&B owns renamed to `jaxobs/<key>`; each rename warned once."""
    if not any(reserved(k) for k in row):
        return row
    out = {}
    for key, value in row.items():
        if reserved(key):
            new = RENAMED_PREFIX + key
            if key not in said:
                said.add(key)
                logger.warning(
                    "jaxobs: W&B reserves the key %r (it owns _step, _runtime and _timestamp, "
                    "hides keys that start with '_', and trainer/step is the bridge's x-axis); "
                    "the metric is sent to W&B as %r (events.jsonl keeps %r)",
                    key,
                    new,
                    key,
                )
            key = new
        out[key] = value
    return out


def artifact_name(name: str) -> str:
    """`name` as a W&B artifact name: other characters become `-`, at most 128 characters."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", name)[:128]
    return cleaned if cleaned.strip(".") else f"artifact{cleaned}"[:128]


def confined(
    path: str | os.PathLike, run_dir: pathlib.Path, *, live: bool, what: str
) -> pathlib.Path | None:
    """The file `path` of an artifact record, if the bridge may send it (see the module).

    Relative paths are relative to `run_dir`. A refused path is warned about, naming it.
    """
    given = pathlib.Path(path)
    full = given if given.is_absolute() else run_dir / given
    try:
        real, root = full.resolve(), run_dir.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        real, root = None, run_dir
    if real is not None and real.is_relative_to(root):
        return full
    if live and given.is_absolute():  # the run's own add_artifact call logged it
        return full
    logger.warning(
        "jaxobs: W&B %s: %s resolves outside the run directory %s; not sent (a sync sends "
        "only files inside the run directory; log files elsewhere live, or copy them into it)",
        what,
        path,
        run_dir,
    )
    return None


@contextlib.contextmanager
def staging(run_dir: pathlib.Path) -> Iterator[None]:
    """Stage W&B artifact files under `<run_dir>/wandb/data` while the block runs."""
    with _STAGING_LOCK:
        before = os.environ.get(_DATA_DIR)
        if before:  # the user's choice
            yield
            return
        os.environ[_DATA_DIR] = str(run_dir / "wandb" / "data")
        try:
            yield
        finally:
            if before is None:
                os.environ.pop(_DATA_DIR, None)
            else:
                os.environ[_DATA_DIR] = before


def has_credentials() -> bool:
    """Whether W&B could log in without asking: an API key in the environment or netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    host = re.sub(r"^https?://", "", base).split("/")[0].split(":")[0]
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_id(run_id: str) -> str:
    """A jaxobs run id as a W&B run id (which allows letters, digits, `-`, `_`, `.`)."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", run_id)[:64]


def _safe_url(wrun: Any) -> str | None:
    try:
        return wrun.url or None
    except Exception:
        return None


def describe_run(wrun: Any, sweep_id: str | None) -> dict[str, Any]:
    """The `tracker` record of a W&B run (also the marker's info about its destination)."""
    settings = getattr(wrun, "settings", None)
    mode = getattr(settings, "mode", None)
    return {
        "tracker": "wandb",
        "project": getattr(wrun, "project", None),
        "entity": getattr(wrun, "entity", None) or None,
        "id": getattr(wrun, "id", None),
        "name": getattr(wrun, "name", None),
        "mode": mode,
        "dir": str(getattr(settings, "sync_dir", "") or "") or None,
        "url": _safe_url(wrun) if mode == "online" else None,
        "sweep_id": sweep_id,
    }


def make_artifact(
    wandb: Any,
    run_id: str,
    name: str,
    kind: str,
    paths: list[pathlib.Path],
    meta: Mapping[str, Any],
) -> Any:
    """A `wandb.Artifact` of the files and folders `paths` (which exist)."""
    artifact = wandb.Artifact(  # every run's `model` is a version of one artifact
        name=artifact_name(name),
        type=_ARTIFACT_TYPES.get(kind, kind),
        description=str(meta.get("description") or "") or None,
        metadata={**meta, "jaxobs_name": name, "jaxobs_kind": kind, "run_id": run_id},
    )
    for p in paths:
        if p.is_dir():
            artifact.add_dir(str(p), name=p.name)
        else:
            artifact.add_file(str(p), name=p.name)
    return artifact
