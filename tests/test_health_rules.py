"""Run health: the on-device guard (`robust_z`, `guard_update`), the host rules of
`jaxobs.HealthChecker`, and the actions `jaxobs.observe` takes on bad steps.

Every expectation comes from an independent restatement: robust z-scores and guard decisions
from a float64 NumPy replay that keeps its own list of accepted values, stagnation from a
small Keras ``EarlyStopping`` loop, the generalization loss from Prechelt's formula, and
the engine's skip/halt/rollback from NumPy copies of the arrays the step returned.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import metric_table, read_events

import jaxobs
from jaxobs.crash import load_dump
from jaxobs.health import guard_init, guard_update, robust_z

MAD_TO_SIGMA = 1.4826


# ----------------------------------------------------------------------------- NumPy reference


def np_robust_z(values, x, floor=0.0) -> float:
    """(x - median) / max(1.4826 * MAD, floor) over ``values`` in float64; 0 when empty."""
    values = np.asarray(values, np.float64)
    if values.size == 0:
        return 0.0
    med = np.median(values)
    scale = max(MAD_TO_SIGMA * np.median(np.abs(values - med)), floor)
    if scale <= 0:
        return 0.0  # no spread and no floor: no score (jaxobs's convention)
    return float((x - med) / scale)


def ring_contents(window: np.ndarray, count: int) -> np.ndarray:
    """The valid entries of a ring of logged values: the first min(count, size)."""
    return window[: min(count, window.shape[0])]


@dataclasses.dataclass
class GuardReference:
    """The guard restated in NumPy: a list of accepted log values per signal."""

    window: int
    min_steps: int
    spike_z: float
    mad_floor: float
    blowup_factor: float
    norm_blowup_factor: float
    logs_loss: list = dataclasses.field(default_factory=list)
    logs_norm: list = dataclasses.field(default_factory=list)
    loss0: float | None = None
    norm0: float | None = None

    def step(self, loss: float, norm: float) -> dict[str, float]:
        n = len(self.logs_loss)
        base = n >= self.min_steps
        out = {"nonfinite": not (math.isfinite(loss) and math.isfinite(norm))}
        zs, spike, blow = {}, False, False
        for name, x, logs, first, factor in (
            ("loss", loss, self.logs_loss, self.loss0, self.blowup_factor),
            ("norm", norm, self.logs_norm, self.norm0, self.norm_blowup_factor),
        ):
            z = np_robust_z(logs[-self.window :], math.log(x), self.mad_floor) if base else 0.0
            spike |= bool(z > self.spike_z)  # NaN compares False, +inf True
            zs[name] = z
            if not base and n > 0:
                blow |= x > factor * first
        bad = out["nonfinite"] or spike or blow
        if not bad:
            if n == 0:
                self.loss0, self.norm0 = loss, norm
            self.logs_loss.append(math.log(loss))
            self.logs_norm.append(math.log(norm))
        return {**out, "spike": spike, "blowup": blow, "bad": bad, **zs}


# ----------------------------------------------------------------------------- robust_z


@pytest.mark.parametrize("transform", [lambda f: f, jax.jit], ids=["eager", "jit"])
@pytest.mark.parametrize("count", [1, 2, 3, 7, 8, 16, 31, 32, 33, 100])
def test_robust_z_matches_numpy(transform, count):
    """Full, partial (count < size) and wrapped (count > size) windows match NumPy."""
    rng = np.random.default_rng(count)
    window = rng.lognormal(0.0, 0.5, size=32).astype(np.float32)
    fn = transform(robust_z)
    for x in (-1.0, 0.3, 2.5, 40.0):
        got = float(fn(jnp.asarray(window), jnp.int32(count), jnp.float32(x)))
        ref = np_robust_z(ring_contents(window, count), x)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_robust_z_empty_window_is_zero():
    """With count 0 the score is 0 whatever x is, eager and under jit."""
    window = jnp.asarray(np.random.default_rng(0).normal(size=8), jnp.float32)
    for fn in (robust_z, jax.jit(robust_z)):
        assert float(fn(window, jnp.int32(0), jnp.float32(123.0))) == 0.0


@pytest.mark.parametrize("floor", [0.01, 0.5, 10.0])
def test_robust_z_floor(floor):
    """The scale is max(1.4826 * MAD, floor): a flat window is scored against the floor."""
    flat = jnp.full((16,), 2.0, jnp.float32)
    got = float(jax.jit(robust_z)(flat, jnp.int32(16), jnp.float32(3.0), floor))
    np.testing.assert_allclose(got, (3.0 - 2.0) / floor, rtol=1e-5)
    rng = np.random.default_rng(3)
    window = rng.normal(0.0, 0.1, size=16).astype(np.float32)
    got = float(robust_z(jnp.asarray(window), jnp.int32(12), jnp.float32(1.0), floor))
    np.testing.assert_allclose(got, np_robust_z(window[:12], 1.0, floor), rtol=1e-5)


# ----------------------------------------------------------------------------- guard_update


def _guard_runner(checker, alive_shapes=None):
    """guard_update jitted with the checker closed over."""

    @jax.jit
    def update(state, loss, norm, alive, active):
        return guard_update(
            checker,
            state,
            loss=loss,
            norm=norm,
            params_finite=jnp.isfinite(loss),
            alive=alive,
            active=active,
        )

    return guard_init(checker, alive_shapes), update


def _healthy_then_bad_sequence():
    """60 lognormal healthy steps, a 50x spike, a NaN, 40 more healthy steps, an inf."""
    rng = np.random.default_rng(42)

    def healthy(n):
        return rng.lognormal(0.0, 0.1, n) * 2.0, rng.lognormal(0.0, 0.2, n) * 5.0

    l1, n1 = healthy(60)
    l2, n2 = healthy(40)
    losses = [*l1, l1[-1] * 50.0, math.nan, *l2, math.inf]
    norms = [*n1, n1[-1], n1[-1], *n2, n2[-1]]
    # float32, as the device will see them
    return [float(np.float32(v)) for v in losses], [float(np.float32(v)) for v in norms]


def test_guard_sequence_matches_numpy_replay():
    """Bad flags, z-scores and the windows follow a NumPy replay with its own accepted list."""
    checker = jaxobs.HealthChecker(window=32, min_steps=16)
    ref = GuardReference(32, 16, checker.spike_z, checker.mad_floor, 10.0, 1000.0)
    state, update = _guard_runner(checker)
    losses, norms = _healthy_then_bad_sequence()
    bad_steps = []
    for i, (loss, norm) in enumerate(zip(losses, norms, strict=True)):
        expected = ref.step(loss, norm)
        bad, state, values = update(state, jnp.float32(loss), jnp.float32(norm), None, True)
        assert bool(bad) == expected["bad"], i
        assert float(values["health/bad"]) == float(expected["bad"])
        assert float(values["health/nonfinite_loss"]) == float(not math.isfinite(loss))
        assert float(values["health/spike"]) == float(expected["spike"]), i
        assert float(values["health/blowup"]) == float(expected["blowup"]), i
        if math.isfinite(loss):
            np.testing.assert_allclose(
                float(values["health/loss_z"]), expected["loss"], rtol=1e-4, atol=1e-3
            )
            np.testing.assert_allclose(
                float(values["health/grad_norm_z"]), expected["norm"], rtol=1e-4, atol=1e-3
            )
        if expected["bad"]:
            bad_steps.append(i)
        # The device ring holds exactly the reference's accepted values (in ring order).
        count = int(state.count)
        assert count == len(ref.logs_loss)
        kept = np.sort(ring_contents(np.asarray(state.loss_window), count))
        np.testing.assert_allclose(kept, np.sort(ref.logs_loss[-32:]), rtol=1e-6, atol=1e-6)
    assert bad_steps == [60, 61, len(losses) - 1]  # the spike, the NaN, the inf
    np.testing.assert_allclose(float(state.loss0), losses[0], rtol=0)


def test_spike_and_nan_never_enter_the_window():
    """After a spike and a NaN, z-scores equal those of a run that never saw them."""
    checker = jaxobs.HealthChecker(window=32, min_steps=16)
    losses, norms = _healthy_then_bad_sequence()
    clean_losses = losses[:60] + losses[62:-1]
    clean_norms = norms[:60] + norms[62:-1]
    state, update = _guard_runner(checker)
    for loss, norm in zip(losses[:-1], norms[:-1], strict=True):
        _, state, values = update(state, jnp.float32(loss), jnp.float32(norm), None, True)
    z_dirty = float(values["health/loss_z"])
    clean, update2 = _guard_runner(checker)
    for loss, norm in zip(clean_losses, clean_norms, strict=True):
        _, clean, values = update2(clean, jnp.float32(loss), jnp.float32(norm), None, True)
    assert float(values["health/loss_z"]) == z_dirty
    assert int(state.count) == int(clean.count) == 100
    np.testing.assert_array_equal(np.asarray(state.loss_window), np.asarray(clean.loss_window))
    np.testing.assert_array_equal(np.asarray(state.norm_window), np.asarray(clean.norm_window))


def test_early_blowup_fires_only_before_min_steps():
    """A loss or norm past its factor x the first value is bad before min_steps only."""
    # spike_z so large that only the blow-up rule can judge the big values
    checker = jaxobs.HealthChecker(window=16, min_steps=8, spike_z=1e9)
    state, update = _guard_runner(checker)
    seq = [
        (1.0, 1.0, False),  # count 0: the first values
        (11.0, 1.0, True),  # loss > 10 x loss0 (count 1 < 8)
        (9.0, 1.0, False),  # below the factor: accepted
        (1.0, 1001.0, True),  # norm > 1000 x norm0
        (1.0, 999.0, False),
        *[(1.0, 1.0, False)] * 5,  # count reaches 8
        (11.0, 1.0, False),  # the same loss, now judged by spikes only
        (1.0, 1001.0, False),
    ]
    for i, (loss, norm, blowup) in enumerate(seq):
        before = int(state.count)
        bad, state, values = update(state, jnp.float32(loss), jnp.float32(norm), None, True)
        assert float(values["health/blowup"]) == float(blowup), i
        assert bool(bad) == blowup, i
        assert int(state.count) == before + (not blowup)
    assert float(state.loss0) == 1.0 and float(state.norm0) == 1.0


def test_first_step_nan_does_not_become_the_reference():
    """A non-finite first step is rejected and the next accepted step becomes loss0."""
    checker = jaxobs.HealthChecker(window=16, min_steps=8)
    state, update = _guard_runner(checker)
    bad, state, _ = update(state, jnp.float32(jnp.nan), jnp.float32(1.0), None, True)
    assert bool(bad) and int(state.count) == 0
    bad, state, _ = update(state, jnp.float32(3.0), jnp.float32(2.0), None, True)
    assert not bool(bad)
    assert float(state.loss0) == 3.0 and float(state.norm0) == 2.0
    bad, _, values = update(state, jnp.float32(31.0), jnp.float32(2.0), None, True)
    assert bool(bad) and float(values["health/blowup"]) == 1.0


def test_params_finite_alone_makes_a_step_bad():
    """A finite loss and norm with non-finite new parameters is bad and not accepted."""
    checker = jaxobs.HealthChecker(window=16, min_steps=8)
    state = guard_init(checker)
    bad, new, values = jax.jit(
        lambda s: guard_update(checker, s, loss=1.0, norm=1.0, params_finite=jnp.asarray(False))
    )(state)
    assert bool(bad)
    assert float(values["health/nonfinite_params"]) == 1.0
    assert float(values["health/nonfinite_loss"]) == 0.0
    assert int(new.count) == 0


# ----------------------------------------------------------------------------- dead units


def test_dead_unit_fraction_matches_numpy_over_windows():
    """health/dead/<layer> is the fraction of units never active in the current window."""
    dead_window = 4
    checker = jaxobs.HealthChecker(window=16, min_steps=8, dead_window=dead_window)
    shapes = {"Dense_0": np.zeros((12,), bool), "Conv_0": np.zeros((3, 5), bool)}
    state, update = _guard_runner(checker, shapes)
    rng = np.random.default_rng(7)
    # Each unit is active with its own probability; some never are.
    probs = {k: rng.choice([0.0, 0.05, 0.3], size=v.shape) for k, v in shapes.items()}
    window_masks: dict[str, list[np.ndarray]] = {k: [] for k in shapes}
    for batch in range(3 * dead_window + 2):
        masks = {k: rng.uniform(size=p.shape) < p for k, p in probs.items()}
        if batch % dead_window == 0:  # a window is full: the next starts empty
            window_masks = {k: [] for k in shapes}
        for k in shapes:
            window_masks[k].append(masks[k])
        alive = {k: jnp.asarray(m) for k, m in masks.items()}
        _, state, values = update(state, jnp.float32(1.0), jnp.float32(1.0), alive, True)
        assert float(values["health/dead_batches"]) == len(window_masks["Dense_0"])
        for k in shapes:
            ever = np.logical_or.reduce(np.stack(window_masks[k]), axis=0)
            expected = 1.0 - ever.mean()
            np.testing.assert_allclose(float(values[f"health/dead/{k}"]), expected, rtol=1e-6)


def test_dead_unit_window_ignores_inactive_steps():
    """Masks of steps without statistics (active False) neither count nor mark units alive."""
    checker = jaxobs.HealthChecker(window=16, min_steps=8, dead_window=3)
    state, update = _guard_runner(checker, {"L": np.zeros((4,), bool)})
    steps = [
        ([True, False, False, False], True),
        ([True, True, True, True], False),  # not a statistics step: ignored
        ([False, True, False, False], True),
    ]
    for mask, active in steps:
        alive = {"L": jnp.asarray(mask)}
        _, state, values = update(state, jnp.float32(1.0), jnp.float32(1.0), alive, active)
    assert float(values["health/dead_batches"]) == 2.0
    assert float(values["health/dead/L"]) == 0.5  # units 2 and 3 never active


# ----------------------------------------------------------------------------- host rules


def _guard_values(loss=1.0, bad=False, **flags):
    """A record with the guard's keys, as the engine delivers it."""
    out = {
        "health/loss": loss,
        "health/loss_z": 0.0,
        "health/grad_norm": 1.0,
        "health/grad_norm_z": 0.0,
        "health/bad": float(bad),
        "health/nonfinite_loss": 0.0,
        "health/nonfinite_grads": 0.0,
        "health/nonfinite_params": 0.0,
        "health/spike": 0.0,
        "health/blowup": 0.0,
    }
    out.update({f"health/{k}": float(v) for k, v in flags.items()})
    return out


def _rules(alerts) -> list[tuple[str, str | None]]:
    return [(a.rule, a.layer) for a in alerts]


@pytest.mark.parametrize(
    ("num_classes", "factor", "loss", "fires"),
    [
        (10, 2.0, 2.30, False),  # ln(10) = 2.303: a healthy classifier at init
        (10, 2.0, 4.60, False),  # just under 2 ln(10) = 4.605
        (10, 2.0, 4.62, True),
        (10, 3.0, 4.62, False),  # a larger factor tolerates it
        (2, 2.0, 1.40, True),  # 2 ln(2) = 1.386
        (10, 2.0, math.nan, True),
        (None, 2.0, 100.0, False),  # no class count: no check
    ],
)
def test_init_loss_rule(num_classes, factor, loss, fires):
    """The first loss is compared with init_loss_factor * ln(num_classes), once."""
    checker = jaxobs.HealthChecker(num_classes=num_classes, init_loss_factor=factor)
    alerts = checker.check(0, {"health/loss": loss})
    assert _rules(alerts) == ([("init_loss", None)] if fires else [])
    if fires:
        assert alerts[0].severity == "danger"
        np.testing.assert_allclose(alerts[0].values["expected"], math.log(num_classes))
    assert checker.check(1, {"health/loss": 1e9}) == []  # only the first step is judged


class LayerReference:
    """Per-layer exploding/vanishing decisions restated: median of accepted log norms."""

    def __init__(self, window, min_steps, explode_factor, vanish_factor, hi=None, lo=None):
        self.window, self.min_steps = window, min_steps
        self.explode_factor, self.vanish_factor = explode_factor, vanish_factor
        self.hi, self.lo = hi, lo
        self.logs: list[float] = []
        self.firing = {"exploding_gradients": False, "vanishing_gradients": False}

    def step(self, leaf_norms, bad=False) -> list[str]:
        if bad:
            return []  # the guard's alert speaks for a bad step; nothing is learned from it
        norm = float(np.sqrt(np.sum(np.square(leaf_norms))))
        base = np.median(self.logs[-self.window :]) if len(self.logs) >= self.min_steps else None
        log_n = np.log(norm) if norm > 0 else -np.inf
        cond = {
            "exploding_gradients": (self.hi is not None and norm > self.hi)
            or (base is not None and log_n - base > np.log(self.explode_factor)),
            "vanishing_gradients": (self.lo is not None and norm < self.lo)
            or (base is not None and base - log_n > np.log(self.vanish_factor)),
        }
        fired = []
        for rule, now in cond.items():
            if now and not self.firing[rule]:
                fired.append(rule)
            self.firing[rule] = now
        if norm > 0:
            self.logs.append(log_n)
        return fired


def test_relative_exploding_and_vanishing_per_layer():
    """A layer far above/below the median of its accepted log norms fires, once per episode."""
    checker = jaxobs.HealthChecker(window=8, min_steps=5, explode_factor=100.0, vanish_factor=1e3)
    rng = np.random.default_rng(0)
    layers = {
        "Dense_0": LayerReference(8, 5, 100.0, 1e3),
        "Block/Dense_1": LayerReference(8, 5, 100.0, 1e3),
    }
    # scale per step for Dense_0; Block/Dense_1 stays healthy
    scales = [1, 1, 1, 1e4, 1, 1, 1, 300, 500, 1, 300, 1e-4, 1e-5, 1, 1, 1e-4]
    bad_at = {7}  # the guard rejected step 7: not judged, and kept out of the baseline
    fired_steps = []
    for step, scale in enumerate(scales):
        leaves = {
            "Dense_0": rng.uniform(0.5, 1.5, size=2) * scale,
            "Block/Dense_1": rng.uniform(0.5, 1.5, size=2),
        }
        values = {"health/bad": float(step in bad_at)}
        for layer, (k, b) in leaves.items():
            values[f"grads/{layer}/kernel/norm"] = float(k)
            values[f"grads/{layer}/bias/norm"] = float(b)
        got = sorted(
            (a.rule, a.layer) for a in checker.check(step, values) if "gradients" in a.rule
        )
        expected = sorted(
            (rule, layer)
            for layer, ref in layers.items()
            for rule in ref.step(leaves[layer], bad=step in bad_at)
        )
        assert got == expected, step
        fired_steps += [(step, rule) for rule, _ in got]
    # Step 3 is before min_steps (no baseline): no alert, but later ones do fire.
    assert (3, "exploding_gradients") not in fired_steps
    assert (7, "exploding_gradients") not in fired_steps  # a bad step
    assert (8, "exploding_gradients") in fired_steps
    assert (10, "exploding_gradients") in fired_steps  # re-armed at step 9
    assert len(layers["Dense_0"].logs) == len(scales) - 1  # the reference kept step 7 out
    assert (11, "vanishing_gradients") in fired_steps
    assert (12, "vanishing_gradients") not in fired_steps
    assert (15, "vanishing_gradients") in fired_steps


def test_absolute_gradient_thresholds():
    """gradient_explode_thresh / gradient_vanish_thresh judge the layer norm from step 0."""
    checker = jaxobs.HealthChecker(gradient_explode_thresh=10.0, gradient_vanish_thresh=1e-3)
    seq = [(3.0, 4.0), (6.0, 8.0), (6.0, 8.1), (6.0, 8.1), (1e-4, 1e-4), (1.0, 0.0)]
    expected = [[], [], ["exploding_gradients"], [], ["vanishing_gradients"], []]
    for step, (k, b) in enumerate(seq):
        values = {"grads/D/kernel/norm": k, "grads/D/bias/norm": b}
        alerts = checker.check(step, values)
        assert [a.rule for a in alerts] == expected[step], step  # |(6, 8)| = 10 is not > 10
        assert all(a.layer == "D" for a in alerts)


def test_absolute_thresholds_are_off_by_default():
    """Without thresholds and before min_steps, huge or tiny norms raise nothing."""
    checker = jaxobs.HealthChecker()
    for step, norm in enumerate([1e6, 1e-12, 1e9]):
        assert checker.check(step, {"grads/D/kernel/norm": norm}) == []


def test_update_ratio_persistence():
    """update_ratio fires after ratio_patience consecutive values above the max, once."""
    checker = jaxobs.HealthChecker(update_ratio_max=0.1, ratio_patience=3)
    ratios = [0.2, 0.2, 0.2, 0.3, 0.05, 0.2, 0.2, 0.2, 0.2]
    fired = []
    for step, r in enumerate(ratios):
        alerts = checker.check(step, {"updates/Dense_0/update_ratio": r})
        fired += [(step, a.rule, a.layer) for a in alerts]
    # Reference: last 3 values all above 0.1, rising edges only.
    high = [i >= 2 and min(ratios[i - 2 : i + 1]) > 0.1 for i in range(len(ratios))]
    edges = [i for i, h in enumerate(high) if h and not (i and high[i - 1])]
    assert (
        fired
        == [(i, "update_ratio", "Dense_0") for i in edges]
        == [
            (2, "update_ratio", "Dense_0"),
            (7, "update_ratio", "Dense_0"),
        ]
    )


def test_saturation_mean_over_patience():
    """saturation fires when the mean saturation_frac over ratio_patience steps is high."""
    checker = jaxobs.HealthChecker(saturation_pct=50.0, ratio_patience=3)
    fracs = [0.9, 0.9, 0.0, 0.9, 0.9, 0.9]
    fired = []
    for step, f in enumerate(fracs):
        fired += [s.step for s in checker.check(step, {"acts/L/saturation_frac": f})]
    means = [np.mean(fracs[i - 2 : i + 1]) if i >= 2 else 0.0 for i in range(len(fracs))]
    high = [m * 100 > 50.0 for m in means]
    edges = [i for i, h in enumerate(high) if h and not (i and high[i - 1])]
    assert fired == edges == [2]


def _dead_values(batches, fracs):
    return {"health/dead_batches": float(batches)} | {
        f"health/dead/{k}": v for k, v in fracs.items()
    }


def test_dead_units_at_window_end_excluding_the_output_layer():
    """dead_units judges each window's end; the last probed layer is the output: skipped."""
    checker = jaxobs.HealthChecker(dead_window=4, dead_neuron_pct=30.0)
    fracs = {"Dense_0": 0.5, "Dense_1": 0.2, "Dense_2": 0.9}
    assert checker.check(0, _dead_values(3, fracs)) == []  # the window is not full
    alerts = checker.check(1, _dead_values(4, fracs))
    assert _rules(alerts) == [("dead_units", "Dense_0")]
    assert alerts[0].values["dead_frac"] == 0.5
    assert checker.check(5, _dead_values(4, fracs)) == []  # still dead: same episode
    assert checker.check(9, _dead_values(4, fracs | {"Dense_0": 0.1})) == []  # cleared
    assert _rules(checker.check(13, _dead_values(4, fracs))) == [("dead_units", "Dense_0")]


def test_dead_units_honor_dead_layers():
    """dead_layers picks the layers checked, the last one included."""
    checker = jaxobs.HealthChecker(
        dead_window=4, dead_neuron_pct=30.0, dead_layers=("Dense_2", "Dense_1")
    )
    fracs = {"Dense_0": 0.5, "Dense_1": 0.31, "Dense_2": 0.9}
    got = sorted(_rules(checker.check(3, _dead_values(4, fracs))))
    assert got == [("dead_units", "Dense_1"), ("dead_units", "Dense_2")]


def keras_early_stopping(values, patience, min_delta) -> list[int]:
    """Indices where Keras EarlyStopping (mode="min") would stop, re-armed after each stop.

    Restated from keras.callbacks.EarlyStopping: an improvement is ``current < best -
    min_delta`` and only an improvement moves ``best``; ``wait`` counts checks since the
    last improvement and training stops when it reaches ``patience``.
    """
    best, wait, stops = None, 0, []
    for i, current in enumerate(values):
        if best is None or current < best - min_delta:
            best, wait = current, 0
            continue
        wait += 1
        if wait >= patience:
            stops.append(i)
            wait = 0
    return stops


def _stagnation_steps(checker, values) -> list[int]:
    out = []
    for i, v in enumerate(values):
        out += [i for a in checker.check(i, {"val/loss": v}) if a.rule == "stagnation"]
    return out


@pytest.mark.parametrize(
    "values",
    [
        [1.0, 0.9, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8],  # a flat plateau
        [1.0, 0.5, 0.6, 0.7, 0.55, 0.8, 0.4, 0.45, 0.5, 0.6, 0.41, 0.9, 0.35],  # noisy, above best
        [1.0, 0.9, 0.85, 0.7, 0.7, 0.71, 0.72, 0.73, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6],
    ],
)
def test_stagnation_matches_keras_early_stopping(values):
    """Stagnation alerts land where a Keras EarlyStopping loop stops (plateaus, noise)."""
    checker = jaxobs.HealthChecker(patience=3, stagnation_eps=0.05, generalization_loss=1e9)
    assert _stagnation_steps(checker, values) == keras_early_stopping(values, 3, 0.05)


def test_stagnation_slow_steady_improvement_matches_keras():
    """A loss falling 0.03 a check (min_delta 0.05) stagnates only where Keras says."""
    # Each check improves by 0.03 < min_delta, but two checks by 0.06 > min_delta: Keras's
    # best moves every second check and it never stops; jaxobs moves its best every check.
    values = [1.0 - 0.03 * i for i in range(12)]
    checker = jaxobs.HealthChecker(patience=3, stagnation_eps=0.05, generalization_loss=1e9)
    assert _stagnation_steps(checker, values) == keras_early_stopping(values, 3, 0.05)


def test_stagnation_ignores_steps_without_validation():
    """Records without val/loss (training steps) are not checks."""
    checker = jaxobs.HealthChecker(patience=2, stagnation_eps=0.0)
    fired = []
    for step in range(40):
        values = {"train/loss": 1.0}
        if step % 5 == 0:
            values["val/loss"] = 1.0
        fired += [step for a in checker.check(step, values) if a.rule == "stagnation"]
    checks = keras_early_stopping([1.0] * 8, 2, 0.0)
    assert fired == [5 * i for i in checks] == [10, 20, 30]


def test_generalization_loss_matches_prechelt():
    """Overfitting fires on rises of Prechelt's GL = 100 (val / best - 1) past the threshold."""
    val = np.array([1.0, 0.8, 0.7, 0.72, 0.74, 0.76, 0.7, 0.69, 0.8, 0.81, 0.6, 0.64])
    checker = jaxobs.HealthChecker(generalization_loss=5.0, overfit_patience=1, patience=100)
    got = []
    for i, v in enumerate(val):
        for a in checker.check(i, {"val/loss": float(v)}):
            assert a.rule == "overfitting"
            got.append((i, a.values["generalization_loss"]))
    gl = 100.0 * (val / np.minimum.accumulate(val) - 1.0)
    high = gl > 5.0
    edges = [i for i in range(len(val)) if high[i] and not (i and high[i - 1])]
    assert [i for i, _ in got] == edges == [4, 8, 11]
    np.testing.assert_allclose([g for _, g in got], gl[edges], rtol=1e-12)


def test_generalization_loss_needs_overfit_patience_checks():
    """With overfit_patience=3, GL must exceed the threshold at 3 checks in a row."""
    val = np.array([1.0, 0.9, 1.0, 1.0, 0.9, 1.0, 1.0, 1.0, 1.0, 0.8, 0.9, 0.9, 0.9, 0.9])
    checker = jaxobs.HealthChecker(generalization_loss=5.0, overfit_patience=3, patience=100)
    got = [i for i, v in enumerate(val) for _ in checker.check(i, {"val/loss": float(v)})]
    gl = 100.0 * (val / np.minimum.accumulate(val) - 1.0)
    run, held = 0, []
    for g in gl:
        run = run + 1 if g > 5.0 else 0
        held.append(run >= 3)
    edges = [i for i in range(len(val)) if held[i] and not (i and held[i - 1])]
    assert got == edges == [7, 12]


def test_severities_override_a_rules_severity():
    """severities={rule: severity} reports that rule with the given severity."""
    checker = jaxobs.HealthChecker(patience=1, severities={"stagnation": "warning"})
    checker.check(0, {"val/loss": 1.0})
    alerts = checker.check(1, {"val/loss": 1.0})
    assert [(a.rule, a.severity) for a in alerts] == [("stagnation", "warning")]
    assert [(a.rule, a.severity) for a in checker.alerts] == [("stagnation", "warning")]


def test_overfit_ratio_off_by_default_and_on_when_given():
    """val / mean train loss since the last check: silent by default, on with overfit_ratio."""
    train = [0.1, 0.12, 0.14, 0.3, 0.3, 0.3]
    val = {2: 0.5, 5: 0.5}
    default = jaxobs.HealthChecker(patience=100)
    given = jaxobs.HealthChecker(patience=100, overfit_ratio=2.0)
    got_default, got_given = [], []
    for step, t in enumerate(train):
        values = {"train/loss": t} | ({"val/loss": val[step]} if step in val else {})
        got_default += [a.rule for a in default.check(step, values)]
        got_given += [
            (step, a.values["ratio"])
            for a in given.check(step, values)
            if a.rule == "overfit_ratio"
        ]
    assert "overfit_ratio" not in got_default
    ratio_2 = 0.5 / np.mean(train[0:3])  # 0.5 / 0.12 = 4.17 > 2: fires
    ratio_5 = 0.5 / np.mean(train[3:6])  # 0.5 / 0.3 = 1.67: clears
    assert ratio_2 > 2.0 > ratio_5
    assert [s for s, _ in got_given] == [2]
    np.testing.assert_allclose(got_given[0][1], ratio_2, rtol=1e-12)


def test_seed_argument_names_are_accepted():
    """All six seed-000 SmartHealthChecker argument names are accepted and kept."""
    seed = {
        "patience": 7,
        "overfit_ratio": 1.5,
        "stagnation_eps": 0.001,
        "gradient_vanish_thresh": 1e-7,
        "gradient_explode_thresh": 1e3,
        "dead_neuron_pct": 40.0,
    }
    checker = jaxobs.HealthChecker(**seed)
    settings = checker.settings()
    for name, value in seed.items():
        assert getattr(checker, name) == value
        assert settings[name] == value


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"action": "explode"}, "action"),
        ({"window": 0}, "window"),
        ({"window": 2.5}, "window"),
        ({"min_steps": True}, "min_steps"),
        ({"min_steps": 200, "window": 100}, "min_steps"),
        ({"patience": 0}, "patience"),
        ({"dead_window": -1}, "dead_window"),
        ({"ratio_patience": 0}, "ratio_patience"),
        ({"max_skips": 0}, "max_skips"),
        ({"rollback_after": 0}, "rollback_after"),
        ({"max_rollbacks": 0}, "max_rollbacks"),
        ({"spike_z": 0.0}, "spike_z"),
        ({"blowup_factor": -1.0}, "blowup_factor"),
        ({"norm_blowup_factor": math.nan}, "norm_blowup_factor"),
        ({"init_loss_factor": 0}, "init_loss_factor"),
        ({"explode_factor": "big"}, "explode_factor"),
        ({"vanish_factor": 0.0}, "vanish_factor"),
        ({"update_ratio_max": -0.1}, "update_ratio_max"),
        ({"dead_neuron_pct": 150.0}, "dead_neuron_pct"),
        ({"saturation_pct": -1.0}, "saturation_pct"),
        ({"num_classes": 1}, "num_classes"),
        ({"num_classes": 2.0}, "num_classes"),
        ({"snapshot_every": 0}, "snapshot_every"),
        ({"overfit_patience": 0}, "overfit_patience"),
        ({"severities": {"spike": "loud"}}, "severities"),
        ({"action": "rollback", "snapshot_every": -5}, "snapshot_every"),
    ],
)
def test_bad_arguments_raise_naming_them(kwargs, name):
    """A bad argument raises ValueError whose message names it."""
    with pytest.raises(ValueError, match=name):
        jaxobs.HealthChecker(**kwargs)


@pytest.mark.parametrize(
    "name",
    [
        "mad_floor",
        "generalization_loss",
        "overfit_ratio",
        "gradient_explode_thresh",
        "gradient_vanish_thresh",
        "rollback_skip_batches",
    ],
)
def test_negative_settings_raise_naming_them(name):
    """A negative floor, threshold, ratio or batch count raises ValueError naming it."""
    with pytest.raises(ValueError, match=name):
        jaxobs.HealthChecker(**{name: -1})


def test_rollback_defaults_snapshot_every():
    """action='rollback' snapshots every 100 steps unless told; other actions do not."""
    assert jaxobs.HealthChecker(action="rollback").snapshot_every == 100
    assert jaxobs.HealthChecker(action="skip").snapshot_every is None
    assert jaxobs.HealthChecker(action="rollback", snapshot_every=5).snapshot_every == 5


def test_guard_rules_fire_once_per_episode():
    """nonfinite/spike alerts fire on a rising edge and re-arm when the step is clean."""
    checker = jaxobs.HealthChecker()
    seq = [
        _guard_values(),
        _guard_values(bad=True, nonfinite_loss=1),
        _guard_values(bad=True, nonfinite_loss=1),
        _guard_values(),
        _guard_values(bad=True, nonfinite_grads=1),
        _guard_values(bad=True, spike=1),
        _guard_values(bad=True, spike=1),
        _guard_values(),
        _guard_values(bad=True, spike=1),
    ]
    got = [(i, a.rule, a.severity) for i, v in enumerate(seq) for a in checker.check(i, v)]
    assert got == [
        (1, "nonfinite", "critical"),
        (4, "nonfinite", "critical"),
        (5, "spike", "warning"),
        (8, "spike", "warning"),
    ]
    assert [(a.step, a.rule) for a in checker.alerts] == [(s, r) for s, r, _ in got]


def test_negative_losses_are_not_blowups():
    """A negative, steadily falling loss (a Gaussian NLL, say) is healthy, not a blow-up."""
    checker = jaxobs.HealthChecker(window=16, min_steps=8)
    state, update = _guard_runner(checker)
    flags = []
    for i in range(6):
        bad, state, _ = update(state, jnp.float32(-1.0 - 0.1 * i), jnp.float32(1.0), None, True)
        flags.append(bool(bad))
    assert flags == [False] * 6


# ----------------------------------------------------------------------------- the engine

W_TRUE = np.array([[1.0], [-2.0], [0.5], [3.0]], np.float32)
OPT = optax.adam(0.05)


def _batch(rng, kind: str = "ok"):
    """A linear-regression batch of 16; ``nan``: one NaN input, ``huge``: inputs x1000."""
    x = rng.normal(size=(16, 4)).astype(np.float32)
    y = (x @ W_TRUE + 0.1 * rng.normal(size=(16, 1))).astype(np.float32)
    if kind == "nan":
        x[3, 1] = np.nan
    elif kind == "huge":
        x *= 1e3
    return x, y


def optax_step(params, opt_state, batch):
    x, y = batch

    def loss_fn(p):
        return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    jaxobs.tap(grads=grads)
    updates, opt_state = OPT.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, {"loss": loss}


def nnx_step(model, optimizer, batch):
    x, y = batch

    def loss_fn(m):
        return jnp.mean((m(x) - y) ** 2)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    jaxobs.tap(grads=grads)
    optimizer.update(model, grads)
    return {"loss": loss}


def _optax_state():
    params = {"w": jnp.zeros((4, 1), jnp.float32), "b": jnp.zeros((1,), jnp.float32)}
    return params, OPT.init(params)


def _host(tree):
    """A NumPy copy of every leaf."""
    return jax.tree.map(lambda a: np.array(a), tree)


def _tree_equal(a, b) -> bool:
    """Same structure and bit-identical leaves."""
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    return ta == tb and all(np.array_equal(x, y) for x, y in zip(la, lb, strict=True))


def _init(tmp_path):
    return jaxobs.init(project="health", dir=tmp_path, terminal=False)


def _health_events(run_dir) -> list[tuple[int, str]]:
    return [(e["step"], e["rule"]) for e in read_events(run_dir) if e["event"] == "health_check"]


@pytest.mark.parametrize(("kind", "rule"), [("nan", "nonfinite"), ("huge", "spike")])
def test_skip_keeps_optax_state_on_a_bad_batch(tmp_path, kind, rule):
    """action='skip': a bad batch leaves optax params/opt_state identical; the step counts."""
    checker = jaxobs.HealthChecker(action="skip", window=16, min_steps=4, plot=False)
    step = jaxobs.observe(optax_step, health=checker)
    params, opt_state = _optax_state()
    rng = np.random.default_rng(0)
    with _init(tmp_path) as run:
        for _ in range(6):
            params, opt_state, _ = step(params, opt_state, _batch(rng))
        before = _host((params, opt_state))
        params, opt_state, metrics = step(params, opt_state, _batch(rng, kind))
        after = _host((params, opt_state))
        bad_loss = float(np.asarray(metrics["loss"]))
        params, opt_state, _ = step(params, opt_state, _batch(rng))
        step.flush()
        guard = step.guard_state
    assert _tree_equal(before, after)
    assert not _tree_equal(after, _host((params, opt_state)))  # training goes on
    assert (math.isnan(bad_loss)) == (kind == "nan")
    alerts = _health_events(run.dir)
    assert (6, rule) in alerts
    assert {s for s, _ in alerts} == {6}  # the healthy steps raised nothing
    table = metric_table(read_events(run.dir))
    assert table["health/skipped"] == {s: float(s == 6) for s in range(8)}
    assert sorted(table["train/loss"]) == list(range(8))  # every call has its step
    assert int(guard.count) == 7  # the bad step never entered the window


def test_skip_keeps_nnx_state_and_advances_the_step(tmp_path):
    """action='skip' with an NNX step: params and optimizer state unchanged, step + 1."""
    model = nnx.Linear(4, 1, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(0.05), wrt=nnx.Param)
    step = jaxobs.observe(
        nnx_step, health=jaxobs.HealthChecker(action="skip", window=16, min_steps=4, plot=False)
    )
    rng = np.random.default_rng(1)

    def snapshot():
        return (
            _host(nnx.to_pure_dict(nnx.state(model, nnx.Param))),
            _host(nnx.to_pure_dict(nnx.state(optimizer))["opt_state"]),
            int(optimizer.step.get_value()),
        )

    with _init(tmp_path) as run:
        for _ in range(3):
            step(model, optimizer, _batch(rng))
        params0, opt0, count0 = snapshot()
        step(model, optimizer, _batch(rng, "nan"))
        params1, opt1, count1 = snapshot()
        step(model, optimizer, _batch(rng))
        params2, _, count2 = snapshot()
    assert _tree_equal(params0, params1)
    assert _tree_equal(opt0, opt1)
    assert (count0, count1, count2) == (3, 4, 5)
    assert not _tree_equal(params1, params2)
    assert _health_events(run.dir) == [(3, "nonfinite")]


def test_warn_lets_the_nan_reach_the_params(tmp_path):
    """action='warn' only alerts: the NaN batch's update lands in the parameters."""
    step = jaxobs.observe(optax_step, health=jaxobs.HealthChecker(action="warn", plot=False))
    params, opt_state = _optax_state()
    rng = np.random.default_rng(2)
    with _init(tmp_path) as run:
        params, opt_state, _ = step(params, opt_state, _batch(rng))
        params, opt_state, _ = step(params, opt_state, _batch(rng, "nan"))
        host = _host(params)
    assert np.isnan(host["w"]).any()
    assert (1, "nonfinite") in _health_events(run.dir)


def test_halt_raises_within_two_calls_and_dumps(tmp_path):
    """action='halt': TrainingHalted within 2 calls, after a 'halt' crash dump."""
    checker = jaxobs.HealthChecker(action="halt", plot=False)
    step = jaxobs.observe(optax_step, health=checker)
    params, opt_state = _optax_state()
    rng = np.random.default_rng(3)
    calls_after = 0
    with pytest.raises(jaxobs.TrainingHalted) as info, _init(tmp_path) as run:
        for _ in range(3):
            params, opt_state, _ = step(params, opt_state, _batch(rng))
        before = _host(params)
        params, opt_state, _ = step(params, opt_state, _batch(rng, "nan"))
        after = _host(params)
        for _ in range(5):
            calls_after += 1
            params, opt_state, _ = step(params, opt_state, _batch(rng))
    assert 1 <= calls_after <= 2
    assert _tree_equal(before, after)  # the bad step itself was skipped on the device
    path = run.dir / "crash" / "crash-3.json"
    assert info.value.dump_path == path
    assert info.value.alert.rule == "nonfinite" and info.value.alert.step == 3
    assert sorted(p.name for p in path.parent.glob("crash-*.json")) == ["crash-3.json"]
    dump = load_dump(path)
    assert dump.trigger["kind"] == "halt"
    assert dump.trigger["rule"] == "nonfinite"
    assert dump.step == 3
    at = list(dump.steps).index(3)
    assert dump.present["train/loss"][at] and np.isnan(dump.series["train/loss"][at])
    assert dump.thresholds["action"] == "halt"
    events = read_events(run.dir)
    assert [e["path"] for e in events if e["event"] == "crash_dump"] == [str(path)]


def test_exception_in_the_run_dumps_the_recorded_steps(tmp_path):
    """An exception in the run dumps the recorder (trigger 'exception') with the step's losses."""
    step = jaxobs.observe(optax_step, recorder=64)
    params, opt_state = _optax_state()
    rng = np.random.default_rng(4)
    losses = []
    with pytest.raises(RuntimeError, match="boom"), _init(tmp_path) as run:
        for _ in range(5):
            params, opt_state, metrics = step(params, opt_state, _batch(rng))
            losses.append(np.asarray(metrics["loss"]))
        raise RuntimeError("boom")
    path = run.dir / "crash" / "crash-4.json"
    dump = load_dump(path)
    assert path.with_suffix(".png").is_file()  # without a checker, the plot is on
    assert dump.trigger["kind"] == "exception"
    assert dump.trigger["error"] == {"type": "RuntimeError", "message": "boom"}
    np.testing.assert_array_equal(dump.steps, np.arange(5))
    np.testing.assert_array_equal(dump.series["train/loss"], np.array(losses, np.float64))
    assert dump.present["train/loss"].all()


def test_rollback_restores_the_last_good_snapshot(tmp_path):
    """action='rollback' restores the newest snapshot at or before the skip streak's start."""
    checker = jaxobs.HealthChecker(
        action="rollback",
        snapshot_every=5,
        rollback_after=2,
        rollback_skip_batches=7,
        plot=False,
    )
    step = jaxobs.observe(optax_step, health=checker)
    params, opt_state = _optax_state()
    rng = np.random.default_rng(5)
    returned = {}
    with _init(tmp_path) as run:
        for i in range(12):
            params, opt_state, _ = step(params, opt_state, _batch(rng))
            returned[i] = _host((params, opt_state))
        for _ in range(2):  # steps 12 and 13: two skips in a row
            params, opt_state, _ = step(params, opt_state, _batch(rng, "nan"))
        step.flush()  # the host has judged step 13: the rollback is due
        assert step.rollbacks == []
        # Step 14 starts from the restored state; its bad batch is skipped, so it returns
        # exactly the state it started from.
        params, opt_state, _ = step(params, opt_state, _batch(rng, "nan"))
        restored = _host((params, opt_state))
        skip_first, skip_again = step.take_batches_to_skip(), step.take_batches_to_skip()
        params, opt_state, _ = step(params, opt_state, _batch(rng))
        resumed = _host((params, opt_state))
        step.flush()
    assert len(step.rollbacks) == 1
    info = step.rollbacks[0]
    assert info["at_step"] == 14
    # Snapshots are the states before steps 5 and 10 (after calls 4 and 9); the streak
    # started at step 12, so the newest at or before it is the one after call 9.
    assert info["restored_step"] == 10
    assert info["streak_start"] == 12
    assert _tree_equal(restored, returned[9])
    assert not _tree_equal(restored, returned[11])
    assert (skip_first, skip_again) == (7, 0)
    assert np.isfinite(resumed[0]["w"]).all() and not _tree_equal(resumed, restored)
    events = read_events(run.dir)
    rollbacks = [e for e in events if e["event"] == "rollback"]
    assert [(e["restored_step"], e["streak_start"]) for e in rollbacks] == [(10, 12)]
    assert (12, "nonfinite") in _health_events(run.dir)


def test_crash_dump_checkpoint_is_the_last_good_snapshot(tmp_path):
    """A critical alert's dump saves the newest good snapshot with orbax, bit-exact."""
    import orbax.checkpoint as ocp
    from flax import serialization

    checker = jaxobs.HealthChecker(
        action="rollback", snapshot_every=5, rollback_after=3, plot=False
    )
    step = jaxobs.observe(optax_step, health=checker)
    params, opt_state = _optax_state()
    rng = np.random.default_rng(6)
    returned = {}
    with _init(tmp_path) as run:
        for i in range(12):
            params, opt_state, _ = step(params, opt_state, _batch(rng))
            returned[i] = _host((params, opt_state))
        params, opt_state, _ = step(params, opt_state, _batch(rng, "nan"))  # one skip only
        for _ in range(2):
            params, opt_state, _ = step(params, opt_state, _batch(rng))
    assert step.rollbacks == []
    dump = load_dump(run.dir / "crash" / "crash-12.json")
    assert dump.trigger["kind"] == "alert" and dump.trigger["rule"] == "nonfinite"
    assert dump.checkpoint == {"path": "crash/ckpt-10", "step": 10}
    checkpointer = ocp.StandardCheckpointer()
    state = checkpointer.restore(dump.checkpoint_path)
    checkpointer.close()
    restored = serialization.from_state_dict(returned[9], state)
    assert _tree_equal(_host(restored), returned[9])  # the state after call 9: before step 10


# ----------------------------------------------------------------------------- layer order


def _forward_order_guard(names, dead_window=2):
    """guard_update under jax.jit with the alive dict built inside the trace in ``names``
    order (as the collector records it, in forward order), returning the values in the
    order the record carries them."""
    config = jaxobs.HealthChecker(window=16, min_steps=8, dead_window=dead_window)
    order: list[str] = []

    @jax.jit
    def update(state, masks):
        alive = dict(zip(names, masks, strict=True))
        _, new, values = guard_update(config, state, loss=1.0, norm=1.0, alive=alive)
        order[:] = list(values)  # the record's key order (packing keeps it)
        return new, [values[k] for k in order]

    shapes = {name: np.zeros((4,), bool) for name in names}
    return guard_init(config, shapes), update, order


@pytest.mark.parametrize(
    "names",
    [("fc1", "fc2", "classifier"), tuple(f"Dense_{i}" for i in range(12))],
    ids=["nnx", "linen-12"],
)
def test_dead_units_skip_the_last_layer_in_forward_order(names):
    """The dead-unit rule leaves out the network's last layer, not the last sorted key."""
    state, update, order = _forward_order_guard(names)
    checker = jaxobs.HealthChecker(dead_window=2, dead_neuron_pct=10.0)
    masks = [jnp.asarray([True, False, False, False])] * len(names)  # 75% dead everywhere
    fired = []
    for step in range(2):
        state, out = update(state, masks)
        record = dict(zip(order, (float(v) for v in out), strict=True))
        fired += [a.layer for a in checker.check(step, record) if a.rule == "dead_units"]
    dead_keys = [k[len("health/dead/") :] for k in order if k.startswith("health/dead/")]
    assert dead_keys == list(names)  # the record carries the layers in forward order
    assert fired == list(names[:-1])


def test_nnx_model_dead_units_skip_the_classifier(tmp_path):
    """Probe B: an NNX fc1 -> fc2 -> classifier MLP; the classifier is the output layer."""

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.fc1 = nnx.Linear(4, 8, rngs=rngs)
            self.fc2 = nnx.Linear(8, 8, rngs=rngs)
            self.classifier = nnx.Linear(8, 3, rngs=rngs)

        def __call__(self, x):
            return self.classifier(nnx.relu(self.fc2(nnx.relu(self.fc1(x)))))

    def step_fn(model, optimizer, batch):
        x, y = batch

        def loss_fn(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        jaxobs.tap(grads=grads)
        optimizer.update(model, grads)
        return {"loss": loss}

    model = MLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.01), wrt=nnx.Param)
    checker = jaxobs.HealthChecker(dead_window=2, dead_neuron_pct=0.0, plot=False)
    step = jaxobs.observe(step_fn, health=checker, activations=True, stats=("norm",))
    rng = np.random.default_rng(0)
    with _init(tmp_path) as run:
        for _ in range(3):
            x = -np.abs(rng.normal(size=(16, 4))).astype(np.float32)
            step(model, optimizer, (x, rng.integers(0, 3, size=16)))
        step.flush()
    table = metric_table(read_events(run.dir))
    window_end = [s for s, b in table["health/dead_batches"].items() if b == 2.0]
    expected = {
        layer
        for layer in ("fc1", "fc2")
        if any(table[f"health/dead/{layer}"][s] > 0.0 for s in window_end)
    }
    got = {a.layer for a in checker.alerts if a.rule == "dead_units"}
    assert "fc2" in expected  # the probe's inputs leave units of fc2 dead
    assert got == expected  # fc2 judged, classifier not


# ----------------------------------------------------------------------------- hand-logged


@pytest.mark.parametrize("key", ["train/loss", "loss"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_hand_logged_nonfinite_loss_is_critical(key, bad):
    """A non-finite loss in a record without the guard's values raises nonfinite, once."""
    checker = jaxobs.HealthChecker()
    seq = [1.0, bad, bad, 0.9, bad]
    got = [(i, a.rule, a.severity) for i, v in enumerate(seq) for a in checker.check(i, {key: v})]
    assert got == [(1, "nonfinite", "critical"), (4, "nonfinite", "critical")]
    assert checker.alerts[0].values["skipped"] is False


def test_hand_logged_check_stays_quiet_beside_the_guard():
    """With the guard's values in the records, a hand-logged NaN loss adds no second alert."""
    checker = jaxobs.HealthChecker()
    guarded = _guard_values(bad=True, nonfinite_loss=1) | {"train/loss": math.nan}
    assert _rules(checker.check(0, guarded)) == [("nonfinite", None)]
    assert checker.check(0, {"train/loss": math.nan}) == []  # the user's own record
    assert checker.check(1, _guard_values() | {"train/loss": 1.0}) == []
    assert checker.check(1, {"train/loss": math.nan}) == []  # the guard speaks for steps


def test_hand_logged_nonfinite_loss_halts_under_halt():
    """action='halt' on hand-logged records: the non-finite alert becomes the halt."""
    checker = jaxobs.HealthChecker(action="halt")
    assert checker.check(0, {"train/loss": 1.0}) == []
    assert checker.actions.halt is None
    alerts = checker.check(1, {"train/loss": math.nan})
    assert checker.actions.halt is alerts[0] and alerts[0].rule == "nonfinite"


def test_hand_logged_validation_stagnation_and_overfitting():
    """Stagnation and overfitting judge hand-logged val/loss records, like Keras and Prechelt."""
    val = [1.0, 0.8, 0.8, 0.8, 0.9, 0.95, 0.95]
    checker = jaxobs.HealthChecker(patience=2, stagnation_eps=0.0, overfit_patience=2)
    got = []
    for i, v in enumerate(val):
        got += [(i, a.rule) for a in checker.check(i, {"train/loss": 0.5, "val/loss": v})]
    gl = 100.0 * (np.array(val) / np.minimum.accumulate(val) - 1.0)
    held = [i for i in range(1, len(val)) if gl[i] > 5.0 and gl[i - 1] > 5.0]
    expected = [(i, "stagnation") for i in keras_early_stopping(val, 2, 0.0)]
    expected += [(held[0], "overfitting")]
    assert (
        sorted(got)
        == sorted(expected)
        == [(3, "stagnation"), (5, "overfitting"), (5, "stagnation")]
    )


# ----------------------------------------------------------------------------- construction


def test_positional_arguments_are_refused():
    """HealthChecker takes keyword arguments only."""
    with pytest.raises(TypeError):
        jaxobs.HealthChecker("skip", 10)


def test_guard_config_is_what_the_guard_sees():
    """checker.guard_config is a frozen GuardConfig; the guard gives the same under either."""
    checker = jaxobs.HealthChecker(window=16, min_steps=4, spike_z=3.0, dead_window=5)
    config = checker.guard_config
    assert isinstance(config, jaxobs.health.GuardConfig)
    assert dataclasses.asdict(config) == {
        "window": 16,
        "min_steps": 4,
        "spike_z": 3.0,
        "mad_floor": checker.mad_floor,
        "blowup_factor": checker.blowup_factor,
        "norm_blowup_factor": checker.norm_blowup_factor,
        "dead_window": 5,
    }
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.window = 8
    assert hash(config) == hash(jaxobs.health.GuardConfig(**dataclasses.asdict(config)))
    losses, norms = _healthy_then_bad_sequence()
    (s1, update1), (s2, update2) = _guard_runner(config), _guard_runner(checker)
    for loss, norm in zip(losses, norms, strict=True):
        bad1, s1, v1 = update1(s1, jnp.float32(loss), jnp.float32(norm), None, True)
        bad2, s2, v2 = update2(s2, jnp.float32(loss), jnp.float32(norm), None, True)
        assert bool(bad1) == bool(bad2)
        assert list(v1) == list(v2)
        np.testing.assert_array_equal(np.array(list(v1.values())), np.array(list(v2.values())))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"window": 0}, "window"),
        ({"mad_floor": -1.0}, "mad_floor"),
        ({"min_steps": 9, "window": 8}, "min_steps"),
    ],
)
def test_guard_config_refuses_bad_settings(kwargs, name):
    """GuardConfig checks its settings like HealthChecker, naming the bad one."""
    with pytest.raises(ValueError, match=f"GuardConfig\\({name}="):
        jaxobs.health.GuardConfig(**kwargs)


def test_default_rules_run_in_order():
    """The default chain holds one object per rule, in the order the alerts come."""
    checker = jaxobs.HealthChecker()
    names = [type(rule).__name__ for rule in checker.chain]
    assert names == [
        "InitLoss",
        "GuardVerdicts",
        "LayerGradients",
        "UpdateRatio",
        "Saturation",
        "DeadUnits",
        "Stagnation",
        "Overfitting",
    ]
    assert "rules" not in checker.settings() and "chain" not in checker.settings()


def test_a_user_rule_joins_the_chain_and_shares_episodes():
    """rules=lambda c: [*default_rules(c), MyRule(...)] adds a rule that fires once per episode
    and takes the checker's severities."""
    from jaxobs.health import Alert, BaseRule, default_rules

    @dataclasses.dataclass(kw_only=True, eq=False)
    class LossAbove(BaseRule):
        fires = ("loss_above",)
        limit: float = 1.0

        def check(self, step, values):
            loss = values.get("train/loss")
            if loss is None:
                return []
            return self.fire(
                "loss_above",
                None,
                loss > self.limit,
                lambda: Alert("loss_above", "info", step, "high"),
            )

    checker = jaxobs.HealthChecker(
        severities={"loss_above": "danger"},
        rules=lambda c: [*default_rules(c), LossAbove(limit=2.0, episodes=c.episodes)],
    )
    losses = [1.0, 3.0, 4.0, 1.0, 5.0]
    got = [
        (i, a.rule, a.severity)
        for i, v in enumerate(losses)
        for a in checker.check(i, {"train/loss": v})
    ]
    assert got == [(1, "loss_above", "danger"), (4, "loss_above", "danger")]
    checker.reset()
    assert checker.alerts == [] and checker.episodes.firing == set()
    assert [a.step for a in checker.check(9, {"train/loss": 3.0})] == [9]


def test_dropping_a_rule_silences_it():
    """A chain without DeadUnits raises no dead_units alert; the other rules still run."""
    from jaxobs.health import DeadUnits, default_rules

    checker = jaxobs.HealthChecker(
        dead_window=4,
        rules=lambda c: [r for r in default_rules(c) if not isinstance(r, DeadUnits)],
    )
    values = _dead_values(4, {"Dense_0": 0.9, "Dense_1": 0.9}) | _guard_values(bad=True, spike=1)
    assert _rules(checker.check(0, values)) == [("spike", None)]


def test_a_rule_works_alone():
    """A rule object is usable without a checker: its own state and episodes."""
    from jaxobs.health import UpdateRatio

    rule = UpdateRatio(max_ratio=0.1, patience=2)
    got = [
        len(rule.check(s, {"updates/L/update_ratio": r}))
        for s, r in enumerate([0.2, 0.2, 0.3, 0.0, 0.2, 0.2])
    ]
    assert got == [0, 1, 0, 0, 0, 1]
    rule.reset()
    assert rule.history == {} and rule.check(0, {"updates/L/update_ratio": 0.2}) == []


def test_rules_must_be_rules():
    """rules= with something that is not a rule raises TypeError naming it."""
    with pytest.raises(TypeError, match="not a rule"):
        jaxobs.HealthChecker(rules=[object()])


def test_hand_logged_first_loss_is_checked_against_ln_classes():
    """init_loss reads a hand-logged train/loss when the guard's health/loss is absent."""
    checker = jaxobs.HealthChecker(num_classes=10)
    assert checker.check(0, {"val/accuracy": 0.1}) == []  # no loss: not the first check
    alerts = checker.check(1, {"train/loss": 9.0})
    assert _rules(alerts) == [("init_loss", None)]
    np.testing.assert_allclose(alerts[0].values["expected"], math.log(10))
    assert checker.check(2, {"train/loss": 9.0}) == []


def test_plain_run_judges_hand_logged_records(tmp_path):
    """A checker attached to a run without observe judges what run.log records."""
    checker = jaxobs.HealthChecker(patience=2, stagnation_eps=0.0, plot=False)
    records = [(1.0, 1.0), (math.nan, None), (0.5, 1.0), (0.4, 1.0)]
    with _init(tmp_path) as run:
        run.add_monitor(checker)
        for step, (train, val) in enumerate(records):
            run.log({"train/loss": train} | ({} if val is None else {"val/loss": val}), step=step)
    checks = [s for s, (_, v) in enumerate(records) if v is not None]
    stops = [checks[i] for i in keras_early_stopping([1.0, 1.0, 1.0], 2, 0.0)]
    assert _health_events(run.dir) == [(1, "nonfinite"), *((s, "stagnation") for s in stops)]
    assert stops == [3]
