"""The five validation scenarios of the health issue, on the scikit-learn digits with the
examples' small Flax CNN and SGD (shortened for CI; `bench/health_false_alarms.py` runs the
long healthy variant). Every expectation is read back from the run directory's files.

Compiling the observed step is most of a scenario's cost, so runs with the same
configuration (learning rate, momentum, step, action, activations, checker settings) share
one `jaxobs.Observed` (the module's ``compiled`` fixture): each later run starts it afresh
(`restart`) and records into its own run directory. A run that halted is not reused.
`test_one_corrupted_batch_is_skipped_and_the_run_recovers` checks that a run on a restarted
step records exactly what an earlier run on it recorded for the same batches.
"""

from __future__ import annotations

import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import REPO, metric_table, read_events

import jaxobs

sys.path.insert(0, str(REPO / "examples"))
import digits

SERIOUS = ("warning", "danger", "critical")
LAYERS = ("Conv_0", "Conv_1", "Dense_0", "Dense_1")


@pytest.fixture(scope="module")
def compiled():
    """Observed steps by configuration, shared by the module's runs (see `train`)."""
    steps: dict = {}
    yield steps
    steps.clear()


def naive_loss(params, apply_fn, x, y):
    """Cross-entropy as the log of a softmax: overflows to inf once the logits blow up (the
    way many hand-written digits examples compute it)."""
    logits = apply_fn({"params": params}, x)
    p = jax.nn.softmax(logits)
    return -jnp.mean(jnp.log(p[jnp.arange(y.shape[0]), y])), logits


def naive_step(state, x, y):
    (loss, _), grads = jax.value_and_grad(naive_loss, has_aux=True)(
        state.params, state.apply_fn, x, y
    )
    jaxobs.tap(grads=grads)
    return state.apply_gradients(grads=grads), {"loss": loss}


def restart(train_step):
    """Bring an observed step that trained before back to where a fresh one starts: the host
    rules, the device guard, the flight recorder and the crash dumps forget the last run."""
    assert isinstance(train_step.health, jaxobs.HealthChecker)
    assert isinstance(train_step.recorder, jaxobs.FlightRecorder)
    train_step.health.reset()
    train_step.guard_state = None
    train_step.recorder = jaxobs.FlightRecorder(train_step.recorder.capacity)
    train_step.dumps.clear()
    assert train_step.health.alerts == [] and train_step.guard_state is None


def train(
    tmp_path,
    compiled,
    *,
    lr=0.05,
    seed=0,
    steps=100,
    action="warn",
    momentum=0.9,
    init_scale=1.0,
    corrupt_at=None,
    drop_at=None,
    step_fn=digits.step_fn,
    activations=False,
    eval_every=None,
    check_params=False,
    **checker_kwargs,
):
    """Train and return what a user would look at: events, alerts, state, finiteness.

    The observed step comes from ``compiled`` when a run with the same configuration trained
    before (restarted, and fed the same model and optimizer objects, so that its jit cache
    hits); otherwise it is made here and kept there."""
    (x_train, y_train), (x_val, y_val) = digits.load_data(seed)
    state = digits.create_state(seed, lr, momentum=momentum, init_scale=init_scale)
    key = (lr, momentum, step_fn, action, activations, tuple(sorted(checker_kwargs.items())))
    if key in compiled:
        train_step, first = compiled[key]
        restart(train_step)
        # The same settings, the same objects: the state's static fields key the jit cache.
        state = state.replace(apply_fn=first.apply_fn, tx=first.tx)
    else:
        checker = jaxobs.HealthChecker(num_classes=10, action=action, **checker_kwargs)
        train_step = jaxobs.observe(step_fn, health=checker, activations=activations)
        compiled[key] = (train_step, state)
    data = digits.batches(x_train, y_train, 64, seed)
    params_finite = []
    halted = None
    calls = 0
    with jaxobs.init(project="health", dir=tmp_path, config={"lr": lr}) as run:
        try:
            for s in range(steps - (drop_at is not None)):
                x, y = next(data)
                if s == drop_at:  # the clean run of a skipped step: the batch never comes
                    x, y = next(data)
                if s == corrupt_at:
                    x, y = digits.corrupt(x, y, seed=s)
                state, _ = train_step(state, x, y)
                calls += 1
                if check_params:
                    leaves = jax.tree.leaves(state.params)
                    params_finite.append(all(bool(np.isfinite(p).all()) for p in leaves))
                if eval_every and (s + 1) % eval_every == 0:
                    run.log(digits.evaluate(state, x_val, y_val), step=s)
        except jaxobs.TrainingHalted as e:
            halted = e
            del compiled[key]  # a halted step raises no second time: never reused
    events = read_events(run.dir)
    metrics = metric_table(events)
    # this run's records, every step once, in its own run directory (a shared step too)
    assert sorted(metrics["train/loss"]) == list(range(calls))
    alerts = [e for e in events if e["event"] == "health_check"]
    return {
        "run": run,
        "events": events,
        "alerts": alerts,
        "metrics": metrics,
        "state": state,
        "params_finite": params_finite,
        "halted": halted,
        "val": digits.evaluate(state, x_val, y_val),
        "step": train_step,
    }


def untimed(records) -> list[dict]:
    """The records without their wall-clock time (all that differs between equal runs)."""
    return [{k: v for k, v in r.items() if k != "timestamp_ns"} for r in records]


def first_nonfinite_step(metrics) -> int | None:
    """The first step whose loss or any statistic recorded for it is non-finite."""
    bad = [
        s
        for key, col in metrics.items()
        if key == "train/loss" or key.endswith("/norm") or key.startswith("health/nonfinite")
        for s, v in col.items()
        if (not math.isfinite(v)) or (key.startswith("health/nonfinite") and v > 0)
    ]
    return min(bad) if bad else None


# ----------------------------------------------------------------------------- 1. healthy


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_healthy_runs_raise_no_alert_and_skip_nothing(tmp_path, compiled, seed):
    """lr 0.05: no alert of severity warning or higher and not one skipped step."""
    out = train(
        tmp_path, compiled, seed=seed, steps=300, action="skip", activations=True, eval_every=100
    )
    serious = [a for a in out["alerts"] if a["severity"] in SERIOUS]
    assert serious == [], [a["message"] for a in serious]
    skipped = out["metrics"]["health/skipped"]
    assert len(skipped) == 300 and sum(skipped.values()) == 0
    assert out["val"]["val/accuracy"] > 0.9  # and it learned
    # the dead-unit windows were evaluated (3 windows of 100 batches), and nothing is dead
    dead = out["metrics"]["health/dead/Conv_0"]
    assert out["metrics"]["health/dead_batches"][99] == 100 and dead[99] < 0.3


# ----------------------------------------------------------------------------- 2. lr 10, 100


@pytest.mark.slow
@pytest.mark.parametrize("lr", [10.0, 100.0])
def test_divergence_is_flagged_at_or_before_the_first_nonfinite_step(tmp_path, compiled, lr):
    """lr 10 and 100 (log-softmax loss, which overflows): an alert no later than the first
    non-finite value, and a crash dump that names the first layer to diverge."""
    out = train(tmp_path, compiled, lr=lr, momentum=None, steps=12, step_fn=naive_step)
    first_bad = first_nonfinite_step(out["metrics"])
    assert first_bad is not None, "the run was expected to go non-finite"
    serious = [a for a in out["alerts"] if a["severity"] in SERIOUS]
    assert serious and serious[0]["step"] <= first_bad
    nonfinite = [a for a in out["alerts"] if a["rule"] == "nonfinite"]
    assert nonfinite[0]["step"] == first_bad and nonfinite[0]["severity"] == "critical"
    # the dump names the first layer to diverge; check it against the run's own records:
    # per layer, the first step where its gradient norm is non-finite or above 10x step 0
    dump = jaxobs.crash.load_dump(out["step"].dumps[0])
    m = out["metrics"]

    def layer_norm(layer, step):
        # A leaf is non-finite when its norm is (the default level records norms only) or,
        # where the level records it, its nonfinite count is positive.
        leaves = [k for k in m if k.startswith(f"grads/{layer}/") and k.endswith("/norm")]
        counts = [m.get(k.replace("/norm", "/nonfinite"), {}).get(step, 0.0) for k in leaves]
        nf = any(not math.isfinite(m[k][step]) for k in leaves) or any(c > 0 for c in counts)
        return math.inf if nf else math.sqrt(sum(m[k][step] ** 2 for k in leaves))

    def onset(layer):
        base = layer_norm(layer, 0)
        return next(s for s in range(first_bad + 1) if layer_norm(layer, s) > 10 * base)

    expected_step = min(onset(layer) for layer in LAYERS)
    ratios = {
        layer: layer_norm(layer, expected_step) / layer_norm(layer, 0)
        for layer in LAYERS
        if onset(layer) == expected_step
    }
    expected_layer = max(ratios, key=ratios.get)
    assert dump.first_diverged["layer"] == expected_layer
    assert dump.first_diverged["step"] == expected_step
    assert dump.first_diverged["layer"] in nonfinite[0]["message"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("lr", "step_fn"),
    [(10.0, naive_step), (100.0, naive_step), (100.0, digits.step_fn)],
    ids=["lr10-logsoftmax", "lr100-logsoftmax", "lr100-optax-loss"],
)
def test_skip_keeps_every_nonfinite_value_out_of_the_parameters(tmp_path, compiled, lr, step_fn):
    """With action="skip" the parameters stay finite after every step, and the run halts
    once skipping cannot save it."""
    out = train(
        tmp_path,
        compiled,
        lr=lr,
        momentum=None,
        steps=20,
        step_fn=step_fn,
        action="skip",
        check_params=True,
        max_skips=8,
    )
    assert out["params_finite"] and all(out["params_finite"])
    skipped = out["metrics"]["health/skipped"]
    assert sum(skipped.values()) >= 1
    serious = [a for a in out["alerts"] if a["severity"] in SERIOUS]
    first_skip = min(s for s, v in skipped.items() if v)
    assert serious[0]["step"] <= first_skip
    assert isinstance(out["halted"], jaxobs.TrainingHalted)
    assert out["halted"].alert.rule == "skips_exhausted"


# ----------------------------------------------------------------------------- 3. weights x10


def test_weights_times_ten_are_flagged_at_step_zero(tmp_path, compiled):
    """Weights x10 at init: an alert at step 0, from the loss before any update."""
    out = train(tmp_path, compiled, init_scale=10.0, steps=2)
    first = out["alerts"][0]
    assert (first["rule"], first["step"], first["severity"]) == ("init_loss", 0, "danger")
    loss0 = out["metrics"]["train/loss"][0]
    assert loss0 > 2 * math.log(10)  # the reference: cross-entropy at init is about ln(10)
    assert first["values"]["loss"] == pytest.approx(loss0)


# ----------------------------------------------------------------------------- 4. bad batch


@pytest.mark.slow
def test_one_corrupted_batch_is_skipped_and_the_run_recovers(tmp_path, compiled):
    """Inputs x20 and shuffled labels at one step, action="skip": that step and no other is
    skipped, the run ends exactly where the clean run (the same batches without the bad
    one) ends, and the same run without protection is hurt."""
    corrupt_at, steps = 100, 200
    # the healthy runs' configuration (activation statistics too): one compiled step for all
    protected = {"action": "skip", "activations": True}
    bad = train(tmp_path / "bad", compiled, steps=steps, corrupt_at=corrupt_at, **protected)
    clean = train(tmp_path / "clean", compiled, steps=steps, drop_at=corrupt_at, **protected)
    skipped = bad["metrics"]["health/skipped"]
    assert [s for s, v in skipped.items() if v] == [corrupt_at]
    assert sum(clean["metrics"]["health/skipped"].values()) == 0
    serious = [a for a in bad["alerts"] if a["severity"] in SERIOUS]
    assert [(a["rule"], a["step"]) for a in serious] == [("spike", corrupt_at)]
    for p, q in zip(
        jax.tree.leaves(bad["state"].params), jax.tree.leaves(clean["state"].params), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(p), np.asarray(q))
    gap = abs(bad["val"]["val/accuracy"] - clean["val"]["val/accuracy"])
    assert gap <= 0.005
    # without protection the corrupted batch lands: 10 steps later the model is worse
    hurt = train(
        tmp_path / "hurt", compiled, steps=corrupt_at + 10, action="warn", corrupt_at=corrupt_at
    )
    saved = train(
        tmp_path / "saved", compiled, steps=corrupt_at + 10, corrupt_at=corrupt_at, **protected
    )
    assert hurt["val"]["val/loss"] > 2 * saved["val"]["val/loss"], (hurt["val"], saved["val"])
    # `saved` is the first 110 steps of `bad`, on the same observed step restarted after
    # `clean`: it records exactly what `bad` recorded for those steps (the sharing is sound)
    assert saved["step"] is bad["step"]
    head = {
        k: {s: v for s, v in col.items() if s < corrupt_at + 10}
        for k, col in bad["metrics"].items()
    }
    np.testing.assert_equal(saved["metrics"], {k: col for k, col in head.items() if col})
    early = [a for a in bad["alerts"] if a["step"] < corrupt_at + 10]
    assert untimed(saved["alerts"]) == untimed(early)


# ----------------------------------------------------------------------------- 5. lr 3


@pytest.mark.slow
def test_silent_death_raises_a_dead_unit_alert_and_no_nonfinite_alert(tmp_path, compiled):
    """lr 3: the ReLUs die without a NaN; a dead-unit alert, and no non-finite alert."""
    out = train(tmp_path, compiled, lr=3.0, momentum=None, steps=200, activations=True)
    rules = {a["rule"] for a in out["alerts"]}
    assert "dead_units" in rules and "nonfinite" not in rules
    assert first_nonfinite_step(out["metrics"]) is None
    dead = [a for a in out["alerts"] if a["rule"] == "dead_units"]
    # the reference: the fraction the guard reported for that layer at the window's end
    for a in dead:
        frac = out["metrics"][f"health/dead/{a['layer']}"][a["step"]]
        assert frac == pytest.approx(a["values"]["dead_frac"]) and frac > 0.3
    assert out["val"]["val/accuracy"] < 0.2  # the network is dead indeed


def test_optax_sgd_is_what_the_scenarios_use():
    """The scenarios use plain SGD from optax (a guard against a silent change)."""
    state = digits.create_state(0, 0.1, momentum=None)
    assert isinstance(state.tx, optax.GradientTransformation)
