"""`@jaxobs.observe` and `jaxobs.tap`: statistics inside the jitted step, delivered to the host
without stalling the device.

Two transports carry the same records:

- **outputs** (when `observe` owns the jit, i.e. it is the outermost decorator): the
  statistics are packed into one float32 vector returned as an extra output, which `observe`
  strips before returning the user's outputs. A background thread fetches each step's vector
  in one transfer and logs it, so the training loop never waits for it.
- **callbacks** (when the observed step is itself traced, e.g. `jax.jit` or `nnx.jit` on top
  of `observe`): the same vector goes to the host through one `io_callback` per step.

Every record carries the step it belongs to as a device value (the state's own ``step`` when
it has one, else a counter that `observe` passes in), so a late or reordered delivery can
never attach a value to the wrong step.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import inspect
import logging
import pathlib
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxobs._src.device.guard import GuardState, guard_init, guard_update
from jaxobs._src.device.paths import group_by_layer
from jaxobs._src.device.stats import (
    ACT_STATS,
    STATS,
    check_stats,
    flatten_stats,
    global_norm,
    tree_stats,
    update_ratio,
)
from jaxobs._src.engine.activations import linen_activations, nnx_activations
from jaxobs._src.engine.collect import Collector, collecting, is_scalar, warn_once
from jaxobs._src.engine.delivery import Deliverer, under_transformation
from jaxobs._src.engine.packing import Packed, pack, unpack
from jaxobs._src.engine.step_shapes import (
    is_nnx,
    is_train_state,
    keep_old_state,
    metrics_of,
    nnx_params,
    params_before_after,
    pure_dict,
    state_step,
)
from jaxobs._src.host.alerts import Alert, TrainingHalted
from jaxobs._src.host.checker import HealthChecker
from jaxobs._src.host.recorder import FlightRecorder

__all__ = ["Observed", "observe"]


logger = logging.getLogger("jaxobs")


WATCH = ("params", "updates", "grads", "metrics", "acts", "taps")


def _health_checker(health: Any) -> HealthChecker | None:
    if health is None or health is False:
        return None
    if health is True:
        return HealthChecker()
    if isinstance(health, HealthChecker):
        return health
    raise TypeError(f"observe(health=...) takes a jaxobs.HealthChecker or True, got {health!r}")


class Observed:
    """A train step wrapped by `observe`. Call it like the step itself."""

    def __init__(
        self,
        fn: Callable,
        *,
        run=None,
        every: int = 1,
        watch: Iterable[str] = WATCH,
        stats: Iterable[str] = STATS,
        per: str = "leaf",
        activations: bool = False,
        act_stats: Iterable[str] = ACT_STATS,
        metrics_prefix: str = "train",
        health: Any = None,
        recorder: int | None = 256,
        histograms: int = 0,
        histogram_bins: int = 64,
        jit: bool = True,
        **jit_kwargs: Any,
    ):
        if not callable(fn):
            raise TypeError(f"observe needs a function, got {fn!r}")
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        watch = (watch,) if isinstance(watch, str) else tuple(watch)
        unknown = [w for w in watch if w not in WATCH]
        if unknown:
            raise ValueError(f"unknown watch entries {unknown}; choose from {list(WATCH)}")
        for name, value, low in (
            ("histograms", histograms, 0),
            ("histogram_bins", histogram_bins, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(
                    f"{name} must be an integer >= {low}"
                    + (" (every how many steps; 0: off)" if name == "histograms" else "")
                    + f", got {value!r}"
                )
        if histogram_bins > 512:
            raise ValueError(
                f"histogram_bins must be at most 512 (W&B's limit), got {histogram_bins}"
            )
        self.fn = fn
        self.run = run
        self.every = every
        self.histograms = histograms
        self.histogram_bins = histogram_bins
        self.watch = frozenset(watch)
        self.stats = check_stats(stats)
        self.per = per
        self.activations = activations
        self.act_stats = check_stats(act_stats, ACT_STATS)
        self.metrics_prefix = metrics_prefix
        self._jit_kwargs = dict(jit_kwargs)
        self._use_jit = jit
        self._jitted: Callable | None = None
        self._host_step = 0
        self._step_on_host = False  # callbacks without a device step: numbered on arrival
        self._callback_step = 0
        self._uses_callbacks = False
        self._deliverer = Deliverer(self._deliver)
        self._runs_hooked: weakref.WeakSet = weakref.WeakSet()  # ids can be reused; runs not
        self.health = _health_checker(health)
        if recorder is not None and (
            isinstance(recorder, bool) or not isinstance(recorder, int) or recorder < 0
        ):
            raise ValueError(f"recorder must be a number of steps (0: off), got {recorder!r}")
        self.recorder = FlightRecorder(recorder) if recorder else None
        self._guard_state: Any = None
        self._alive_shapes: dict[str, Any] = {}
        self._snapshots: collections.deque = collections.deque(maxlen=2)
        self.batches_to_skip = 0
        self.rollbacks: list[dict[str, Any]] = []
        self.dumps: list[pathlib.Path] = []
        self._halt_raised = False
        self._last_dump_step: int | None = None
        self._dump_lock = threading.Lock()
        functools.update_wrapper(self, fn)

    # -- the traced body

    def _body(self, step: Any, guard: Any, args: tuple, kwargs: dict) -> tuple[Any, Packed, Any]:
        device_step = state_step(args)
        step = device_step if device_step is not None else step
        if self.every == 1 or (device_step is None and self._step_on_host):
            active = True  # (numbered on the host: `every` is applied there)
        else:
            active = jnp.asarray(step) % self.every == 0
        collector = Collector(self.stats, self.per, self.act_stats, active, watch=self.watch)
        if self.histograms:
            collector.hist_bins = self.histogram_bins
            if self.histograms == 1 or (device_step is None and self._step_on_host):
                collector.hist_active = True
            else:
                collector.hist_active = jnp.asarray(step) % self.histograms == 0
        collector.track_alive = self.health is not None and self.activations
        nnx_model, params_before = (None, None)
        nnx_before: list[tuple[Any, Any]] = []
        if any(is_nnx(a) for a in args):
            nnx_model, params_before = nnx_params(args)
            params_before = pure_dict(params_before)
            if self.health is not None and self.health.skips_on_device:
                from flax import nnx

                # Pure dicts of the (immutable) arrays: the step mutates the Variables.
                nnx_before = [(a, pure_dict(nnx.state(a))) for a in args if is_nnx(a)]
        acts = contextlib.nullcontext()
        if self.activations and "acts" in self.watch:
            acts = (
                nnx_activations([a for a in args if is_nnx(a)])
                if nnx_model is not None
                else linen_activations()
            )
        with collecting(collector), acts:
            out = self.fn(*args, **kwargs)
        before, after = params_before_after(args, out, nnx_model, params_before)
        health_values: dict[str, Any] = {}
        if self.health is not None:
            self._alive_shapes = {k: v.shape for k, v in collector.alive.items()}
            out, guard, health_values = self._guard(
                guard, collector, args, out, before, after, nnx_before
            )
            if self.health.skips_on_device:  # statistics describe the state returned
                before, after = params_before_after(args, out, nnx_model, params_before)
        values, metrics = self._auto_stats(collector, out, before, after)
        values.update(collector.values)
        values.update(health_values)
        always = metrics | collector.scalars | set(health_values)
        packed = pack(
            step, active, values, always, hists=collector.hists, hvalid=collector.hist_active
        )
        return out, packed, guard

    def _guard(
        self,
        state: Any,
        collector: Collector,
        args: tuple,
        out: Any,
        before: Any,
        after: Any,
        nnx_before: list,
    ) -> tuple[Any, Any, dict[str, Any]]:
        """The on-device guard: judge the step, skip its update if asked, carry the state."""
        checker = self.health
        metrics = metrics_of(out) or {}
        loss = metrics.get(checker.loss_key, collector.raw.get(checker.loss_key))
        if loss is not None and not is_scalar(loss):
            raise ValueError(
                f"HealthChecker(loss_key={checker.loss_key!r}): the step's "
                f"{checker.loss_key!r} is not a scalar (shape {jnp.shape(loss)})"
            )
        grads = collector.raw.get("grads")
        if grads is not None and not is_scalar(grads):
            norm, norm_name = global_norm(grads), "grad_norm"
        elif after is not None:
            norm = global_norm(jax.tree.map(lambda a, b: a - b, after, before))
            norm_name = "update_norm"
        else:
            norm, norm_name = None, "grad_norm"
        finite = None
        if after is not None:
            leaves = [x for x in jax.tree.leaves(after) if jnp.issubdtype(x.dtype, jnp.inexact)]
            finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))
        stateless = state is None  # callbacks transport: nothing is carried between steps
        if stateless:
            state = guard_init(checker, collector.alive)
        bad, new_state, values = guard_update(
            checker,
            state,
            loss=loss,
            norm=norm,
            params_finite=finite,
            alive=collector.alive,
            active=collector.active,
            norm_name=norm_name,
        )
        if checker.skips_on_device:
            out = keep_old_state(bad, args, out, nnx_before)
            values["health/skipped"] = bad.astype(jnp.float32)
        return out, (None if stateless else new_state), values

    def _auto_stats(
        self, collector: Collector, out: Any, before: Any, after: Any
    ) -> tuple[dict[str, Any], set[str]]:
        values: dict[str, Any] = {}
        if after is not None and ("params" in self.watch or "updates" in self.watch):

            def compute():
                out_stats = {}
                if "params" in self.watch:
                    out_stats.update(tree_stats(after, self.stats, per=self.per, prefix="params"))
                if "updates" in self.watch:
                    updates = jax.tree.map(lambda a, b: a - b, after, before)
                    upd_stats = tree_stats(updates, self.stats, per=self.per, prefix="updates")
                    out_stats.update(upd_stats)
                    out_stats.update(self._update_ratio(upd_stats, out_stats, updates, after))
                return out_stats

            values.update(collector.gated(compute))
            if "params" in self.watch:
                collector.add_histograms(after, "params")
            if "updates" in self.watch:
                collector.add_histograms(jax.tree.map(lambda a, b: a - b, after, before), "updates")
        metrics = metrics_of(out)
        metric_keys: set[str] = set()
        if metrics is not None and "metrics" in self.watch:
            for key, value in flatten_stats(metrics).items():
                if is_scalar(value) and jnp.issubdtype(jnp.asarray(value).dtype, jnp.number):
                    name = f"{self.metrics_prefix}/{key}" if self.metrics_prefix else key
                    values[name] = jnp.asarray(value, jnp.float32)
                    metric_keys.add(name)
        return values, metric_keys

    def _update_ratio(self, upd: dict, params: dict, updates: Any, after: Any) -> dict:
        """``updates/<layer>/update_ratio`` = ||new - old|| / ||new|| per layer, from the
        per-leaf norms already computed when there are any (no second pass over the trees)."""
        if "norm" not in self.stats or self.per != "leaf" or "params" not in self.watch:
            return update_ratio(updates, after, prefix="updates")
        sq_u: dict[str, Any] = {}
        sq_p: dict[str, Any] = {}
        for key, value in upd.items():
            if key.endswith("/norm"):
                path = key[len("updates/") : -len("/norm")]
                layer = group_by_layer(path)
                p = params[f"params/{path}/norm"]
                sq_u[layer] = sq_u.get(layer, 0.0) + value * value
                sq_p[layer] = sq_p.get(layer, 0.0) + p * p
        return {
            f"updates/{layer}/update_ratio": jnp.sqrt(sq_u[layer]) / (jnp.sqrt(sq_p[layer]) + 1e-12)
            for layer in sq_u
        }

    # -- calling

    def _traced_fn(self) -> Callable:
        """The jitted body: the user's step with the step counter and the guard state as
        first arguments. Its signature is the user's with those prepended, so
        `static_argnames` and `donate_argnames` resolve as in the user's own step."""

        def traced(_jaxobs_step, _jaxobs_guard, *args, **kwargs):
            return self._body(_jaxobs_step, _jaxobs_guard, args, kwargs)

        try:
            sig = inspect.signature(self.fn)
            first = [
                inspect.Parameter(name, inspect.Parameter.POSITIONAL_ONLY)
                for name in ("_jaxobs_step", "_jaxobs_guard")
            ]
            traced.__signature__ = sig.replace(parameters=[*first, *sig.parameters.values()])
        except (TypeError, ValueError):  # builtins and the like: keep *args
            pass
        return traced

    def _get_jitted(self, args: tuple) -> Callable:
        if self._jitted is None:
            if any(is_nnx(a) for a in args):
                from flax import nnx

                self._jitted = nnx.jit(self._traced_fn(), **self._shift(self._jit_kwargs))
            else:
                self._jitted = jax.jit(self._traced_fn(), **self._shift(self._jit_kwargs))
        return self._jitted

    @staticmethod
    def _shift(kwargs: dict) -> dict:
        """The user's argnums refer to their step; the jitted body takes two arguments first."""
        out = dict(kwargs)
        for name in ("static_argnums", "donate_argnums"):
            if name in out and out[name] is not None:
                nums = (out[name],) if isinstance(out[name], int) else tuple(out[name])
                out[name] = tuple(n + 2 if n >= 0 else n for n in nums)
        return out

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        traced = under_transformation(args, kwargs)
        if traced or not self._use_jit:
            return self._call_with_callback(args, kwargs)
        if self.health is not None and self.health.skips_on_device:
            self._deliverer.wait(lag=1)  # act on step s - 1 before dispatching s + 1
        self._raise_if_halted()
        args = self._maybe_roll_back(args)
        step = self._host_step
        self._host_step += 1
        try:
            guard = self._ensure_guard(step, args, kwargs)
            out, packed, guard = self._get_jitted(args)(np.int32(step), guard, *args, **kwargs)
        except jax.errors.UnexpectedTracerError:
            if not self.activations:
                raise
            warn_once(
                "acts-leak",
                "activation statistics could not leave a nested "
                "transformation (scan/remat/vmap) in this step; they are turned off",
            )
            self.activations = False
            self._jitted = None
            self._guard_state = None  # its dead-unit masks went with the activations
            guard = self._ensure_guard(step, args, kwargs)
            out, packed, guard = self._get_jitted(args)(np.int32(step), guard, *args, **kwargs)
        self._guard_state = guard
        self._hook_run()
        self._deliverer.submit(packed)
        self._maybe_snapshot(step, args, out)
        return out

    def _call_with_callback(self, args: tuple, kwargs: dict) -> Any:
        """Inside someone else's trace: deliver through one io_callback per step."""
        from jax.experimental import io_callback

        self._uses_callbacks = True
        self._hook_run()  # at trace time: the run to flush before it ends
        if self.health is not None:
            warn_once(
                "guard-stateless",
                "observe is traced by an outer jit, so the health guard cannot carry its "
                "window between steps: only non-finite steps are detected (and skipped) on "
                "the device; make @jaxobs.observe the outermost decorator for spike checks",
            )
        # Without a step in the state, a host counter read here would be a constant of the
        # trace: the step is then given on arrival, by ordered callbacks.
        self._step_on_host = state_step(args) is None
        out, packed, _ = self._body(jnp.int32(-1), None, args, kwargs)
        keys, n_always, hnames = packed.keys, packed.n_always, packed.hnames

        def receive(s, valid, vector, hvalid, hvector):
            self._hook_run()
            s = int(s)
            if s < 0:  # numbered on arrival (ordered callbacks)
                s, self._callback_step = self._callback_step, self._callback_step + 1
                valid = s % self.every == 0
                hvalid = bool(self.histograms) and s % self.histograms == 0
            self._deliver(*unpack(s, valid, vector, hvalid, hvector, keys, n_always, hnames))

        io_callback(receive, None, *packed.arrays, ordered=self._step_on_host)
        return out

    # -- the guard's state, halting, rolling back

    @property
    def guard_state(self) -> GuardState | None:
        """The health guard's device state (save it with your checkpoints; None before the
        first step or without a `HealthChecker`)."""
        return self._guard_state

    @guard_state.setter
    def guard_state(self, state: GuardState | None) -> None:
        if state is not None and not isinstance(state, GuardState):
            raise TypeError(f"guard_state must be a jaxobs.health.GuardState, got {state!r}")
        self._guard_state = state

    def _ensure_guard(self, step: int, args: tuple, kwargs: dict) -> Any:
        if self.health is None:
            return None
        if self._guard_state is None:
            alive: dict[str, Any] = {}
            if self.activations and "acts" in self.watch:
                # One abstract trace finds the layers whose units the guard will track.
                probe = guard_init(self.health)

                def trace(*a, **k):
                    self._body(jnp.int32(step), probe, a, k)

                if any(is_nnx(a) for a in args):
                    from flax import nnx

                    nnx.eval_shape(trace, *args, **kwargs)
                else:
                    jax.eval_shape(lambda: trace(*args, **kwargs))
                alive = {k: jax.ShapeDtypeStruct(v, bool) for k, v in self._alive_shapes.items()}
            self._guard_state = guard_init(self.health, alive)
        return self._guard_state

    def _raise_if_halted(self) -> None:
        checker = self.health
        if checker is None or checker.actions.halt is None or self._halt_raised:
            return
        with self._dump_lock:  # the dump for the halting alert is written under this lock
            self._halt_raised = True
            raise TrainingHalted(checker.actions.halt, self.dumps[-1] if self.dumps else None)

    def _state_tree(self, args: tuple, out: Any) -> Any:
        """The training state after a step: what a snapshot keeps."""
        if any(is_nnx(a) for a in args):
            from flax import nnx

            return [pure_dict(nnx.state(a)) for a in args if is_nnx(a)]
        if args and is_train_state(args[0]):
            return out[0] if isinstance(out, tuple) else out
        return (out[0], out[1])

    def _maybe_snapshot(self, step: int, args: tuple, out: Any) -> None:
        every = self.health.snapshot_every if self.health is not None else None
        if not every or (step + 1) % every:
            return
        leaves, treedef = jax.tree.flatten(self._state_tree(args, out))
        # A device copy now: the caller may donate these buffers to the next step.
        copies = [jnp.copy(x) if isinstance(x, jax.Array) else x for x in leaves]
        shardings = [getattr(x, "sharding", None) for x in leaves]
        self._deliverer.submit(lambda: self._keep_snapshot(step + 1, treedef, copies, shardings))

    def _keep_snapshot(self, step: int, treedef: Any, copies: list, shardings: list) -> None:
        """On the delivery thread, after the record of the step before: keep the snapshot if
        that step was healthy."""
        checker = self.health
        if checker.actions.last_bad or checker.actions.halt is not None:
            return
        host = jax.device_get(copies)
        self._snapshots.append((step, treedef, host, shardings))

    def _maybe_roll_back(self, args: tuple) -> tuple:
        checker = self.health
        if checker is None:
            return args
        with self._dump_lock:
            request = checker.actions.take_rollback()
        if request is None:
            return args
        good = [snap for snap in self._snapshots if snap[0] <= request.streak_start]
        run = self._target_run()
        if not good:
            alert = checker.actions.give_up(
                request.step, "no good state was kept to roll back to (snapshot_every)"
            )
            if alert is not None and run is not None and not run.finished:
                self._emit_alerts(run, [alert])
            self._raise_if_halted()
            return args
        step, treedef, host, shardings = good[-1]
        restored = jax.tree.unflatten(
            treedef,
            [
                jax.device_put(h, s) if s is not None else h
                for h, s in zip(host, shardings, strict=True)
            ],
        )
        if any(is_nnx(a) for a in args):
            from flax import nnx

            for obj, state in zip([a for a in args if is_nnx(a)], restored, strict=True):
                counter = getattr(obj, "step", None)
                value = counter.get_value() if hasattr(counter, "get_value") else None
                nnx.update(obj, state)
                if value is not None:
                    counter.set_value(value)
        elif args and is_train_state(args[0]):
            args = (restored.replace(step=args[0].step), *args[1:])
        else:
            args = (*restored, *args[2:])
        self.batches_to_skip += checker.rollback_skip_batches
        checker.actions.rollback_done(self._host_step)  # steps in flight do not count
        info = {
            "at_step": self._host_step,
            "restored_step": step,
            "trigger_step": request.step,
            "streak_start": request.streak_start,
        }
        self.rollbacks.append(info)
        if run is not None and not run.finished:
            run.emit("rollback", step=self._host_step, **info)
        return args

    def take_batches_to_skip(self) -> int:
        """How many batches the data loop should skip after a rollback (and reset it)."""
        n, self.batches_to_skip = self.batches_to_skip, 0
        return n

    # -- host delivery

    def _target_run(self):
        if self.run is not None:
            return self.run
        from jaxobs._src.host.run import active_run

        return active_run()

    def _hook_run(self) -> None:
        run = self._target_run()
        if run is not None and run not in self._runs_hooked:
            self._runs_hooked.add(run)
            run.add_monitor(self)

    def on_finish(self, run) -> None:
        self.flush()

    def on_log(self, run, step: int, values: Mapping[str, float]) -> None:
        if self.recorder is not None or self.health is not None:
            self._monitor(run, step, values)

    def on_end(self, run, status: str, error: BaseException | None) -> None:
        if self.recorder is not None or self.health is not None:
            self._on_run_end(run, status, error)

    def _deliver(
        self, step: int, values: dict[str, float], hists: Mapping[str, Any] | None = None
    ) -> None:
        if not values and not hists:
            return
        run = self._target_run()
        if run is None:
            warn_once(
                "no-run",
                "@jaxobs.observe has no run to feed: call jaxobs.init() first "
                "or pass run=...; statistics are dropped",
            )
            return
        if run.finished:
            return
        if values:
            run.log(values, step=step)
        if hists:
            run.log_histograms(hists, step=step)

    def _monitor(self, run, step: int, values: Mapping[str, float]) -> None:
        """Every record the run logs (ours and the user's): recorder, then health rules."""
        if self.recorder is not None:
            self.recorder.add(step, values)
        if self.health is None:
            return
        with self._dump_lock:
            diverged = self.recorder.first_diverged if self.recorder is not None else None
            alerts = self.health.check(step, values, diverged=diverged)
            self._emit_alerts(run, alerts)
            critical = next((a for a in alerts if a.severity == "critical"), None)
            halt = self.health.actions.halt
            if halt is not None and halt in alerts:
                critical = halt
            if critical is not None:
                self._dump(
                    run,
                    critical.step,
                    {
                        "kind": "halt" if halt is critical else "alert",
                        "rule": critical.rule,
                        "severity": critical.severity,
                        "message": critical.message,
                        "error": None,
                    },
                )

    @staticmethod
    def _emit_alerts(run, alerts: Iterable[Alert]) -> None:
        for alert in alerts:
            record = alert.to_json()
            del record["step"]
            run.emit("health_check", step=alert.step, **record)

    def _on_run_end(self, run, status: str, error: BaseException | None) -> None:
        """The run is ending badly (exception, SIGTERM, Ctrl-C): dump the recorder."""
        if status == "finished" or self.recorder is None or not len(self.recorder):
            return
        if isinstance(error, TrainingHalted) and self.dumps:
            return  # dumped when the alert came
        kind = {"terminated": "sigterm", "interrupted": "interrupt"}.get(status, "exception")
        steps, _, _ = self.recorder.snapshot()
        message = f"{type(error).__name__}: {error}" if error is not None else status
        with self._dump_lock:
            self._dump(
                run,
                int(steps[-1]),
                {
                    "kind": kind,
                    "rule": None,
                    "severity": None,
                    "message": message.splitlines()[0] if message else status,
                    "error": None
                    if error is None
                    else {"type": type(error).__name__, "message": str(error)},
                },
            )

    def _dump(self, run, step: int, trigger: dict[str, Any]) -> None:
        """Write the crash dump (and its plot and checkpoint) into the run directory."""
        if self.recorder is None or not run.enabled:
            return
        try:
            directory = run.dir / "crash"
            checker = self.health
            path = self.recorder.dump(
                directory,
                step=step,
                trigger=trigger,
                thresholds=checker.settings() if checker is not None else {},
                alerts=[a.to_json() for a in checker.alerts[-100:]] if checker else [],
                run={
                    "project": run.info.project,
                    "run_id": run.id,
                    "name": run.info.name,
                    "dir": str(run.dir),
                },
                checkpoint=self._save_checkpoint(directory),
            )
        except Exception as e:  # a failed dump must not hide the failure it describes
            logger.warning("jaxobs: could not write the crash dump: %s: %s", type(e).__name__, e)
            return
        self.dumps.append(path)
        run.add_artifact(f"crash-{step}", path, kind="crash_dump", description=trigger["message"])
        plot = None
        if checker is None or checker.plot:
            try:
                from jaxobs._src.analysis.crash_plot import plot as plot_dump
                from jaxobs._src.formats.crash_dump import load_dump

                plot = plot_dump(load_dump(path))
                run.add_artifact(f"crash-{step}-plot", plot, kind="image")
            except ImportError as e:
                warn_once("no-mpl", f"no failure-signature plot ({e}): pip install matplotlib")
            except Exception as e:
                logger.warning("jaxobs: could not plot %s: %s: %s", path, type(e).__name__, e)
        run.emit("crash_dump", step=step, path=str(path), plot=str(plot) if plot else None)

    def _save_checkpoint(self, directory: pathlib.Path) -> dict[str, Any] | None:
        """The last good snapshot as an orbax checkpoint ``crash/ckpt-<step>``, if any."""
        if not self._snapshots:
            return None
        step, treedef, host, _ = self._snapshots[-1]
        path = (directory / f"ckpt-{step}").absolute()
        if not path.exists():
            try:
                import orbax.checkpoint as ocp

                tree = jax.tree.unflatten(treedef, host)
                with contextlib.suppress(ImportError):
                    from flax import serialization

                    tree = serialization.to_state_dict(tree)
                checkpointer = ocp.StandardCheckpointer()
                checkpointer.save(path, tree)
                checkpointer.wait_until_finished()
                checkpointer.close()
            except Exception as e:
                logger.warning(
                    "jaxobs: no checkpoint in the crash dump: %s: %s", type(e).__name__, e
                )
                return None
        return {"path": f"crash/ckpt-{step}", "step": step}

    def flush(self) -> None:
        """Wait until every step's statistics so far have been logged."""
        if self._uses_callbacks:
            jax.effects_barrier()  # callbacks still in flight arrive before this returns
        self._deliverer.flush()


def observe(
    fn: Callable | None = None, **options: Any
) -> Observed | Callable[[Callable], Observed]:
    """Decorate a train step so that jaxobs observes it. Use as the outermost decorator.

    `observe` jits the step itself (forwarding ``static_argnums``, ``donate_argnums`` and the
    other `jax.jit` arguments; `nnx.jit` when an argument is an NNX module), computes
    statistics inside the step, and strips them from the outputs: the step's signature and
    outputs are unchanged.

    What it records without any `tap`, for the step shapes it recognises:

    - a flax ``TrainState`` step ``(state, batch) -> (state, metrics)``,
    - an NNX step ``(model, optimizer, batch) -> metrics`` that updates the model in place,
    - a plain optax step ``(params, opt_state, batch) -> (params, opt_state, metrics)``:

    ``params/<path>/<stat>`` of the new parameters, ``updates/<path>/<stat>`` of new minus old
    parameters, ``updates/<layer>/update_ratio`` (``||new - old|| / ||new||`` over the layer's
    leaves, from the norms already computed), and ``train/<name>`` for every scalar in the
    returned metrics dict. Gradients (and anything else) are recorded with
    ``jaxobs.tap(grads=grads)`` inside the step. With ``activations=True``, the outputs of flax
    linen and NNX layers (Dense/Linear, Conv, ConvTranspose, norms, Embed, attention) are
    reduced to ``acts/<layer path>/<stat>`` where they are produced.

    Args:
      fn: The train step.
      run: The `jaxobs.Run` to feed (default: the active run at each step).
      every: Compute statistics every N steps only (behind `lax.cond`; other steps pay nothing
        but a predicate). Metrics are recorded every step.
      watch: Which groups to record: ``params``, ``updates``, ``grads``, ``metrics``,
        ``acts``, ``taps``.
      stats: Which statistics of `jaxobs.stats.STATS` to compute.
      per: ``"leaf"`` (default) or ``"layer"``.
      activations: Record activation statistics (flax linen and NNX).
      act_stats: Which of `jaxobs.stats.ACT_STATS`.
      metrics_prefix: Prefix for returned metrics (default ``train``: ``train/loss``).
      health: A `jaxobs.HealthChecker` (or True for the defaults): the on-device guard and
        the host rules (see the health docs).
      recorder: Steps the flight recorder keeps for crash dumps (0: off).
      histograms: Every how many steps to compute histograms of the watched parameters,
        updates and tapped gradients on the device (0, the default: never). Only the bins
        (``histogram_bins + 4`` numbers per leaf) leave the device; they are recorded with
        `jaxobs.Run.log_histograms` under ``params/<path>``, ``updates/<path>``,
        ``grads/<path>``.
      histogram_bins: Bins per histogram (at most 512).
      jit: False to run the step un-jitted (debugging); records go through a callback.
      **jit_kwargs: Forwarded to `jax.jit` / `nnx.jit`.

    Example:
      >>> @jaxobs.observe(every=10)
      ... def train_step(state, batch):
      ...     ...
    """
    if fn is None:
        return lambda f: Observed(f, **options)
    return Observed(fn, **options)
