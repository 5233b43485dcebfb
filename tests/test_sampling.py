"""Sampling with ``every=N`` (two programs chosen on the host), the window of health signals
between samples, and the levels: what each computes, proved against NumPy."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state
from helpers import metric_table, read_events

import jaxobs
from jaxobs.testing import log_compilations


class _MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(16, name="hidden")(x))
        return nn.Dense(3, name="out")(x)


_MODEL = _MLP()
_KEY = jax.random.key(0)


def _batches(n: int, *, spike_at: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        x = rng.normal(size=(8, 5)).astype(np.float32)
        if i == spike_at:
            x = x * 300.0  # one bad batch: its loss and gradient norm jump
        out.append((x, rng.integers(0, 3, size=8).astype(np.int32)))
    return out


def _state() -> train_state.TrainState:
    params = _MODEL.init(_KEY, jnp.zeros((1, 5)))["params"]
    return train_state.TrainState.create(apply_fn=_MODEL.apply, params=params, tx=optax.sgd(0.05))


def _loss(params, x, y):
    logits = _MODEL.apply({"params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def train_step(state, x, y):
    loss, grads = jax.value_and_grad(_loss)(state.params, x, y)
    jaxobs.tap(grads=grads)
    return state.apply_gradients(grads=grads), {"loss": loss}


@jax.jit
def _reference_step(state, x, y):
    loss, grads = jax.value_and_grad(_loss)(state.params, x, y)
    return state.apply_gradients(grads=grads), loss, grads


def _leaves(tree) -> dict[str, np.ndarray]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(k.key for k in path): np.asarray(v, np.float64) for path, v in flat}


def _reference(batches) -> list[dict]:
    """Per step, in NumPy (float64): the loss, the gradients, the old and new parameters."""
    state, out = _state(), []
    for x, y in batches:
        new, loss, grads = _reference_step(state, x, y)
        out.append(
            {
                "loss": float(loss),
                "grads": _leaves(grads),
                "old": _leaves(state.params),
                "new": _leaves(new.params),
            }
        )
        state = new
    return out


def _norm(leaves) -> float:
    return float(np.sqrt(sum(np.sum(v * v) for v in leaves.values())))


def _observe_run(tmp_path, batches, **options):
    step = jaxobs.observe(train_step, **options)
    state = _state()
    with jaxobs.init(project="sampling", dir=tmp_path, terminal=False) as run:
        for x, y in batches:
            state, _ = step(state, x, y)
        step.flush()
    _observe_run.last_dir = run.dir
    return step, metric_table(read_events(run.dir))


def test_every_n_compiles_two_programs_and_samples_the_multiples(tmp_path):
    batches = _batches(12)
    with log_compilations() as log:
        _, table = _observe_run(tmp_path, batches, every=4)
    assert log.count_of("train_step") == 1
    assert log.count_of("train_step_plain") == 1
    assert sorted(table["grads/hidden/kernel/norm"]) == [0, 4, 8]
    assert sorted(table["train/loss"]) == list(range(12))  # metrics at every step


def test_sampled_records_match_numpy_and_the_every_step_run(tmp_path):
    batches = _batches(9)
    ref = _reference(batches)
    _, every3 = _observe_run(tmp_path / "a", batches, every=3)
    _, every1 = _observe_run(tmp_path / "b", batches)
    for s in (0, 3, 6):
        r = ref[s]
        for path, g in r["grads"].items():
            np.testing.assert_allclose(every3[f"grads/{path}/norm"][s], np.linalg.norm(g), 1e-5)
            u = r["new"][path] - r["old"][path]
            np.testing.assert_allclose(every3[f"updates/{path}/norm"][s], np.linalg.norm(u), 1e-4)
            np.testing.assert_allclose(
                every3[f"params/{path}/norm"][s], np.linalg.norm(r["new"][path]), 1e-5
            )
        np.testing.assert_allclose(every3["grads/global_norm"][s], _norm(r["grads"]), 1e-5)
        for key, values in every1.items():  # the sampled program computes what every=1 does
            if not key.startswith("window/"):
                np.testing.assert_allclose(every3[key][s], values[s], rtol=1e-6, err_msg=key)
    for key in every3:
        assert key.startswith("window/") or key in every1


@pytest.mark.parametrize("health", [False, True])
def test_a_spike_between_samples_shows_in_the_next_window(tmp_path, health):
    """One bad batch at step 5, between the samples at 0 and 8: the record of step 8 holds
    the window of steps 1..8, whose max loss and gradient norm are step 5's."""
    batches = _batches(10, spike_at=5)
    ref = _reference(batches)
    _, table = _observe_run(tmp_path, batches, every=8, health=health and jaxobs.HealthChecker())
    assert "grads/global_norm" not in {k for k in table if 5 in table[k]}
    window = range(1, 9)
    losses = [ref[s]["loss"] for s in window]
    norms = [_norm(ref[s]["grads"]) for s in window]
    assert int(np.argmax(norms)) + 1 == 5  # the spike is the window's largest (the premise)
    np.testing.assert_allclose(table["window/loss/max"][8], max(losses), rtol=1e-5)
    np.testing.assert_allclose(table["window/grad_norm/max"][8], max(norms), rtol=1e-5)
    np.testing.assert_allclose(table["window/grad_norm/min"][8], min(norms), rtol=1e-5)
    np.testing.assert_allclose(table["window/grad_norm/mean"][8], np.mean(norms), rtol=1e-5)
    np.testing.assert_allclose(table["window/loss/last"][8], ref[8]["loss"], rtol=1e-5)
    assert table["window/steps"][8] == 8
    assert table["window/steps"][0] == 1
    assert table["window/loss/nonfinite"][8] == 0
    if health:
        largest = max(
            max(np.max(np.abs(ref[s]["new"][p] - ref[s]["old"][p])) for p in ref[s]["new"])
            for s in window
        )
        np.testing.assert_allclose(table["window/update_max_abs/max"][8], largest, rtol=1e-4)
    else:
        assert "window/update_max_abs/max" not in table


@pytest.mark.parametrize("action", ["skip", "warn"])
def test_a_non_finite_step_is_counted_in_the_window(tmp_path, action):
    """A NaN batch at step 2: skipped, it is the window's one non-finite step; let through
    (``warn``), it poisons the parameters and steps 2, 3 and 4 are all non-finite."""
    batches = _batches(6)
    x, y = batches[2]
    batches[2] = (np.full_like(x, np.nan), y)
    checker = jaxobs.HealthChecker(action=action)
    _, table = _observe_run(tmp_path, batches, every=4, health=checker)
    bad = 1 if action == "skip" else 3
    assert table["window/loss/nonfinite"][4] == bad
    assert table["window/grad_norm/nonfinite"][4] == bad
    assert table["window/update_max_abs/nonfinite"][4] == bad
    assert table["window/steps"][4] == 4
    ref = _reference(batches[:2])  # steps 0 and 1 are the same in both
    np.testing.assert_allclose(table["window/loss/max"][4] >= ref[1]["loss"], True)
    assert np.isfinite(table["window/loss/max"][4])  # over the finite steps only


def _keys(tmp_path, **options) -> set[str]:
    _, table = _observe_run(tmp_path, _batches(2), **options)
    return set(table)


def test_levels_decide_the_keys(tmp_path):
    paths = ["hidden/bias", "hidden/kernel", "out/bias", "out/kernel"]
    groups = ("grads", "params", "updates")
    global_keys = {f"{g}/global_norm" for g in groups} | {"updates/update_ratio"}
    ratios = {"updates/hidden/update_ratio", "updates/out/update_ratio"}
    basic = _keys(tmp_path / "basic", level="basic")
    assert basic == global_keys | {"train/loss"}
    detailed = _keys(tmp_path / "detailed")  # the default level
    norms = {f"{g}/{p}/norm" for g in groups for p in paths}
    assert detailed == basic | norms | ratios
    expert = _keys(tmp_path / "expert", level=jaxobs.LogLevel.EXPERT)
    every_stat = {f"{g}/{p}/{s}" for g in groups for p in paths for s in jaxobs.stats.STATS}
    assert expert == basic | every_stat | ratios
    debug = _keys(tmp_path / "debug", level="DEBUG")
    assert debug == expert  # plus histograms, which are not metrics:
    events = read_events(_observe_run.last_dir)
    hists = {k for e in events if e["event"] == "histograms" for k in e["values"]}
    assert hists == {f"{g}/{p}" for g in groups for p in paths}


def test_explicit_options_win_over_the_level(tmp_path):
    keys = _keys(tmp_path, level="basic", stats=["max_abs"], per="layer", watch=["grads"])
    assert keys == {"grads/hidden/max_abs", "grads/out/max_abs"}


def test_levels_and_windows_reject_bad_values():
    with pytest.raises(ValueError, match=r"level='loud'.*basic, detailed, expert, debug"):
        jaxobs.observe(train_step, level="loud")
    with pytest.raises(ValueError, match="unknown signals \\['lr'\\]"):
        jaxobs.observe(train_step, every=2, window=["lr"])
    with pytest.raises(TypeError, match="window='loss'"):
        jaxobs.observe(train_step, every=2, window="loss")
    with pytest.raises(ValueError, match="per='block'"):
        jaxobs.observe(train_step, per="block")


def test_the_production_preset(tmp_path):
    preset = jaxobs.presets.production()
    assert preset.init == {"terminal": False}
    assert preset.observe["every"] == 100 and preset.observe["health"] is True
    step = jaxobs.observe(train_step, **preset.with_options(every=4).observe)
    assert step.level is jaxobs.LogLevel.BASIC and step.health is not None
    state = _state()
    with jaxobs.init(project="prod", dir=tmp_path, **preset.init) as run:
        for x, y in _batches(5):
            state, _ = step(state, x, y)
        step.flush()
    table = metric_table(read_events(run.dir))
    assert sorted(table["grads/global_norm"]) == [0, 4]
    assert sorted(table["window/update_max_abs/max"]) == [0, 4]
    assert not any(k.endswith("/kernel/norm") for k in table)
    assert sorted(table["health/loss"]) == list(range(5))  # the guard judges every step
