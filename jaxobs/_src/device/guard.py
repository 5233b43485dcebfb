"""The on-device health guard: pure functions over a `GuardState` that the observed
step threads through `jit`, configured by a frozen `GuardConfig`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

from jaxobs._src.device.validate import (
    NON_NEGATIVE,
    POSITIVE_INT,
    POSITIVE_NUMBER,
    Requirement,
    check_settings,
)

__all__ = [
    "GUARD_SETTINGS",
    "GuardConfig",
    "GuardState",
    "check_guard_settings",
    "guard_init",
    "guard_update",
    "robust_z",
]

_MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation

# What each guard setting must be (shared with `HealthChecker`, which takes them too).
GUARD_SETTINGS: dict[str, Requirement] = {
    "window": POSITIVE_INT,
    "min_steps": POSITIVE_INT,
    "dead_window": POSITIVE_INT,
    "spike_z": POSITIVE_NUMBER,
    "blowup_factor": POSITIVE_NUMBER,
    "norm_blowup_factor": POSITIVE_NUMBER,
    "mad_floor": NON_NEGATIVE,
}


def check_guard_settings(owner: str, settings: Any) -> None:
    """Check the guard's settings on ``settings`` (a `GuardConfig`, a `HealthChecker`).

    Raises:
      ValueError: Naming ``owner`` and the first bad setting.
    """
    check_settings(owner, settings, GUARD_SETTINGS)
    if settings.min_steps > settings.window:
        raise ValueError(
            f"{owner}(min_steps={settings.min_steps}) exceeds window={settings.window}: "
            "spikes are judged against the window, so it must hold min_steps steps"
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class GuardConfig:
    """What the on-device guard needs to know: all that `jit` sees of a `HealthChecker`
    (``checker.guard_config``). Frozen and hashable.

    Attributes:
      window: Accepted steps in the spike baseline (median/MAD).
      min_steps: Accepted steps before spikes are judged; before that, the early blow-up
        rule compares with the first step.
      spike_z: Robust z-score above which a step is a spike.
      mad_floor: Smallest scale (in log units) of the z-score's denominator.
      blowup_factor: Early blow-up: loss above this multiple of its first value.
      norm_blowup_factor: Early blow-up: gradient norm above this multiple of its first
        value.
      dead_window: Batches over which "never active" is accumulated (dead units).
    """

    window: int = 128
    min_steps: int = 32
    spike_z: float = 6.0
    mad_floor: float = 0.01
    blowup_factor: float = 10.0
    norm_blowup_factor: float = 1000.0
    dead_window: int = 100

    def __post_init__(self) -> None:
        check_guard_settings("GuardConfig", self)

    @classmethod
    def of(cls, settings: Any) -> GuardConfig:
        """``settings`` itself when it is a `GuardConfig`, else the config made of its
        attributes of the same names (a `HealthChecker`, say)."""
        if isinstance(settings, cls):
            return settings
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if not hasattr(settings, n)]
        if missing:
            raise TypeError(
                f"the guard's settings must be a GuardConfig (or a HealthChecker); "
                f"{type(settings).__name__} has no {', '.join(missing)}"
            )
        return cls(**{n: getattr(settings, n) for n in names})


class GuardState(NamedTuple):
    """What the on-device guard carries from step to step (a pytree; checkpoint it with
    your train state: ``train_step.guard_state``).

    ``loss_window`` and ``norm_window`` hold the logs of the last accepted, finite values
    (a ring: entry ``count % window``); ``loss0`` and ``norm0`` the first accepted ones;
    ``alive`` the per-unit "was ever active" masks of the current dead-unit window and
    ``alive_batches`` how many batches it has seen. ``alive`` is a dict, so once it has been
    through `jit` its keys come back sorted: the layers' forward order is that of the
    ``alive`` masks given to `guard_update`, never that of this state.
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


def guard_init(config: GuardConfig, alive: Mapping[str, Any] | None = None) -> GuardState:
    """A fresh `GuardState`.

    Args:
      config: The guard's settings: a `GuardConfig`, or any object with its attributes (a
        `HealthChecker`).
      alive: Per layer, an array (or shape struct) of the dead-unit mask's shape.
    """
    import jax.numpy as jnp

    w = GuardConfig.of(config).window
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
    config: GuardConfig,
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
      config: The guard's settings: a `GuardConfig`, or any object with its attributes (a
        `HealthChecker`).
      state: The state from the previous step.
      loss: This step's loss (a scalar), if known.
      norm: This step's global gradient norm (or update norm), if known.
      params_finite: Whether every new parameter is finite (a boolean scalar), if known.
      alive: Per layer, this batch's "unit was active" masks (dead-unit tracking), in the
        network's forward order: the ``health/dead/<layer>`` values follow this order (the
        dead-unit rule leaves out the last one, the output layer). It must have a mask
        for every layer of ``state.alive``.
      active: Whether ``alive`` holds this step's masks (statistics steps under every=N).
      norm_name: ``grad_norm``, or ``update_norm`` when ``norm`` is the update's norm.

    Returns:
      ``bad`` (a boolean scalar), the new state, and the ``health/*`` values to record.

    Raises:
      ValueError: When ``alive`` lacks a layer that ``state.alive`` tracks.
    """
    import jax.numpy as jnp

    cfg = GuardConfig.of(config)
    f32 = jnp.float32
    false = jnp.asarray(False)
    have_base = state.count >= cfg.min_steps
    values: dict[str, Any] = {}

    def signal(x, window, first, name, factor):
        if x is None:
            return false, false, false, window, first
        x = jnp.asarray(x, f32)
        nonfinite = ~jnp.isfinite(x)
        logx = jnp.log(jnp.maximum(x, f32(1e-30)))
        z = jnp.where(have_base, robust_z(window, state.count, logx, cfg.mad_floor), 0.0)
        spike = have_base & (z > cfg.spike_z)
        # (a ratio to the first value means something only for positive signals)
        blowup = (~have_base) & (state.count > 0) & (first > 0) & (x > factor * first)
        values[f"health/{name}"] = x
        values[f"health/{name}_z"] = z
        return nonfinite, spike, blowup, window, jnp.where(state.count == 0, x, first)

    nf_loss, spike_l, blow_l, lwin, loss0 = signal(
        loss, state.loss_window, state.loss0, "loss", cfg.blowup_factor
    )
    nf_norm, spike_n, blow_n, nwin, norm0 = signal(
        norm, state.norm_window, state.norm0, norm_name, cfg.norm_blowup_factor
    )
    nf_params = false if params_finite is None else ~jnp.asarray(params_finite)
    nonfinite = nf_loss | nf_norm | nf_params
    spike = spike_l | spike_n
    blowup = blow_l | blow_n
    bad = nonfinite | spike | blowup
    accept = ~bad
    pos = state.count % cfg.window
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
        merged, batches = _track_alive(cfg, state, alive, active)
        new = new._replace(alive=merged, alive_batches=batches)
        values["health/dead_batches"] = batches.astype(f32)
        for k, m in merged.items():  # forward order: the dead-unit rule relies on it
            # The mean of the dead mask, not 1 - the alive one (which rounds below 0 when
            # all are alive); clipped, as XLA may divide by multiplying with 1 / size.
            values[f"health/dead/{k}"] = jnp.clip(jnp.mean((~m).astype(f32)), 0.0, 1.0)
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


def _track_alive(
    cfg: GuardConfig, state: GuardState, alive: Mapping[str, Any], active: Any
) -> tuple[dict[str, Any], Any]:
    """The dead-unit window after this batch: ``(masks, batches)``, the masks in the order
    of ``alive`` (forward order), not of ``state.alive`` (sorted by jit); layers the state
    does not track (an abstract probe's) are left out."""
    import jax.numpy as jnp

    missing = sorted(set(state.alive) - set(alive))
    if missing:
        raise ValueError(
            f"guard_update: no alive mask for {missing}, which the state tracks: make "
            "the state with guard_init(config, alive) for the same layers"
        )
    # A window ends after `dead_window` batches: report it, then start afresh.
    restart = state.alive_batches >= cfg.dead_window
    merged = {
        k: jnp.where(restart, False, state.alive[k]) | (active & alive[k])
        for k in alive
        if k in state.alive
    }
    batches = jnp.where(restart, 0, state.alive_batches) + jnp.asarray(active, jnp.int32)
    return merged, batches
