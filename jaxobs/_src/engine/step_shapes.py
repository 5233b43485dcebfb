"""The step shapes `observe` knows: flax TrainState, NNX, and plain optax tuples.

`choose_shape` picks one `StepShape` from the first call's arguments, once; the trace body
and the supervisor then ask it, never the arguments, what the step's parameters and state
are. A shape answers:

- which jit traces the step (`jax.jit`, or `nnx.jit` for NNX graph objects);
- the state's own step counter (``TrainState.step``, ``nnx.Optimizer.step``), if any;
- the parameters before and after the step (for ``params/...`` and ``updates/...``);
- the step's outputs with the old state kept where the guard says skip (a `lax.cond`);
- the state tree a snapshot keeps, and how to put a snapshot back into the arguments,
  keeping the state's own step counter (a rollback does not rewind the step numbers).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
from jax import lax

__all__ = [
    "NnxShape",
    "NoShape",
    "OptaxTupleShape",
    "StepShape",
    "TrainStateShape",
    "choose_shape",
    "is_nnx",
    "is_train_state",
    "metrics_of",
    "pure_dict",
]

UNKNOWN_SHAPE = (
    "HealthChecker(action=...) skips bad steps by keeping the old state, but this step's "
    "shape is not one jaxobs knows: use a flax TrainState step (state, batch) -> (state, "
    "metrics), an NNX step (model, optimizer, batch) -> metrics, or an optax step "
    "(params, opt_state, batch) -> (params, opt_state, metrics); or action='warn'"
)


def is_nnx(value: Any) -> bool:
    """An NNX graph object: a Module, an Optimizer (an ``nnx.Pytree`` in flax 0.12), ..."""
    try:
        from flax import nnx
    except ImportError:
        return False
    kinds = tuple(getattr(nnx, n) for n in ("Module", "Object", "Pytree") if hasattr(nnx, n))
    return isinstance(value, kinds)


def is_train_state(value: Any) -> bool:
    """Whether ``value`` looks like a flax ``TrainState`` (params, step, apply_fn, opt_state)."""
    return all(hasattr(value, a) for a in ("params", "step", "apply_fn", "opt_state"))


def pure_dict(tree: Any) -> Any:
    """An nnx.State (or any pytree) as a plain nested dict of arrays, for stable paths."""
    if not callable(getattr(tree, "to_pure_dict", None)):
        return tree
    from flax import nnx

    return nnx.to_pure_dict(tree) if hasattr(nnx, "to_pure_dict") else tree.to_pure_dict()


def metrics_of(out: Any, args: Sequence[Any] = ()) -> Mapping[str, Any] | None:
    """The metrics of a step's outputs: the returned dict (or the last dict in a returned
    tuple), with the returned loss under ``loss`` where that dict has none.

    The loss is a floating-point value with one element returned on its own (``-> loss``)
    or in a tuple (``-> (loss, metrics)``, ``-> (state, loss)``, ``-> (params, opt_state,
    loss)``: the first such item), unless it is shaped like the argument in the same
    position (then it is state: an optax step whose parameters are one scalar).
    """
    if isinstance(out, Mapping):
        return out
    items = out if isinstance(out, tuple) else (out,)
    metrics = next((item for item in reversed(items) if isinstance(item, Mapping)), None)
    if metrics is not None and "loss" in metrics:
        return metrics
    for i, item in enumerate(items):
        if _is_loss(item, args[i] if i < len(args) else None):
            return {"loss": item, **(metrics or {})}
    return metrics


def _is_loss(value: Any, arg: Any) -> bool:
    if isinstance(value, float):
        return True
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is None or dtype is None or math.prod(shape) != 1:
        return False
    if not jnp.issubdtype(dtype, jnp.floating):
        return False
    return getattr(arg, "shape", None) != shape or getattr(arg, "dtype", None) != dtype


class StepShape(Protocol):
    """What the trace body and the supervisor need to know about a step's arguments."""

    name: str

    def jit(self, fn: Callable, **kwargs: Any) -> Callable:
        """``fn`` jitted the way this shape needs (`jax.jit` or `nnx.jit`)."""
        ...

    def eval_shape(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` traced abstractly (`jax.eval_shape` or `nnx.eval_shape`)."""
        ...

    def step(self, args: Sequence[Any]) -> Any:
        """The state's own step counter (a device value), or None without one."""
        ...

    def probe_roots(self, args: Sequence[Any]) -> list[Any] | None:
        """The NNX objects whose layers activation probes patch; None: flax linen."""
        ...

    def before(self, args: Sequence[Any], *, keep_state: bool) -> Any:
        """What must be read before the step runs (for steps that update in place)."""
        ...

    def params(self, args: Sequence[Any], out: Any, before: Any) -> tuple[Any, Any]:
        """(parameters before, parameters after) the step, or (None, None)."""
        ...

    def keep_old(self, skip: Any, args: Sequence[Any], out: Any, before: Any) -> Any:
        """The step's outputs with the old state kept where ``skip`` (its counter advances)."""
        ...

    def state_tree(self, args: Sequence[Any], out: Any) -> Any:
        """The training state after the step, as a snapshot keeps it (None: nothing)."""
        ...

    def restore(self, args: tuple, tree: Any) -> tuple:
        """``args`` with the state replaced by ``tree``, keeping the state's step counter."""
        ...


class NoShape:
    """A step whose arguments hold no state jaxobs knows: no params, no skip, no snapshot."""

    name = "unknown"

    def jit(self, fn: Callable, **kwargs: Any) -> Callable:
        return jax.jit(fn, **kwargs)

    def eval_shape(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        return jax.eval_shape(lambda: fn(*args, **kwargs))

    def step(self, args: Sequence[Any]) -> Any:
        return None

    def probe_roots(self, args: Sequence[Any]) -> list[Any] | None:
        return None

    def before(self, args: Sequence[Any], *, keep_state: bool) -> Any:
        return None

    def params(self, args: Sequence[Any], out: Any, before: Any) -> tuple[Any, Any]:
        return None, None

    def keep_old(self, skip: Any, args: Sequence[Any], out: Any, before: Any) -> Any:
        raise ValueError(UNKNOWN_SHAPE)

    def state_tree(self, args: Sequence[Any], out: Any) -> Any:
        return None

    def restore(self, args: tuple, tree: Any) -> tuple:
        raise ValueError(f"cannot restore a snapshot into a step of shape {self.name!r}")


def _same_structure(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` are the same tree of leaves of the same shapes."""
    structure: Any = jax.tree.structure(a)
    if structure != jax.tree.structure(b):
        return False
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return all(jnp.shape(x) == jnp.shape(y) for x, y in pairs)


def _new_state(out: Any) -> Any:
    return out[0] if isinstance(out, tuple) and out else out


class TrainStateShape(NoShape):
    """``(state, batch...) -> (state, metrics)`` with a flax ``TrainState``."""

    name = "train_state"

    def step(self, args: Sequence[Any]) -> Any:
        return args[0].step

    def params(self, args: Sequence[Any], out: Any, before: Any) -> tuple[Any, Any]:
        new = _new_state(out)
        return (args[0].params, new.params) if is_train_state(new) else (None, None)

    def keep_old(self, skip: Any, args: Sequence[Any], out: Any, before: Any) -> Any:
        new = _new_state(out)
        if not is_train_state(new):
            raise ValueError(UNKNOWN_SHAPE)
        kept = lax.cond(skip, lambda: args[0].replace(step=new.step), lambda: new)
        return (kept, *out[1:]) if isinstance(out, tuple) else kept

    def state_tree(self, args: Sequence[Any], out: Any) -> Any:
        return _new_state(out)

    def restore(self, args: tuple, tree: Any) -> tuple:
        return (tree.replace(step=args[0].step), *args[1:])


class OptaxTupleShape(NoShape):
    """``(params, opt_state, batch...) -> (params, opt_state, metrics)``; the step counter
    is the one `observe` passes in (calls since the first)."""

    name = "optax"

    def params(self, args: Sequence[Any], out: Any, before: Any) -> tuple[Any, Any]:
        if isinstance(out, tuple) and out and _same_structure(out[0], args[0]):
            return args[0], out[0]
        return None, None

    def keep_old(self, skip: Any, args: Sequence[Any], out: Any, before: Any) -> Any:
        if isinstance(out, tuple) and len(out) >= 2 and len(args) >= 2:
            old, new = (args[0], args[1]), (out[0], out[1])
            if _same_structure(old, new):
                return (*lax.cond(skip, lambda: old, lambda: new), *out[2:])
        raise ValueError(UNKNOWN_SHAPE)

    def state_tree(self, args: Sequence[Any], out: Any) -> Any:
        if isinstance(out, tuple) and len(out) >= 2:
            return (out[0], out[1])
        return None

    def restore(self, args: tuple, tree: Any) -> tuple:
        return (*tree, *args[2:])


@dataclasses.dataclass(frozen=True)
class NnxBefore:
    """An NNX step's state before it runs: the model's parameters, and (to skip) every
    graph object's whole state, as pure dicts of the (immutable) arrays."""

    model: Any
    params: Any
    states: tuple[tuple[Any, Any], ...]


def update_keeping_step(obj: Any, state: Any) -> None:
    """``nnx.update(obj, state)``, with ``obj.step`` (an ``nnx.Optimizer``'s counter) left
    as it was: skipped and rolled-back steps keep their numbers."""
    from flax import nnx

    counter: Any = getattr(obj, "step", None)
    value = counter.get_value() if hasattr(counter, "get_value") else None
    nnx.update(obj, state)
    if value is not None:
        counter.set_value(value)


class NnxShape(NoShape):
    """``(model, optimizer, batch...) -> metrics`` with NNX objects updated in place."""

    name = "nnx"

    def jit(self, fn: Callable, **kwargs: Any) -> Callable:
        from flax import nnx

        return nnx.jit(fn, **kwargs)

    def eval_shape(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        from flax import nnx

        return nnx.eval_shape(fn, *args, **kwargs)

    def probe_roots(self, args: Sequence[Any]) -> list[Any] | None:
        return [a for a in args if is_nnx(a)]

    def step(self, args: Sequence[Any]) -> Any:
        for a in args:
            counter = getattr(a, "step", None)
            if counter is not None and is_nnx(a):
                return counter.get_value() if hasattr(counter, "get_value") else counter
        return None

    def before(self, args: Sequence[Any], *, keep_state: bool) -> NnxBefore:
        from flax import nnx

        model = next(
            (
                a
                for a in args
                if isinstance(a, nnx.Module) and not isinstance(a, getattr(nnx, "Optimizer", ()))
            ),
            None,
        )
        params = pure_dict(nnx.state(model, nnx.Param)) if model is not None else None
        states = tuple((a, pure_dict(nnx.state(a))) for a in args if keep_state and is_nnx(a))
        return NnxBefore(model, params, states)

    def params(self, args: Sequence[Any], out: Any, before: NnxBefore) -> tuple[Any, Any]:
        from flax import nnx

        if before.model is None:
            return None, None
        return before.params, pure_dict(nnx.state(before.model, nnx.Param))

    def keep_old(self, skip: Any, args: Sequence[Any], out: Any, before: NnxBefore) -> Any:
        from flax import nnx

        for obj, old in before.states:
            new = pure_dict(nnx.state(obj))
            update_keeping_step(obj, lax.cond(skip, lambda o=old: o, lambda n=new: n))
        return out

    def state_tree(self, args: Sequence[Any], out: Any) -> Any:
        from flax import nnx

        return [pure_dict(nnx.state(a)) for a in args if is_nnx(a)]

    def restore(self, args: tuple, tree: Any) -> tuple:
        for obj, state in zip([a for a in args if is_nnx(a)], tree, strict=True):
            update_keeping_step(obj, state)
        return args


def choose_shape(args: Sequence[Any]) -> StepShape:
    """The shape of a step called with ``args`` (its first call's arguments)."""
    if any(is_nnx(a) for a in args):
        return NnxShape()
    if args and is_train_state(args[0]):
        return TrainStateShape()
    if args and jax.tree.leaves(args[0]):
        return OptaxTupleShape()
    return NoShape()
