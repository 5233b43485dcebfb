"""Rollback and crash checkpoints number steps by the state's own step counter.

A run resumed from a checkpoint (a flax ``TrainState`` at step 1000, an ``nnx.Optimizer`` at
step 500) must snapshot, roll back, report and label its crash checkpoint with the steps its
records carry, not with how often the observed step was called (review 2026-12, bug 1).
Expectations are NumPy copies of what the step returned, and events.jsonl read back with
the standard library.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state
from helpers import read_events

import jaxobs
from jaxobs.crash import load_dump

W_TRUE = np.array([[1.0], [-2.0], [0.5], [3.0]], np.float32)


def _batch(rng, nan: bool = False):
    """A linear-regression batch of 16; ``nan``: one NaN input."""
    x = rng.normal(size=(16, 4)).astype(np.float32)
    y = (x @ W_TRUE + 0.1 * rng.normal(size=(16, 1))).astype(np.float32)
    if nan:
        x[3, 1] = np.nan
    return x, y


def _state(start: int) -> train_state.TrainState:
    """Probe A of the review: a TrainState over ``x @ w``, resumed at step ``start``."""
    state = train_state.TrainState.create(
        apply_fn=lambda p, x: x @ p["w"],
        params={"w": jnp.zeros((4, 1), jnp.float32)},
        tx=optax.adam(0.05),
    )
    return state.replace(step=jnp.int32(start))


def trainstate_step(state, batch):
    x, y = batch

    def loss_fn(p):
        return jnp.mean((state.apply_fn(p, x) - y) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    jaxobs.tap(grads=grads)
    return state.apply_gradients(grads=grads), {"loss": loss}


def nnx_step(model, optimizer, batch):
    x, y = batch

    def loss_fn(m):
        return jnp.mean((m(x) - y) ** 2)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    jaxobs.tap(grads=grads)
    optimizer.update(model, grads)
    return {"loss": loss}


def _host(tree):
    """A NumPy copy of every leaf."""
    return jax.tree.map(lambda a: np.array(a), tree)


def _tree_equal(a, b) -> bool:
    """Same structure and bit-identical leaves."""
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    return ta == tb and all(np.array_equal(x, y) for x, y in zip(la, lb, strict=True))


def _checker(**kw) -> jaxobs.HealthChecker:
    settings = {"action": "rollback", "snapshot_every": 5, "rollback_after": 2, "plot": False}
    return jaxobs.HealthChecker(**{**settings, **kw})


def _spy_rollback_done(monkeypatch, checker) -> list[int]:
    """Record the ``at_step`` of every `ActionPolicy.rollback_done` call."""
    calls: list[int] = []
    real = checker.actions.rollback_done

    def spy(at_step):
        calls.append(at_step)
        return real(at_step)

    monkeypatch.setattr(checker.actions, "rollback_done", spy)
    return calls


def test_rollback_of_a_resumed_trainstate_uses_the_states_steps(tmp_path, monkeypatch):
    """Probe A at step 1000: snapshot, rollback and its event all use the state's steps."""
    checker = _checker()
    done = _spy_rollback_done(monkeypatch, checker)
    step = jaxobs.observe(trainstate_step, health=checker, stats=("norm",))
    state = _state(1000)
    rng = np.random.default_rng(0)
    returned = {}
    with jaxobs.init(project="rollback", dir=tmp_path, terminal=False) as run:
        for i in range(12):  # steps 1000..1011
            state, _ = step(state, _batch(rng))
            returned[1000 + i] = _host(state)
        for _ in range(2):  # steps 1012 and 1013: skipped
            state, _ = step(state, _batch(rng, nan=True))
        step.flush()
        state, _ = step(state, _batch(rng, nan=True))  # step 1014 starts from the snapshot
        restored = _host(state)
        state, _ = step(state, _batch(rng))
        step.flush()
    assert step.rollbacks == [
        {"at_step": 1014, "restored_step": 1010, "trigger_step": 1013, "streak_start": 1012}
    ]
    assert done == [1014]
    # The snapshot "before step 1010" is the state step 1009 returned; the restore keeps the
    # state's own counter, and the skipped step 1014 still advanced it.
    want = returned[1009].replace(step=np.int32(1015))
    assert _tree_equal(restored, want)
    assert int(state.step) == 1016
    events = [e for e in read_events(run.dir) if e["event"] == "rollback"]
    assert [(e["step"], e["restored_step"], e["streak_start"]) for e in events] == [
        (1014, 1010, 1012)
    ]


def test_crash_checkpoint_of_a_resumed_trainstate_is_labelled_by_its_step(tmp_path):
    """A critical alert at step 1012 saves the snapshot before step 1010 as crash/ckpt-1010."""
    import orbax.checkpoint as ocp
    from flax import serialization

    step = jaxobs.observe(trainstate_step, health=_checker(), stats=("norm",))
    state = _state(1000)
    rng = np.random.default_rng(1)
    returned = {}
    with jaxobs.init(project="rollback", dir=tmp_path, terminal=False) as run:
        for i in range(12):
            state, _ = step(state, _batch(rng))
            returned[1000 + i] = _host(state)
        state, _ = step(state, _batch(rng, nan=True))  # one skip: no rollback
        for _ in range(2):
            state, _ = step(state, _batch(rng))
    assert step.rollbacks == []
    dump = load_dump(run.dir / "crash" / "crash-1012.json")
    assert dump.trigger["rule"] == "nonfinite"
    assert dump.checkpoint == {"path": "crash/ckpt-1010", "step": 1010}
    checkpointer = ocp.StandardCheckpointer()
    saved = checkpointer.restore(dump.checkpoint_path)
    checkpointer.close()
    assert int(saved["step"]) == 1010
    back = serialization.from_state_dict(returned[1009], saved)
    assert _tree_equal(_host(back.params), returned[1009].params)


def test_rollback_of_a_resumed_nnx_optimizer_uses_its_steps(tmp_path, monkeypatch):
    """An nnx.Optimizer at step 500 rolls back to the snapshot before step 510, keeps its
    step counter, and reports the rollback at step 514."""
    model = nnx.Linear(4, 1, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(0.05), wrt=nnx.Param)
    optimizer.step.set_value(jnp.uint32(500))
    checker = _checker()
    done = _spy_rollback_done(monkeypatch, checker)
    step = jaxobs.observe(nnx_step, health=checker, stats=("norm",))
    rng = np.random.default_rng(2)

    def params():
        return _host(nnx.to_pure_dict(nnx.state(model, nnx.Param)))

    returned = {}
    with jaxobs.init(project="rollback", dir=tmp_path, terminal=False) as run:
        for i in range(12):
            step(model, optimizer, _batch(rng))
            returned[500 + i] = params()
        for _ in range(2):
            step(model, optimizer, _batch(rng, nan=True))
        step.flush()
        step(model, optimizer, _batch(rng, nan=True))
        restored, counter = params(), int(optimizer.step.get_value())
        step(model, optimizer, _batch(rng))
        step.flush()
    assert step.rollbacks == [
        {"at_step": 514, "restored_step": 510, "trigger_step": 513, "streak_start": 512}
    ]
    assert done == [514]
    assert _tree_equal(restored, returned[509])
    assert counter == 515
    events = [e for e in read_events(run.dir) if e["event"] == "rollback"]
    assert [e["step"] for e in events] == [514]


@pytest.mark.parametrize("start", [0, 7])
def test_snapshots_follow_the_states_step_not_the_call_count(tmp_path, start):
    """snapshot_every=5 keeps the states before steps divisible by 5 of the state's counter."""
    step = jaxobs.observe(trainstate_step, health=_checker(rollback_after=3), stats=("norm",))
    state = _state(start)
    rng = np.random.default_rng(3)
    returned = {}
    with jaxobs.init(project="rollback", dir=tmp_path, terminal=False) as run:
        for i in range(11):
            state, _ = step(state, _batch(rng))
            returned[start + i] = _host(state)
        state, _ = step(state, _batch(rng, nan=True))  # a critical alert: a crash dump
        step.flush()
    bad = start + 11
    newest = (bad // 5) * 5  # the newest step <= bad divisible by 5 (a snapshot before it)
    dump = load_dump(run.dir / "crash" / f"crash-{bad}.json")
    assert dump.checkpoint == {"path": f"crash/ckpt-{newest}", "step": newest}
