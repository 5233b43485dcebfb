"""The step shapes `observe` knows: flax TrainState, NNX, and plain optax tuples."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
from jax import lax


def is_nnx(value: Any) -> bool:
    """An NNX graph object: a Module, an Optimizer (an ``nnx.Pytree`` in flax 0.12), ..."""
    try:
        from flax import nnx
    except ImportError:
        return False
    kinds = tuple(getattr(nnx, n) for n in ("Module", "Object", "Pytree") if hasattr(nnx, n))
    return isinstance(value, kinds)


def is_train_state(value: Any) -> bool:
    return all(hasattr(value, a) for a in ("params", "step", "apply_fn", "opt_state"))


def nnx_params(args: Sequence[Any]) -> tuple[Any, Any]:
    """(model, nnx.State of its Params) of the first NNX model among args (not optimizers)."""
    from flax import nnx

    for a in args:
        if isinstance(a, nnx.Module) and not isinstance(a, getattr(nnx, "Optimizer", ())):
            return a, nnx.state(a, nnx.Param)
    return None, None


def pure_dict(tree: Any) -> Any:
    """An nnx.State (or any pytree) as a plain nested dict of arrays, for stable paths."""
    if not callable(getattr(tree, "to_pure_dict", None)):
        return tree
    from flax import nnx

    return nnx.to_pure_dict(tree) if hasattr(nnx, "to_pure_dict") else tree.to_pure_dict()


def metrics_of(out: Any) -> Mapping[str, Any] | None:
    """The metrics dict of a step's outputs: the output itself, or the last dict in a tuple."""
    if isinstance(out, Mapping):
        return out
    if isinstance(out, tuple):
        for item in reversed(out):
            if isinstance(item, Mapping):
                return item
    return None


def state_step(args: Sequence[Any]) -> Any:
    """The step counter carried by the state (TrainState.step, nnx.Optimizer.step), or None."""
    if args and is_train_state(args[0]):
        return args[0].step
    for a in args:
        step = getattr(a, "step", None)
        if step is not None and is_nnx(a):
            return step.get_value() if hasattr(step, "get_value") else step
    return None


def params_before_after(args: tuple, out: Any, nnx_model: Any, params_before: Any) -> tuple:
    """The parameters before and after the step, for the step shapes `observe` knows."""
    if nnx_model is not None:
        from flax import nnx

        return params_before, pure_dict(nnx.state(nnx_model, nnx.Param))
    if args and is_train_state(args[0]):
        new_state = out[0] if isinstance(out, tuple) and out else out
        if is_train_state(new_state):
            return args[0].params, new_state.params
    elif isinstance(out, tuple) and out and args:
        same = jax.tree.structure(out[0]) == jax.tree.structure(args[0])
        if same and jax.tree.leaves(args[0]):
            return args[0], out[0]  # a plain (params, opt_state, ...) step
    return None, None


def keep_old_state(skip: Any, args: tuple, out: Any, nnx_before: list) -> Any:
    """The step's outputs, with the state it updated left as it was where ``skip``.

    The step counter (``TrainState.step``, ``nnx.Optimizer.step``) still advances, so a
    skipped step keeps its number. Selection is a `lax.cond` on the device.
    """
    if nnx_before:
        from flax import nnx

        for obj, old in nnx_before:
            step = getattr(obj, "step", None)
            step_value = step.get_value() if hasattr(step, "get_value") else None
            new = pure_dict(nnx.state(obj))
            nnx.update(obj, lax.cond(skip, lambda o=old: o, lambda n=new: n))
            if step_value is not None:
                step.set_value(step_value)
        return out
    if args and is_train_state(args[0]):
        new_state = out[0] if isinstance(out, tuple) and out else out
        if is_train_state(new_state):
            kept = lax.cond(skip, lambda: args[0].replace(step=new_state.step), lambda: new_state)
            return (kept, *out[1:]) if isinstance(out, tuple) else kept
    elif isinstance(out, tuple) and len(out) >= 2 and len(args) >= 2:
        old, new = (args[0], args[1]), (out[0], out[1])
        if jax.tree.structure(old) == jax.tree.structure(new):
            kept = lax.cond(skip, lambda: old, lambda: new)
            return (*kept, *out[2:])
    raise ValueError(
        "HealthChecker(action=...) skips bad steps by keeping the old state, but this step's "
        "shape is not one jaxobs knows: use a flax TrainState step (state, batch) -> (state, "
        "metrics), an NNX step (model, optimizer, batch) -> metrics, or an optax step "
        "(params, opt_state, batch) -> (params, opt_state, metrics); or action='warn'"
    )
