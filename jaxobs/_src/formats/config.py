"""Run configs and logged values made JSON-safe: configs (with secrets redacted),
scalars and histograms.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import os
import pathlib
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from jaxobs._src.formats.redact import (
    REDACTED,
    is_secret_key,
    redact_env,
    redact_text,
    redacts_value,
)

# Arrays in a config are kept as nested lists up to this many elements.
MAX_CONFIG_ARRAY_SIZE = 1024


def looks_secret(key: str) -> bool:
    """Whether a config or environment key names a secret: `jaxobs._src.formats.redact`'s
    `is_secret_key` (kept under this name for existing callers)."""
    return is_secret_key(key)


class ConfigError(TypeError):
    """A config value cannot be stored as JSON; the message names the config key."""


def _key_str(key: Any, path: str) -> str:
    if isinstance(key, enum.Enum):  # a str-valued enum key gives its value, others their name
        return str(key.value) if isinstance(key.value, str) else str(key.name)
    if isinstance(key, str):
        return str(key)
    if isinstance(key, (bool, np.bool_)):
        return "true" if key else "false"
    if isinstance(key, (int, np.integer)):
        return str(int(key))
    raise ConfigError(
        f"{path}: config keys must be strings (or ints/enums, which become strings); "
        f"got a key of type {type(key).__name__}: {key!r}"
    )


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def to_config(value: Any, path: str = "config") -> Any:
    """Convert a config value to plain JSON data, predictably, or fail naming the key.

    Rules, applied recursively:

    - ``None``, ``bool``, ``int``, ``float``, ``str`` stay as they are.
    - NumPy and jax scalars become Python scalars; arrays of at most 1024 elements become
      nested lists; larger arrays are refused (a config holds small values).
    - Dataclasses (including flax ``struct`` dataclasses) and mappings become dicts; int and
      enum keys become strings.
    - Tuples and lists become lists; sets and frozensets become sorted lists.
    - ``pathlib`` paths become strings; dates and datetimes their ISO format; NumPy dtypes
      and jax dtypes their name.
    - A ``jax.Device`` becomes its string (``TFRT_CPU_0``), as W&B stores it.
    - Enums become their value when it is a JSON scalar, else their name.
    - Anything else (functions, modules, arbitrary objects) raises `ConfigError` naming the key.
    - Secrets are replaced by ``"<redacted>"`` (the rules of `jaxobs._src.formats.redact`):
      a value under a key that names a secret (``api_key``, ``token``, ``password``,
      ``secret``, ...; `redacts_value`), and in every string, URL credentials, well-known
      token formats and the value after a secret flag (`redact_text`).
    """
    if isinstance(value, enum.Enum):  # first: str- and int-mixin enums are str/int too
        inner = value.value
        if inner is None or isinstance(inner, (bool, int, float, str)):
            return to_config(inner, path)
        return value.name
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return redact_text(str(value))
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, np.generic):
        numeric = _numeric(np.asarray(value))
        return to_config(value.item() if numeric is None else numeric.item(), path)
    if isinstance(value, np.dtype) or (isinstance(value, type) and issubclass(value, np.generic)):
        return np.dtype(value).name
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _convert_item(f.name, getattr(value, f.name), path)
            for f in dataclasses.fields(value)
        }
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            key = _key_str(k, path)
            if key in out:
                raise ConfigError(f"{_join(path, key)}: two config keys become the same string")
            out[key] = _convert_item(key, v, path)
        return out
    if isinstance(value, (list, tuple)):
        return [to_config(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (set, frozenset)):
        items = [to_config(v, f"{path}{{}}") for v in value]
        try:
            return sorted(items)
        except TypeError:
            return sorted(items, key=repr)
    if _is_array(value):
        arr = np.asarray(value)
        if arr.size > MAX_CONFIG_ARRAY_SIZE:
            raise ConfigError(
                f"{path}: an array of shape {arr.shape} ({arr.size} elements) is too large for "
                f"the run config (at most {MAX_CONFIG_ARRAY_SIZE}); log it as an artifact instead"
            )
        numeric = _numeric(arr)
        if numeric is None:
            raise ConfigError(f"{path}: arrays of dtype {arr.dtype} cannot be stored in a config")
        return numeric.tolist()
    dtype_name = _dtype_name(value)
    if dtype_name is not None:
        return dtype_name
    jax = sys.modules.get("jax")  # never imported here: a Device exists only once jax is
    if jax is not None and isinstance(value, jax.Device):
        return str(value)
    hint = "pass its name as a string" if callable(value) else "convert it to str, int or float"
    raise ConfigError(
        f"{path}: cannot store a value of type {type(value).__module__}.{type(value).__qualname__} "
        f"in the run config; {hint}"
    )


def _convert_item(key: str, value: Any, path: str) -> Any:
    if redacts_value(key, value, path):
        return REDACTED
    return to_config(value, _join(path, key))


def _numeric(arr: np.ndarray) -> np.ndarray | None:
    """``arr`` as a NumPy numeric array, or None. ml_dtypes floats (bfloat16, float8_*),
    which jax uses and NumPy sees as kind 'V', are widened to float64."""
    if arr.dtype.kind in "biuf":
        return arr
    if arr.dtype.kind == "V" and type(arr.dtype).__module__.startswith("ml_dtypes"):
        return arr.astype(np.float64)
    if arr.dtype.kind == "V":
        try:  # other registered float extension types
            return arr.astype(np.float64)
        except (TypeError, ValueError):
            return None
    return None


def _is_array(value: Any) -> bool:
    return hasattr(value, "__array__") and hasattr(value, "shape") and hasattr(value, "dtype")


def _dtype_name(value: Any) -> str | None:
    # jnp.float32 and friends are not np.generic subclasses but carry a numpy dtype.
    dtype = getattr(value, "dtype", None)
    if isinstance(dtype, np.dtype) and callable(value):
        return dtype.name
    return None


def scalar(value: Any, name: str) -> float:
    """A logged value as a host float, or a `TypeError` naming the metric.

    Accepts Python and NumPy numbers and arrays with exactly one element (this converts a jax
    array, which waits for it to be computed).
    """
    if isinstance(value, (bool, int, float, np.floating, np.integer, np.bool_)):
        try:
            return float(value)  # the common cases, without building an array
        except OverflowError:
            raise TypeError(
                f"metric {name!r}: {str(value)[:20]}... is too large for a float"
            ) from None
    if isinstance(value, np.generic) or _is_array(value):
        arr = np.asarray(value)
        if arr.size != 1:
            raise TypeError(
                f"metric {name!r}: expected a scalar, got an array of shape {arr.shape}; "
                "reduce it first (e.g. .mean()) or log each element under its own name"
            )
        numeric = _numeric(arr)
        if numeric is None:
            raise TypeError(f"metric {name!r}: expected a number, got dtype {arr.dtype}")
        return float(numeric.reshape(()))
    raise TypeError(f"metric {name!r}: expected a number, got {type(value).__name__}: {value!r}")


def collect_env(prefixes: Iterable[str], environ: Mapping[str, str] | None = None) -> dict:
    """Environment variables with the given prefixes, secrets redacted, sorted by name."""
    environ = os.environ if environ is None else environ
    picked = {k: v for k, v in environ.items() if any(k.startswith(p) for p in prefixes)}
    return dict(sorted(redact_env(picked).items()))


HISTOGRAM_BINS = 64  # W&B's and TensorBoard's usual resolution


def histogram(value: Any, name: str) -> dict[str, Any]:
    """A logged histogram as ``{"edges": [...], "counts": [...]}`` (plain floats), or a
    `TypeError`/`ValueError` naming the histogram.

    Accepts ``(counts, edges)`` as `numpy.histogram` returns it, a mapping with ``counts`` and
    ``edges`` (and optionally ``sum`` and ``sum_squares`` of the samples), or an array of
    samples, binned here into `HISTOGRAM_BINS` bins over its finite values.
    """
    if isinstance(value, Mapping):
        missing = [k for k in ("counts", "edges") if k not in value]
        if missing:
            raise ValueError(f"histogram {name!r}: the mapping lacks {missing}")
        counts, edges = value["counts"], value["edges"]
        extra = {k: value[k] for k in ("sum", "sum_squares") if value.get(k) is not None}
    elif isinstance(value, tuple) and len(value) == 2 and all(np.ndim(v) >= 1 for v in value):
        (counts, edges), extra = value, {}  # (counts, edges): checked below
    else:
        try:
            samples = np.asarray(value, dtype=np.float64).ravel()
        except (TypeError, ValueError):
            raise TypeError(
                f"histogram {name!r}: expected (counts, edges), a mapping with counts and "
                f"edges, or an array of samples; got {type(value).__name__}"
            ) from None
        samples = samples[np.isfinite(samples)]
        if samples.size == 0:
            raise ValueError(f"histogram {name!r}: no finite samples to bin")
        counts, edges = np.histogram(samples, bins=HISTOGRAM_BINS)
        extra = {"sum": float(samples.sum()), "sum_squares": float((samples * samples).sum())}
    try:
        counts = np.asarray(counts, dtype=np.float64)
        edges = np.asarray(edges, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"histogram {name!r}: counts and edges must be numbers") from None
    if counts.ndim != 1 or edges.ndim != 1 or edges.size != counts.size + 1 or counts.size < 1:
        raise ValueError(
            f"histogram {name!r}: expected n >= 1 counts and n + 1 edges, got "
            f"{counts.shape} counts and {edges.shape} edges"
        )
    if not (np.all(np.isfinite(edges)) and np.all(np.diff(edges) >= 0)):
        raise ValueError(f"histogram {name!r}: edges must be finite and non-decreasing")
    if not (np.all(np.isfinite(counts)) and np.all(counts >= 0)):
        raise ValueError(f"histogram {name!r}: counts must be finite and non-negative")
    out: dict[str, Any] = {"edges": edges.tolist(), "counts": counts.tolist()}
    for key, v in extra.items():
        out[key] = scalar(v, f"{name}.{key}")
    return out
