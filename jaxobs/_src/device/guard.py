"""The on-device health guard: pure functions over a `GuardState` that the observed
step threads through `jit`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from jaxobs._src.host.checker import HealthChecker

_MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation


class GuardState(NamedTuple):
    """What the on-device guard carries from step to step (a pytree; checkpoint it with
    your train state: ``train_step.guard_state``).

    ``loss_window`` and ``norm_window`` hold the logs of the last accepted, finite values
    (a ring: entry ``count % window``); ``loss0`` and ``norm0`` the first accepted ones;
    ``alive`` the per-unit "was ever active" masks of the current dead-unit window and
    ``alive_batches`` how many batches it has seen.
    """

    loss_window: Any
    norm_window: Any
    count: Any
    loss0: Any
    norm0: Any
    alive: Any
    alive_batches: Any


def robust_z(window: Any, count: Any, x: Any, floor: float = 0.0) -> Any:
    """One-sided robust z-score of ``x`` against the first ``min(count, len(window))``
    entries of ``window``: ``(x - median) / max(1.4826 * MAD, floor)``.

    Pure and jittable; ``count`` may be traced. Zero when the window is empty.
    """
    import jax.numpy as jnp

    size = window.shape[0]
    n = jnp.minimum(count, size)
    valid = jnp.arange(size) < n
    lo, hi = jnp.maximum((n - 1) // 2, 0), jnp.minimum(n // 2, size - 1)

    def median(v):
        s = jnp.sort(jnp.where(valid, v, jnp.inf))
        return (s[lo] + s[hi]) / 2

    med = median(window)
    mad = median(jnp.abs(window - med))
    scale = jnp.maximum(_MAD_TO_SIGMA * mad, jnp.float32(floor))
    z = jnp.where(scale > 0, (x - med) / jnp.where(scale > 0, scale, 1.0), 0.0)
    return jnp.where(n > 0, z, 0.0)


def guard_init(checker: HealthChecker, alive: Mapping[str, Any] | None = None) -> GuardState:
    """A fresh `GuardState` for ``checker`` (``alive``: the dead-unit masks' shapes)."""
    import jax.numpy as jnp

    w = checker.window
    return GuardState(
        loss_window=jnp.zeros((w,), jnp.float32),
        norm_window=jnp.zeros((w,), jnp.float32),
        count=jnp.int32(0),
        loss0=jnp.float32(jnp.nan),
        norm0=jnp.float32(jnp.nan),
        alive={k: jnp.zeros(v.shape, bool) for k, v in (alive or {}).items()},
        alive_batches=jnp.int32(0),
    )


def guard_update(
    checker: HealthChecker,
    state: GuardState,
    *,
    loss: Any = None,
    norm: Any = None,
    params_finite: Any = None,
    alive: Mapping[str, Any] | None = None,
    active: Any = True,
    norm_name: str = "grad_norm",
) -> tuple[Any, GuardState, dict[str, Any]]:
    """One step of the guard: ``(bad, new_state, values)``. Pure; runs under jit.

    Args:
      checker: The settings.
      state: The state from the previous step.
      loss: This step's loss (a scalar), if known.
      norm: This step's global gradient norm (or update norm), if known.
      params_finite: Whether every new parameter is finite (a boolean scalar), if known.
      alive: Per layer, this batch's "unit was active" masks (dead-unit tracking).
      active: Whether ``alive`` holds this step's masks (statistics steps under every=N).
      norm_name: ``grad_norm``, or ``update_norm`` when ``norm`` is the update's norm.

    Returns:
      ``bad`` (a boolean scalar), the new state, and the ``health/*`` values to record.
    """
    import jax.numpy as jnp

    f32 = jnp.float32
    false = jnp.asarray(False)
    have_base = state.count >= checker.min_steps
    values: dict[str, Any] = {}

    def signal(x, window, first, name, factor):
        if x is None:
            return false, false, false, window, first
        x = jnp.asarray(x, f32)
        nonfinite = ~jnp.isfinite(x)
        logx = jnp.log(jnp.maximum(x, f32(1e-30)))
        z = jnp.where(have_base, robust_z(window, state.count, logx, checker.mad_floor), 0.0)
        spike = have_base & (z > checker.spike_z)
        # (a ratio to the first value means something only for positive signals)
        blowup = (~have_base) & (state.count > 0) & (first > 0) & (x > factor * first)
        values[f"health/{name}"] = x
        values[f"health/{name}_z"] = z
        return nonfinite, spike, blowup, window, jnp.where(state.count == 0, x, first)

    nf_loss, spike_l, blow_l, lwin, loss0 = signal(
        loss, state.loss_window, state.loss0, "loss", checker.blowup_factor
    )
    nf_norm, spike_n, blow_n, nwin, norm0 = signal(
        norm, state.norm_window, state.norm0, norm_name, checker.norm_blowup_factor
    )
    nf_params = false if params_finite is None else ~jnp.asarray(params_finite)
    nonfinite = nf_loss | nf_norm | nf_params
    spike = spike_l | spike_n
    blowup = blow_l | blow_n
    bad = nonfinite | spike | blowup
    accept = ~bad
    pos = state.count % checker.window
    if loss is not None:
        logl = jnp.log(jnp.maximum(jnp.asarray(loss, f32), f32(1e-30)))
        lwin = jnp.where(accept, lwin.at[pos].set(logl), lwin)
    if norm is not None:
        logn = jnp.log(jnp.maximum(jnp.asarray(norm, f32), f32(1e-30)))
        nwin = jnp.where(accept, nwin.at[pos].set(logn), nwin)
    first = state.count == 0
    new = GuardState(
        loss_window=lwin,
        norm_window=nwin,
        count=state.count + accept.astype(jnp.int32),
        loss0=jnp.where(first & accept, loss0, state.loss0),
        norm0=jnp.where(first & accept, norm0, state.norm0),
        alive=state.alive,
        alive_batches=state.alive_batches,
    )
    if alive:
        # A window ends after `dead_window` batches: report it, then start afresh.
        restart = state.alive_batches >= checker.dead_window
        merged = {
            k: jnp.where(restart, False, state.alive[k]) | (active & alive[k]) for k in state.alive
        }
        batches = jnp.where(restart, 0, state.alive_batches) + jnp.asarray(active, jnp.int32)
        new = new._replace(alive=merged, alive_batches=batches)
        values["health/dead_batches"] = batches.astype(f32)
        for k, m in merged.items():
            values[f"health/dead/{k}"] = 1.0 - jnp.mean(m.astype(f32))
    values.update(
        {
            "health/bad": bad.astype(f32),
            "health/nonfinite_loss": nf_loss.astype(f32),
            "health/nonfinite_grads": nf_norm.astype(f32),
            "health/nonfinite_params": nf_params.astype(f32),
            "health/spike": spike.astype(f32),
            "health/blowup": blowup.astype(f32),
        }
    )
    return bad, new, values
