"""`ObserveOptions`: every option of `jaxobs.observe`, validated once."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterable, Mapping
from typing import Any

import jax

from jaxobs._src.device.stats import (
    ACT_STATS,
    PER,
    SATURATING,
    STATS,
    check_stats,
    saturation_bound,
)
from jaxobs._src.device.window import SIGNALS
from jaxobs._src.engine.levels import LogLevel
from jaxobs._src.host.checker import HealthChecker
from jaxobs._src.host.recorder import FlightRecorder

__all__ = [
    "OBSERVE_ACT_STATS",
    "PER",
    "WATCH",
    "ObserveOptions",
    "flight_recorder",
    "health_checker",
]

WATCH = ("params", "updates", "grads", "metrics", "acts", "taps")
# What each level computes when stats=, per= are not given: (stats, per).
LEVEL_STATS = {
    LogLevel.BASIC: (("norm",), "global"),
    # Per-leaf norms, not per-layer ones: the same reductions, and keys whose layer the host
    # can always tell (``layer_of``), even in nested modules.
    LogLevel.DETAILED: (("norm",), "leaf"),
    LogLevel.EXPERT: (STATS, "leaf"),
    LogLevel.DEBUG: (STATS, "leaf"),
}
MAX_HISTOGRAM_BINS = 512  # W&B's limit
# The activation statistics `observe` records when act_stats= is not given (with
# saturation_frac added when saturation= is): nonfinite makes a NaN inside a layer visible;
# min and max are on request.
OBSERVE_ACT_STATS = ("mean", "std", "max_abs", "zero_frac", "dead_frac", "nonfinite")


def health_checker(health: Any) -> HealthChecker | None:
    """The checker that ``observe(health=...)`` means: None/False (none), True (the
    defaults) or a `HealthChecker`."""
    if health is None or health is False:
        return None
    if health is True:
        return HealthChecker()
    if isinstance(health, HealthChecker):
        return health
    raise TypeError(
        f"observe(health={health!r}): pass a jaxobs.HealthChecker, True for the defaults, or None"
    )


def flight_recorder(recorder: Any) -> FlightRecorder | None:
    """The recorder that ``observe(recorder=...)`` means: a number of steps (0 or None: off)
    or a configured `FlightRecorder`."""
    if recorder is None or isinstance(recorder, FlightRecorder):
        return recorder
    if isinstance(recorder, bool) or not isinstance(recorder, int) or recorder < 0:
        raise ValueError(
            f"observe(recorder={recorder!r}): pass a number of steps (0: off) or a "
            "jaxobs.FlightRecorder"
        )
    return FlightRecorder(recorder) if recorder else None


def _window(window: Any, every: int, checker: HealthChecker | None) -> tuple[str, ...]:
    """The signals kept between samples: None (the default) is the loss and the gradient
    norm, and the largest update when the guard is on; True all of `SIGNALS`; False none."""
    if window is None:
        names: tuple[str, ...] = SIGNALS if checker is not None else SIGNALS[:2]
    elif window is True or window is False:
        names = SIGNALS if window else ()
    elif isinstance(window, str) or not isinstance(window, Iterable):
        raise TypeError(
            f"observe(window={window!r}): True, False, or an iterable of signals from {SIGNALS}"
        )
    else:
        names = tuple(window)
        unknown = [n for n in names if n not in SIGNALS]
        if unknown:
            raise ValueError(
                f"observe(window=...): unknown signals {unknown}; choose from {SIGNALS}"
            )
    return names if every > 1 else ()


def _saturation_bounds(saturation: Any, threshold: Any) -> float | dict[str, float] | None:
    """The bound on ``|pre-activation|`` that ``observe(saturation=...,
    saturation_threshold=...)`` means: one for every layer, one per named layer, or None
    (off)."""
    try:
        if saturation is None:
            saturation_bound("tanh", threshold)  # a bad threshold fails even while off
            return None
        if isinstance(saturation, str):
            return saturation_bound(saturation, threshold)
        if isinstance(saturation, Mapping):
            if not saturation:
                raise ValueError(f"name at least one layer, or pass one of {SATURATING}")
            bad = [k for k in saturation if not isinstance(k, str)]
            if bad:
                raise ValueError(f"layer paths are strings, got {bad[0]!r}")
            return {layer: saturation_bound(kind, threshold) for layer, kind in saturation.items()}
    except ValueError as e:
        raise ValueError(
            f"observe(saturation={saturation!r}, saturation_threshold={threshold!r}): {e}"
        ) from None
    raise TypeError(
        f"observe(saturation={saturation!r}): one of {SATURATING} (the nonlinearity after "
        "every probed layer), a mapping {layer path: 'tanh' | 'sigmoid'}, or None (off)"
    )


def _act_stats(act_stats: Any, bounds: float | dict[str, float] | None) -> tuple[str, ...]:
    """``act_stats`` normalised: the names asked for, with ``saturation_frac`` exactly when
    saturation is on (``bounds``)."""
    try:
        names = check_stats(act_stats, ACT_STATS)
    except ValueError as e:
        raise ValueError(f"observe(act_stats=...): {e}") from None
    if bounds is None:
        if "saturation_frac" in names:
            raise ValueError(
                "observe(act_stats=...) asks for saturation_frac, but saturation is off: "
                "pass observe(saturation='tanh') (or 'sigmoid', or {layer: kind}) to say "
                "which nonlinearity follows the probed layers"
            )
        return names
    if "saturation_frac" not in names:
        names = (*names, "saturation_frac")
    return names


def _int_at_least(name: str, value: Any, low: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low} ({what}), got {value!r}")


def _jit_parameters() -> set[str]:
    """The keyword arguments of `jax.jit` and `nnx.jit` (when flax is installed)."""
    names = set(inspect.signature(jax.jit).parameters)
    try:
        from flax import nnx

        names |= set(inspect.signature(nnx.jit).parameters)
    except (ImportError, TypeError, ValueError):  # no flax, or no signature to read
        pass
    return names - {"fun", "f"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ObserveOptions:
    """What `jaxobs.observe` computes and where it sends it (see `jaxobs.observe` for each).

    Inputs are normalised on construction: ``level`` becomes a `LogLevel`; ``stats``,
    ``per`` and ``histograms`` left at None take the level's (`LogLevel`); ``watch`` becomes
    a frozenset, ``stats`` and ``act_stats`` tuples, ``health`` a `HealthChecker` or None,
    ``recorder`` a `FlightRecorder` or None (an int is a number of steps; 0 is off),
    ``window`` the tuple of signals kept between samples (empty at ``every=1``).
    ``act_stats`` defaults to `OBSERVE_ACT_STATS`; ``saturation`` (off by default) adds
    ``saturation_frac``, whose bound on each layer's ``|pre-activation|`` follows from
    the nonlinearity named and ``saturation_threshold`` (`jaxobs.stats.saturation_bound`).

    Raises:
      ValueError: an option out of range or an unknown name, naming the option.
      TypeError: ``health`` that is not a checker, or ``fn`` that is not callable.
    """

    run: Any = None
    level: LogLevel | str = LogLevel.DETAILED
    every: int = 1
    watch: Iterable[str] = WATCH
    stats: Iterable[str] | None = None
    per: str | None = None
    activations: bool = False
    act_stats: Iterable[str] = OBSERVE_ACT_STATS
    saturation: str | Mapping[str, str] | None = None
    saturation_threshold: float = 0.97
    metrics_prefix: str = "train"
    health: HealthChecker | bool | None = None
    recorder: FlightRecorder | int | None = 256
    histograms: int | None = None
    histogram_bins: int = 64
    window: bool | Iterable[str] | None = None
    jit: bool = True
    jit_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        level = LogLevel.of(self.level)
        _int_at_least("every", self.every, 1, "compute statistics every N steps")
        default_stats, default_per = LEVEL_STATS[level]
        per = default_per if self.per is None else self.per
        histograms = self.histograms
        if histograms is None:
            histograms = self.every if level is LogLevel.DEBUG else 0
        watch = (self.watch,) if isinstance(self.watch, str) else tuple(self.watch)
        unknown = [w for w in watch if w not in WATCH]
        if unknown:
            raise ValueError(f"observe(watch=...): unknown entries {unknown}; choose from {WATCH}")
        if per not in PER:
            raise ValueError(f"observe(per={per!r}): choose one of {PER}")
        try:
            stats = check_stats(default_stats if self.stats is None else self.stats)
        except ValueError as e:
            raise ValueError(f"observe(stats=...): {e}") from None
        act_stats = _act_stats(
            self.act_stats, _saturation_bounds(self.saturation, self.saturation_threshold)
        )
        for name in ("activations", "jit"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"observe({name}={getattr(self, name)!r}): True or False")
        if not isinstance(self.metrics_prefix, str):
            raise TypeError(f"observe(metrics_prefix={self.metrics_prefix!r}): a string")
        _int_at_least("histograms", histograms, 0, "every how many steps; 0: off")
        _int_at_least("histogram_bins", self.histogram_bins, 1, "bins per histogram")
        if self.histogram_bins > MAX_HISTOGRAM_BINS:
            raise ValueError(
                f"histogram_bins must be at most {MAX_HISTOGRAM_BINS} (W&B's limit), "
                f"got {self.histogram_bins}"
            )
        jit_kwargs = dict(self.jit_kwargs)
        unknown = sorted(set(jit_kwargs) - _jit_parameters())
        if unknown:
            known = [f.name for f in dataclasses.fields(self) if f.name != "jit_kwargs"]
            raise TypeError(
                f"observe got unknown options {unknown}: neither an option of observe "
                f"({', '.join(known)}) nor an argument of jax.jit"
            )
        checker = health_checker(self.health)
        normal = {
            "level": level,
            "per": per,
            "histograms": histograms,
            "window": _window(self.window, self.every, checker),
            "watch": frozenset(watch),
            "stats": stats,
            "act_stats": act_stats,
            "health": checker,
            "recorder": flight_recorder(self.recorder),
            "jit_kwargs": jit_kwargs,
        }
        for name, value in normal.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> ObserveOptions:
        """Options from `observe`'s keywords: the names of this class are options, any other
        keyword is forwarded to `jax.jit` / `nnx.jit`."""
        names = {f.name for f in dataclasses.fields(cls)} - {"jit_kwargs"}
        options = {k: v for k, v in kwargs.items() if k in names}
        jit_kwargs = dict(kwargs.get("jit_kwargs", {}))
        jit_kwargs.update((k, v) for k, v in kwargs.items() if k not in names | {"jit_kwargs"})
        return cls(**options, jit_kwargs=jit_kwargs)

    @property
    def stat_names(self) -> tuple[str, ...]:
        """``stats`` as normalised: the statistics to compute (the level's by default)."""
        return tuple(self.stats or ())

    @property
    def granularity(self) -> str:
        """``per`` as normalised: ``leaf``, ``layer`` or ``global`` (the level's by default)."""
        return str(self.per)

    @property
    def histogram_every(self) -> int:
        """``histograms`` as normalised: every how many steps (0: never)."""
        return int(self.histograms or 0)

    @property
    def window_signals(self) -> tuple[str, ...]:
        """``window`` as normalised: the signals kept between samples (none at every=1)."""
        return self.window if isinstance(self.window, tuple) else ()

    @property
    def checker(self) -> HealthChecker | None:
        """``health`` as the `HealthChecker` it was normalised to (None: no health)."""
        return self.health if isinstance(self.health, HealthChecker) else None

    @property
    def flight_recorder(self) -> FlightRecorder | None:
        """``recorder`` as the `FlightRecorder` it was normalised to (None: off)."""
        return self.recorder if isinstance(self.recorder, FlightRecorder) else None

    @property
    def probes_activations(self) -> bool:
        """Whether activation statistics are recorded (``activations`` and ``acts`` watched)."""
        return self.activations and "acts" in self.watch

    @property
    def saturation_bounds(self) -> float | dict[str, float] | None:
        """The bound on ``|pre-activation|`` above which a layer's output is saturated: one
        for every probed layer, ``{layer path: bound}``, or None (off)."""
        return _saturation_bounds(self.saturation, self.saturation_threshold)
