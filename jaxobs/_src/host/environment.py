"""The environment snapshot a run records at its start."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Iterable
from typing import Any

from jaxobs._src.formats.config import collect_env
from jaxobs._src.formats.redact import redact_argv

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "jaxobs")


ENV_PREFIXES = (
    "JAX_",
    "XLA_",
    "JAXOBS_",
    "WANDB_",
    "CUDA_VISIBLE_DEVICES",
    "TPU_",
    "NVIDIA_VISIBLE_DEVICES",
    "SLURM_JOB_ID",
)


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    """Installed versions (None when absent), read from metadata without importing them."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_state(cwd: str | None = None) -> dict[str, Any] | None:
    """Commit and dirtiness of the git checkout holding ``cwd``, or None outside one."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
        branch = git("rev-parse", "--abbrev-ref", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "branch": branch, "dirty": dirty}


def jax_state() -> dict[str, Any]:
    """Backend, devices and process layout; imports jax (the caller is using it anyway)."""
    try:
        import jax

        devices = jax.devices()
        return {
            "backend": jax.default_backend(),
            "process_index": jax.process_index(),
            "process_count": jax.process_count(),
            "device_count": jax.device_count(),
            "local_device_count": jax.local_device_count(),
            "devices": sorted({f"{d.platform}:{getattr(d, 'device_kind', '')}" for d in devices}),
        }
    except Exception as e:  # a broken backend must not stop the run from starting
        return {"error": f"{type(e).__name__}: {e}"}


def snapshot(include_jax: bool = True) -> dict[str, Any]:
    """Everything needed to say where and with what a run ran.

    Secrets are redacted (`jaxobs._src.formats.redact`): values after secret flags and URL
    credentials in ``argv``, secret environment variables and URL credentials in ``env``.
    """
    return {
        "start_time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "argv": redact_argv(sys.argv),
        "cwd": os.getcwd(),
        "packages": package_versions(),
        "jax": jax_state() if include_jax else None,
        "git": git_state(),
        "env": collect_env(ENV_PREFIXES),
    }


def versions() -> dict[str, Any]:
    """Python, platform, jaxobs and the JAX stack's versions, and JAX's backend."""
    out: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    out.update(package_versions())
    try:
        import sys

        if "jax" in sys.modules:
            import jax

            out["backend"] = jax.default_backend()
            out["devices"] = [str(d) for d in jax.devices()[:8]]
    except Exception:
        pass
    return out
