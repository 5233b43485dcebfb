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
from jaxobs._src.engine.activations import linen_activations, nnx_activations
from jaxobs._src.engine.collect import Collector, collecting, is_scalar
from jaxobs._src.engine.options import ObserveOptions
from jaxobs._src.engine.packing import Packed, pack
from jaxobs._src.engine.step_shapes import StepShape, metrics_of

__all__ = ["BodyOutput", "step_body"]


class BodyOutput(NamedTuple):
    """What one trace of the body gives: the user's outputs, the packed statistics, the
    guard's new state (None without one), and the dead-unit masks the guard tracks (their
    shapes size the first `GuardState`)."""

    out: Any
    packed: Packed
    guard: GuardState | None
    alive: dict[str, Any]


class _Updates:
    """``new - old`` of the parameters, computed at most once per trace.

    `now` computes it outside any `lax.cond` (for the guard and histograms, which need it at
    every step); `get`, called inside the statistics' cond, reuses that value, or computes
    it there. After a skip, `kept` describes the state returned: a skipped step's update is
    zero.
    """

    def __init__(self, old: Any, new: Any, value: Any = None, skipped: Any = None):
        self.old, self.new, self._value, self._skipped = old, new, value, skipped

    def now(self) -> Any:
        if self._value is None:
            self._value = jax.tree.map(jnp.subtract, self.new, self.old)
        return self._value

    def get(self) -> Any:
        if self._value is None:
            return jax.tree.map(jnp.subtract, self.new, self.old)
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
    guard: GuardState | None,
    args: tuple,
    kwargs: dict,
    *,
    numbered_on_host: bool = False,
) -> BodyOutput:
    """Run ``fn(*args, **kwargs)`` observed; pure: pytrees in, pytrees out.

    Args:
      options: The observe options.
      shape: The step's shape (`choose_shape`).
      fn: The user's step.
      step: The call counter, used as the step when the state carries none.
      guard: The guard's state; None without a checker, or when nothing is carried between
        steps (callbacks transport: a fresh state per step).
      args: The step's positional arguments.
      kwargs: Its keyword arguments.
      numbered_on_host: The step has no number on the device (callbacks without a state
        step): statistics are computed at every step and `every` is applied on the host.
    """
    checker = options.checker
    watch = frozenset(options.watch)
    device_step = shape.step(args)
    step = device_step if device_step is not None else step
    on_host = device_step is None and numbered_on_host
    active = True if options.every == 1 or on_host else jnp.asarray(step) % options.every == 0
    collector = Collector(
        tuple(options.stats), options.per, tuple(options.act_stats), active, watch=watch
    )
    if options.histograms:
        collector.hist_bins = options.histogram_bins
        if options.histograms == 1 or on_host:
            collector.hist_active = True
        else:
            collector.hist_active = jnp.asarray(step) % options.histograms == 0
    collector.track_alive = checker is not None and options.activations
    skips = checker is not None and checker.skips_on_device
    before = shape.before(args, keep_state=skips)
    with collecting(collector), _activation_probes(options, shape, args):
        out = fn(*args, **kwargs)
    old, new = shape.params(args, out, before)
    updates = _Updates(old, new)
    if new is not None and options.histograms and "updates" in options.watch:
        updates.now()
    health_values: dict[str, Any] = {}
    if checker is not None:
        bad, guard, health_values = _judge(checker, guard, collector, out, updates)
        if skips:
            out = shape.keep_old(bad, args, out, before)
            health_values["health/skipped"] = bad.astype(jnp.float32)
            old, new = shape.params(args, out, before)  # statistics describe the state returned
            updates = updates.kept(old, new, bad)
    values = _state_stats(options, collector, updates)
    metrics = _metric_values(options, out)
    values.update(metrics)
    values.update(collector.values)
    values.update(health_values)
    always = set(metrics) | collector.scalars | set(health_values)
    packed = pack(step, active, values, always, hists=collector.hists, hvalid=collector.hist_active)
    return BodyOutput(out, packed, guard, dict(collector.alive))


def _activation_probes(options: ObserveOptions, shape: StepShape, args: tuple) -> Any:
    if not options.probes_activations:
        return contextlib.nullcontext()
    roots = shape.probe_roots(args)
    return linen_activations() if roots is None else nnx_activations(roots)


def _judge(
    checker: Any, state: GuardState | None, collector: Collector, out: Any, updates: _Updates
) -> tuple[Any, GuardState | None, dict[str, Any]]:
    """The on-device guard: (bad, the guard's new state, its values) for this step."""
    metrics = metrics_of(out) or {}
    key = checker.loss_key
    loss = metrics.get(key, collector.raw.get(key))
    if loss is not None and not is_scalar(loss):
        raise ValueError(
            f"HealthChecker(loss_key={key!r}): the step's {key!r} is not a scalar (shape "
            f"{jnp.shape(loss)}); return the mean loss, or name another with loss_key="
        )
    grads = collector.raw.get("grads")
    if grads is not None and not is_scalar(grads):
        norm, norm_name = global_norm(grads), "grad_norm"
    elif updates.new is not None:
        norm, norm_name = global_norm(updates.now()), "update_norm"
    else:
        norm, norm_name = None, "grad_norm"
    finite = None
    if updates.new is not None:
        leaves = [x for x in jax.tree.leaves(updates.new) if jnp.issubdtype(x.dtype, jnp.inexact)]
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))
    config = checker.guard_config
    stateless = state is None  # callbacks transport: nothing is carried between steps
    bad, new_state, values = guard_update(
        config,
        guard_init(config, collector.alive) if state is None else state,
        loss=loss,
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
        if "params" in watch:
            out.update(tree_stats(new, options.stats, per=options.per, prefix="params"))
        if "updates" in watch:
            delta = updates.get()
            upd = tree_stats(delta, options.stats, per=options.per, prefix="updates")
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
    """``updates/<layer>/update_ratio`` = ||new - old|| / ||new|| per layer, from the
    per-leaf norms already computed when there are any."""
    if "norm" not in options.stats or options.per != "leaf" or "params" not in options.watch:
        return update_ratio(delta, new, prefix="updates")
    update_norms, param_norms = {}, {}
    for key, value in upd.items():
        parts = split_stat_key(key, "updates")
        if parts is not None and parts[1] == "norm":
            update_norms[parts[0]] = value
            param_norms[parts[0]] = stats[f"params/{parts[0]}/norm"]
    return update_ratio_from_norms(update_norms, param_norms, prefix="updates")


def _metric_values(options: ObserveOptions, out: Any) -> dict[str, Any]:
    """``<metrics_prefix>/<name>`` for every numeric scalar of the returned metrics."""
    metrics = metrics_of(out)
    if metrics is None or "metrics" not in options.watch:
        return {}
    values = {}
    for key, value in flatten_stats(metrics).items():
        if is_scalar(value) and jnp.issubdtype(jnp.asarray(value).dtype, jnp.number):
            name = f"{options.metrics_prefix}/{key}" if options.metrics_prefix else key
            values[name] = jnp.asarray(value, jnp.float32)
    return values
