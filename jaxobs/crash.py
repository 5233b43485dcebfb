"""Reading flight-recorder crash dumps: load, find the first layer to diverge, summarise, plot.

When a run dies (a critical health alert, an exception, SIGTERM, Ctrl-C, a halt) the flight
recorder writes ``<run dir>/crash/crash-<step>.json``: the trigger, the health alerts, the
health checker's thresholds, and the last ``capacity`` steps of every recorded series. This
module reads such a file back and turns it into an answer to "what broke first?".

- `load_dump` reads and validates a dump into a `CrashDump`.
- `layer_norms` combines per-leaf norms into one norm per layer, marking non-finite steps.
- `first_diverged` names the first layer whose norm blew up (also used by the recorder
  when it writes a dump, so it takes plain NumPy arrays).
- `summary` is a plain-text report; `plot` draws the failure signature as a PNG.

The command line exposes the last two as ``jaxobs crash show`` and ``jaxobs crash plot``.

Nothing here imports jax; `plot` imports matplotlib when called.

Example:
    >>> import numpy as np
    >>> steps = np.arange(10)
    >>> series = {
    ...     "grads/Dense_0/kernel/norm": np.ones(10),
    ...     "grads/Dense_1/kernel/norm": np.r_[np.ones(6), 50.0, np.inf, np.nan, np.nan],
    ... }
    >>> hit = first_diverged(steps, series)
    >>> hit["layer"], hit["step"], hit["ratio"]
    ('Dense_1', 6, 50.0)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import re
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxobs._jsonable import decode_float
from jaxobs.log import _kind

__all__ = [
    "CRASH_FORMAT",
    "CRASH_SCHEMA_VERSION",
    "CrashDump",
    "CrashDumpError",
    "CrashDumpVersionError",
    "find_dump",
    "first_diverged",
    "layer_norms",
    "load_dump",
    "plot",
    "summary",
]

CRASH_FORMAT = "jaxobs.crash"
CRASH_SCHEMA_VERSION = "1.0"
_MAJOR = int(CRASH_SCHEMA_VERSION.split(".")[0])

_DUMP_NAME = re.compile(r"crash-(-?[0-9]+)\.json")

PathLike = str | os.PathLike


class CrashDumpError(ValueError):
    """A crash dump file does not have the expected form; the message names the file and the
    field (``recorder.series["train/loss"][3]``)."""


class CrashDumpVersionError(CrashDumpError):
    """The dump was written by a newer major version of the crash format than this jaxobs
    reads."""


# ----------------------------------------------------------------------------- the dump


@dataclasses.dataclass(frozen=True, eq=False)
class CrashDump:
    """One crash dump, as read by `load_dump`.

    The recorder's values are float64 arrays aligned with `steps`: a value that was not
    recorded at a step is NaN there and False in `present`, so that a recorded NaN (True in
    `present`) can be told from a gap.

    Attributes:
      path: The file the dump was read from.
      step: The step at which the trigger fired.
      trigger: ``kind`` (alert, exception, sigterm, interrupt, halt), ``rule``, ``severity``,
        ``message`` and ``error`` (``{"type", "message"}`` or None); missing keys are filled
        with None (``message`` with ""), unknown ones kept.
      first_diverged: The recorder's verdict, ``{"layer", "group", "step", "ratio",
        "baseline", "nonfinite"}`` with ratio and baseline as floats, or None.
      thresholds: The health checker's settings, as written.
      alerts: The health alerts that led up to the trigger, oldest first.
      run: ``project``, ``run_id``, ``name``, ``dir`` of the run.
      versions: Versions of Python, jaxobs, jax and friends.
      checkpoint: ``{"path", "step"}`` of the checkpoint saved with the dump (path relative to
        the run directory; see `checkpoint_path`), or None.
      steps: The recorded steps, ascending, int64.
      series: Recorded values per key, float64, NaN where not recorded.
      present: Per key, whether a value was recorded at each step.
      schema_version: The version of the crash format the file was written with.
      created_ns: When the dump was written (ns since the epoch), or None.
    """

    path: pathlib.Path
    step: int
    trigger: dict[str, Any]
    first_diverged: dict[str, Any] | None
    thresholds: Any
    alerts: list[dict[str, Any]]
    run: dict[str, Any]
    versions: dict[str, Any]
    checkpoint: dict[str, Any] | None
    steps: np.ndarray
    series: dict[str, np.ndarray]
    present: dict[str, np.ndarray]
    schema_version: str = CRASH_SCHEMA_VERSION
    created_ns: int | None = None

    @property
    def run_name(self) -> str:
        """The run's name, else its id, else the dump's file name."""
        return str(self.run.get("name") or self.run.get("run_id") or self.path.name)

    @property
    def checkpoint_path(self) -> pathlib.Path | None:
        """Where the checkpoint saved with the dump is, or None.

        A relative path is taken relative to the run directory: the folder above ``crash/``
        when the dump still lies there (so a moved run directory still works), else the
        run's recorded ``dir``.
        """
        if not self.checkpoint or not isinstance(self.checkpoint.get("path"), str):
            return None
        path = pathlib.Path(self.checkpoint["path"])
        if path.is_absolute():
            return path
        if self.path.parent.name == "crash":
            base = self.path.parent.parent
        elif isinstance(self.run.get("dir"), str):
            base = pathlib.Path(self.run["dir"])
        else:
            base = self.path.parent
        return base / path

    def trigger_label(self) -> str:
        """The trigger's rule when it has one (``nonfinite``), else its kind (``sigterm``)."""
        return str(self.trigger.get("rule") or self.trigger.get("kind") or "unknown")


def _key(key: str) -> str:
    return json.dumps(key, ensure_ascii=False)


class _Fields:
    """Checked access to one JSON object, with errors naming the file and the field path."""

    def __init__(self, data: Any, where: str, source: str):
        self.source = source
        self.where = where
        if not isinstance(data, dict):
            raise self.error(where or "top level", "an object", data)
        self.data = data

    def error(self, where: str, expected: str, got: Any) -> CrashDumpError:
        return CrashDumpError(f"{self.source}: {where}: expected {expected}, got {_kind(got)}")

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, expected: str, ok, default: Any = None, required: bool = False):
        if key not in self.data:
            if required:
                raise CrashDumpError(
                    f"{self.source}: {self.path(key)}: missing (expected {expected})"
                )
            return default
        value = self.data[key]
        if not ok(value):
            raise self.error(self.path(key), expected, value)
        return value


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_obj(v: Any) -> bool:
    return isinstance(v, dict)


def _is_obj_or_null(v: Any) -> bool:
    return v is None or isinstance(v, dict)


def _is_str_or_null(v: Any) -> bool:
    return v is None or isinstance(v, str)


def _is_int_or_null(v: Any) -> bool:
    return v is None or _is_int(v)


def _read_json(path: pathlib.Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file or directory") from None
    except IsADirectoryError:
        raise IsADirectoryError(
            f"{path}: is a directory; pass a crash dump (crash/crash-<step>.json) or a run "
            "directory"
        ) from None
    except UnicodeDecodeError as e:
        raise CrashDumpError(
            f"{path}: not UTF-8 text (byte {e.start}); expected a jaxobs crash dump (JSON)"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise CrashDumpError(
            f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg}); expected a jaxobs crash "
            "dump (crash/crash-<step>.json)"
        ) from None


def _decode(value: Any, where: str, source: str) -> float:
    try:
        return decode_float(value, where)
    except ValueError as e:
        raise CrashDumpError(f"{source}: {e}") from None


def _check_format(top: _Fields) -> str:
    fmt = top.data.get("format")
    if fmt != CRASH_FORMAT:
        found = "no format field" if fmt is None else f"format {_kind(fmt)}"
        raise CrashDumpError(
            f'{top.source}: not a jaxobs crash dump: {found}, expected format "{CRASH_FORMAT}" '
            "(the flight recorder writes these as crash/crash-<step>.json)"
        )
    version = top.get("schema_version", 'a string like "1.0"', _is_str, CRASH_SCHEMA_VERSION)
    if not re.fullmatch(r"[0-9]+(\.[0-9]+)*", version):
        raise top.error("schema_version", 'a string like "1.0"', version)
    if int(version.split(".")[0]) > _MAJOR:
        from jaxobs import __version__

        raise CrashDumpVersionError(
            f"{top.source}: this crash dump has schema_version {version}, but jaxobs "
            f"{__version__} reads major version {_MAJOR} and older; upgrade jaxobs "
            "(pip install -U jaxobs) to read it"
        )
    return version


def _read_recorder(
    top: _Fields,
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    rec_data = top.get("recorder", "an object", _is_obj, {})
    rec = _Fields(rec_data, "recorder", top.source)
    raw_steps = rec.get("steps", "a list of integer steps", lambda v: isinstance(v, list), [])
    for i, s in enumerate(raw_steps):
        if not _is_int(s):
            raise rec.error(f"recorder.steps[{i}]", "an integer step", s)
        if i and s < raw_steps[i - 1]:
            raise CrashDumpError(
                f"{top.source}: recorder.steps[{i}]: steps must be ascending, but {s} follows "
                f"{raw_steps[i - 1]}"
            )
    steps = np.asarray(raw_steps, dtype=np.int64).reshape(-1)
    raw_series = rec.get("series", "an object of value lists", _is_obj, {})
    series: dict[str, np.ndarray] = {}
    present: dict[str, np.ndarray] = {}
    n = len(raw_steps)
    for name, values in raw_series.items():
        where = f"recorder.series[{_key(name)}]"
        if not isinstance(values, list):
            raise rec.error(where, "a list of values", values)
        if len(values) != n:
            raise CrashDumpError(
                f"{top.source}: {where}: expected {n} values (one per entry of recorder.steps), "
                f"got {len(values)}"
            )
        arr = np.full(n, np.nan)
        mask = np.ones(n, dtype=bool)
        for i, v in enumerate(values):
            if v is None:
                mask[i] = False
            else:
                arr[i] = _decode(v, f"{where}[{i}]", top.source)
        series[name] = arr
        present[name] = mask
    return steps, series, present


def _read_first_diverged(top: _Fields) -> dict[str, Any] | None:
    data = top.get("first_diverged", "an object or null", _is_obj_or_null)
    if data is None:
        return None
    f = _Fields(data, "first_diverged", top.source)
    out = dict(data)
    out["layer"] = f.get("layer", "a layer name", _is_str, required=True)
    out["group"] = f.get("group", "a group name or null", _is_str_or_null)
    out["step"] = f.get("step", "an integer step", _is_int, required=True)
    for key in ("ratio", "baseline"):
        value = data.get(key)
        out[key] = math.nan if value is None else _decode(value, f.path(key), top.source)
    out["nonfinite"] = bool(f.get("nonfinite", "a boolean", lambda v: isinstance(v, bool), False))
    return out


def load_dump(path: PathLike) -> CrashDump:
    """Read and check a crash dump written by the flight recorder.

    Unknown keys anywhere are ignored, so a dump from a newer minor version still reads.

    Args:
      path: A ``crash-<step>.json`` file (see `find_dump` to pick one in a run directory).

    Returns:
      The dump, with the recorder's values decoded into float64 arrays (``"NaN"``,
      ``"Infinity"``, ``"-Infinity"`` become non-finite floats; ``null`` becomes NaN with
      False in ``present``).

    Raises:
      FileNotFoundError: There is no such file.
      CrashDumpVersionError: The dump has a newer major ``schema_version``; upgrade jaxobs.
      CrashDumpError: The file is not JSON, not a crash dump, or a field has the wrong form;
        the message names the field, e.g. ``recorder.series["train/loss"][3]``.
    """
    path = pathlib.Path(path)
    source = str(path)
    data = _read_json(path)
    if not isinstance(data, dict):
        raise CrashDumpError(
            f"{source}: not a jaxobs crash dump: expected a JSON object at the top level, "
            f"got {_kind(data)}"
        )
    top = _Fields(data, "", source)
    version = _check_format(top)
    step = top.get("step", "an integer step", _is_int, required=True)
    trig = _Fields(top.get("trigger", "an object", _is_obj, required=True), "trigger", source)
    trigger = dict(trig.data)
    trigger["kind"] = trig.get("kind", "a string", _is_str, required=True)
    trigger["rule"] = trig.get("rule", "a string or null", _is_str_or_null)
    trigger["severity"] = trig.get("severity", "a string or null", _is_str_or_null)
    trigger["message"] = trig.get("message", "a string or null", _is_str_or_null) or ""
    error = trig.get("error", "an object or null", _is_obj_or_null)
    if error is not None:
        _Fields(error, "trigger.error", source)
    alerts = top.get("alerts", "a list of objects", lambda v: isinstance(v, list), [])
    for i, alert in enumerate(alerts):
        a = _Fields(alert, f"alerts[{i}]", source)
        a.get("step", "an integer step or null", _is_int_or_null)
        a.get("rule", "a string or null", _is_str_or_null)
        a.get("severity", "a string or null", _is_str_or_null)
        a.get("layer", "a string or null", _is_str_or_null)
        a.get("message", "a string or null", _is_str_or_null)
    checkpoint = top.get("checkpoint", "an object or null", _is_obj_or_null)
    if checkpoint is not None:
        ck = _Fields(checkpoint, "checkpoint", source)
        ck.get("path", "a path (string)", _is_str, required=True)
        ck.get("step", "an integer step or null", _is_int_or_null)
    created = top.get("created_ns", "an integer (ns since the epoch)", _is_int_or_null)
    steps, series, present = _read_recorder(top)
    return CrashDump(
        path=path,
        step=step,
        trigger=trigger,
        first_diverged=_read_first_diverged(top),
        thresholds=data.get("thresholds", {}),
        alerts=[dict(a) for a in alerts],
        run=dict(top.get("run", "an object", _is_obj, {})),
        versions=dict(top.get("versions", "an object", _is_obj, {})),
        checkpoint=None if checkpoint is None else dict(checkpoint),
        steps=steps,
        series=series,
        present=present,
        schema_version=version,
        created_ns=created,
    )


def find_dump(path: PathLike) -> pathlib.Path:
    """The crash dump a path names: the file itself, or the newest dump of a run directory.

    Args:
      path: A crash dump file, a run directory (its ``crash/crash-<step>.json`` files are
        searched), or a ``crash/`` folder itself.

    Returns:
      The path of the file, or of the dump with the largest step in the directory.

    Raises:
      FileNotFoundError: The path does not exist, or the directory holds no crash dump.
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if not path.is_dir():
        return path
    for folder in (path / "crash", path):
        dumps = []
        if folder.is_dir():
            for candidate in folder.iterdir():
                match = _DUMP_NAME.fullmatch(candidate.name)
                if match and candidate.is_file():
                    dumps.append((int(match.group(1)), candidate.name, candidate))
        if dumps:
            return max(dumps)[2]
    raise FileNotFoundError(
        f"{path}: no crash dumps here (looked for crash/crash-<step>.json); the flight recorder "
        "writes one when a run stops on a critical alert, an exception or a signal"
    )


# ----------------------------------------------------------------------------- diagnosis


def _split_leaf_key(name: str, group: str) -> tuple[str, str, str] | None:
    """``grads/Conv_0/kernel/norm`` -> (leaf ``Conv_0/kernel``, layer ``Conv_0``, ``norm``)."""
    parts = name.split("/")
    if len(parts) < 3 or parts[0] != group:
        return None
    leaf_parts = parts[1:-1]
    layer = "/".join(leaf_parts[:-1]) if len(leaf_parts) > 1 else leaf_parts[0]
    return "/".join(leaf_parts), layer, parts[-1]


def _recorded(
    name: str, series: Mapping[str, np.ndarray], present: Mapping[str, np.ndarray] | None
) -> np.ndarray:
    if present is not None and name in present:
        return np.asarray(present[name], dtype=bool)
    return ~np.isnan(series[name])


def _l2(stack: np.ndarray) -> np.ndarray:
    """sqrt(sum of squares) over axis 0 of finite values, scaled so that it cannot
    overflow."""
    scale = np.max(np.abs(stack), axis=0)
    safe = np.where(scale > 0, scale, 1.0)
    return safe * np.sqrt(np.sum(np.square(stack / safe), axis=0))


def layer_norms(
    series: Mapping[str, Any],
    *,
    group: str = "grads",
    present: Mapping[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Per layer, the L2 norm of its leaves' norms: ``sqrt(sum(norm_leaf ** 2))``.

    Leaves are read from keys ``<group>/<leaf path>/norm`` and ``<group>/<leaf
    path>/nonfinite``; a leaf's layer is its path without the last component
    (``Conv_0/kernel`` -> ``Conv_0``; a one-part path is its own layer).

    At a step where any leaf of a layer has ``nonfinite > 0`` or a recorded non-finite norm,
    the layer's value is ``+inf`` (the leaf norms cover only finite elements, so they would
    hide the NaN). Where none of its leaves was recorded, the value is NaN.

    Args:
      series: Values per key, all of the same length, NaN where not recorded (as in
        `CrashDump.series`). Other keys are ignored.
      group: ``grads``, ``params`` or ``updates``.
      present: Optional recorded-masks per key (as in `CrashDump.present`). Without them a
        NaN norm counts as not recorded, unless the leaf's ``nonfinite`` count was recorded
        at that step.

    Returns:
      ``{layer: float64 array}``, layers in the order they first appear in ``series``.

    Example:
      >>> norms = layer_norms({"grads/D/kernel/norm": [3.0], "grads/D/bias/norm": [4.0]})
      >>> norms["D"].tolist()
      [5.0]
    """
    arrays = {k: np.asarray(v, dtype=np.float64).reshape(-1) for k, v in series.items()}
    leaves: dict[str, dict[str, dict[str, str]]] = {}  # layer -> leaf -> stat -> key
    for name in arrays:
        split = _split_leaf_key(name, group)
        if split is None or split[2] not in ("norm", "nonfinite"):
            continue
        leaf, layer, stat = split
        leaves.setdefault(layer, {}).setdefault(leaf, {})[stat] = name
    out: dict[str, np.ndarray] = {}
    with np.errstate(invalid="ignore"):
        for layer, members in leaves.items():
            n = len(arrays[next(iter(next(iter(members.values())).values()))])
            recorded = np.zeros(n, dtype=bool)
            bad = np.zeros(n, dtype=bool)
            finite_norms = []
            for stats in members.values():
                leaf_recorded = np.zeros(n, dtype=bool)
                for key in stats.values():
                    if len(arrays[key]) != n:
                        raise ValueError(
                            f"{key}: {len(arrays[key])} values, but other series of layer "
                            f"{layer!r} have {n}"
                        )
                    leaf_recorded |= _recorded(key, arrays, present)
                recorded |= leaf_recorded
                if "nonfinite" in stats:
                    bad |= arrays[stats["nonfinite"]] > 0
                if "norm" in stats:
                    norm = arrays[stats["norm"]]
                    ok = np.isfinite(norm)
                    bad |= leaf_recorded & ~ok
                    finite_norms.append(np.where(ok, norm, 0.0))
            value = _l2(np.stack(finite_norms)) if finite_norms else np.full(n, np.nan)
            out[layer] = np.where(bad, np.inf, np.where(recorded, value, np.nan))
    return out


def first_diverged(
    steps: Any,
    series: Mapping[str, Any],
    *,
    groups: Sequence[str] = ("grads", "params"),
    factor: float = 10.0,
    baseline_steps: int = 8,
    present: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The first layer whose norm became non-finite or grew past ``factor`` × its baseline.

    For each group and each layer of `layer_norms`, the layer diverges at the earliest
    recorded step from which every later value is non-finite or greater than ``factor``
    times its baseline (the median of the finite values of the ``baseline_steps`` recorded
    steps just before that step), or at its first non-finite value if that comes earlier.
    Finite growth that does not last until the end of the recording (early training, a
    transient spike) is not a divergence. The earliest step wins; at the same step
    the larger ratio (non-finite counts as infinite); then the earlier group in ``groups``
    and the layer that appears first in ``series`` (forward order).

    Args:
      steps: The step of each position of the arrays in ``series``.
      series: Values per key, NaN where not recorded (e.g. `CrashDump.series`).
      groups: Which per-leaf statistic groups to look at, in order of preference.
      factor: How many times its baseline a layer's norm must exceed.
      baseline_steps: How many of a layer's first recorded steps form its baseline.
      present: Optional recorded-masks per key (see `layer_norms`).

    Returns:
      ``{"layer", "group", "step", "ratio", "baseline", "nonfinite"}`` (``ratio`` is inf and
      ``nonfinite`` True for a non-finite layer; ``baseline`` is NaN when the layer had no
      finite value in its baseline window), or None when no layer diverged.

    Raises:
      ValueError: ``factor`` or ``baseline_steps`` is not positive, or an array's length
        differs from ``steps``.
    """
    if not factor > 0:
        raise ValueError(f"factor must be positive, got {factor!r}")
    if baseline_steps < 1:
        raise ValueError(f"baseline_steps must be at least 1, got {baseline_steps!r}")
    steps_arr = np.asarray(steps).reshape(-1)
    best: tuple[tuple[int, float, int], dict[str, Any]] | None = None
    order = 0
    for group in groups:
        norms = layer_norms(series, group=group, present=present)
        for layer, values in norms.items():
            order += 1
            if len(values) != len(steps_arr):
                raise ValueError(
                    f"series of {group}/{layer}: {len(values)} values, but {len(steps_arr)} steps"
                )
            hit = _divergence(values, factor, baseline_steps)
            if hit is None:
                continue
            index, ratio, baseline = hit
            rank = (int(steps_arr[index]), -ratio, order)
            if best is None or rank < best[0]:
                best = (
                    rank,
                    {
                        "layer": layer,
                        "group": group,
                        "step": int(steps_arr[index]),
                        "ratio": ratio,
                        "baseline": baseline,
                        "nonfinite": math.isinf(ratio) and math.isinf(values[index]),
                    },
                )
    return None if best is None else best[1]


def _divergence(
    values: np.ndarray, factor: float, baseline_steps: int
) -> tuple[int, float, float] | None:
    """(index, ratio, baseline) where one layer's values diverged for good, or None.

    The onset is the first non-finite value, or the earliest recorded step from which
    *every* later recorded value is non-finite or above ``factor`` times the baseline (the
    median of the finite values of the ``baseline_steps`` recorded steps just before it),
    whichever comes first. A finite growth that does not last to the end of the recording
    (early training) is not a divergence.
    """
    recorded = np.flatnonzero(~np.isnan(values))
    if recorded.size == 0:
        return None
    v = values[recorded]
    # suffix[k]: the smallest value from position k to the end (inf counts as inf).
    suffix = np.minimum.accumulate(v[::-1])[::-1]
    first_inf = np.flatnonzero(np.isinf(v))
    for pos in range(len(v)):
        if first_inf.size and pos == first_inf[0]:  # a non-finite value counts even if alone
            suffix[pos] = math.inf
        prior = v[max(0, pos - baseline_steps) : pos]
        prior = prior[np.isfinite(prior)]
        baseline = float(np.median(prior)) if prior.size else math.nan
        if math.isinf(suffix[pos]) or (baseline > 0 and suffix[pos] > factor * baseline):
            value = float(v[pos])
            ratio = math.inf if math.isinf(value) else value / baseline
            return int(recorded[pos]), ratio, baseline
    return None


def _layer_stat(series: Mapping[str, np.ndarray], group: str, stat: str) -> dict[str, np.ndarray]:
    """Per-layer statistics that are recorded per layer: ``<group>/<layer>/<stat>``."""
    out = {}
    for name, values in series.items():
        parts = name.split("/")
        if len(parts) >= 3 and parts[0] == group and parts[-1] == stat:
            out["/".join(parts[1:-1])] = np.asarray(values, dtype=np.float64)
    return out


def _diagnosis(dump: CrashDump) -> tuple[dict[str, Any] | None, bool]:
    """The dump's first-diverged record, else one computed from its recorder; and whether it
    was computed here."""
    if dump.first_diverged is not None:
        return dump.first_diverged, False
    return first_diverged(dump.steps, dump.series, present=dump.present), True


# ----------------------------------------------------------------------------- summary


_LABEL_WIDTH = 18  # summary: "first to diverge: " and the values after it
_WIDTH = 100


def _fmt(value: float, recorded: bool = True) -> str:
    if not recorded:
        return "-"
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.4g}"
    return f"{value:.3e}"


def _one_line(text: Any, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _wrap(text: Any, limit: int = 400) -> str:
    """One paragraph, at most ``limit`` characters, wrapped under the summary's value column."""
    lines = textwrap.wrap(_one_line(text, limit), width=_WIDTH - _LABEL_WIDTH)
    return ("\n" + " " * _LABEL_WIDTH).join(lines)


def _describe_divergence(hit: dict[str, Any]) -> str:
    where = f"{hit.get('group') or '?'} of {hit['layer']} at step {hit['step']}"
    ratio = hit.get("ratio", math.nan)
    baseline = hit.get("baseline", math.nan)
    if hit.get("nonfinite") or (isinstance(ratio, float) and math.isinf(ratio)):
        return f"{where}: non-finite values (baseline norm {_fmt(baseline)})"
    return f"{where}: norm {_fmt(ratio)}x its baseline {_fmt(baseline)}"


def _table_columns(dump: CrashDump, hit: dict[str, Any] | None, rows: slice):
    """(header, values, recorded) columns for the last-steps table."""
    columns: list[tuple[str, np.ndarray, np.ndarray]] = []
    for key in ("train/loss", "health/grad_norm"):
        if key in dump.series:
            columns.append((key, dump.series[key][rows], dump.present[key][rows]))
    grads = layer_norms(dump.series, group="grads", present=dump.present)
    chosen: list[tuple[str, str]] = []
    if hit is not None:
        chosen.append((hit.get("group") or "grads", hit["layer"]))
        if ("grads", hit["layer"]) not in chosen and hit["layer"] in grads:
            chosen.append(("grads", hit["layer"]))

    def size(item: tuple[str, np.ndarray]) -> tuple[bool, float]:
        window = item[1][rows]
        finite = window[np.isfinite(window)]
        return bool(np.isinf(window).any()), float(finite.max()) if finite.size else -math.inf

    ranked = sorted(grads.items(), key=size, reverse=True)
    for layer, values in ranked:
        if len(chosen) >= 4:  # the diverged layer and the largest others
            break
        if ("grads", layer) not in chosen and np.any(~np.isnan(values[rows])):
            chosen.append(("grads", layer))
    norms_by_group = {"grads": grads}
    for group, layer in chosen:
        if group not in norms_by_group:
            norms_by_group[group] = layer_norms(dump.series, group=group, present=dump.present)
        values = norms_by_group[group].get(layer)
        if values is None:
            continue
        mark = " *" if hit is not None and layer == hit["layer"] else ""
        columns.append((f"{group} {layer}{mark}", values[rows], ~np.isnan(values[rows])))
    return columns


def summary(dump: CrashDump, *, last_steps: int = 8) -> str:
    """A plain-text report of a crash dump, for a terminal or a file.

    It gives the run, the trigger, the first layer to diverge, the alerts in order, the
    checkpoint, the versions, and a table of the last ``last_steps`` recorded steps with
    ``train/loss``, ``health/grad_norm`` and the gradient norms of the first layer to diverge
    and of the largest layers.

    Args:
      dump: A dump from `load_dump`.
      last_steps: How many recorded steps the table shows.

    Returns:
      The report, lines separated by ``\\n``, ending with a newline.
    """
    lines: list[str] = []

    def row(label: str, text: str) -> None:
        lines.append(f"{label + ':':<{_LABEL_WIDTH}}{text}")

    lines.append(f"crash dump {dump.path}")
    run = dump.run
    project = run.get("project")
    ident = f"{project}/{dump.run_name}" if project else dump.run_name
    if run.get("run_id") and run.get("run_id") != dump.run_name:
        ident += f" (run id {run['run_id']})"
    row("run", ident)
    if run.get("dir"):
        row("directory", str(run["dir"]))
    t = dump.trigger
    detail = ", ".join(
        str(x) for x in (t.get("rule") and f"rule {t['rule']}", t.get("severity")) if x
    )
    row("trigger", f"{t['kind']}{f' ({detail})' if detail else ''} at step {dump.step}")
    if t.get("message"):
        row("message", _wrap(t["message"]))
    error = t.get("error")
    if isinstance(error, dict):
        row("error", _wrap(f"{error.get('type', '?')}: {error.get('message', '')}"))
    hit, computed = _diagnosis(dump)
    if hit is None:
        row("first to diverge", "no layer (no non-finite or >10x norms in the recorder)")
    else:
        note = " (computed from the recorder)" if computed else ""
        row("first to diverge", _describe_divergence(hit) + note)
    if dump.alerts:
        row("alerts", f"{len(dump.alerts)}, oldest first")
        shown = dump.alerts if len(dump.alerts) <= 20 else dump.alerts[-20:]
        if len(shown) < len(dump.alerts):
            lines.append(f"  ... {len(dump.alerts) - len(shown)} earlier alerts not shown")
        for alert in shown:
            step = alert.get("step")
            cells = [
                f"step {step if step is not None else '?':>6}",
                f"{alert.get('severity') or '':<8}",
                f"{alert.get('rule') or '':<10}",
            ]
            if alert.get("layer"):
                cells.append(str(alert["layer"]))
            if alert.get("message"):
                cells.append(_one_line(alert["message"], 120))
            lines.append("  " + "  ".join(cells).rstrip())
    else:
        row("alerts", "none")
    if dump.checkpoint:
        at = dump.checkpoint.get("step")
        text = f"{dump.checkpoint.get('path')}"
        if at is not None:
            text += f" (step {at})"
        ckpt = dump.checkpoint_path
        if ckpt is not None and str(ckpt) != dump.checkpoint.get("path"):
            text += f" -> {ckpt}"
        row("checkpoint", text)
    else:
        row("checkpoint", "none saved")
    if dump.versions:
        parts = [
            f"{k} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in dump.versions.items()
            if v
        ]
        row("versions", _wrap(", ".join(parts), 600))
    if dump.thresholds:
        row("thresholds", _one_line(json.dumps(dump.thresholds, ensure_ascii=False), 160))
    n = len(dump.steps)
    if n == 0:
        row("recorder", "empty")
        return "\n".join(lines) + "\n"
    row("recorder", f"{n} steps ({dump.steps[0]} to {dump.steps[-1]}), {len(dump.series)} series")
    lines.append("")
    rows = slice(max(0, n - last_steps), n)
    columns = _table_columns(dump, hit, rows)
    headers = ["step", *(c[0] for c in columns)]
    body = [
        [str(s), *(_fmt(float(c[1][i]), bool(c[2][i])) for c in columns)]
        for i, s in enumerate(dump.steps[rows])
    ]
    widths = [max(len(h), *(len(r[j]) for r in body)) for j, h in enumerate(headers)]
    lines.append(f"last {len(body)} recorded steps:")
    lines.append("  " + "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
    for r in body:
        lines.append("  " + "  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
    notes = ["-: not recorded"]
    if any(c[0].startswith(("grads ", "params ", "updates ")) for c in columns):
        notes.append("layer norm inf: the layer has non-finite values")
    if any(c[0].endswith(" *") for c in columns):
        notes.append("*: first to diverge")
    lines.append("  (" + "; ".join(notes) + ")")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- plot

# tab10 without its red, which is kept for the trigger line.
_COLORS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#7f7f7f",
)
_TRIGGER_COLOR = "#ff0000"
_GRAD_NORM_COLOR = "#555555"
_MAX_LABELLED_LAYERS = 7
_TITLE_CHARS = 100 - len("failure signature:  — ")  # what fits at 10 in, fontsize 11


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


class _Panel:
    """One axis of the figure: lines of finite values, ``x`` marks for non-finite ones."""

    def __init__(self, ax, steps: np.ndarray):
        self.ax = ax
        self.steps = steps
        self.positive: list[np.ndarray] = []
        self.any_finite = False
        self.marks: list[tuple[np.ndarray, str]] = []

    def line(
        self,
        values: np.ndarray,
        recorded: np.ndarray,
        *,
        color: str,
        label: str | None,
        width: float = 1.3,
        zorder: float = 2,
    ) -> None:
        ok = recorded & np.isfinite(values)
        x, y = self.steps[ok], values[ok]
        self.any_finite |= bool(y.size)
        self.positive.append(y[y > 0])
        self.ax.plot(
            x,
            y,
            color=color,
            label=label,
            linewidth=width,
            zorder=zorder,
            marker="o" if y.size == 1 else None,
            markersize=4,
        )
        bad = recorded & ~np.isfinite(values)
        if bad.any():
            self.marks.append((self.steps[bad], color))

    def finish(self, *, log: bool) -> bool:
        """Scale the y axis; draw the non-finite marks at the top edge. Returns whether the
        scale is logarithmic."""
        positive = np.concatenate(self.positive) if self.positive else np.empty(0)
        use_log = log and positive.size > 0
        if use_log:
            self.ax.set_yscale("log")
        elif not self.any_finite:
            self.ax.set_ylim(0, 1)
            if self.marks:
                self.ax.text(
                    0.5, 0.5, "no finite values", transform=self.ax.transAxes, ha="center",
                    color="#555555",
                )  # fmt: skip
        for x, color in self.marks:
            self.ax.plot(
                x,
                np.ones(len(x)),
                linestyle="none",
                marker="x",
                markersize=7,
                markeredgewidth=2,
                color=color,
                clip_on=False,
                transform=self.ax.get_xaxis_transform(),
                zorder=5,
            )
        return use_log


def _nonfinite_proxy():
    from matplotlib.lines import Line2D

    return Line2D(
        [], [], linestyle="none", marker="x", markeredgewidth=2, color="#444444",
        label="non-finite (at top edge)",
    )  # fmt: skip


def _legend(ax, extra_handles=(), offset_pt: float = 6.0) -> None:
    """The axis' legend outside on the right, ``offset_pt`` points from its edge, so that it
    never hides a line."""
    from matplotlib.transforms import offset_copy

    handles = [*ax.get_legend_handles_labels()[0], *extra_handles]
    if handles:
        anchor = offset_copy(ax.transAxes, fig=ax.figure, x=offset_pt, y=0.0, units="points")
        ax.legend(
            handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), bbox_transform=anchor,
            fontsize=8, framealpha=0.85, borderaxespad=0.0,
        )  # fmt: skip


def _layers_panel(
    panel: _Panel,
    norms: dict[str, np.ndarray],
    diverged: str | None,
    ylabel: str,
    palette: dict[str, str],
    empty_text: str | None = None,
) -> None:
    """One line per layer; the largest ``_MAX_LABELLED_LAYERS`` (and the first to diverge)
    in colour and named, the rest grey. ``palette`` keeps a layer's colour across panels."""
    ax = panel.ax
    if not norms:
        text = empty_text or f"no {ylabel} recorded"
        ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", color="#555555")
        return

    def peak(item: tuple[str, np.ndarray]) -> tuple[bool, float]:
        v = item[1]
        finite = v[np.isfinite(v)]
        return bool(np.isinf(v).any()), float(finite.max()) if finite.size else -math.inf

    ranked = [name for name, _ in sorted(norms.items(), key=peak, reverse=True)]
    labelled = ranked[:_MAX_LABELLED_LAYERS]
    if diverged in norms and diverged not in labelled:
        labelled = [*labelled[:-1], diverged]
    colors = {name: palette[name] for name in labelled if name in palette}
    for name in (n for n in norms if n in labelled and n not in colors):  # forward order
        unused = [c for c in _COLORS if c not in colors.values()]
        color = unused[0] if unused else _COLORS[len(colors) % len(_COLORS)]
        colors[name] = palette[name] = color
    others = [name for name in norms if name not in colors]
    for name in others:  # background first, unlabelled but one legend entry
        values = norms[name]
        panel.line(values, ~np.isnan(values), color="#c8c8c8", label=None, width=0.8, zorder=1)
    if others:
        ax.plot([], [], color="#c8c8c8", label=f"{len(others)} other layers")
    for name in norms:  # legend in forward (model) order
        if name not in colors:
            continue
        values = norms[name]
        first = name == diverged
        panel.line(
            values,
            ~np.isnan(values),
            color=colors[name],
            label=f"{name} (first to diverge)" if first else name,
            width=2.4 if first else 1.3,
            zorder=4 if first else 2,
        )
    ax.set_ylabel(ylabel)


def _save_figure(fig, path: pathlib.Path) -> None:
    canvas = fig.canvas
    fmt = path.suffix.lower().lstrip(".") or "png"
    if fmt not in canvas.get_supported_filetypes():
        raise ValueError(f"{path}: cannot write a .{fmt} image; use .png (or .svg, .pdf)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            fig.savefig(f, format=fmt, dpi=fig.dpi)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def plot(dump: CrashDump, out_path: PathLike | None = None) -> pathlib.Path:
    """Draw the failure signature of a crash dump and write it as a PNG.

    Three panels over the recorded steps: (a) ``train/loss`` with ``health/grad_norm`` on a
    second log axis; (b) per-layer gradient norms (`layer_norms`), log scale, the first layer
    to diverge drawn thicker and named "(first to diverge)"; (c) per-layer parameter norms,
    or update ratios when no parameter statistics were recorded. Every panel has a red
    dashed line at the trigger step; non-finite values are drawn as ``x`` marks at the top
    edge, so a NaN shows instead of leaving a gap. At most seven layers are named per panel,
    the largest ones; the others are drawn in grey.

    Args:
      dump: A dump from `load_dump`.
      out_path: Where to write the image (default: the dump's path with ``.png``). A
        ``.svg`` or ``.pdf`` suffix writes that format instead.

    Returns:
      The path written.

    Raises:
      ImportError: matplotlib is not installed (``pip install 'jaxobs[report]'``).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError as e:
        raise ImportError("jaxobs.crash.plot needs matplotlib: pip install 'jaxobs[report]'") from e
    path = pathlib.Path(out_path) if out_path is not None else dump.path.with_suffix(".png")
    hit, _ = _diagnosis(dump)
    diverged = hit["layer"] if hit is not None else None
    steps = dump.steps.astype(np.float64)

    fig = Figure(figsize=(10, 8), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)  # Agg for this figure only; pyplot's global state is left alone
    ax_loss, ax_grads, ax_third = fig.subplots(3, 1, sharex=True)

    # (a) loss, and the global gradient norm on a twin axis
    loss_panel = _Panel(ax_loss, steps)
    loss_key = "train/loss"
    if loss_key not in dump.series:
        loss_key = next((k for k in dump.series if k.startswith("train/")), loss_key)
    handles: list = []
    twin = None
    twin_marks = False
    if loss_key in dump.series:
        loss_panel.line(
            dump.series[loss_key], dump.present[loss_key], color="#1f77b4", label=loss_key
        )
        ax_loss.set_ylabel(loss_key)
        finite = dump.series[loss_key][np.isfinite(dump.series[loss_key])]
        loss_panel.finish(log=bool(finite.size) and bool(np.all(finite > 0)))
    else:
        ax_loss.text(
            0.5, 0.5, "no train/loss recorded", transform=ax_loss.transAxes, ha="center",
            color="#555555",
        )  # fmt: skip
        loss_panel.finish(log=False)
    if "health/grad_norm" in dump.series:
        twin = ax_loss.twinx()
        gn_panel = _Panel(twin, steps)
        gn_panel.line(
            dump.series["health/grad_norm"],
            dump.present["health/grad_norm"],
            color=_GRAD_NORM_COLOR,
            label="health/grad_norm",
            width=1.0,
        )
        gn_panel.finish(log=True)
        twin.set_ylabel("global grad norm", color=_GRAD_NORM_COLOR)
        handles += twin.get_legend_handles_labels()[0]
        twin_marks = bool(gn_panel.marks)
    ax_loss.set_title("(a) loss", loc="left", fontsize=9)

    # (b) per-layer gradient norms
    grads_panel = _Panel(ax_grads, steps)
    palette: dict[str, str] = {}
    _layers_panel(
        grads_panel,
        layer_norms(dump.series, group="grads", present=dump.present),
        diverged,
        "grad norm per layer",
        palette,
    )
    grads_panel.finish(log=True)
    ax_grads.set_title("(b) gradient norm per layer", loc="left", fontsize=9)

    # (c) per-layer parameter norms, else update ratios
    third = _Panel(ax_third, steps)
    params = layer_norms(dump.series, group="params", present=dump.present)
    if params:
        _layers_panel(third, params, diverged, "param norm per layer", palette)
        ax_third.set_title("(c) parameter norm per layer", loc="left", fontsize=9)
    else:
        ratios = _layer_stat(dump.series, "updates", "update_ratio")
        empty = "no parameter norms or update ratios recorded"
        _layers_panel(third, ratios, diverged, "update ratio per layer", palette, empty)
        ax_third.set_title("(c) update ratio per layer", loc="left", fontsize=9)
    third.finish(log=True)
    ax_third.set_xlabel("step")
    ax_third.xaxis.set_major_locator(MaxNLocator(integer=True))

    trigger = f"trigger: {dump.trigger_label()}"
    offset_pt = 6.0
    if twin is not None:  # legends go right of the twin axis' ticks and label
        renderer = fig.canvas.get_renderer()
        extra_px = twin.get_tightbbox(renderer).x1 - ax_loss.get_window_extent(renderer).x1
        offset_pt += max(0.0, extra_px) * 72.0 / fig.dpi
    panels = ((loss_panel, handles), (grads_panel, []), (third, []))
    for i, (panel, extra) in enumerate(panels):
        ax = panel.ax
        ax.axvline(
            dump.step, color=_TRIGGER_COLOR, linestyle="--", linewidth=1.5, label=trigger, zorder=3
        )
        if hit is not None and hit["step"] != dump.step and i:
            ax.axvline(
                hit["step"],
                color="#555555",
                linestyle=":",
                linewidth=1.2,
                label=f"first diverged: step {hit['step']}",
                zorder=3,
            )
        ax.grid(True, which="major", alpha=0.3)
        if panel.marks or (i == 0 and twin_marks):
            extra = [*extra, _nonfinite_proxy()]
        _legend(ax, extra, offset_pt)
    ax_loss.annotate(
        trigger,
        xy=(dump.step, 1.0),
        xycoords=ax_loss.get_xaxis_transform(),
        xytext=(-4, -12),
        textcoords="offset points",
        ha="right",
        color=_TRIGGER_COLOR,
        fontsize=8,
    )
    if len(steps) <= 1:  # one step: give the x axis some room around it
        centre = float(steps[0]) if len(steps) else float(dump.step)
        low, high = min(centre, dump.step) - 1, max(centre, dump.step) + 1
        ax_third.set_xlim(low, high)
    name = _shorten(dump.run_name, 40)
    message = _one_line(dump.trigger.get("message") or dump.trigger_label(), 400)
    message = _shorten(message, max(30, _TITLE_CHARS - len(name)))
    fig.suptitle(f"failure signature: {name} — {message}", fontsize=11)
    _save_figure(fig, path)
    return path
