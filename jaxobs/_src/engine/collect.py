"""What one trace of an observed step gathers, and `tap`."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxobs._src.device.histogram import tree_histograms
from jaxobs._src.device.stats import tree_stats
from jaxobs._src.engine.step_shapes import pure_dict

logger = logging.getLogger("jaxobs")


@dataclasses.dataclass
class Collector:
    """What one trace of an observed step gathers: reduced statistics by key."""

    stats: tuple[str, ...]
    per: str
    act_stats: tuple[str, ...]
    active: Any  # compute statistics at this step: a bool (host sampling), or traced
    watch: frozenset = frozenset(("grads", "taps", "acts"))
    scalars: set = dataclasses.field(default_factory=set)  # delivered at every step
    values: dict[str, jax.Array] = dataclasses.field(default_factory=dict)
    track_alive: bool = False  # per-unit "was active" masks for the dead-unit window
    alive: dict[str, jax.Array] = dataclasses.field(default_factory=dict)
    raw: dict[str, Any] = dataclasses.field(default_factory=dict)  # tapped trees (the guard)
    hist_bins: int = 0  # histograms of watched trees (0: none) ...
    hist_active: Any = False  # ... at this step (a bool, or traced)
    hists: dict[str, jax.Array] = dataclasses.field(default_factory=dict)
    # the bound on |pre-activation| of saturation_frac: every layer's, {layer: bound}, or off
    saturation: float | dict[str, float] | None = None

    def add(self, key: str, value: Any) -> None:
        self.values.setdefault(key, value)  # the first value of a key wins (e.g. train fwd)

    def gated(
        self, compute: Callable[[], dict[str, jax.Array]], active: Any = None
    ) -> dict[str, jax.Array]:
        """``compute()`` at active steps (``active``, default: the statistics steps).

        A Python bool (the host chose the program) computes or leaves out the values; a
        traced one (the callbacks transport) gives zeros at inactive steps, behind
        `lax.cond`, without paying for them.
        """
        active = self.active if active is None else active
        if active is True:
            return compute()
        if active is False:
            return {}
        shapes = jax.eval_shape(compute)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        return lax.cond(active, compute, lambda: zeros)

    def add_histograms(self, tree: Any, prefix: str) -> None:
        """Histograms of ``tree``'s leaves, computed only at histogram steps. ``tree`` may be
        a function that returns the tree: it is then called only at those steps."""
        if not self.hist_bins:
            return

        def compute():
            return tree_histograms(
                tree() if callable(tree) else tree, self.hist_bins, prefix=prefix
            )

        values = self.gated(compute, self.hist_active)
        for key, value in values.items():
            self.hists.setdefault(key, value)


_state = threading.local()


def current_collector() -> Collector | None:
    stack = getattr(_state, "stack", None)
    return stack[-1] if stack else None


@contextlib.contextmanager
def collecting(collector: Collector) -> Iterator[Collector]:
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    stack.append(collector)
    try:
        yield collector
    finally:
        stack.pop()


def is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float)) or (hasattr(value, "shape") and value.shape == ())


def _reduce(collector: Collector, tree: Any, name: str) -> dict[str, jax.Array]:
    return tree_stats(
        settled(tree),
        collector.stats,
        per=collector.per,
        prefix=name,
        with_global_norm=True,
        masked=masked(collector.stats),
    )


def masked(stats: tuple[str, ...]) -> bool:
    """Whether observe reduces with the masked route for non-finite leaves: for every set of
    statistics but the norms alone, whose `lax.cond` would cost more than the reductions."""
    return set(stats) != {"norm"}


def settled(tree: Any) -> Any:
    """``tree`` behind an optimization barrier: its statistics read the finished tree.

    Without it XLA fuses each reduction with the ops that produce the tree and computes
    them again inside it: on CPU the global norm of an MLP's gradients cost 15 % of the step
    fused, 2 % behind the barrier (bench/hlo.py). The barrier copies nothing: the step
    materialises these trees anyway (the optimizer reads the gradients).
    """
    return lax.optimization_barrier(tree)


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
    collector = current_collector()
    if collector is None:
        warn_once(
            "tap-outside",
            "jaxobs.tap() outside a step decorated with @jaxobs.observe records nothing",
        )
        return
    for name, value in named.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"tap names must be non-empty strings, got {name!r}")
        # The health guard reads tapped gradients and scalars whatever is watched.
        collector.raw.setdefault(name, value if is_scalar(value) else pure_dict(value))
        if ("grads" if name == "grads" else "taps") not in collector.watch:
            continue
        if is_scalar(value):
            collector.add(name, jnp.asarray(value, jnp.float32))
            collector.scalars.add(name)
        else:
            value = pure_dict(value)  # an nnx.State: paths like its parameters' (no "/value")
            if name == "grads":
                collector.add_histograms(value, name)
            reduced = collector.gated(functools.partial(_reduce, collector, value, name))
            for key, v in reduced.items():
                collector.add(key, v)


# Process-wide: a warning is about the process's setup (no run, no matplotlib), said once.
_warned: set[str] = set()
_warned_lock = threading.Lock()


def warn_once(key: str, message: str) -> None:
    """Log ``message`` as a jaxobs warning, once per process for each ``key``."""
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    logger.warning("jaxobs: %s", message)


def reset_warnings() -> None:
    """Forget which warnings `warn_once` gave, so they are given again (for tests)."""
    with _warned_lock:
        _warned.clear()
