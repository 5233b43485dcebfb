"""Window aggregates of the health signals between two sampled steps, on the device.

With ``observe(every=N)``, statistics are computed at one step in N, but a spike between
two samples must not go unseen. The guard's signals (the loss, the global gradient norm,
the largest update) are cheap scalars computed at every step; a `WindowState` carried
through the step reduces them to min / max / mean / last, and the sampled step delivers
them and starts a new window:

- ``window/<signal>/min``, ``/max``, ``/mean``: over the finite values of the window;
- ``window/<signal>/last``: the value at the sampled step itself;
- ``window/<signal>/nonfinite``: how many steps of the window gave NaN or infinity;
- ``window/steps``: how many steps the window holds (the sampled step included).

Pure and jittable.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import jax.numpy as jnp

__all__ = ["SIGNALS", "WindowState", "window_init", "window_update", "window_values"]

SIGNALS = ("loss", "grad_norm", "update_max_abs")


class WindowState(NamedTuple):
    """The window so far (a pytree): per signal, the smallest and largest finite value,
    their sum and count, the last value and the count of non-finite ones."""

    steps: Any
    low: dict[str, Any]
    high: dict[str, Any]
    total: dict[str, Any]
    finite: dict[str, Any]
    last: dict[str, Any]


def window_init(names: Iterable[str]) -> WindowState:
    """An empty window for the signals ``names``."""
    names = tuple(names)
    f32 = jnp.float32

    def each(value: Any) -> dict[str, Any]:
        return {n: jnp.asarray(value, f32) for n in names}

    return WindowState(
        steps=jnp.int32(0),
        low=each(jnp.inf),
        high=each(-jnp.inf),
        total=each(0.0),
        finite=each(0.0),
        last=each(jnp.nan),
    )


def window_update(state: WindowState, signals: Mapping[str, Any]) -> WindowState:
    """The window with one more step's ``signals`` (a scalar for each signal of ``state``).

    Raises:
      ValueError: When ``signals`` does not have the window's signals.
    """
    if set(signals) != set(state.low):
        raise ValueError(
            f"window_update: signals {sorted(signals)} differ from the window's {sorted(state.low)}"
        )
    low, high, total, finite, last = {}, {}, {}, {}, {}
    for name, value in signals.items():
        x = jnp.asarray(value, jnp.float32)
        ok = jnp.isfinite(x)
        low[name] = jnp.where(ok, jnp.minimum(state.low[name], x), state.low[name])
        high[name] = jnp.where(ok, jnp.maximum(state.high[name], x), state.high[name])
        total[name] = state.total[name] + jnp.where(ok, x, 0.0)
        finite[name] = state.finite[name] + ok.astype(jnp.float32)
        last[name] = x
    return WindowState(state.steps + 1, low, high, total, finite, last)


def window_values(state: WindowState) -> dict[str, Any]:
    """The ``window/...`` values of ``state`` (see the module docstring); none for a window
    without signals."""
    if not state.low:
        return {}
    nan = jnp.float32(jnp.nan)
    steps = state.steps.astype(jnp.float32)
    out: dict[str, Any] = {"window/steps": steps}
    for name in state.low:
        seen = state.finite[name] > 0
        out[f"window/{name}/min"] = jnp.where(seen, state.low[name], nan)
        out[f"window/{name}/max"] = jnp.where(seen, state.high[name], nan)
        out[f"window/{name}/mean"] = jnp.where(
            seen, state.total[name] / jnp.maximum(state.finite[name], 1.0), nan
        )
        out[f"window/{name}/last"] = state.last[name]
        out[f"window/{name}/nonfinite"] = steps - state.finite[name]
    return out
