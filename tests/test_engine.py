"""@jaxobs.observe and jaxobs.tap on real train steps (flax linen, flax NNX, plain optax) over
the scikit-learn digits, checked against an independent float64 NumPy reference.

The reference replays the same steps with a plain, unobserved jitted copy of each step that
also returns the gradients, and recomputes every statistic in NumPy from the arrays it gets
back: the definitions restated below come from the `jaxobs.stats` docstrings, never from its
functions. Records are read back from events.jsonl with the stdlib readers of
tests/helpers.py and from trainlog.json with json.

Observing a step costs seconds of XLA compilation on CPU, so each observed configuration runs
once, in a module-scoped fixture, and several tests read its records.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import math
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state
from helpers import decode, metric_table, read_events
from sklearn.datasets import load_digits

import jaxobs

BATCH = 32
RTOL, ATOL = 1e-4, 1e-6  # float32 on device vs float64 in NumPy
STAT_GROUPS = ("grads/", "params/", "updates/", "acts/")


# ----------------------------------------------------------------------------- data


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int32)


def _batches(k: int, *, images: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` consecutive batches: (B, 8, 8, 1) images for the CNN, (B, 64) rows otherwise."""
    x, y = _digits()
    x = x[..., None] if images else x.reshape(len(x), -1)
    return [(x[i * BATCH : (i + 1) * BATCH], y[i * BATCH : (i + 1) * BATCH]) for i in range(k)]


def _init(tmp_path, **kw):
    return jaxobs.init(project="engine", dir=tmp_path, terminal=False, **kw)


# ----------------------------------------------------------------------------- NumPy reference


def _leaves(tree: Mapping, prefix: str = "") -> dict[str, np.ndarray]:
    """``{path: float64 array}`` of a nested dict, walked by hand."""
    out = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(_leaves(value, path))
        else:
            out[path] = np.array(value, np.float64)
    return out


def _np_stats(a: np.ndarray) -> dict[str, float]:
    """Every statistic of `jaxobs.stats.STATS`, as its module docstring defines it."""
    finite = a[np.isfinite(a)]
    return {
        "norm": np.sqrt(np.sum(finite**2)),
        "rms": np.sqrt(np.mean(finite**2)),
        "mean": np.mean(finite),
        "std": np.std(finite),
        "min": np.min(finite),
        "max": np.max(finite),
        "max_abs": np.max(np.abs(finite)),
        "zero_frac": np.mean(a == 0),
        "nonfinite": float(np.sum(~np.isfinite(a))),
    }


def _np_act_stats(a: np.ndarray) -> dict[str, float]:
    """The default activation statistics (saturation_frac needs a saturation kind). A unit
    (last axis) is dead when it is <= 0 for every example and position, so that a ReLU after
    it would be dead (`jaxobs.stats.activation_stats` docstring)."""
    units = a.reshape(-1, a.shape[-1])
    return {
        "mean": np.mean(a),
        "std": np.std(a),
        "max_abs": np.max(np.abs(a)),
        "zero_frac": np.mean(a == 0),
        "dead_frac": np.mean(np.all(units <= 0, axis=0)),
        "nonfinite": float(np.sum(~np.isfinite(a))),
    }


def _np_global_norm(leaves: Mapping[str, np.ndarray]) -> float:
    """The L2 norm of a whole tree: the square root of the sum of squares of all its leaves."""
    return math.sqrt(sum(float(np.sum(a**2)) for a in leaves.values()))


def _expected(old: Mapping, new: Mapping, grads: Mapping | None, acts: Mapping) -> dict:
    """Every statistic of one step, by key, from the arrays before and after it (the level
    ``expert``: every statistic per leaf, and the global norms and update ratio)."""
    out = {}
    old, new = _leaves(old), _leaves(new)
    updates = {path: new[path] - old[path] for path in new}
    groups = [("params", new), ("updates", updates)]
    if grads is not None:
        groups.append(("grads", _leaves(grads)))
    for group, leaves in groups:
        for path, a in leaves.items():
            for stat, value in _np_stats(a).items():
                out[f"{group}/{path}/{stat}"] = value
        out[f"{group}/global_norm"] = _np_global_norm(leaves)
    # ||updates|| / ||new params||, with the documented 1e-12 against a zero tree.
    out["updates/update_ratio"] = _np_global_norm(updates) / (_np_global_norm(new) + 1e-12)
    layers = collections.defaultdict(list)
    for path in updates:
        layers[path.rsplit("/", 1)[0]].append(path)
    for layer, paths in layers.items():
        u = math.sqrt(sum(np.sum(updates[p] ** 2) for p in paths))
        p = math.sqrt(sum(np.sum(new[p] ** 2) for p in paths))  # ||new||, as documented
        out[f"updates/{layer}/update_ratio"] = u / p
    for layer, a in acts.items():
        for stat, value in _np_act_stats(np.asarray(a, np.float64)).items():
            out[f"acts/{layer}/{stat}"] = value
    return out


def _assert_matches(table: dict, expected: dict[int, dict[str, float]]) -> None:
    """``table`` ({key: {step: value}}) holds exactly the expected statistics, at exactly the
    expected steps, with the expected values."""
    steps = sorted(expected)
    want_keys = set().union(*expected.values())
    got_keys = {k for k in table if k.startswith((*STAT_GROUPS, "train/"))}
    assert got_keys == want_keys, (sorted(got_keys - want_keys), sorted(want_keys - got_keys))
    for key in sorted(want_keys):
        assert sorted(table[key]) == steps, key
        got = [table[key][s] for s in steps]
        want = [expected[s][key] for s in steps]
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=key)


def _trainlog_table(run_dir) -> dict[str, dict[int, float]]:
    """{metric: {step: value}} from trainlog.json, read with json."""
    data = json.loads((run_dir / "trainlog.json").read_text(encoding="utf-8"))
    table = {}
    for series in data["series"]:
        steps = series.get("steps", data.get("steps"))
        table[series["name"]] = dict(zip(steps, decode(series["values"]), strict=True))
    return table


def _records(run_dir) -> list[tuple[int, dict[str, float]]]:
    return [(e["step"], e["values"]) for e in read_events(run_dir) if e["event"] == "metrics"]


def _numpy(tree):
    return jax.tree.map(np.array, tree)


# ----------------------------------------------------------------------------- flax linen


class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3))(x))
        return nn.Dense(10)(x.reshape((x.shape[0], -1)))


def _linen_state(step: int = 0) -> train_state.TrainState:
    model = CNN()
    params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
    # Channel 0 of Conv_0 is dead from the start: zero weights and bias, and relu'(0) = 0.
    params["Conv_0"]["kernel"] = params["Conv_0"]["kernel"].at[..., 0].set(0.0)
    params["Conv_0"]["bias"] = params["Conv_0"]["bias"].at[0].set(0.0)
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=optax.sgd(0.1))
    # An int32 array, as apply_gradients returns it: a Python int would compile twice.
    return state.replace(step=jnp.int32(step))


def _linen_core(state, x, y):
    def loss_fn(params):
        logits = state.apply_fn({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
    return state.apply_gradients(grads=grads), {"loss": loss, "accuracy": accuracy}, grads


def linen_step(state, x, y):
    state, metrics, grads = _linen_core(state, x, y)
    jaxobs.tap(grads=grads)
    return state, metrics


def _linen_acts(params, x) -> dict[str, np.ndarray]:
    """The output of every Dense/Conv layer, captured by flax itself."""
    _, inter = CNN().apply(
        {"params": params}, x, capture_intermediates=True, mutable=["intermediates"]
    )
    return {
        name: np.asarray(v["__call__"][0])
        for name, v in inter["intermediates"].items()
        if name != "__call__"
    }


def _linen_reference(state, batches) -> dict[int, dict[str, float]]:
    """Replay the steps with a plain jitted copy and compute every record in NumPy."""
    step_fn = jax.jit(_linen_core)
    expected = {}
    for x, y in batches:
        old, step = _numpy(state.params), int(state.step)
        state, metrics, grads = step_fn(state, x, y)
        acts = _linen_acts(old, x)
        expected[step] = _expected(old, _numpy(state.params), _numpy(grads), acts)
        expected[step].update({f"train/{k}": float(v) for k, v in metrics.items()})
    return expected


# ----------------------------------------------------------------------------- flax NNX


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(64, 32, rngs=rngs)
        self.l2 = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x):
        return self.l2(nnx.relu(self.l1(x)))


def _nnx_model() -> tuple[MLP, nnx.Optimizer]:
    model = MLP(nnx.Rngs(0))
    # Unit 0 of l1 is dead from the start (Adam leaves a zero gradient at zero).
    model.l1.kernel.set_value(model.l1.kernel.get_value().at[:, 0].set(0.0))
    model.l1.bias.set_value(model.l1.bias.get_value().at[0].set(0.0))
    return model, nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)


def _nnx_params(model) -> dict:
    return _numpy(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def _nnx_loss_and_grads(model, x, y):
    def loss_fn(m):
        return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

    return nnx.value_and_grad(loss_fn)(model)


def nnx_step(model, optimizer, x, y):
    loss, grads = _nnx_loss_and_grads(model, x, y)
    jaxobs.tap(grads=grads)
    optimizer.update(model, grads)
    return {"loss": loss}


def _nnx_core(model, optimizer, x, y):
    loss, grads = _nnx_loss_and_grads(model, x, y)
    optimizer.update(model, grads)
    return {"loss": loss}, grads


def _nnx_acts(params: dict, x: np.ndarray) -> dict[str, np.ndarray]:
    """l1 and l2 outputs recomputed by hand in float64."""
    h1 = x.astype(np.float64) @ params["l1"]["kernel"] + params["l1"]["bias"]
    h2 = np.maximum(h1, 0.0) @ params["l2"]["kernel"] + params["l2"]["bias"]
    return {"l1": h1, "l2": h2}


def _nnx_reference(batches) -> tuple[dict[int, dict[str, float]], dict]:
    """Replay the steps with a plain nnx.jit copy: every record, and the final parameters."""
    model, optimizer = _nnx_model()
    step_fn = nnx.jit(_nnx_core)
    expected = {}
    for step, (x, y) in enumerate(batches):
        old = _nnx_params(model)
        metrics, grads = step_fn(model, optimizer, x, y)
        grads = _numpy(nnx.to_pure_dict(grads))
        expected[step] = _expected(old, _nnx_params(model), grads, _nnx_acts(_float64(old), x))
        expected[step]["train/loss"] = float(metrics["loss"])
    return expected, _nnx_params(model)


def _float64(params: dict) -> dict:
    return jax.tree.map(lambda a: np.asarray(a, np.float64), params)


# ----------------------------------------------------------------------------- plain optax

TX = optax.adam(1e-2)


def _mlp_params() -> dict:
    """Softmax regression (one layer: few leaves keep the observed step's compile short)."""
    return {
        "dense": {"w": jax.random.normal(jax.random.key(1), (64, 10)) * 0.1, "b": jnp.zeros(10)}
    }


def _mlp_loss(params, x, y):
    logits = x @ params["dense"]["w"] + params["dense"]["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def optax_step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(_mlp_loss)(params, x, y)
    updates, opt_state = TX.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, {"loss": loss}


def _optax_reference(batches) -> dict[int, dict[str, float]]:
    """Replay the steps with a plain jitted copy and compute every record in NumPy."""
    step_fn = jax.jit(optax_step)
    params = _mlp_params()
    opt_state = TX.init(params)
    expected = {}
    for step, (x, y) in enumerate(batches):
        old = _numpy(params)
        params, opt_state, metrics = step_fn(params, opt_state, x, y)
        expected[step] = _expected(old, _numpy(params), None, {})
        expected[step]["train/loss"] = float(metrics["loss"])
    return expected


# ----------------------------------------------------------------------------- shared runs


def _compile_events(calls) -> collections.Counter:
    """Compilation events (by name) that ``calls()`` triggers."""
    seen = collections.Counter()

    def listener(event, duration_secs, **kwargs):
        if "compil" in event:
            seen[event] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        calls()
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    return seen


K = 4  # steps of the shared runs
# Where the values are not the point: observing compiles faster with fewer statistics.
LIGHT = {"stats": ("norm",), "act_stats": ("mean",)}
NORMS = {"stats": ("norm",)}
METRICS_ONLY = {"stats": ("norm",), "watch": ("metrics", "taps")}
OUTPUTS, CALLBACK = "outputs", "callback"


@dataclasses.dataclass
class Observation:
    """One observed run, read back: {key: {step: value}} from events.jsonl and from
    trainlog.json, the metrics records in order, and what the step returned at each step."""

    table: dict[str, dict[int, float]]
    trainlog: dict[str, dict[int, float]]
    records: list[tuple[int, dict[str, float]]]
    outputs: list[list[np.ndarray]]
    extra: dict


def _observe(step, transport: str, jit=jax.jit, **options):
    """``step`` observed with observe owning the jit, or under ``jit`` (io_callback)."""
    observed = jaxobs.observe(step, **options)
    return observed if transport == OUTPUTS else jit(observed)


def _finish(run, outputs, **extra) -> Observation:
    run.finish()
    jax.effects_barrier()  # nothing late may reach another test's run
    return Observation(
        table=metric_table(read_events(run.dir)),
        trainlog=_trainlog_table(run.dir),
        records=_records(run.dir),
        outputs=outputs,
        extra=extra,
    )


def _leaves_of(out) -> list[np.ndarray]:
    return [np.array(leaf) for leaf in jax.tree.leaves(out)]


def _run_linen(directory, step, batches) -> Observation:
    run = _init(directory)
    state = _linen_state()
    outputs = []

    def loop():
        nonlocal state
        for x, y in batches:
            out = step(state, x, y)
            outputs.append(_leaves_of(out))
            state = out[0]

    compiles = _compile_events(loop)
    return _finish(run, outputs, state=state, compiles=compiles)


def _run_nnx(directory, step, batches) -> Observation:
    run = _init(directory)
    model, optimizer = _nnx_model()
    outputs = []

    def loop():
        for x, y in batches:
            outputs.append(_leaves_of((step(model, optimizer, x, y), _nnx_params(model))))

    compiles = _compile_events(loop)
    return _finish(run, outputs, model=model, compiles=compiles)


def _run_optax(directory, step, batches) -> Observation:
    run = _init(directory)
    params = _mlp_params()
    state = (params, TX.init(params))
    outputs = []
    for x, y in batches:
        out = step(*state, x, y)
        outputs.append(_leaves_of(out))
        state = out[:2]
    return _finish(run, outputs)


@pytest.fixture(scope="module")
def linen_outputs(tmp_path_factory) -> Observation:
    """The linen step observed with every statistic and activations, observe owning the jit."""
    step = _observe(linen_step, OUTPUTS, level="expert", activations=True)
    return _run_linen(tmp_path_factory.mktemp("linen"), step, _batches(K, images=True))


@pytest.fixture(scope="module")
def linen_light(tmp_path_factory) -> Observation:
    """20 steps observed with observe owning the jit (norms and activation means)."""
    step = _observe(linen_step, OUTPUTS, activations=True, **LIGHT)
    obs = _run_linen(tmp_path_factory.mktemp("linen-light"), step, _batches(20, images=True))
    # every=1, no histograms: one program (the plain one is never built), compiled once.
    obs.extra["cache_sizes"] = [jitted._cache_size() for jitted in step._programs.values()]
    return obs


@pytest.fixture(scope="module")
def linen_callback(tmp_path_factory) -> Observation:
    """The first K of those steps observed under jax.jit (the io_callback transport)."""
    step = _observe(linen_step, CALLBACK, activations=True, **LIGHT)
    return _run_linen(tmp_path_factory.mktemp("linen-cb"), step, _batches(K, images=True))


@pytest.fixture(scope="module")
def nnx_outputs(tmp_path_factory) -> Observation:
    """The NNX step observed with every statistic and activations, beside an unobserved model
    of the same classes."""
    bystander = MLP(nnx.Rngs(7))
    before = (_nnx_params(bystander), nnx.graphdef(bystander))
    step = _observe(nnx_step, OUTPUTS, level="expert", activations=True)
    obs = _run_nnx(tmp_path_factory.mktemp("nnx"), step, _batches(K, images=False))
    obs.extra.update(bystander=bystander, bystander_before=before)
    return obs


@pytest.fixture(scope="module")
def nnx_transports(tmp_path_factory) -> dict[str, Observation]:
    """The NNX step observed (norms, activation means) through both transports."""
    return {
        t: _run_nnx(
            tmp_path_factory.mktemp(f"nnx-{t}"),
            _observe(nnx_step, t, jit=nnx.jit, activations=True, **LIGHT),
            _batches(K, images=False),
        )
        for t in (OUTPUTS, CALLBACK)
    }


@pytest.fixture(scope="module")
def optax_outputs(tmp_path_factory) -> Observation:
    """The plain optax step observed with every statistic, no tap."""
    step = _observe(optax_step, OUTPUTS, level="expert")
    return _run_optax(tmp_path_factory.mktemp("optax"), step, _batches(K, images=False))


@pytest.fixture(scope="module")
def optax_transports(tmp_path_factory) -> dict[str, Observation]:
    """The plain optax step observed (norms) through both transports."""
    return {
        t: _run_optax(
            tmp_path_factory.mktemp(f"optax-{t}"),
            _observe(optax_step, t, stats=("norm",)),
            _batches(K, images=False),
        )
        for t in (OUTPUTS, CALLBACK)
    }


def _act_layers(table) -> set[str]:
    return {k.split("/")[1] for k in table if k.startswith("acts/")}


# ----------------------------------------------------------------------------- 1-3: values


def test_linen_trainstate_records_match_numpy(linen_outputs):
    """Linen CNN + TrainState: grads/params/updates/acts/train series equal a NumPy replay."""
    table = linen_outputs.table
    _assert_matches(table, _linen_reference(_linen_state(), _batches(K, images=True)))
    layers = {"Conv_0", "Dense_0"}
    assert _act_layers(table) == set(linen_outputs.extra["state"].params) == layers
    assert table["acts/Conv_0/dead_frac"][0] >= 1 / 4
    assert table["acts/Conv_0/zero_frac"][0] > 0  # blank patches, zero bias: exact zeros
    assert linen_outputs.trainlog == table


@pytest.fixture(scope="module")
def nnx_reference() -> tuple[dict[int, dict[str, float]], dict]:
    """The NumPy records and final parameters of the unobserved NNX replay."""
    return _nnx_reference(_batches(K, images=False))


def test_nnx_records_match_numpy(nnx_outputs, nnx_reference):
    """NNX MLP + nnx.Optimizer: grads/params/updates/acts/train series equal a NumPy replay."""
    table = nnx_outputs.table
    expected, _ = nnx_reference
    _assert_matches(table, expected)
    assert _act_layers(table) == set(_nnx_params(nnx_outputs.extra["model"])) == {"l1", "l2"}
    assert table["acts/l1/dead_frac"][0] >= 1 / 32
    assert nnx_outputs.trainlog == table


def test_nnx_model_is_updated_in_place_and_left_unpatched(nnx_outputs, nnx_reference):
    """The observed model is trained in place, its layers are nnx.Linear again, and another
    model of the same classes is untouched."""
    model = nnx_outputs.extra["model"]
    _, ref_params = nnx_reference
    after = _nnx_params(model)
    jax.tree.map(
        functools.partial(np.testing.assert_allclose, rtol=RTOL, atol=ATOL), after, ref_params
    )
    assert not np.allclose(after["l2"]["kernel"], _nnx_params(_nnx_model()[0])["l2"]["kernel"])
    bystander = nnx_outputs.extra["bystander"]
    params_before, graphdef_before = nnx_outputs.extra["bystander_before"]
    for layer in (model.l1, model.l2, bystander.l1, bystander.l2):
        assert type(layer) is nnx.Linear
        assert not hasattr(layer, "_jaxobs_path")
    jax.tree.map(np.testing.assert_array_equal, _nnx_params(bystander), params_before)
    assert nnx.graphdef(bystander) == graphdef_before
    x = _batches(1, images=False)[0][0]
    want = _nnx_acts(_float64(params_before), x)["l2"]
    np.testing.assert_allclose(np.asarray(bystander(x)), want, rtol=RTOL, atol=ATOL)


def test_nnx_observation_leaves_the_graphdef_unchanged(nnx_outputs):
    """After observed steps the model's graphdef equals that of a fresh model."""
    assert nnx.graphdef(nnx_outputs.extra["model"]) == nnx.graphdef(_nnx_model()[0])


def test_plain_optax_step_records_params_and_updates_without_tap(optax_outputs):
    """(params, opt_state, x, y) -> (params, opt_state, metrics): params/updates, no tap."""
    table = optax_outputs.table
    _assert_matches(table, _optax_reference(_batches(K, images=False)))
    assert not any(k.startswith(("grads/", "acts/")) for k in table)
    assert optax_outputs.trainlog == table


# ----------------------------------------------------------------------------- 4: transports


def _assert_same_values(a: list, b: list) -> None:
    """The same keys and values (rtol 1e-6), record by record, in order."""
    assert len(a) == len(b) == K
    for (step, va), (_, vb) in zip(a, b, strict=True):
        assert sorted(va) == sorted(vb), step
        keys = sorted(va)
        np.testing.assert_allclose(
            [vb[k] for k in keys], [va[k] for k in keys], rtol=1e-6, atol=1e-9, err_msg=str(step)
        )


def test_linen_transports_deliver_identical_records(linen_light, linen_callback):
    """observe owning the jit and jax.jit(observe(step)) (io_callback) log the same records."""
    assert [s for s, _ in linen_light.records] == list(range(20))
    assert [s for s, _ in linen_callback.records] == list(range(K))
    groups = {k.split("/")[0] for k in linen_callback.table}
    assert groups == {"grads", "params", "updates", "acts", "train"}
    assert _act_layers(linen_callback.table) == {"Conv_0", "Dense_0"}
    _assert_same_values(linen_light.records[:K], linen_callback.records)


def test_nnx_transports_deliver_identical_values(nnx_transports):
    """observe owning the jit and nnx.jit(observe(step)) log the same keys and values."""
    outputs, callback = nnx_transports[OUTPUTS], nnx_transports[CALLBACK]
    assert {"grads/l1/kernel/norm", "params/l2/bias/norm"} <= set(callback.records[0][1])
    assert _act_layers(callback.records[0][1]) == {"l1", "l2"}
    _assert_same_values(outputs.records, callback.records)


def test_nnx_transports_deliver_identical_steps(nnx_transports):
    """nnx.jit(observe(step)) logs each record at the same step as observe owning the jit."""
    assert [s for s, _ in nnx_transports[OUTPUTS].records] == list(range(K))
    assert [s for s, _ in nnx_transports[CALLBACK].records] == list(range(K))


def test_plain_optax_transports_deliver_identical_values(optax_transports):
    """observe owning the jit and jax.jit(observe(optax_step)) log the same keys and values."""
    outputs, callback = optax_transports[OUTPUTS], optax_transports[CALLBACK]
    assert {"params/dense/w/norm", "updates/dense/update_ratio"} <= set(callback.records[0][1])
    _assert_same_values(outputs.records, callback.records)


def test_plain_optax_transports_deliver_identical_steps(optax_transports):
    """jax.jit(observe(optax_step)) logs steps 0..K-1 like observe owning the jit."""
    assert [s for s, _ in optax_transports[OUTPUTS].records] == list(range(K))
    assert [s for s, _ in optax_transports[CALLBACK].records] == list(range(K))


# ----------------------------------------------------------------------------- 5: every


@pytest.fixture(scope="module")
def every_3(tmp_path_factory) -> Observation:
    """The linen step observed with every=3 for 7 steps."""
    step = jaxobs.observe(linen_step, every=3, activations=True, **LIGHT)
    return _run_linen(tmp_path_factory.mktemp("every"), step, _batches(7, images=True))


def test_every_n_samples_statistics(every_3):
    """every=3 over 7 steps: grads/params/updates/acts series have steps exactly 0, 3, 6."""
    table = every_3.table
    groups = {k.split("/")[0] for k in table if k.startswith(STAT_GROUPS)}
    assert groups == {"grads", "params", "updates", "acts"}
    assert all(sorted(v) == [0, 3, 6] for k, v in table.items() if k.startswith(STAT_GROUPS))


def test_every_n_still_records_metrics_every_step(every_3):
    """every=3 over 7 steps: train/loss is recorded at every step 0..6."""
    assert sorted(every_3.table["train/loss"]) == list(range(7))


# ----------------------------------------------------------------------------- 6: steps


def test_steps_come_from_the_trainstate(tmp_path):
    """A TrainState whose step starts at 100 is recorded at steps 100, 101, 102."""
    observed = jaxobs.observe(linen_step, stats=("norm",), watch=("params", "metrics"))
    run = _init(tmp_path)
    state = _linen_state(step=100)
    for x, y in _batches(3, images=True):
        state, _ = observed(state, x, y)
    run.finish()
    table = metric_table(read_events(run.dir))
    assert {"params/Conv_0/bias/norm", "train/loss"} <= set(table)
    assert all(sorted(series) == [100, 101, 102] for series in table.values())


def test_plain_optax_steps_count_from_zero(optax_outputs):
    """A step whose state carries no step counter is recorded at 0..K-1."""
    assert all(sorted(series) == list(range(K)) for series in optax_outputs.table.values())


def test_steps_come_from_the_nnx_optimizer(tmp_path):
    """An nnx.Optimizer already at step 2 is recorded at steps 2, 3."""
    model, optimizer = _nnx_model()
    optimizer.step.set_value(jnp.uint32(2))  # as restored from a checkpoint
    observed = jaxobs.observe(nnx_step, **NORMS)
    run = _init(tmp_path)
    for x, y in _batches(2, images=False):
        observed(model, optimizer, x, y)
    run.finish()
    assert sorted(metric_table(read_events(run.dir))["train/loss"]) == [2, 3]


# ----------------------------------------------------------------------------- 7: compiles


def test_observing_a_linen_step_adds_no_recompilation(linen_light):
    """Over 20 steps the observed step compiles as often as the bare jitted step (once)."""
    bare = jax.jit(linen_step)
    state = _linen_state()

    def loop():
        nonlocal state
        for x, y in _batches(20, images=True):
            state, _ = bare(state, x, y)

    bare_events = _compile_events(loop)
    assert bare_events and linen_light.extra["compiles"] == bare_events
    assert bare._cache_size() == 1 and linen_light.extra["cache_sizes"] == [1]
    assert sorted(linen_light.table["train/loss"]) == list(range(20))


def test_observing_an_nnx_step_adds_no_recompilation(nnx_outputs):
    """Over the same steps the observed NNX step compiles as often as the bare nnx.jit step."""
    model, optimizer = _nnx_model()
    bare = nnx.jit(nnx_step)

    def loop():
        for x, y in _batches(K, images=False):
            bare(model, optimizer, x, y)

    bare_events = _compile_events(loop)
    assert bare_events and nnx_outputs.extra["compiles"] == bare_events


# ----------------------------------------------------------------------------- 8: outputs


def _assert_same_outputs(bare: list[list[np.ndarray]], *observed: list[list[np.ndarray]]) -> None:
    for outputs in observed:
        assert len(outputs) == len(bare)
        for want, got in zip(bare, outputs, strict=True):
            assert len(want) == len(got)
            for a, b in zip(want, got, strict=True):
                assert a.dtype == b.dtype
                np.testing.assert_array_equal(a, b)


def test_linen_outputs_are_unchanged(linen_outputs, linen_light, linen_callback):
    """Both transports return exactly what the bare jitted linen step returns."""
    bare = jax.jit(linen_step)
    state, outputs = _linen_state(), []
    for x, y in _batches(K, images=True):
        out = bare(state, x, y)
        outputs.append(_leaves_of(out))
        state = out[0]
    _assert_same_outputs(
        outputs, linen_outputs.outputs, linen_light.outputs[:K], linen_callback.outputs
    )
    assert isinstance(linen_outputs.extra["state"], train_state.TrainState)


def test_nnx_outputs_and_models_are_unchanged(nnx_outputs, nnx_transports):
    """Both transports return, and leave in the model, exactly what the bare nnx.jit does."""
    bare = nnx.jit(nnx_step)
    (model, optimizer), outputs = _nnx_model(), []
    for x, y in _batches(K, images=False):
        outputs.append(_leaves_of((bare(model, optimizer, x, y), _nnx_params(model))))
    _assert_same_outputs(
        outputs, nnx_outputs.outputs, *(o.outputs for o in nnx_transports.values())
    )


def test_plain_optax_outputs_are_unchanged(optax_outputs, optax_transports):
    """Both transports return exactly what the bare jitted optax step returns."""
    bare = jax.jit(optax_step)
    params = _mlp_params()
    state, outputs = (params, TX.init(params)), []
    for x, y in _batches(K, images=False):
        out = bare(*state, x, y)
        outputs.append(_leaves_of(out))
        state = out[:2]
    _assert_same_outputs(
        outputs, optax_outputs.outputs, *(o.outputs for o in optax_transports.values())
    )


def test_donate_argnums_is_forwarded(tmp_path):
    """donate_argnums=(0,) donates the state: its buffers are gone after the call."""
    observed = jaxobs.observe(linen_step, donate_argnums=(0,), **METRICS_ONLY)
    run = _init(tmp_path)
    state = _linen_state()
    (x, y), *_ = _batches(1, images=True)
    new, _ = observed(state, x, y)
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(state.params))
    new, metrics = observed(new, x, y)
    assert np.isfinite(float(metrics["loss"]))
    run.finish()
    assert sorted(metric_table(read_events(run.dir))["train/loss"]) == [0, 1]


def _one_hot_step(state, x, y, n_classes):
    def loss_fn(params):
        logits = state.apply_fn({"params": params}, x)
        return optax.softmax_cross_entropy(logits, jax.nn.one_hot(y, n_classes)).mean()

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), {"loss": loss, "n_classes": n_classes}


def test_static_argnums_is_forwarded(tmp_path):
    """static_argnums=(3,) keeps a Python int static, as jax.jit does."""
    observed = jaxobs.observe(_one_hot_step, static_argnums=(3,), **METRICS_ONLY)
    bare = jax.jit(_one_hot_step, static_argnums=(3,))
    run = _init(tmp_path)
    state = _linen_state()
    (x, y), *_ = _batches(1, images=True)
    want, got = _leaves_of(bare(state, x, y, 10)), _leaves_of(observed(state, x, y, 10))
    jax.tree.map(np.testing.assert_array_equal, want, got)
    run.finish()
    assert metric_table(read_events(run.dir))["train/n_classes"] == {0: 10.0}


def test_static_argnames_accepts_positional_arguments(tmp_path):
    """static_argnames=("n_classes",) works when n_classes is passed positionally."""
    observed = jaxobs.observe(_one_hot_step, static_argnames=("n_classes",), **METRICS_ONLY)
    run = _init(tmp_path)
    (x, y), *_ = _batches(1, images=True)
    _, metrics = observed(_linen_state(), x, y, 10)
    run.finish()
    assert float(metrics["n_classes"]) == 10


def _tapping_step(state, x, y):
    state, metrics, grads = _linen_core(state, x, y)
    jaxobs.tap(loss=metrics["loss"], lr=0.1, grads=grads)
    return state, metrics


def test_tapped_scalars_keep_their_names(tmp_path):
    """jaxobs.tap(loss=loss, lr=0.1) records ``loss`` and ``lr`` under those names."""

    def step(state, x, y):
        state, metrics, _ = _linen_core(state, x, y)
        jaxobs.tap(loss=metrics["loss"], lr=0.1)
        return state, metrics

    observed = jaxobs.observe(step, **METRICS_ONLY)
    run = _init(tmp_path)
    state = _linen_state()
    for x, y in _batches(3, images=True):
        state, _ = observed(state, x, y)
    run.finish()
    table = metric_table(read_events(run.dir))
    assert table["loss"] == table["train/loss"]
    assert sorted(table["lr"]) == [0, 1, 2]
    np.testing.assert_allclose(list(table["lr"].values()), 0.1, rtol=1e-6)


def test_watch_leaves_out_grads_and_taps(tmp_path):
    """watch without 'grads' and 'taps' records no grads/... and no tapped scalars."""
    observed = jaxobs.observe(_tapping_step, watch=("params", "updates", "metrics"), **LIGHT)
    run = _init(tmp_path)
    (x, y), *_ = _batches(1, images=True)
    observed(_linen_state(), x, y)
    run.finish()
    table = metric_table(read_events(run.dir))
    assert "params/Dense_0/kernel/norm" in table and "train/loss" in table
    assert not [k for k in table if k.startswith("grads/") or k in ("lr", "loss")]


# ----------------------------------------------------------------------------- 9: errors


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"every": 0}, "0"),
        ({"every": -2}, "-2"),
        ({"watch": ["grads", "gradz"]}, "gradz"),
        ({"stats": ["norm", "nrom"]}, "nrom"),
        ({"act_stats": ["dead_frac", "deadness"]}, "deadness"),
    ],
)
def test_bad_options_raise_value_error_naming_the_value(options, named):
    """Bad every/watch/stats values raise ValueError naming the bad value."""
    with pytest.raises(ValueError, match=named):
        jaxobs.observe(**options)(linen_step)


def test_tap_outside_an_observed_step_records_nothing(tmp_path):
    """jaxobs.tap outside an observed step (eagerly or under a plain jit) records nothing."""
    run = _init(tmp_path)
    jaxobs.tap(lr=0.1, grads={"w": jnp.ones(3)})

    @jax.jit
    def f(x):
        jaxobs.tap(x=x, tree={"w": x * 2})
        return x + 1

    assert float(f(jnp.float32(1.0))) == 2.0
    run.finish()
    assert [e["event"] for e in read_events(run.dir)] == ["run_start", "run_end"]


# ----------------------------------------------------------------------------- 10: finish


def _slow_step(state, x):
    """A step slow enough (~0.5 s on CPU) to be still running when finish() is called (when
    XLA dispatches it asynchronously)."""
    wide = jnp.tile(x, (4, 16))  # (4 B, 1024)
    h = jax.lax.fori_loop(0, 6, lambda i, h: jnp.tanh(h @ state.params["w"]), wide)
    params = {"w": state.params["w"] * 0.5}
    return state.replace(step=state.step + 1, params=params), {"loss": jnp.mean(h**2)}


@pytest.mark.parametrize("transport", [OUTPUTS, CALLBACK])
def test_finish_keeps_the_last_step(tmp_path, transport):
    """run.finish() right after the last step still records that step's statistics."""
    x = _digits()[0].reshape(-1, 64)[:512]
    step = _observe(_slow_step, transport, **NORMS)
    run = _init(tmp_path)
    state = train_state.TrainState.create(
        apply_fn=None, params={"w": jnp.eye(1024) * 0.9}, tx=optax.identity()
    ).replace(step=jnp.int32(0))
    try:
        for _ in range(2):
            state, _ = step(state, x)
        run.finish()  # no block_until_ready: the last step may still be running
    finally:
        jax.effects_barrier()  # late records must not reach another test's run
    events = read_events(run.dir)
    assert events[-1]["event"] == "run_end"
    table = metric_table(events)
    assert sorted(table["train/loss"]) == [0, 1]
    np.testing.assert_allclose(table["params/w/norm"][1], 0.9 * 0.25 * math.sqrt(1024), rtol=1e-5)
    assert _trainlog_table(run.dir)["params/w/norm"] == table["params/w/norm"]


# ----------------------------------------------------------------------------- 11: runs


class _Gate:
    """A monitor whose first ``on_log`` (on the delivery thread) waits until it is opened."""

    def __init__(self):
        import threading

        self.entered, self.opened = threading.Event(), threading.Event()

    def on_log(self, run, step, values):
        self.entered.set()
        assert self.opened.wait(60), "the test never opened the gate"


def test_records_go_to_the_run_active_when_the_step_was_called(tmp_path):
    """Records dispatched while run A was active land in A, even when run B starts before
    they are delivered."""
    observed = jaxobs.observe(optax_step, **METRICS_ONLY)
    params = _mlp_params()
    state = (params, TX.init(params))
    (x, y), *_ = _batches(1, images=False)
    run_a = jaxobs.init(project="engine", dir=tmp_path / "a", terminal=False)
    gate = _Gate()
    run_a.add_monitor(gate)
    state = observed(*state, x, y)[:2]  # step 0: its delivery waits in the gate
    assert gate.entered.wait(60)
    state = observed(*state, x, y)[:2]  # step 1: queued behind it, for run A
    run_b = jaxobs.init(project="engine", dir=tmp_path / "b", terminal=False)
    gate.opened.set()
    observed.flush()
    run_b.finish()
    run_a.finish()
    assert sorted(metric_table(read_events(run_a.dir))["train/loss"]) == [0, 1]
    assert "train/loss" not in metric_table(read_events(run_b.dir))
