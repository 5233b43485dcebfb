"""Issue 12's health fixes, each against an independent reference.

- ``observe(saturation=...)``: ``acts/<layer>/saturation_frac`` of a tanh MLP equals a
  NumPy fraction of ``|tanh(z)| > threshold`` over the same pre-activations, and the
  ``saturation`` rule fires on it;
- activation ``nonfinite``, ``min`` and ``max`` against NumPy on a layer that emits NaN;
- what a critical alert does under each action;
- hand-fed records (seed 001's ``TriggerEngine.check(loss, grad_norms)``);
- seed 001's loss trigger (``spike_factor``) against a NumPy moving average, and a gradient
  norm threshold that halts under ``action="halt"``.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state
from helpers import metric_table, read_events

import jaxobs
from jaxobs._src.engine.options import ObserveOptions
from jaxobs.health import ActionPolicy, Alert, BaseRule, LossSpike, default_rules
from jaxobs.stats import activation_stats

TRANSFORMS = [lambda f: f, jax.jit]


def _init(tmp_path):
    return jaxobs.init(project="health-fixes", dir=tmp_path, terminal=False)


def _health_events(run_dir) -> list[tuple[int, str]]:
    return [(e["step"], e["rule"]) for e in read_events(run_dir) if e["event"] == "health_check"]


# ----------------------------------------------------------------------------- saturation


class TanhMLP(nn.Module):
    """``out(tanh(hidden(scale * x)))``: a large ``scale`` saturates the tanh."""

    scale: float = 1.0

    @nn.compact
    def __call__(self, x):
        z = nn.Dense(16, name="hidden")(self.scale * x)
        return nn.Dense(3, name="out")(jnp.tanh(z))


def _linen_state(model, lr=0.01):
    params = model.init(jax.random.key(0), jnp.ones((1, 8)))
    return train_state.TrainState.create(apply_fn=model.apply, params=params, tx=optax.sgd(lr))


def linen_step(state, x, y):
    def loss_fn(p):
        logits = state.apply_fn(p, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), {"loss": loss}


def _np_hidden(params, x, scale) -> np.ndarray:
    """The hidden layer's pre-activations in float64, from its kernel and bias."""
    p = params["params"]["hidden"]
    k, b = np.asarray(p["kernel"], np.float64), np.asarray(p["bias"], np.float64)
    return (scale * np.asarray(x, np.float64)) @ k + b


def test_observe_saturation_frac_matches_numpy_and_the_rule_fires(tmp_path):
    """observe(saturation=...) on a saturated tanh MLP: the fraction equals NumPy's
    mean(|tanh(z)| > 0.97), the layer not named gets none, and `saturation` fires."""
    scale, threshold, patience = 8.0, 0.97, 3
    state = _linen_state(TanhMLP(scale=scale))
    checker = jaxobs.HealthChecker(ratio_patience=patience, saturation_pct=50.0, plot=False)
    step = jaxobs.observe(
        linen_step,
        health=checker,
        activations=True,
        saturation={"hidden": "tanh"},
        saturation_threshold=threshold,
        stats=("norm",),
    )
    rng = np.random.default_rng(0)
    want = {}
    with _init(tmp_path) as run:
        for i in range(5):
            x = rng.normal(size=(32, 8)).astype(np.float32)
            z = _np_hidden(state.params, x, scale)
            want[i] = float(np.mean(np.abs(np.tanh(z)) > threshold))
            margin = float(np.min(np.abs(np.abs(np.tanh(z)) - threshold)))
            assert margin > 1e-5  # float32 on device cannot fall on the other side
            state, _ = step(state, x, rng.integers(0, 3, size=32))
        step.flush()
    table = metric_table(read_events(run.dir))
    assert all(v > 0.5 for v in want.values())  # the scale saturates the tanh
    assert table["acts/hidden/saturation_frac"] == pytest.approx(want, rel=1e-6)
    assert "acts/out/saturation_frac" not in table  # not named: not computed
    assert "acts/out/mean" in table
    fired = [(a.step, a.layer) for a in checker.alerts if a.rule == "saturation"]
    assert fired == [(patience - 1, "hidden")]  # once, when the window is full
    mean = float(np.mean([want[i] for i in range(patience)]))
    assert checker.alerts[0].values["saturation_frac"] == pytest.approx(mean, rel=1e-6)
    assert (patience - 1, "saturation") in _health_events(run.dir)


def test_observe_saturation_on_every_layer_and_sigmoid():
    """A plain name applies to every probed layer; the bounds follow the nonlinearity."""
    opts = ObserveOptions(activations=True, saturation="sigmoid", saturation_threshold=0.9)
    assert "saturation_frac" in opts.act_stats
    assert opts.saturation_bounds == pytest.approx(math.log(0.9 / 0.1))  # sigmoid(z) > 0.9
    tanh = ObserveOptions(activations=True, saturation="tanh")
    assert math.tanh(tanh.saturation_bounds) == pytest.approx(0.97)  # the default threshold
    per_layer = ObserveOptions(activations=True, saturation={"hidden": "tanh"})
    assert list(per_layer.saturation_bounds) == ["hidden"]


def test_observe_saturation_is_off_by_default():
    """Without saturation=, no saturation_frac is asked for; nonfinite is in the defaults."""
    opts = ObserveOptions(activations=True)
    assert "saturation_frac" not in tuple(opts.act_stats)
    assert opts.saturation_bounds is None
    assert set(opts.act_stats) == {"mean", "std", "max_abs", "zero_frac", "dead_frac", "nonfinite"}


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"act_stats": ["saturation_frac"]}, ValueError, "saturation is off"),
        ({"saturation": "relu"}, ValueError, "relu"),
        ({"saturation": {"hidden": "relu"}}, ValueError, "relu"),
        ({"saturation": {}}, ValueError, "at least one layer"),
        ({"saturation": "tanh", "saturation_threshold": 1.0}, ValueError, r"\(0.5, 1\)"),
        ({"saturation_threshold": 0.2}, ValueError, "saturation_threshold=0.2"),
        ({"saturation": 0.97}, TypeError, "saturation=0.97"),
    ],
)
def test_observe_saturation_bad_options_raise(kwargs, error, match):
    """Bad saturation options raise at observe(), naming the option."""
    with pytest.raises(error, match=match):
        jaxobs.observe(linen_step, activations=True, **kwargs)


# ----------------------------------------------------------------------------- NaN in a layer


class TwoLayers(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(6, name="first")(x))
        return nn.Dense(3, name="second")(h)


def _np_act(a: np.ndarray) -> dict[str, float]:
    """nonfinite counts NaN/inf elements; min, max and mean describe the finite ones."""
    finite = a[np.isfinite(a)]
    return {
        "nonfinite": float(np.sum(~np.isfinite(a))),
        "min": float(np.min(finite)),
        "max": float(np.max(finite)),
        "mean": float(np.mean(finite)),
    }


def test_observe_act_nonfinite_min_max_show_a_nan_layer(tmp_path):
    """A NaN weight in one layer: acts/<layer>/nonfinite counts its NaN outputs; min/max
    and mean of the finite part match NumPy; the healthy layer reports 0 non-finite."""
    model = TwoLayers()
    params = model.init(jax.random.key(1), jnp.ones((1, 4)))
    kernel = np.array(params["params"]["second"]["kernel"])
    kernel[2, 1] = np.nan  # column 1 of the second layer's output is NaN for every row
    params = {"params": {**params["params"], "second": {**params["params"]["second"]}}}
    params["params"]["second"]["kernel"] = jnp.asarray(kernel)
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=optax.sgd(0.1))
    stats = ["nonfinite", "min", "max", "mean"]
    step = jaxobs.observe(linen_step, activations=True, act_stats=stats, stats=("norm",))
    x = np.random.default_rng(2).normal(size=(8, 4)).astype(np.float32)
    p = {
        k: {n: np.asarray(v, np.float64) for n, v in d.items()} for k, d in params["params"].items()
    }
    a1 = x.astype(np.float64) @ p["first"]["kernel"] + p["first"]["bias"]
    with np.errstate(invalid="ignore"):
        a2 = np.maximum(a1, 0.0) @ p["second"]["kernel"] + p["second"]["bias"]
    with _init(tmp_path) as run:
        step(state, x, np.zeros(8, np.int32))
        step.flush()
    table = metric_table(read_events(run.dir))
    for layer, a in (("first", a1), ("second", a2)):
        for stat, value in _np_act(a).items():
            got = table[f"acts/{layer}/{stat}"][0]
            assert got == pytest.approx(value, rel=1e-5, abs=1e-6), (layer, stat)
    assert table["acts/second/nonfinite"][0] == 8.0  # one column of 8 rows


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_activation_stats_nonfinite_min_max(transform):
    """activation_stats(x, ['nonfinite', 'min', 'max']) on an array with NaN and inf."""
    x = np.random.default_rng(3).normal(size=(16, 5)).astype(np.float32)
    x[3, 2], x[7, 0], x[9, 4] = np.nan, np.inf, -np.inf
    got = transform(lambda a: activation_stats(a, ["nonfinite", "min", "max", "mean"]))(x)
    want = _np_act(x.astype(np.float64))
    assert {k: float(v) for k, v in got.items()} == pytest.approx(want, rel=1e-6)


# ----------------------------------------------------------------------------- actions


def _guard(bad=False, nonfinite_loss=False, loss=1.0):
    """A record with the guard's keys, as an observed step delivers it."""
    return {
        "health/loss": loss,
        "health/loss_z": 0.0,
        "health/grad_norm": 1.0,
        "health/grad_norm_z": 0.0,
        "health/bad": float(bad),
        "health/nonfinite_loss": float(nonfinite_loss),
        "health/nonfinite_grads": 0.0,
        "health/nonfinite_params": 0.0,
        "health/spike": 0.0,
        "health/blowup": 0.0,
    }


@pytest.mark.parametrize(
    ("action", "halts"), [("warn", False), ("skip", False), ("rollback", False), ("halt", True)]
)
def test_a_skipped_nonfinite_step_halts_only_under_halt(action, halts):
    """The guard's critical nonfinite on a step the device skipped: training goes on under
    skip and rollback (that is their point), halts under halt, never under warn."""
    checker = jaxobs.HealthChecker(action=action, max_skips=3, rollback_after=3)
    assert checker.check(0, _guard()) == []
    alerts = checker.check(1, _guard(bad=True, nonfinite_loss=True, loss=math.nan))
    assert [(a.rule, a.severity) for a in alerts] == [("nonfinite", "critical")]
    assert alerts[0].values["skipped"] is (action != "warn")
    assert (checker.actions.halt is alerts[0]) == halts
    assert (checker.actions.halt is None) == (not halts)


@pytest.mark.parametrize(
    ("action", "halts"), [("warn", False), ("skip", True), ("rollback", True), ("halt", True)]
)
def test_an_unprotected_critical_alert_halts_every_action_but_warn(action, halts):
    """A hand-logged NaN loss (nothing skipped it) halts under skip, rollback and halt."""
    checker = jaxobs.HealthChecker(action=action)
    alerts = checker.check(0, {"train/loss": math.nan})
    assert [(a.rule, a.severity) for a in alerts] == [("nonfinite", "critical")]
    assert alerts[0].values["skipped"] is False
    assert (checker.actions.halt is alerts[0]) == halts


@pytest.mark.parametrize(("action", "halts"), [("warn", False), ("skip", True), ("halt", True)])
def test_a_critical_user_rule_halts(action, halts):
    """A rule of your own raising a critical alert halts under skip and halt, not warn."""

    class Critical(BaseRule):
        fires = ("mine",)

        def check(self, step, values):
            return [Alert("mine", "critical", step, "mine")] if values.get("x", 0) > 1 else []

    checker = jaxobs.HealthChecker(action=action, rules=lambda c: [*default_rules(c), Critical()])
    assert checker.check(0, {"x": 0.0}) == []
    (alert,) = checker.check(1, {"x": 2.0})
    assert (checker.actions.halt is alert) == halts


def test_skip_gives_up_after_max_skips():
    """Under skip, critical nonfinite alerts on skipped steps do not halt; max_skips do."""
    checker = jaxobs.HealthChecker(action="skip", max_skips=3)
    bad = _guard(bad=True, nonfinite_loss=True, loss=math.nan)
    assert checker.check(0, bad)[0].rule == "nonfinite"
    assert checker.check(1, bad) == [] and checker.actions.halt is None
    (alert,) = checker.check(2, bad)
    assert (alert.rule, alert.severity) == ("skips_exhausted", "critical")
    assert checker.actions.halt is alert


def test_the_policy_alone_follows_the_same_semantics():
    """ActionPolicy.on_alerts: the halting alert by action and by values['skipped']."""
    skipped = Alert("nonfinite", "critical", 3, "m", values={"skipped": True})
    unprotected = Alert("nonfinite", "critical", 3, "m", values={"skipped": False})
    warning = Alert("spike", "warning", 3, "m")
    for action, want in [("warn", None), ("skip", unprotected), ("halt", skipped)]:
        policy = ActionPolicy(action, max_skips=2, rollback_after=2, max_rollbacks=1)
        assert policy.on_alerts([warning, skipped, unprotected]) is want
        assert policy.halt is want


def _batch(rng, nan=False):
    x = rng.normal(size=(16, 4)).astype(np.float32)
    y = (x @ np.ones((4, 1), np.float32)).astype(np.float32)
    if nan:
        x[3, 1] = np.nan
    return x, y


OPT = optax.sgd(0.05)


def optax_step(params, opt_state, batch):
    x, y = batch

    def loss_fn(p):
        return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    jaxobs.tap(grads=grads)
    updates, opt_state = OPT.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, {"loss": loss}


def _optax_state():
    params = {"w": jnp.zeros((4, 1), jnp.float32), "b": jnp.zeros((1,), jnp.float32)}
    return params, OPT.init(params)


def test_skip_on_a_nan_batch_dumps_and_trains_on(tmp_path):
    """action='skip' + one NaN batch: a critical alert and a crash dump, no TrainingHalted,
    and training goes on with finite parameters."""
    checker = jaxobs.HealthChecker(action="skip", plot=False)
    step = jaxobs.observe(optax_step, health=checker, stats=("norm",))
    params, opt_state = _optax_state()
    rng = np.random.default_rng(0)
    with _init(tmp_path) as run:
        for i in range(8):
            params, opt_state, _ = step(params, opt_state, _batch(rng, nan=i == 3))
        step.flush()
        after_flush = np.asarray(params["w"]).copy()
        params, opt_state, _ = step(params, opt_state, _batch(rng))  # no TrainingHalted
    assert checker.actions.halt is None
    assert (3, "nonfinite") in _health_events(run.dir)
    assert [p.name for p in (run.dir / "crash").glob("crash-*.json")] == ["crash-3.json"]
    assert np.all(np.isfinite(np.asarray(params["w"])))
    assert not np.array_equal(after_flush, np.asarray(params["w"]))  # still learning


# ----------------------------------------------------------------------------- hand-fed


def test_hand_fed_loss_and_grad_norms_are_judged():
    """Seed 001's check(loss, grad_norms) by hand: a NaN loss, a NaN gradient norm and a
    gradient norm over gradient_explode_thresh each give their alert."""
    checker = jaxobs.HealthChecker(gradient_explode_thresh=100.0)
    got = checker.check(0, {"train/loss": math.nan, "grads/Dense_0/kernel/norm": 1.0})
    assert [(a.rule, a.severity, a.values["nonfinite"]) for a in got] == [
        ("nonfinite", "critical", ["train/loss"])
    ]
    assert checker.check(1, {"train/loss": 1.0, "grads/Dense_0/kernel/norm": 1.0}) == []
    got = checker.check(2, {"train/loss": 1.0, "grads/Dense_1/bias/norm": math.nan})
    assert [(a.rule, a.values["nonfinite"]) for a in got] == [
        ("nonfinite", ["grads/Dense_1/bias/norm"])
    ]
    got = checker.check(3, {"train/loss": 1.0, "grads/Dense_1/kernel/norm": 250.0})
    assert [(a.rule, a.severity, a.layer, a.values["norm"]) for a in got] == [
        ("exploding_gradients", "danger", "Dense_1", 250.0)
    ]
    got = checker.check(4, {"grads/global_norm": math.inf})
    assert [a.rule for a in got] == ["nonfinite"]
    got = checker.check(5, {"grads/Dense_0/kernel/nonfinite": 2.0})
    assert [a.rule for a in got] == []  # the nonfinite episode of step 4 goes on
    assert checker.check(6, {"train/loss": 1.0}) == []
    got = checker.check(7, {"grads/Dense_0/kernel/nonfinite": 2.0})
    assert [a.values["nonfinite"] for a in got] == [["grads/Dense_0/kernel/nonfinite"]]


# ----------------------------------------------------------------------------- seed 001 triggers


def _np_loss_spikes(losses, factor, window) -> list[int]:
    """The steps where seed 001's trigger fires, once per episode: a finite loss above
    factor x the mean of the last `window` accepted (finite, non-spike) losses, once
    `window` are known."""
    accepted, firing, out = [], False, []
    for step, loss in enumerate(losses):
        if not np.isfinite(loss):
            continue
        base = np.mean(accepted[-window:]) if len(accepted) >= window else None
        spike = base is not None and base > 0 and loss > factor * base
        if spike and not firing:
            out.append(step)
        firing = spike
        if not spike:
            accepted.append(loss)
    return out


def test_spike_factor_matches_a_numpy_moving_average():
    """loss_spike fires where the loss exceeds spike_factor x its moving average (NumPy)."""
    rng = np.random.default_rng(5)
    losses = list(2.0 * np.exp(-np.arange(120) / 60) + 0.05 * rng.random(120))
    for at, k in ((30, 4.0), (31, 5.0), (60, 2.5), (90, 10.0)):
        losses[at] *= k
    losses[45] = math.nan
    want = _np_loss_spikes(losses, 2.0, 10)
    assert want == [30, 60, 90]  # the run of 30-31 is one episode
    checker = jaxobs.HealthChecker(spike_factor=2.0, spike_window=10)
    got = [(s, a.rule) for s, v in enumerate(losses) for a in checker.check(s, {"train/loss": v})]
    assert [s for s, rule in got if rule == "loss_spike"] == want
    assert [s for s, rule in got if rule != "loss_spike"] == [45]  # nonfinite speaks for NaN
    spikes = [a for a in checker.alerts if a.rule == "loss_spike"]
    accepted = [v for i, v in enumerate(losses[:30]) if np.isfinite(v)]
    assert spikes[0].values["moving_average"] == pytest.approx(np.mean(accepted[-10:]))
    assert checker.actions.halt is None  # warn: alerts only


def test_spike_factor_is_off_by_default_and_validated():
    """No loss_spike rule without spike_factor; bad settings raise, naming them."""
    assert not any(isinstance(r, LossSpike) for r in jaxobs.HealthChecker().chain)
    assert any(isinstance(r, LossSpike) for r in jaxobs.HealthChecker(spike_factor=3.0).chain)
    for kwargs, name in (
        ({"spike_factor": 1.0}, "spike_factor"),
        ({"spike_factor": "3"}, "spike_factor"),
        ({"spike_factor": 3.0, "spike_window": 0}, "spike_window"),
    ):
        with pytest.raises(ValueError, match=name):
            jaxobs.HealthChecker(**kwargs)
    with pytest.raises(ValueError, match=r"LossSpike\(factor=0.5\)"):
        LossSpike(factor=0.5)


@pytest.mark.parametrize("action", ["warn", "halt"])
def test_seed_triggers_halt_under_halt(action):
    """A loss spike and a gradient norm over the threshold halt under halt; alert under warn."""
    spike = jaxobs.HealthChecker(action=action, spike_factor=3.0, spike_window=3)
    for s, v in enumerate([1.0, 1.0, 1.0]):
        assert spike.check(s, {"train/loss": v}) == []
    (alert,) = spike.check(3, {"train/loss": 3.5})
    assert alert.rule == "loss_spike"
    assert (spike.actions.halt is alert) == (action == "halt")

    grad = jaxobs.HealthChecker(action=action, gradient_explode_thresh=10.0)
    assert grad.check(0, {"grads/Dense_0/kernel/norm": 9.0}) == []
    (alert,) = grad.check(1, {"grads/Dense_0/kernel/norm": 11.0})
    assert alert.rule == "exploding_gradients"
    assert (grad.actions.halt is alert) == (action == "halt")


def test_relative_exploding_gradients_do_not_halt():
    """Only the absolute threshold is a trigger: a norm far above its baseline alerts."""
    checker = jaxobs.HealthChecker(action="halt", window=4, min_steps=2, explode_factor=10.0)
    for s in range(3):
        assert checker.check(s, {"grads/L/w/norm": 1.0}) == []
    (alert,) = checker.check(3, {"grads/L/w/norm": 100.0})
    assert alert.rule == "exploding_gradients" and checker.actions.halt is None


def test_gradient_threshold_halts_an_observed_step(tmp_path):
    """observe + action='halt' + gradient_explode_thresh: TrainingHalted with a halt dump."""
    checker = jaxobs.HealthChecker(action="halt", gradient_explode_thresh=1e-3, plot=False)
    step = jaxobs.observe(optax_step, health=checker, stats=("norm",))
    params, opt_state = _optax_state()
    rng = np.random.default_rng(1)
    with pytest.raises(jaxobs.TrainingHalted) as info, _init(tmp_path) as run:
        for _ in range(5):
            params, opt_state, _ = step(params, opt_state, _batch(rng))
    assert info.value.alert.rule == "exploding_gradients" and info.value.alert.step == 0
    dumps = [e for e in read_events(run.dir) if e["event"] == "crash_dump"]
    assert [e["step"] for e in dumps] == [0]
