"""The traced body of an observed step: one pure function, `step_body`.

It runs the user's step under a `Collector` (taps, activation probes), then, on the device:
the health guard (judge the step, keep the old state where it is bad), the automatic
statistics (``params/``, ``updates/``, ``updates/<layer>/update_ratio``, returned metrics),
and packs everything into one `Packed` value. ``new - old`` of the parameters is computed
once per trace: before the statistics' `lax.cond` when the guard or the update histograms
need it at every step, else inside it, so unsampled steps (``every=N``) do not pay for it.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxobs._src.device.guard import GuardState, guard_init, guard_update
from jaxobs._src.device.keys import split_stat_key
from jaxobs._src.device.stats import (
    flatten_stats,
    global_norm,
    tree_stats,
    update_ratio,
    update_ratio_from_norms,
)
from jaxobs._src.device.window import WindowState, window_init, window_update, window_values
from jaxobs._src.engine.activations import linen_activations, nnx_activations
from jaxobs._src.engine.collect import (
    Collector,
    collecting,
    is_scalar,
    masked,
    settled,
    warn_once,
)
from jaxobs._src.engine.options import ObserveOptions
from jaxobs._src.engine.packing import Packed, pack
from jaxobs._src.engine.step_shapes import StepShape, metrics_of

__all__ = ["BodyOutput", "step_body"]


class BodyOutput(NamedTuple):
    """What one trace of the body gives: the user's outputs, the packed statistics, the
    guard's new state (None without one), the window's new state (None without one), the
    dead-unit masks the guard tracks (their shapes size the first `GuardState`) and the
    window signals this step has (their names make the first `WindowState`)."""

    out: Any
    packed: Packed
    guard: GuardState | None
    window: WindowState | None
    alive: dict[str, Any]
    signals: dict[str, Any]


class _Updates:
    """``new - old`` of the parameters, computed at most once per trace (for the guard, the
    statistics and the histograms alike). After a skip, `kept` describes the state
    returned: a skipped step's update is zero."""

    def __init__(self, old: Any, new: Any, value: Any = None, skipped: Any = None):
        self.old, self.new, self._value, self._skipped = old, new, value, skipped

    def get(self) -> Any:
        if self._value is None:
            self._value = jax.tree.map(jnp.subtract, settled(self.new), self.old)
        if self._skipped is None:
            return self._value
        return jax.tree.map(lambda u: jnp.where(self._skipped, jnp.zeros_like(u), u), self._value)

    def kept(self, old: Any, new: Any, skipped: Any) -> _Updates:
        return _Updates(old, new, self._value, skipped)


def step_body(
    options: ObserveOptions,
    shape: StepShape,
    fn: Callable,
    step: Any,
    carry: tuple[GuardState | None, WindowState | None],
    args: tuple,
    kwargs: dict,
    *,
    sample: bool | None = True,
    hist: bool | None = None,
    numbered_on_host: bool = False,
) -> BodyOutput:
    """Run ``fn(*args, **kwargs)`` observed; pure: pytrees in, pytrees out.

    Args:
      options: The observe options.
      shape: The step's shape (`choose_shape`).
      fn: The user's step.
      step: The call counter, used as the step when the state carries none.
      carry: The guard's state (None without a checker, or when nothing is carried between
        steps: callbacks transport) and the window's (None without one).
      args: The step's positional arguments.
      kwargs: Its keyword arguments.
      sample: Whether this program computes the statistics (the host chose it: the observed
        program, or with False the plain one); None decides on the device from ``step``
        and ``every`` (the callbacks transport).
      hist: The same for the histograms (None: from ``step`` and ``histograms``).
      numbered_on_host: The step has no number on the device (callbacks without a state
        step): statistics are computed at every step and `every` is applied on the host.
    """
    checker = options.checker
    guard, window = carry
    watch = frozenset(options.watch)
    device_step = shape.step(args)
    step = device_step if device_step is not None else step
    on_host = device_step is None and numbered_on_host
    active = _cadence(sample, options.every, step, on_host)
    act_stats = tuple(options.act_stats or ())
    collector = Collector(options.stat_names, options.granularity, act_stats, active, watch=watch)
    collector.saturation = options.saturation_bounds
    if options.histogram_every:
        collector.hist_bins = options.histogram_bins
        collector.hist_active = _cadence(hist, options.histogram_every, step, on_host)
    collector.track_alive = checker is not None and options.activations
    skips = checker is not None and checker.skips_on_device
    before = shape.before(args, keep_state=skips)
    probes = options.probes_activations and active is not False
    with collecting(collector), _activation_probes(probes, shape, args):
        out = fn(*args, **kwargs)
    old, new = shape.params(args, out, before)
    updates = _Updates(old, new)
    signals = _signals(options, collector, out, updates, args)
    health_values: dict[str, Any] = {}
    if checker is not None:
        bad, guard, health_values = _judge(checker, guard, collector, signals, updates)
        if skips:
            out = shape.keep_old(bad, args, out, before)
            health_values["health/skipped"] = bad.astype(jnp.float32)
            old, new = shape.params(args, out, before)  # statistics describe the state returned
            updates = updates.kept(old, new, bad)
    window_out: dict[str, Any] = {}
    if window is not None:
        window = window_update(window, {k: signals[k] for k in window.low})
        if active is not False:  # a sampled step delivers the window and starts a new one
            window_out = window_values(window)
            window = window_init(window.low)
    values = _state_stats(options, collector, updates)
    metrics = _metric_values(options, out, args)
    values.update(metrics)
    values.update(collector.values)
    values.update(health_values)
    values.update(window_out)
    always = set(metrics) | collector.scalars | set(health_values)
    valid = True if isinstance(active, bool) else active
    packed = pack(step, valid, values, always, hists=collector.hists, hvalid=collector.hist_active)
    return BodyOutput(out, packed, guard, window, dict(collector.alive), signals)


def _cadence(chosen: bool | None, every: int, step: Any, on_host: bool) -> Any:
    """Whether this step computes what comes every ``every`` steps: the host's choice, or
    (callbacks transport) a traced predicate on the step."""
    if chosen is not None:
        return chosen
    if every == 1 or on_host:
        return True
    return jnp.asarray(step) % every == 0


def _activation_probes(on: bool, shape: StepShape, args: tuple) -> Any:
    if not on:
        return contextlib.nullcontext()
    roots = shape.probe_roots(args)
    return linen_activations() if roots is None else nnx_activations(roots)


def _signals(
    options: ObserveOptions, collector: Collector, out: Any, updates: _Updates, args: tuple
) -> dict[str, Any]:
    """The health signals of this step, as scalars: ``loss`` (the returned or tapped loss),
    ``grad_norm`` (of the tapped gradients), ``update_max_abs`` (the largest change of a
    parameter); each only when the step has it and the guard or the window needs it."""
    checker = options.checker
    wanted = set(options.window_signals)
    key = checker.loss_key if checker is not None else "loss"
    out_signals: dict[str, Any] = {}
    metrics = metrics_of(out, args) or {}
    loss = metrics.get(key, collector.raw.get(key))
    if loss is not None:
        if jnp.size(loss) != 1:
            raise ValueError(
                f"HealthChecker(loss_key={key!r}): the step's {key!r} is not a scalar (shape "
                f"{jnp.shape(loss)}); return the mean loss, or name another with loss_key="
            )
        out_signals["loss"] = jnp.asarray(loss, jnp.float32).reshape(())
    grads = collector.raw.get("grads")
    if (
        grads is not None
        and not is_scalar(grads)
        and (checker is not None or "grad_norm" in wanted)
    ):
        out_signals["grad_norm"] = global_norm(settled(grads))
    if updates.new is not None and (checker is not None or "update_max_abs" in wanted):
        leaves = [x for x in jax.tree.leaves(updates.get()) if jnp.issubdtype(x.dtype, jnp.inexact)]
        if leaves:
            out_signals["update_max_abs"] = jnp.max(
                jnp.stack([jnp.max(jnp.abs(x)).astype(jnp.float32) for x in leaves])
            )
    return out_signals


def _judge(
    checker: Any,
    state: GuardState | None,
    collector: Collector,
    signals: dict[str, Any],
    updates: _Updates,
) -> tuple[Any, GuardState | None, dict[str, Any]]:
    """The on-device guard: (bad, the guard's new state, its values) for this step."""
    if "grad_norm" in signals:
        norm, norm_name = signals["grad_norm"], "grad_norm"
    elif updates.new is not None:
        norm, norm_name = global_norm(updates.get()), "update_norm"
    else:
        norm, norm_name = None, "grad_norm"
    # max |new - old| is finite exactly when every old and new parameter is (the old ones
    # were accepted), so it stands for "the new parameters are finite" at no further read.
    largest = signals.get("update_max_abs")
    finite = None if largest is None else jnp.isfinite(largest)
    config = checker.guard_config
    stateless = state is None  # callbacks transport: nothing is carried between steps
    bad, new_state, values = guard_update(
        config,
        guard_init(config, collector.alive) if state is None else state,
        loss=signals.get("loss"),
        norm=norm,
        params_finite=finite,
        alive=collector.alive,
        active=collector.active,
        norm_name=norm_name,
    )
    return bad, (None if stateless else new_state), values


def _state_stats(
    options: ObserveOptions, collector: Collector, updates: _Updates
) -> dict[str, Any]:
    """``params/...``, ``updates/...`` and the update ratios (at statistics steps), and
    their histograms (at histogram steps)."""
    watch, new = frozenset(options.watch), updates.new
    if new is None or not ({"params", "updates"} & watch):
        return {}

    def compute() -> dict[str, Any]:
        out: dict[str, Any] = {}
        stats = options.stat_names
        reduce = functools.partial(
            tree_stats,
            stats=stats,
            per=options.granularity,
            with_global_norm=True,
            masked=masked(stats),
        )
        if "params" in watch:
            out.update(reduce(settled(new), prefix="params"))
        if "updates" in watch:
            delta = updates.get()
            upd = reduce(delta, prefix="updates")
            out.update(upd)
            out.update(_update_ratios(options, upd, out, delta, new))
        return out

    values = collector.gated(compute)
    if "params" in watch:
        collector.add_histograms(new, "params")
    if "updates" in watch:
        collector.add_histograms(updates.get, "updates")
    return values


def _update_ratios(
    options: ObserveOptions, upd: dict[str, Any], stats: dict[str, Any], delta: Any, new: Any
) -> dict[str, Any]:
    """``updates/<layer>/update_ratio`` = ||new - old|| / ||new|| per layer (and
    ``updates/update_ratio`` of the whole tree), from the norms already computed when there
    are any (``per="global"`` gives only the whole tree's)."""
    if "norm" not in options.stat_names or "params" not in options.watch:
        return update_ratio(delta, new, prefix="updates")
    if "updates/global_norm" not in upd:  # no floating-point parameters
        return {}
    out = {
        "updates/update_ratio": upd["updates/global_norm"] / (stats["params/global_norm"] + 1e-12)
    }
    if options.granularity == "global":
        return out
    update_norms, param_norms = {}, {}
    for key, value in upd.items():
        parts = split_stat_key(key, "updates")
        if parts is not None and parts[1] == "norm":
            update_norms[parts[0]] = value
            param_norms[parts[0]] = stats[f"params/{parts[0]}/norm"]
    if options.granularity == "layer":  # the norms are the layers' already
        out.update(
            {
                f"updates/{k}/update_ratio": update_norms[k] / (param_norms[k] + 1e-12)
                for k in update_norms
            }
        )
        return out
    out.update(update_ratio_from_norms(update_norms, param_norms, prefix="updates"))
    return out


def _metric_values(options: ObserveOptions, out: Any, args: tuple) -> dict[str, Any]:
    """``<metrics_prefix>/<name>`` for every returned metric with one element, as `run.log`
    takes it (a boolean as 0 or 1, a shape-(1,) array as its element), and for the loss
    of a ``loss`` or ``(loss, metrics)`` return (`metrics_of`); anything else is named in
    a warning, once."""
    metrics = metrics_of(out, args)
    if metrics is None or "metrics" not in options.watch:
        return {}
    values = {}
    for key, value in flatten_stats(metrics).items():
        name = f"{options.metrics_prefix}/{key}" if options.metrics_prefix else key
        number = _one_number(value)
        if number is not None:
            values[name] = number
        else:
            warn_once(
                f"metric-not-recorded:{name}",
                f"the step returned metric {key!r} ({_describe(value)}), which is not one "
                f"number: {name} is not recorded; return a scalar (e.g. its mean), or "
                f"jaxobs.tap({key.replace('/', '_')}=...) it for its statistics",
            )
    return values


def _one_number(value: Any) -> Any:
    """``value`` as a float32 scalar when it is a real number or a boolean with one element,
    else None."""
    if isinstance(value, (bool, int, float)):
        return jnp.asarray(value, jnp.float32)
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is None or dtype is None or math.prod(shape) != 1:
        return None
    if not any(jnp.issubdtype(dtype, kind) for kind in (jnp.integer, jnp.floating, jnp.bool_)):
        return None
    return jnp.asarray(value).astype(jnp.float32).reshape(())


def _describe(value: Any) -> str:
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is None or dtype is None:
        return f"a {type(value).__name__}"
    return f"shape {tuple(shape)}, dtype {dtype}"
