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

import contextlib
import dataclasses
import functools
import inspect
import logging
import queue
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxobs import stats as _stats

__all__ = ["Observed", "observe", "tap"]

logger = logging.getLogger("jaxobs")

WATCH = ("params", "updates", "grads", "metrics", "acts", "taps")


# ----------------------------------------------------------------------------- collection


@dataclasses.dataclass
class _Collector:
    """What one trace of an observed step gathers: reduced statistics by key."""

    stats: tuple[str, ...]
    per: str
    act_stats: tuple[str, ...]
    active: Any  # traced bool: compute statistics at this step (every=N)
    watch: frozenset = frozenset(("grads", "taps", "acts"))
    scalars: set = dataclasses.field(default_factory=set)  # delivered at every step
    values: dict[str, jax.Array] = dataclasses.field(default_factory=dict)

    def add(self, key: str, value: Any) -> None:
        self.values.setdefault(key, value)  # the first value of a key wins (e.g. train fwd)

    def gated(self, compute: Callable[[], dict[str, jax.Array]]) -> dict[str, jax.Array]:
        """``compute()`` at active steps, zeros otherwise, without paying for it."""
        if self.active is True:
            return compute()
        shapes = jax.eval_shape(compute)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        return lax.cond(self.active, compute, lambda: zeros)


_state = threading.local()


def _current() -> _Collector | None:
    stack = getattr(_state, "stack", None)
    return stack[-1] if stack else None


@contextlib.contextmanager
def _collecting(collector: _Collector):
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    stack.append(collector)
    try:
        yield collector
    finally:
        stack.pop()


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float)) or (hasattr(value, "shape") and value.shape == ())


def tap(**named: Any) -> None:
    """Record values for observation inside an observed step.

    Trees (gradients, parameters, anything) are reduced to statistics where they are tapped,
    with keys ``<name>/<path>/<stat>`` (``grads/Dense_0/kernel/norm``); scalars are kept as
    they are, under their own name (``jaxobs.tap(lr=lr)`` records ``lr``).

    Example:
      >>> @jaxobs.observe
      ... def train_step(state, batch):
      ...     loss, grads = jax.value_and_grad(loss_fn)(state.params, batch)
      ...     jaxobs.tap(grads=grads, loss=loss)
      ...     return state.apply_gradients(grads=grads), {"loss": loss}

    Outside an observed step `tap` does nothing (and says so once).
    """
    collector = _current()
    if collector is None:
        _warn_once(
            "tap-outside",
            "jaxobs.tap() outside a step decorated with @jaxobs.observe records nothing",
        )
        return
    for name, value in named.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"tap names must be non-empty strings, got {name!r}")
        if ("grads" if name == "grads" else "taps") not in collector.watch:
            continue
        if _is_scalar(value):
            collector.add(name, jnp.asarray(value, jnp.float32))
            collector.scalars.add(name)
        else:
            value = _pure(value)  # an nnx.State: paths like its parameters' (no "/value")
            reduced = collector.gated(
                lambda v=value, n=name: _stats.tree_stats(
                    v, collector.stats, per=collector.per, prefix=n
                )
            )
            for key, v in reduced.items():
                collector.add(key, v)


# ----------------------------------------------------------------------------- activations


_DIFF_TRACERS = ("JVPTracer", "LinearizeTracer")


def _probe(x: Any, path: str) -> Any:
    """Record activation statistics of ``x`` under ``acts/<path>/`` and return ``x`` unchanged.

    Inside a differentiated function (the forward pass under ``jax.value_and_grad``), the
    statistics are computed in the forward rule of an identity ``custom_vjp``, where the
    values are those of the enclosing jit, so they can leave the gradient transformation as
    extra outputs. The full activation never leaves the device.
    """
    collector = _current()
    if collector is None or not hasattr(x, "dtype") or not jnp.issubdtype(x.dtype, jnp.floating):
        return x
    if not x.ndim:
        return x
    key = f"acts/{path}"
    if any(k.startswith(key + "/") for k in collector.values):
        return x

    def record(v):
        out = collector.gated(lambda: _stats.activation_stats(v, collector.act_stats))
        for stat, value in out.items():
            collector.add(f"{key}/{stat}", value)

    if type(x).__name__ not in _DIFF_TRACERS:
        record(x)
        return x

    @jax.custom_vjp
    def ident(v):
        return v

    def fwd(v):
        record(v)
        return v, None

    def bwd(_, g):
        return (g,)

    ident.defvjp(fwd, bwd)
    return ident(x)


_LINEN_TYPES: tuple[type, ...] | None = None


def _linen_types() -> tuple[type, ...]:
    global _LINEN_TYPES
    if _LINEN_TYPES is None:
        import flax.linen as nn

        names = (
            "Dense",
            "DenseGeneral",
            "Conv",
            "ConvTranspose",
            "ConvLocal",
            "LayerNorm",
            "BatchNorm",
            "GroupNorm",
            "RMSNorm",
            "Embed",
            "MultiHeadDotProductAttention",
            "MultiHeadAttention",
            "SelfAttention",
        )
        _LINEN_TYPES = tuple(getattr(nn, n) for n in names if hasattr(nn, n))
    return _LINEN_TYPES


def _linen_interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name == "__call__" and isinstance(module, _linen_types()):
        path = "/".join(str(p) for p in module.path) or type(module).__name__
        out = (
            jax.tree.map(lambda o: _probe(o, path), out)
            if isinstance(out, tuple)
            else _probe(out, path)
        )
    return out


@contextlib.contextmanager
def _linen_activations():
    try:
        import flax.linen as nn
    except ImportError:  # no flax: nothing to intercept
        yield
        return
    with nn.intercept_methods(_linen_interceptor):
        yield


_NNX_SUBCLASSES: dict[type, type] = {}
_NNX_NAMES = (
    "Linear",
    "LinearGeneral",
    "Conv",
    "ConvTranspose",
    "LayerNorm",
    "BatchNorm",
    "GroupNorm",
    "RMSNorm",
    "Embed",
    "MultiHeadAttention",
    "Einsum",
)


def _nnx_observed_class(cls: type) -> type:
    """A subclass of ``cls`` whose ``__call__`` records its output (cached per class)."""
    sub = _NNX_SUBCLASSES.get(cls)
    if sub is None:

        def __call__(self, *args, **kwargs):
            out = cls.__call__(self, *args, **kwargs)
            path = getattr(self, "_jaxobs_path", None) or cls.__name__
            return _probe(out, path)

        sub = type(
            cls.__name__,
            (cls,),
            {"__call__": __call__, "__module__": cls.__module__, "__qualname__": cls.__qualname__},
        )
        _NNX_SUBCLASSES[cls] = sub
    return sub


@contextlib.contextmanager
def _nnx_activations(roots: Sequence[Any]):
    """Swap the class of each known NNX layer *instance* in ``roots`` for an observing
    subclass while the step is traced; other instances and other models are untouched."""
    from flax import nnx

    known = tuple(getattr(nnx, n) for n in _NNX_NAMES if hasattr(nnx, n))
    swapped: list[tuple[Any, type]] = []
    try:
        for root in roots:
            for path, module in (
                nnx.iter_modules(root) if hasattr(nnx, "iter_modules") else (root.iter_modules())
            ):
                cls = type(module)
                if isinstance(module, known) and cls not in _NNX_SUBCLASSES.values():
                    object.__setattr__(module, "_jaxobs_path", "/".join(str(p) for p in path))
                    # object.__setattr__: nnx's own __setattr__ would record "__class__" as
                    # a graph node and change the model's graphdef (a recompile).
                    object.__setattr__(module, "__class__", _nnx_observed_class(cls))
                    swapped.append((module, cls))
        yield
    finally:
        for module, cls in swapped:
            object.__setattr__(module, "__class__", cls)
            with contextlib.suppress(AttributeError):
                object.__delattr__(module, "_jaxobs_path")


# ----------------------------------------------------------------------------- step shapes


def _is_nnx(value: Any) -> bool:
    """An NNX graph object: a Module, an Optimizer (an ``nnx.Pytree`` in flax 0.12), ..."""
    try:
        from flax import nnx
    except ImportError:
        return False
    kinds = tuple(getattr(nnx, n) for n in ("Module", "Object", "Pytree") if hasattr(nnx, n))
    return isinstance(value, kinds)


def _is_train_state(value: Any) -> bool:
    return all(hasattr(value, a) for a in ("params", "step", "apply_fn", "opt_state"))


def _nnx_params(args: Sequence[Any]) -> tuple[Any, Any]:
    """(model, nnx.State of its Params) of the first NNX model among args (not optimizers)."""
    from flax import nnx

    for a in args:
        if isinstance(a, nnx.Module) and not isinstance(a, getattr(nnx, "Optimizer", ())):
            return a, nnx.state(a, nnx.Param)
    return None, None


def _pure(tree: Any) -> Any:
    """An nnx.State (or any pytree) as a plain nested dict of arrays, for stable paths."""
    if not callable(getattr(tree, "to_pure_dict", None)):
        return tree
    from flax import nnx

    return nnx.to_pure_dict(tree) if hasattr(nnx, "to_pure_dict") else tree.to_pure_dict()


def _metrics_of(out: Any) -> Mapping[str, Any] | None:
    """The metrics dict of a step's outputs: the output itself, or the last dict in a tuple."""
    if isinstance(out, Mapping):
        return out
    if isinstance(out, tuple):
        for item in reversed(out):
            if isinstance(item, Mapping):
                return item
    return None


def _device_step(args: Sequence[Any]) -> Any:
    """The step counter carried by the state (TrainState.step, nnx.Optimizer.step), or None."""
    if args and _is_train_state(args[0]):
        return args[0].step
    for a in args:
        step = getattr(a, "step", None)
        if step is not None and _is_nnx(a):
            return step.get_value() if hasattr(step, "get_value") else step
    return None


# ----------------------------------------------------------------------------- packing


@jax.tree_util.register_pytree_node_class
class _Packed:
    """One step's statistics: a float32 vector and the step; the keys ride along as static
    data, so they come back with the jit's outputs."""

    def __init__(self, step, valid, vector, keys: tuple[str, ...], n_always: int = 0):
        self.step, self.valid, self.vector = step, valid, vector
        self.keys, self.n_always = keys, n_always

    def tree_flatten(self):
        return (self.step, self.valid, self.vector), (self.keys, self.n_always)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children, *aux)


def _pack(step: Any, valid: Any, values: Mapping[str, Any], always: Iterable[str] = ()) -> _Packed:
    """Pack values into one vector; the ``always`` keys come first and are delivered at every
    step, the others (statistics) only where ``valid`` (every=N)."""
    always = set(always)
    first = [k for k in values if k in always]
    keys = (*first, *(k for k in values if k not in always))
    vector = (
        jnp.stack([jnp.asarray(values[k], jnp.float32).reshape(()) for k in keys])
        if keys
        else jnp.zeros((0,), jnp.float32)
    )
    return _Packed(jnp.asarray(step, jnp.int32), jnp.asarray(valid), vector, keys, len(first))


def _unpack(step: Any, valid: Any, vector: Any, keys: Sequence[str], n_always: int) -> tuple:
    """(step, values to log): every value at a valid step, else the always-delivered ones."""
    vector = np.asarray(vector)
    count = len(keys) if bool(valid) else n_always
    return int(step), {k: float(v) for k, v in zip(keys[:count], vector[:count], strict=True)}


# ----------------------------------------------------------------------------- host side


class _Deliverer:
    """A background thread that fetches each step's packed statistics and logs them."""

    def __init__(self, observed: Observed):
        self._observed = observed
        self._queue: queue.Queue = queue.Queue(maxsize=256)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, packed: _Packed) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._work, name="jaxobs-observe", daemon=True
                )
                self._thread.start()
        self._queue.put(packed)  # blocks only if the host falls 256 steps behind

    def flush(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._queue.join()

    def _work(self) -> None:
        while True:
            packed = self._queue.get()
            try:
                step, valid, vector = jax.device_get((packed.step, packed.valid, packed.vector))
                self._observed._deliver(*_unpack(step, valid, vector, packed.keys, packed.n_always))
            except Exception as e:  # never let the thread die: report and go on
                logger.warning("jaxobs: could not deliver statistics: %s: %s", type(e).__name__, e)
            finally:
                self._queue.task_done()


_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        logger.warning("jaxobs: %s", message)


# ----------------------------------------------------------------------------- observe


def _under_transformation(args: tuple, kwargs: dict) -> bool:
    """Whether the step is being traced by someone else (jit, grad, vmap on top of observe).

    Asks JAX's trace state (constant time) rather than walking every argument leaf at every
    step; falls back to the walk if that private function is not there.
    """
    try:
        from jax._src.core import trace_state_clean
    except ImportError:  # pragma: no cover - other JAX versions
        return any(isinstance(v, jax.core.Tracer) for v in jax.tree.leaves((args, kwargs)))
    return not trace_state_clean()


class Observed:
    """A train step wrapped by `observe`. Call it like the step itself."""

    def __init__(
        self,
        fn: Callable,
        *,
        run=None,
        every: int = 1,
        watch: Iterable[str] = WATCH,
        stats: Iterable[str] = _stats.STATS,
        per: str = "leaf",
        activations: bool = False,
        act_stats: Iterable[str] = _stats.ACT_STATS,
        metrics_prefix: str = "train",
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
        self.fn = fn
        self.run = run
        self.every = every
        self.watch = frozenset(watch)
        self.stats = _stats._check_stats(stats)
        self.per = per
        self.activations = activations
        self.act_stats = _stats._check_stats(act_stats, _stats.ACT_STATS)
        self.metrics_prefix = metrics_prefix
        self._jit_kwargs = dict(jit_kwargs)
        self._use_jit = jit
        self._jitted: Callable | None = None
        self._host_step = 0
        self._step_on_host = False  # callbacks without a device step: numbered on arrival
        self._callback_step = 0
        self._uses_callbacks = False
        self._deliverer = _Deliverer(self)
        self._runs_hooked: weakref.WeakSet = weakref.WeakSet()  # ids can be reused; runs not
        functools.update_wrapper(self, fn)

    # -- the traced body

    def _body(self, step: Any, args: tuple, kwargs: dict) -> tuple[Any, _Packed]:
        device_step = _device_step(args)
        step = device_step if device_step is not None else step
        if self.every == 1 or (device_step is None and self._step_on_host):
            active = True  # (numbered on the host: `every` is applied there)
        else:
            active = jnp.asarray(step) % self.every == 0
        collector = _Collector(self.stats, self.per, self.act_stats, active, watch=self.watch)
        nnx_model, params_before = (None, None)
        if any(_is_nnx(a) for a in args):
            nnx_model, params_before = _nnx_params(args)
            params_before = _pure(params_before)
        acts = contextlib.nullcontext()
        if self.activations and "acts" in self.watch:
            acts = (
                _nnx_activations([a for a in args if _is_nnx(a)])
                if nnx_model is not None
                else _linen_activations()
            )
        with _collecting(collector), acts:
            out = self.fn(*args, **kwargs)
        values, metrics = self._auto_stats(collector, args, out, nnx_model, params_before)
        values.update(collector.values)
        return out, _pack(step, active, values, always=metrics | collector.scalars)

    def _auto_stats(
        self, collector: _Collector, args: tuple, out: Any, nnx_model: Any, params_before: Any
    ) -> tuple[dict[str, Any], set[str]]:
        before = after = None
        if nnx_model is not None:
            from flax import nnx

            before, after = params_before, _pure(nnx.state(nnx_model, nnx.Param))
        elif args and _is_train_state(args[0]):
            new_state = out[0] if isinstance(out, tuple) and out else out
            if _is_train_state(new_state):
                before, after = args[0].params, new_state.params
        elif isinstance(out, tuple) and out and args:
            same = jax.tree.structure(out[0]) == jax.tree.structure(args[0])
            if same and jax.tree.leaves(args[0]):
                before, after = args[0], out[0]  # a plain (params, opt_state, ...) step
        values: dict[str, Any] = {}
        if after is not None and ("params" in self.watch or "updates" in self.watch):

            def compute():
                out_stats = {}
                if "params" in self.watch:
                    out_stats.update(
                        _stats.tree_stats(after, self.stats, per=self.per, prefix="params")
                    )
                if "updates" in self.watch:
                    updates = jax.tree.map(lambda a, b: a - b, after, before)
                    upd_stats = _stats.tree_stats(
                        updates, self.stats, per=self.per, prefix="updates"
                    )
                    out_stats.update(upd_stats)
                    out_stats.update(self._update_ratio(upd_stats, out_stats, updates, after))
                return out_stats

            values.update(collector.gated(compute))
        metrics = _metrics_of(out)
        metric_keys: set[str] = set()
        if metrics is not None and "metrics" in self.watch:
            for key, value in _stats.flatten_stats(metrics).items():
                if _is_scalar(value) and jnp.issubdtype(jnp.asarray(value).dtype, jnp.number):
                    name = f"{self.metrics_prefix}/{key}" if self.metrics_prefix else key
                    values[name] = jnp.asarray(value, jnp.float32)
                    metric_keys.add(name)
        return values, metric_keys

    def _update_ratio(self, upd: dict, params: dict, updates: Any, after: Any) -> dict:
        """``updates/<layer>/update_ratio`` = ||new - old|| / ||new|| per layer, from the
        per-leaf norms already computed when there are any (no second pass over the trees)."""
        if "norm" not in self.stats or self.per != "leaf" or "params" not in self.watch:
            return _stats.update_ratio(updates, after, prefix="updates")
        sq_u: dict[str, Any] = {}
        sq_p: dict[str, Any] = {}
        for key, value in upd.items():
            if key.endswith("/norm"):
                path = key[len("updates/") : -len("/norm")]
                layer = _stats.group_by_layer(path)
                p = params[f"params/{path}/norm"]
                sq_u[layer] = sq_u.get(layer, 0.0) + value * value
                sq_p[layer] = sq_p.get(layer, 0.0) + p * p
        return {
            f"updates/{layer}/update_ratio": jnp.sqrt(sq_u[layer]) / (jnp.sqrt(sq_p[layer]) + 1e-12)
            for layer in sq_u
        }

    # -- calling

    def _traced_fn(self) -> Callable:
        """The jitted body: the user's step with the step counter as a first argument. Its
        signature is the user's with that argument prepended, so `static_argnames` and
        `donate_argnames` resolve as in the user's own step."""

        def traced(_jaxobs_step, *args, **kwargs):
            return self._body(_jaxobs_step, args, kwargs)

        try:
            sig = inspect.signature(self.fn)
            first = inspect.Parameter("_jaxobs_step", inspect.Parameter.POSITIONAL_ONLY)
            traced.__signature__ = sig.replace(parameters=[first, *sig.parameters.values()])
        except (TypeError, ValueError):  # builtins and the like: keep *args
            pass
        return traced

    def _get_jitted(self, args: tuple) -> Callable:
        if self._jitted is None:
            if any(_is_nnx(a) for a in args):
                from flax import nnx

                self._jitted = nnx.jit(self._traced_fn(), **self._shift(self._jit_kwargs))
            else:
                self._jitted = jax.jit(self._traced_fn(), **self._shift(self._jit_kwargs))
        return self._jitted

    @staticmethod
    def _shift(kwargs: dict) -> dict:
        """The user's argnums refer to their step; the jitted body takes the step first."""
        out = dict(kwargs)
        for name in ("static_argnums", "donate_argnums"):
            if name in out and out[name] is not None:
                nums = (out[name],) if isinstance(out[name], int) else tuple(out[name])
                out[name] = tuple(n + 1 if n >= 0 else n for n in nums)
        return out

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        traced = _under_transformation(args, kwargs)
        if traced or not self._use_jit:
            return self._call_with_callback(args, kwargs)
        step = self._host_step
        self._host_step += 1
        try:
            out, packed = self._get_jitted(args)(np.int32(step), *args, **kwargs)
        except jax.errors.UnexpectedTracerError:
            if not self.activations:
                raise
            _warn_once(
                "acts-leak",
                "activation statistics could not leave a nested "
                "transformation (scan/remat/vmap) in this step; they are turned off",
            )
            self.activations = False
            self._jitted = None
            out, packed = self._get_jitted(args)(np.int32(step), *args, **kwargs)
        self._hook_run()
        self._deliverer.submit(packed)
        return out

    def _call_with_callback(self, args: tuple, kwargs: dict) -> Any:
        """Inside someone else's trace: deliver through one io_callback per step."""
        from jax.experimental import io_callback

        self._uses_callbacks = True
        self._hook_run()  # at trace time: the run to flush before it ends
        # Without a step in the state, a host counter read here would be a constant of the
        # trace: the step is then given on arrival, by ordered callbacks.
        self._step_on_host = _device_step(args) is None
        out, packed = self._body(jnp.int32(-1), args, kwargs)
        keys, n_always = packed.keys, packed.n_always

        def receive(s, valid, vector):
            self._hook_run()
            s = int(s)
            if s < 0:  # numbered on arrival (ordered callbacks)
                s, self._callback_step = self._callback_step, self._callback_step + 1
                valid = s % self.every == 0
            self._deliver(*_unpack(s, valid, vector, keys, n_always))

        io_callback(
            receive, None, packed.step, packed.valid, packed.vector, ordered=self._step_on_host
        )
        return out

    # -- host delivery

    def _target_run(self):
        if self.run is not None:
            return self.run
        from jaxobs.run import active_run

        return active_run()

    def _hook_run(self) -> None:
        run = self._target_run()
        if run is not None and run not in self._runs_hooked:
            self._runs_hooked.add(run)
            run._before_finish.append(self.flush)

    def _deliver(self, step: int, values: dict[str, float]) -> None:
        if not values:
            return
        run = self._target_run()
        if run is None:
            _warn_once(
                "no-run",
                "@jaxobs.observe has no run to feed: call jaxobs.init() first "
                "or pass run=...; statistics are dropped",
            )
            return
        if run.finished:
            return
        run.log(values, step=step)

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
