"""What an observed step's outputs become in the run, and the step of `run.log` without one.

- `run.log` without a step, beside an observed step, goes to the step the loop last called
  (not wherever the background delivery has got to); in a hand-logged run, to one past the
  largest step logged.
- Returned metrics are recorded as `run.log` takes them: booleans as 0/1, one-element arrays
  as their element, the loss of a ``(loss, metrics)`` or bare ``loss`` return as
  ``train/loss``; what cannot be recorded (a (3,) array) is named in a warning.
- `ExperimentLog.log_metric` without a step goes to the history's next step.

Records are read back from events.jsonl with json (tests/helpers.py) and compared with the
step's own outputs, converted with NumPy.
"""

from __future__ import annotations

import logging
import threading

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state
from helpers import metric_table, read_events

import jaxobs
from jaxobs import ExperimentLog
from jaxobs._src.engine.collect import reset_warnings

STEPS, EPOCH = 150, 50


class _MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3, name="out")(nn.relu(nn.Dense(8, name="hidden")(x)))


def _state() -> train_state.TrainState:
    model = _MLP()
    params = model.init(jax.random.key(0), jnp.zeros((1, 5)))["params"]
    return train_state.TrainState.create(apply_fn=model.apply, params=params, tx=optax.sgd(0.05))


def _batches(n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [
        (rng.normal(size=(8, 5)).astype(np.float32), rng.integers(0, 3, size=8).astype(np.int32))
        for _ in range(n)
    ]


def _loss(params, apply_fn, x, y):
    logits = apply_fn({"params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits


def train_step(state, x, y):
    (loss, logits), grads = jax.value_and_grad(_loss, has_aux=True)(
        state.params, state.apply_fn, x, y
    )
    accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
    metrics = {
        "loss": loss,
        "finite": jnp.isfinite(loss),  # a boolean
        "acc_1": accuracy.reshape(1),  # shape (1,)
        "acc_11": accuracy.reshape(1, 1),  # shape (1, 1)
        "logit_means": jnp.mean(logits, axis=0),  # shape (3,): not one number
    }
    return state.apply_gradients(grads=grads), metrics


class _HeldDelivery:
    """A monitor that holds the delivery thread at its first record until released, so
    the training loop is far ahead of the delivery (as on a busy host)."""

    def __init__(self):
        self.release = threading.Event()

    def on_log(self, run, step, values):
        if threading.current_thread() is not threading.main_thread():
            self.release.wait(timeout=120)


@pytest.fixture(scope="module")
def linen_run(tmp_path_factory):
    """150 observed linen steps with ``run.log({"epoch": e})`` after every 50th, no step."""
    reset_warnings()
    held = _HeldDelivery()
    step = jaxobs.observe(train_step)
    state, outputs = _state(), []
    handler = _Records()
    logging.getLogger("jaxobs").addHandler(handler)
    try:
        with jaxobs.init(
            project="outputs", dir=tmp_path_factory.mktemp("r"), terminal=False
        ) as run:
            run.add_monitor(held)
            for i, (x, y) in enumerate(_batches(STEPS)):
                state, metrics = step(state, x, y)
                outputs.append(metrics)
                if i % EPOCH == EPOCH - 1:
                    run.log({"epoch": i // EPOCH})
            held.release.set()
    finally:
        held.release.set()
        logging.getLogger("jaxobs").removeHandler(handler)
    return read_events(run.dir), jax.device_get(outputs), handler.messages


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_run_log_without_a_step_uses_the_step_the_loop_dispatched(linen_run):
    """Epoch ends logged without a step after steps 49/99/149 are at exactly 49/99/149."""
    events, _, _ = linen_run
    epochs = [
        (e["step"], e["values"]["epoch"])
        for e in events
        if e["event"] == "metrics" and "epoch" in e["values"]
    ]
    assert epochs == [(49, 0.0), (99, 1.0), (149, 2.0)]


def test_bool_and_one_element_metrics_are_recorded_as_run_log_takes_them(linen_run):
    """A boolean is 0/1, a (1,) or (1, 1) array its element, at every step."""
    events, outputs, _ = linen_run
    table = metric_table(events)
    for name, key in [("finite", "train/finite"), ("acc_1", "train/acc_1")]:
        want = {
            s: float(np.asarray(o[name], np.float64).reshape(())) for s, o in enumerate(outputs)
        }
        assert table[key] == pytest.approx(want, rel=1e-6), key
    want = {s: float(np.asarray(o["acc_11"]).item()) for s, o in enumerate(outputs)}
    assert table["train/acc_11"] == pytest.approx(want, rel=1e-6)
    assert set(table["train/finite"].values()) == {1.0}


def test_a_metric_that_is_not_one_number_is_named_in_a_warning(linen_run):
    """A (3,) array is not recorded, and a warning (once) names it."""
    events, _, messages = linen_run
    assert not any(k.startswith("train/logit_means") for k in metric_table(events))
    named = [m for m in messages if "'logit_means'" in m]
    assert len(named) == 1 and "(3,)" in named[0] and "not recorded" in named[0]


def test_a_hand_logged_run_without_steps_counts_on(tmp_path):
    """Without an observed step, `log` goes to one past the largest step logged."""
    with jaxobs.init(project="outputs", dir=tmp_path, terminal=False) as run:
        run.log({"a": 1.0})
        run.log({"a": 2.0})
        run.log({"b": 3.0}, step=10)
        run.log({"a": 4.0})
        run.log({"b": 5.0}, step=3)  # an earlier step does not move the count back
        run.log({"a": 6.0})
        run.log_histograms({"h": np.arange(10.0)})
    events = read_events(run.dir)
    steps = [(e["step"], dict(e["values"])) for e in events if e["event"] == "metrics"]
    assert steps == [
        (0, {"a": 1.0}),
        (1, {"a": 2.0}),
        (10, {"b": 3.0}),
        (11, {"a": 4.0}),
        (3, {"b": 5.0}),
        (12, {"a": 6.0}),
    ]
    assert [e["step"] for e in events if e["event"] == "histograms"] == [12]


# ----------------------------------------------------------------------------- (loss, ...) returns


class _Net(nnx.Module):
    def __init__(self, rngs):
        self.dense = nnx.Linear(5, 3, rngs=rngs)

    def __call__(self, x):
        return self.dense(x)


def _nnx_loss(model, x, y):
    logits = model(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits


def loss_and_metrics_step(model, optimizer, x, y):
    (loss, logits), grads = nnx.value_and_grad(_nnx_loss, has_aux=True)(model, x, y)
    optimizer.update(model, grads)
    return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}


def bare_loss_step(model, optimizer, x, y):
    (loss, _), grads = nnx.value_and_grad(_nnx_loss, has_aux=True)(model, x, y)
    optimizer.update(model, grads)
    return loss


def _optimizer(model):
    return nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)


@pytest.mark.parametrize("fn", [loss_and_metrics_step, bare_loss_step])
def test_the_loss_of_a_loss_return_is_train_loss(fn, tmp_path):
    """The loss of ``-> (loss, metrics)`` and ``-> loss`` is recorded as train/loss."""
    model = _Net(nnx.Rngs(0))
    optimizer = _optimizer(model)
    step = jaxobs.observe(fn)
    outputs = []
    with jaxobs.init(project="outputs", dir=tmp_path, terminal=False) as run:
        for x, y in _batches(5):
            outputs.append(jax.device_get(step(model, optimizer, x, y)))
    table = metric_table(read_events(run.dir))
    losses = [o[0] if isinstance(o, tuple) else o for o in outputs]
    want = {s: float(np.float64(loss)) for s, loss in enumerate(losses)}
    assert table["train/loss"] == pytest.approx(want, rel=1e-6)
    if fn is loss_and_metrics_step:
        want = {s: float(o[1]["accuracy"]) for s, o in enumerate(outputs)}
        assert table["train/accuracy"] == pytest.approx(want, rel=1e-6)


def test_an_optax_step_with_a_scalar_parameter_is_not_a_loss(tmp_path):
    """A scalar returned where the step takes its scalar parameters is state, not loss."""

    def step_fn(w, opt_state, x):
        loss, grad = jax.value_and_grad(lambda w: jnp.mean((w * x - 1.0) ** 2))(w)
        updates, opt_state = optax.sgd(0.1).update(grad, opt_state)
        return optax.apply_updates(w, updates), opt_state, {"mse": loss}

    w = jnp.float32(0.5)
    opt_state = optax.sgd(0.1).init(w)
    step = jaxobs.observe(step_fn)
    with jaxobs.init(project="outputs", dir=tmp_path, terminal=False) as run:
        for x, _ in _batches(3):
            w, opt_state, _ = step(w, opt_state, x)
    table = metric_table(read_events(run.dir))
    assert "train/loss" not in table and sorted(table["train/mse"]) == [0, 1, 2]


# ----------------------------------------------------------------------------- ExperimentLog


def test_log_metric_without_a_step_goes_to_the_next_step():
    """After 101 rows, a new metric logged without a step is at step 101, like a W&B log."""
    exp = ExperimentLog()
    for i in range(101):
        assert exp.log_row({"train/loss": 1.0 / (i + 1)}) == i
    assert exp.log_metric("val/loss", 0.5) == 101
    assert exp.log_metric("train/loss", 0.1) == 102
    assert exp.log_row({"train/loss": 0.05}) == 103
    log = exp.to_trainlog()
    assert log.steps_of("val/loss") == [101]
    assert log.steps_of("train/loss") == [*range(101), 102, 103]
