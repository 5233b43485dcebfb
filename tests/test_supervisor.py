"""The host `Supervisor` on its own (a plain run, no observed step) and as `observe` uses it,
plus `observe`'s options: a configured `FlightRecorder`, validation, warn-once resets.

Expectations come from what the test logged itself, a Keras-style EarlyStopping loop, and
the run's files read back with the standard library.
"""

from __future__ import annotations

import json
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import decode, read_events

import jaxobs
from jaxobs._src.engine.collect import reset_warnings, warn_once
from jaxobs._src.engine.options import ObserveOptions
from jaxobs._src.host.supervisor import Supervisor

OPT = optax.sgd(0.1)


def optax_step(params, opt_state, batch):
    x, y = batch

    def loss_fn(p):
        return jnp.mean((x @ p["w"] - y) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = OPT.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, {"loss": loss}


def _state():
    params = {"w": jnp.zeros((4, 1), jnp.float32)}
    return params, OPT.init(params)


def _batch(rng, nan: bool = False):
    x = rng.normal(size=(8, 4)).astype(np.float32)
    y = x.sum(axis=1, keepdims=True).astype(np.float32)
    if nan:
        x[0, 0] = np.nan
    return x, y


def _init(tmp_path):
    return jaxobs.init(project="supervisor", dir=tmp_path, terminal=False)


def _alerts(run_dir) -> list[tuple[int, str]]:
    return [(e["step"], e["rule"]) for e in read_events(run_dir) if e["event"] == "health_check"]


def keras_stagnation(values, patience, min_delta) -> list[int]:
    """Indices where Keras' EarlyStopping (re-armed after each stop) would stop."""
    best, wait, stops = math.inf, 0, []
    for i, v in enumerate(values):
        if v < best - min_delta:
            best, wait = v, 0
        else:
            wait += 1
        if wait >= patience:
            stops.append(i)
            wait = 0
    return stops


# ----------------------------------------------------------------------------- a plain run


def test_supervisor_checks_the_rules_of_a_plain_run(tmp_path):
    """Supervisor(checker) on a run that only calls run.log raises the validation alerts."""
    values = [1.0, 0.9, 0.9, 0.9, 0.9, 0.89999, 0.9, 0.9]
    checker = jaxobs.HealthChecker(patience=3, stagnation_eps=1e-3, plot=False)
    with _init(tmp_path) as run:
        supervisor = Supervisor(checker)
        run.add_monitor(supervisor)
        for step, v in enumerate(values):
            run.log({"val/loss": v}, step=step)
    want = keras_stagnation(values, patience=3, min_delta=1e-3)
    assert want == [4, 7]
    assert [s for s, rule in _alerts(run.dir) if rule == "stagnation"] == want
    assert supervisor.snapshots.newest() is None  # no observed step: nothing to snapshot


def test_supervisor_dumps_the_recorder_when_a_plain_run_fails(tmp_path):
    """Supervisor(recorder=...) on a failing plain run writes a crash dump of what was logged."""
    recorder = jaxobs.FlightRecorder(4)
    logged = {step: 1.0 / (step + 1) for step in range(6)}
    with pytest.raises(RuntimeError, match="boom"), _init(tmp_path) as run:
        supervisor = Supervisor(recorder=recorder)
        run.add_monitor(supervisor)
        for step, v in logged.items():
            run.log({"train/loss": v}, step=step)
        raise RuntimeError("boom")
    path = run.dir / "crash" / "crash-5.json"
    assert supervisor.dumps == [path]
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["trigger"]["kind"] == "exception"
    assert doc["trigger"]["error"] == {"type": "RuntimeError", "message": "boom"}
    assert doc["checkpoint"] is None
    assert doc["recorder"]["steps"] == [2, 3, 4, 5]  # the last 4 steps
    got = decode(doc["recorder"]["series"]["train/loss"])
    np.testing.assert_allclose(got, [logged[s] for s in (2, 3, 4, 5)], rtol=1e-6)
    events = read_events(run.dir)
    assert [e["path"] for e in events if e["event"] == "crash_dump"] == [str(path)]


def test_supervisor_rejects_what_is_not_a_checker_or_recorder():
    """Supervisor(checker=..., recorder=...) names the argument that has the wrong type."""
    with pytest.raises(TypeError, match="checker"):
        Supervisor("rollback")
    with pytest.raises(TypeError, match="recorder"):
        Supervisor(recorder=256)


# ----------------------------------------------------------------------------- with observe


def test_observe_feeds_a_configured_flight_recorder(tmp_path):
    """observe(recorder=FlightRecorder(3)) records into that recorder: the last 3 losses."""
    recorder = jaxobs.FlightRecorder(3)
    step = jaxobs.observe(optax_step, recorder=recorder, stats=("norm",))
    assert step.recorder is recorder
    state, rng, losses = _state(), np.random.default_rng(0), []
    with _init(tmp_path):
        for _ in range(5):
            *state, metrics = step(*state, _batch(rng))
            losses.append(float(np.asarray(metrics["loss"])))
        step.flush()
    steps, series, _ = recorder.snapshot()
    assert list(steps) == [2, 3, 4]
    np.testing.assert_allclose(series["train/loss"], losses[2:], rtol=1e-6)


@pytest.mark.parametrize("attach", ["add_monitor", "init"])
def test_observe_shares_the_runs_supervisor_for_the_same_checker(tmp_path, attach):
    """A run already supervised for a checker lends that supervisor: no alert twice."""
    checker = jaxobs.HealthChecker(plot=False)
    step = jaxobs.observe(optax_step, health=checker, stats=("norm",))
    state, rng = _state(), np.random.default_rng(1)
    if attach == "init":
        run = jaxobs.init(project="supervisor", dir=tmp_path, terminal=False, health=checker)
        (supervisor,) = run.monitors
    else:
        run = _init(tmp_path)
        supervisor = Supervisor(checker, jaxobs.FlightRecorder(16))
        run.add_monitor(supervisor)
    with run:
        *state, _ = step(*state, _batch(rng))
        *state, _ = step(*state, _batch(rng, nan=True))
        step.flush()
    assert step.supervisor is supervisor
    assert run.monitors == (supervisor,)
    assert [s for s, rule in _alerts(run.dir) if rule == "nonfinite"] == [1]
    assert len(supervisor.dumps) == 1  # the critical alert's dump, once


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"per": "leaves"}, "leaves"),
        ({"recorder": -1}, "recorder"),
        ({"recorder": True}, "recorder"),
        ({"stats": []}, "stats"),
    ],
)
def test_bad_observe_options_name_the_option(options, named):
    """Bad per/recorder/stats values raise ValueError naming the bad value or option."""
    with pytest.raises(ValueError, match=named):
        jaxobs.observe(**options)


def test_unknown_observe_keywords_are_refused_when_observing():
    """A keyword that is neither an option nor a jax.jit argument fails at observe()."""
    with pytest.raises(TypeError, match="stat"):
        jaxobs.observe(optax_step, stat=("norm",))


def test_observe_options_are_frozen_and_normalised():
    """ObserveOptions is frozen; health=True, recorder=int and watch=str are normalised."""
    options = ObserveOptions(health=True, recorder=8, watch="metrics", stats=("norm",))
    assert isinstance(options.health, jaxobs.HealthChecker)
    assert isinstance(options.recorder, jaxobs.FlightRecorder)
    assert options.recorder.capacity == 8
    assert options.watch == frozenset({"metrics"})
    assert ObserveOptions(recorder=0).recorder is None
    with pytest.raises(AttributeError):
        options.every = 2


def test_reset_warnings_lets_a_warning_be_given_again(caplog):
    """warn_once warns once per key; reset_warnings (for tests) lets it warn again."""
    key = "test-supervisor-warning"
    with caplog.at_level(logging.WARNING, logger="jaxobs"):
        warn_once(key, "first")
        warn_once(key, "second")
        reset_warnings()
        warn_once(key, "third")
    assert [r.getMessage() for r in caplog.records] == ["jaxobs: first", "jaxobs: third"]
