"""Activation probes: flax linen interceptors and NNX per-instance class swaps."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxobs._src.device.stats import activation_stats
from jaxobs._src.engine.collect import current_collector

_DIFF_TRACERS = ("JVPTracer", "LinearizeTracer")


def _act_stats(
    stats: Sequence[str], saturation: float | Mapping[str, float] | None, path: str
) -> tuple[tuple[str, ...], float | None]:
    """The statistics of the layer at ``path`` and its saturation bound (None: no
    ``saturation_frac``, which is then left out)."""
    bound = saturation if isinstance(saturation, float) or saturation is None else None
    if isinstance(saturation, Mapping):
        bound = saturation.get(path)
    if bound is None:
        return tuple(s for s in stats if s != "saturation_frac"), None
    return tuple(stats), bound


def probe(x: Any, path: str) -> Any:
    """Record activation statistics of ``x`` under ``acts/<path>/`` and return ``x`` unchanged.

    Inside a differentiated function (the forward pass under ``jax.value_and_grad``), the
    statistics are computed in the forward rule of an identity ``custom_vjp``, where the
    values are those of the enclosing jit, so they can leave the gradient transformation as
    extra outputs. The full activation never leaves the device.

    The statistics are the collector's ``act_stats``; ``saturation_frac`` is computed only
    for the layers its ``saturation`` gives a bound (``observe(saturation=...)``).
    """
    collector = current_collector()
    if collector is None or not hasattr(x, "dtype") or not jnp.issubdtype(x.dtype, jnp.floating):
        return x
    if not x.ndim:
        return x
    key = f"acts/{path}"
    if any(k.startswith(key + "/") for k in collector.values):
        return x

    stats, bound = _act_stats(collector.act_stats, collector.saturation, path)

    def record(v):
        def compute():
            out = activation_stats(v, stats, saturation=bound) if stats else {}
            if collector.track_alive:
                batch_axes = tuple(range(v.ndim - 1))
                out["__alive__"] = jnp.any(v > 0, axis=batch_axes)
            return out

        out = collector.gated(compute)
        alive = out.pop("__alive__", None)
        if alive is not None:
            collector.alive.setdefault(path, alive)
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
        path = "/".join(str(p) for p in getattr(module, "path", ())) or type(module).__name__
        out = (
            jax.tree.map(lambda o: probe(o, path), out)
            if isinstance(out, tuple)
            else probe(out, path)
        )
    return out


@contextlib.contextmanager
def linen_activations() -> Iterator[None]:
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
            return probe(out, path)

        sub = type(
            cls.__name__,
            (cls,),
            {"__call__": __call__, "__module__": cls.__module__, "__qualname__": cls.__qualname__},
        )
        _NNX_SUBCLASSES[cls] = sub
    return sub


@contextlib.contextmanager
def nnx_activations(roots: Sequence[Any]) -> Iterator[None]:
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
