"""jaxobs.stats against an independent float64 NumPy reference.

The reference restates the module docstring: float64 over the finite elements (norm, rms,
mean, population std, min, max, max_abs), zero_frac over all elements, nonfinite counts NaN
and +-inf. Trees are walked by hand (dict keys, list and tuple indices), not with
jax.tree_util, so key paths are checked independently too.

Runtime note: outside jit every leaf costs an XLA compile (see
test_eager_leaf_stats_does_not_recompile), so trees are small and the per-leaf and per-layer
statistics of one tree are computed in one call (keys prefixed ``leaf/`` and ``layer/``).
"""

from __future__ import annotations

import functools
import typing

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxobs.stats import (
    ACT_STATS,
    STATS,
    activation_stats,
    global_norm,
    leaf_stats,
    path_str,
    tree_stats,
    update_ratio,
)

TRANSFORMS = [pytest.param(lambda f: f, id="eager"), pytest.param(jax.jit, id="jit")]
SEEDS = [0, 1]
RTOL = 1e-5  # float32 accumulation vs float64, f16/bf16 included (same upcast values)
EXACT = ("min", "max", "max_abs", "nonfinite")  # elements or counts: no rounding at all
FLOAT_NAMES = ("float16", "bfloat16", "float32", "float64")

# The fixed structure of `flax_like_tree`: its float leaf paths, and the layers they form.
LEAF_PATHS = (
    "params/Dense_0/kernel",
    "params/Dense_0/bias",
    "params/Conv_0/kernel",
    "params/Conv_0/bias",
    "extra/0",
    "extra/1/0",
    "temperature",
)
LAYERS = ("params/Dense_0", "params/Conv_0", "extra", "extra/1", "temperature")
BOTH_KEYS = {f"leaf/{n}/{s}" for n in LEAF_PATHS for s in STATS} | {
    f"layer/{n}/{s}" for n in LAYERS for s in STATS
}


# ----------------------------------------------------------------------------- reference


def ref_stats(x) -> dict[str, float | None]:
    """The docstring's statistics of one array in float64 NumPy (None: no finite element)."""
    a = np.asarray(x, dtype=np.float64).ravel()
    fin = a[np.isfinite(a)]
    counts = {"zero_frac": float(np.mean(a == 0)), "nonfinite": float(np.sum(~np.isfinite(a)))}
    if not fin.size:  # only the sum-based norm is defined on an empty finite part
        return {**dict.fromkeys(STATS), "norm": 0.0, **counts}
    return {
        "norm": float(np.sqrt(np.sum(fin * fin))),
        "rms": float(np.sqrt(np.mean(fin * fin))),
        "mean": float(np.mean(fin)),
        "std": float(np.std(fin)),
        "min": float(np.min(fin)),
        "max": float(np.max(fin)),
        "max_abs": float(np.max(np.abs(fin))),
        **counts,
    }


def ref_walk(tree, path=()):
    """(path, leaf) pairs of nested dicts, lists and tuples, walked by hand."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from ref_walk(value, (*path, str(key)))
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            yield from ref_walk(value, (*path, str(i)))
    else:
        yield "/".join(path), tree


def ref_tree_stats(tree, stats=STATS, per="leaf", prefix=""):
    """({key: value}, {key: mean square of the group}) for the float, non-empty leaves."""
    groups: dict[str, list[np.ndarray]] = {}
    for path, leaf in ref_walk(tree):
        if np.dtype(leaf.dtype).name not in FLOAT_NAMES or np.size(leaf) == 0:
            continue
        name = path if per == "leaf" else (path.rsplit("/", 1)[0] if "/" in path else path)
        groups.setdefault(name, []).append(np.asarray(leaf, dtype=np.float64).ravel())
    head = f"{prefix}/" if prefix else ""
    values, scales = {}, {}
    for name, parts in groups.items():
        ref = ref_stats(np.concatenate(parts))
        for s in stats:
            values[f"{head}{name}/{s}"] = ref[s]
            scales[f"{head}{name}/{s}"] = (ref["rms"] or 0.0) ** 2
    return values, scales


def ref_both(tree, stats=STATS):
    """The reference for `both`: per-leaf keys under leaf/, per-layer keys under layer/."""
    leaf, leaf_scales = ref_tree_stats(tree, stats, "leaf", "leaf")
    layer, layer_scales = ref_tree_stats(tree, stats, "layer", "layer")
    return {**leaf, **layer}, {**leaf_scales, **layer_scales}


def both(tree, stats=STATS):
    """tree_stats per leaf (prefix leaf) and per layer (prefix layer), in one call."""
    return {
        **tree_stats(tree, stats, per="leaf", prefix="leaf"),
        **tree_stats(tree, stats, per="layer", prefix="layer"),
    }


def check(got, want, scales, rtol=RTOL):
    """`got` (jaxobs, float32 scalars) equals `want` (float64 NumPy; None: not checked).

    min, max, max_abs and nonfinite are exact. mean is compared with an absolute tolerance of
    rtol * rms and std through the variance with rtol * mean square: the error a float32
    accumulation of sums and sums of squares is entitled to.
    """
    assert set(got) == set(want)
    for key, expected in want.items():
        value = np.asarray(got[key])
        assert value.dtype == np.float32 and value.shape == (), key
        if expected is None:
            continue
        value = value.astype(np.float64)
        stat = key.rsplit("/", 1)[-1]
        if stat in EXACT:
            np.testing.assert_array_equal(value, expected, err_msg=key)
        elif stat == "mean":
            atol = rtol * np.sqrt(scales[key])
            np.testing.assert_allclose(value, expected, rtol=rtol, atol=atol, err_msg=key)
        elif stat == "std":
            atol = rtol * scales[key]
            np.testing.assert_allclose(value**2, expected**2, rtol=rtol, atol=atol, err_msg=key)
        else:
            np.testing.assert_allclose(value, expected, rtol=rtol, err_msg=key)


def check_leaf(got, x, rtol=RTOL):
    """`leaf_stats(x)` output (any subset) against the reference for x."""
    ref = ref_stats(x)
    check(got, {s: ref[s] for s in got}, dict.fromkeys(got, (ref["rms"] or 0.0) ** 2), rtol)


def values(rng, shape, dtype=np.float32):
    """Random values of a random scale and offset, about 10% exact zeros (some -0.0)."""
    scale = 10.0 ** rng.uniform(-3, 2)
    x = rng.standard_normal(shape) * scale + rng.uniform(-0.5, 0.5) * scale
    x = np.where(rng.random(shape) < 0.1, rng.choice([0.0, -0.0], shape), x)
    return jnp.asarray(np.asarray(x, dtype=np.float32), dtype=dtype)


def flax_like_tree(seed, dtypes=(np.float32,)):
    """A flax-params-like tree with random shapes (0-d leaves too), a list and a tuple.

    Leaf dtypes cycle through `dtypes`.
    """
    rng = np.random.default_rng(seed)
    d_in, d_out, c_in, c_out, m = (int(n) for n in rng.integers(2, 7, 5))
    k = int(rng.integers(1, 4))
    shapes = [(d_in, d_out), (d_out,), (k, k, c_in, c_out), (c_out,), (), (m,), ()]
    leaves = [values(rng, s, dtypes[i % len(dtypes)]) for i, s in enumerate(shapes)]
    return {
        "params": {
            "Dense_0": {"kernel": leaves[0], "bias": leaves[1]},
            "Conv_0": {"kernel": leaves[2], "bias": leaves[3]},
        },
        "extra": [leaves[4], (leaves[5],)],
        "temperature": leaves[6],
    }


def with_leaf(tree, path, new):
    """A copy of a nested dict/list/tuple tree with the leaf at `path` replaced."""
    head, *rest = path.split("/")
    if isinstance(tree, dict):
        out = dict(tree)
        out[head] = with_leaf(tree[head], "/".join(rest), new) if rest else new
        return out
    items = list(tree)
    items[int(head)] = with_leaf(tree[int(head)], "/".join(rest), new) if rest else new
    return type(tree)(items)


def poison(leaf, rng, bad):
    """`leaf` with about a third of its elements (at least one, not all) set to `bad` values."""
    x = np.array(leaf, dtype=np.float32).ravel()
    assert x.size >= 2
    n_bad = max(1, x.size // 3)
    x[rng.choice(x.size, n_bad, replace=False)] = rng.choice(bad, n_bad)
    return jnp.asarray(x.reshape(np.shape(leaf)), dtype=leaf.dtype)


def get(tree, path):
    """The leaf at a /-joined path of a nested dict/list/tuple tree."""
    for part in path.split("/"):
        tree = tree[part] if isinstance(tree, dict) else tree[int(part)]
    return tree


# ----------------------------------------------------------------------------- leaf_stats


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_leaf_stats_matches_numpy(transform, seed):
    """leaf_stats of random arrays (0-d to 4-d) equals the float64 NumPy reference."""
    rng = np.random.default_rng(seed)
    f = transform(leaf_stats)
    for shape in [(), (7,), (2, 3, 4, 2)]:
        x = values(rng, shape)
        got = f(x)
        assert set(got) == set(STATS)
        check_leaf(got, x)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_leaf_stats_by_hand(transform):
    """[3, 4, 0, nan] has norm 5, mean 7/3, zero_frac 1/4 and one nonfinite element."""
    got = transform(leaf_stats)(jnp.array([3.0, 4.0, 0.0, jnp.nan]))
    assert {k: float(v) for k, v in got.items()} == {
        "norm": 5.0,
        "rms": pytest.approx(5.0 / np.sqrt(3.0)),
        "mean": pytest.approx(7.0 / 3.0),
        "std": pytest.approx(np.std([3.0, 4.0, 0.0])),
        "min": 0.0,
        "max": 4.0,
        "max_abs": 4.0,
        "zero_frac": 0.25,
        "nonfinite": 1.0,
    }


# ----------------------------------------------------------------------------- tree_stats


def test_tree_stats_exact_keys():
    """Keys are <prefix>/<path>/<stat> per leaf and <prefix>/<layer>/<stat> per layer."""
    tree = flax_like_tree(0)
    keys = lambda **kw: set(jax.eval_shape(lambda t: tree_stats(t, **kw), tree))  # noqa: E731
    assert keys() == {f"{n}/{s}" for n in LEAF_PATHS for s in STATS}
    assert keys(per="layer") == {f"{n}/{s}" for n in LAYERS for s in STATS}
    assert keys(prefix="grads") == {f"grads/{n}/{s}" for n in LEAF_PATHS for s in STATS}
    assert keys(per="layer", prefix="grads") == {f"grads/{n}/{s}" for n in LAYERS for s in STATS}
    assert "grads/params/Dense_0/kernel/norm" in keys(prefix="grads")
    assert "grads/params/Dense_0/norm" in keys(per="layer", prefix="grads")


@functools.cache
def tree_results(transform, seed):
    """(flax_like_tree(seed), both() of it under `transform`), shared by several tests."""
    tree = flax_like_tree(seed)
    return tree, transform(both)(tree)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_tree_stats_matches_numpy(transform, seed):
    """tree_stats of a random flax-like tree equals the NumPy reference, per leaf and layer."""
    tree, got = tree_results(transform, seed)
    want, scales = ref_both(tree)
    assert set(want) == BOTH_KEYS
    check(got, want, scales)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_low_precision_leaves(transform):
    """f16 and bf16 leaves (mixed within layers) are accumulated in float32."""
    tree = flax_like_tree(3, (jnp.float16, jnp.bfloat16, np.float32))
    assert get(tree, "params/Dense_0/kernel").dtype == jnp.float16
    assert get(tree, "params/Dense_0/bias").dtype == jnp.bfloat16
    got = transform(both)(tree)
    want, scales = ref_both(tree)  # float64 over the very same (upcast) f16/bf16 values
    check(got, want, scales)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_low_precision_sums_do_not_overflow(transform):
    """A f16 leaf whose sum of squares overflows f16 still has the right norm and std."""
    x = jnp.asarray(np.random.default_rng(2).uniform(250, 300, (64, 64)), jnp.float16)
    got = transform(leaf_stats)(x)  # sum of squares 3e8 >> f16 max 65504
    check_leaf(got, x)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_skips_integer_bool_and_empty_leaves(transform):
    """Integer, bool and empty leaves produce no keys and do not change their layer."""
    rng = np.random.default_rng(4)
    tree = {
        "params": {
            "Dense_0": {
                "kernel": values(rng, (3, 2)),
                "count": jnp.array([1, 2, 3], jnp.uint8),
                "empty": jnp.zeros((0,), jnp.bfloat16),
            },
            "Embed_0": {"ids": jnp.arange(6, dtype=jnp.int32).reshape(2, 3)},
        },
        "step": jnp.array(7, jnp.int32),
        "mask": jnp.array([True, False, True]),
        "nothing": jnp.zeros((0, 3), jnp.float32),
        "temperature": values(rng, ()),
    }
    got = transform(both)(tree)
    want, scales = ref_both(tree)
    names = ["leaf/params/Dense_0/kernel", "leaf/temperature", "layer/params/Dense_0"]
    assert set(want) == {f"{n}/{s}" for n in [*names, "layer/temperature"] for s in STATS}
    check(got, want, scales)
    kernel_only = {"params": {"Dense_0": {"kernel": tree["params"]["Dense_0"]["kernel"]}}}
    want, scales = ref_tree_stats(kernel_only, per="layer", prefix="layer")
    check({k: got[k] for k in want}, want, scales)


# Leaves of flax_like_tree(0) made non-finite, and how.
SICK = {
    "params/Dense_0/kernel": [np.nan],  # some NaN
    "params/Dense_0/bias": [-np.inf],  # some -inf
    "params/Conv_0/kernel": None,  # all NaN
    "extra/1/0": [np.nan, np.inf, -np.inf],  # some of each
}


def sick_tree(seed=0):
    """(clean tree, the same tree with the SICK leaves made non-finite)."""
    tree = flax_like_tree(seed)
    rng = np.random.default_rng(seed)
    sick = tree
    for path, bad in SICK.items():
        leaf = get(tree, path)
        new = jnp.full(leaf.shape, jnp.nan, leaf.dtype) if bad is None else poison(leaf, rng, bad)
        sick = with_leaf(sick, path, new)
    return tree, sick


@functools.cache
def sick_results(transform):
    """(sick tree, both() of the sick tree, both() of the clean tree) under `transform`."""
    _, sick = sick_tree()
    _, clean = tree_results(transform, 0)  # same shapes: jit compiles once for both
    return sick, transform(both)(sick), clean


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_nonfinite_leaves_report_finite_part_and_poison_nothing(transform):
    """NaN/inf leaves: nonfinite > 0 and finite-part statistics; other keys bitwise unchanged."""
    sick, got, clean = sick_results(transform)
    want, scales = ref_both(sick)
    check(got, want, scales)
    sick_layers = {"layer/params/Dense_0", "layer/params/Conv_0", "layer/extra/1"}
    sick_names = {f"leaf/{p}" for p in SICK} | sick_layers
    for name in sick_names:
        assert float(got[f"{name}/nonfinite"]) > 0, name
    unchanged = [k for k in clean if k.rsplit("/", 1)[0] not in sick_names]
    assert len(unchanged) == 5 * len(STATS)  # Conv_0/bias, extra/0, temperature; 2 layers
    for key in unchanged:
        np.testing.assert_array_equal(got[key], clean[key], err_msg=key)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_all_nan_leaf(transform):
    """An all-NaN leaf: every element nonfinite, norm 0, moments NaN; its layer = the rest."""
    sick, got, _ = sick_results(transform)
    kernel = get(sick, "params/Conv_0/kernel")
    name = "leaf/params/Conv_0/kernel"
    assert float(got[f"{name}/nonfinite"]) == kernel.size
    assert float(got[f"{name}/norm"]) == 0.0
    assert float(got[f"{name}/zero_frac"]) == 0.0
    for s in ("rms", "mean", "std", "min", "max", "max_abs"):  # no finite part: undefined
        assert np.isnan(float(got[f"{name}/{s}"])), s
    bias = get(sick, "params/Conv_0/bias")  # the layer's finite part is its bias
    ref = ref_stats(bias)
    want = {f"layer/params/Conv_0/{s}": ref[s] for s in STATS}
    want["layer/params/Conv_0/nonfinite"] = float(kernel.size)
    want["layer/params/Conv_0/zero_frac"] = ref["zero_frac"] * bias.size / (bias.size + kernel.size)
    check({k: got[k] for k in want}, want, dict.fromkeys(want, ref["rms"] ** 2))


def test_all_nan_leaf_max_abs_is_not_infinite():
    """An all-NaN leaf has no finite element, so its largest finite |x| cannot be +inf."""
    got = leaf_stats(jnp.full((3,), jnp.nan), ["max_abs"])
    assert not np.isposinf(float(got["max_abs"]))


SUBSETS = [(s,) for s in STATS] + [
    ("min", "max"),
    ("mean", "std"),
    ("zero_frac", "nonfinite"),
    ("max_abs", "norm", "rms"),
]


def test_subsets_of_stats():
    """Each subset of statistics gives exactly those keys and reference values (also NaN leaves)."""
    rng = np.random.default_rng(6)
    tree = {  # a layer with a NaN/inf kernel and a clean bias, and a clean 0-d leaf
        "Dense_0": {
            "kernel": poison(values(rng, (3, 4)), rng, [np.nan, np.inf]),
            "bias": values(rng, (4,)),
        },
        "scale": values(rng, ()),
    }

    @jax.jit
    def all_subsets(t):
        return [both(t, subset) for subset in SUBSETS] + [both(t, "norm")]

    leaves, layers = ["Dense_0/kernel", "Dense_0/bias", "scale"], ["Dense_0", "scale"]
    for subset, got in zip([*SUBSETS, ("norm",)], all_subsets(tree), strict=True):
        keys = {f"leaf/{n}/{s}" for n in leaves for s in subset}
        assert set(got) == keys | {f"layer/{n}/{s}" for n in layers for s in subset}
        want, scales = ref_both(tree, subset)
        check(got, want, scales)


def test_unknown_stats_raise():
    """Unknown or empty statistic lists raise ValueError naming the choices."""
    tree = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match="bogus"):
        tree_stats(tree, ["norm", "bogus"])
    with pytest.raises(ValueError, match="max_abs"):
        leaf_stats(jnp.ones(3), ["median"])
    with pytest.raises(ValueError):
        tree_stats(tree, [])
    with pytest.raises(ValueError, match="dead_frac"):  # norm is not an activation statistic
        activation_stats(jnp.ones((2, 3)), ["norm"])


def test_bad_per_raises():
    """per other than 'leaf' or 'layer' raises ValueError."""
    with pytest.raises(ValueError, match="bogus"):
        tree_stats({"w": jnp.ones(3)}, per="bogus")
    with pytest.raises(ValueError, match="bogus"):
        update_ratio({"w": jnp.ones(3)}, {"w": jnp.ones(3)}, per="bogus")


STD_CASES = {
    # LayerNorm-scale-like: a large common offset, small spread (one-pass cancellation)
    "offset": (lambda f: f, 100.0 + 0.01 * np.random.default_rng(0).standard_normal(4096)),
    "constant": (lambda f: f, np.full((1000,), 0.1)),
    "scalar-jit": (jax.jit, np.float32(100.1)),
}


@pytest.mark.parametrize("case", list(STD_CASES))
def test_std_keeps_float32_accuracy(case):
    """std keeps float32 relative accuracy for values with a large common offset."""
    transform, x = STD_CASES[case]
    x = jnp.asarray(x, jnp.float32)
    got = float(transform(lambda a: leaf_stats(a, ["std"]))(x)["std"])
    want = np.std(np.asarray(x, np.float64))
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-6 * float(jnp.max(jnp.abs(x))))


def test_stats_of_large_finite_values():
    """A leaf of finite float32 values gets finite norm and std when they are representable."""
    x = jnp.array([1e20, 1.0], jnp.float32)
    got = leaf_stats(x)
    assert float(got["nonfinite"]) == 0.0
    check_leaf(got, x)


def test_layer_stats_of_large_finite_values():
    """A layer of finite float32 values gets a finite norm when it is representable."""
    tree = {"l": {"w": jnp.array([1e20, 1.0], jnp.float32), "b": jnp.array([1.0, 2.0])}}
    got = tree_stats(tree, per="layer")
    assert float(got["l/nonfinite"]) == 0.0
    want, scales = ref_tree_stats(tree, per="layer")
    check(got, want, scales)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_std_with_outlying_first_element(transform):
    """std keeps float32 accuracy on a large leaf whose first element is an outlier."""
    x = np.random.default_rng(0).standard_normal(1_000_000).astype(np.float32)
    x[0] = 1000.0
    got = transform(lambda a: leaf_stats(a, ["std"]))(jnp.asarray(x))["std"]
    np.testing.assert_allclose(float(got), np.std(x.astype(np.float64)), rtol=1e-3)


def test_complex_leaf_is_skipped_or_measured_in_full():
    """A complex leaf is either skipped (not floating point) or measured with |z|, never Re z."""
    got = tree_stats({"c": jnp.array([3 + 4j, 0j], jnp.complex64)}, ["norm"])
    assert got == {} or float(got["c/norm"]) == pytest.approx(5.0)


def test_eager_leaf_stats_does_not_recompile():
    """A second eager leaf_stats call on a same-shaped array compiles nothing."""
    events = []

    def listener(event, duration, **kwargs):
        if "compil" in event:
            events.append(event)

    leaf_stats(jnp.ones((3, 4)))
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        jax.block_until_ready(leaf_stats(jnp.full((3, 4), 2.0, jnp.float32)))
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert events == []


# ----------------------------------------------------------------------------- vmap, sharding


def test_vmap_over_batch():
    """vmap over a leading batch axis equals the reference per batch element."""
    batch = 3
    rng = np.random.default_rng(10)
    shapes = {"params": {"Dense_0": {"kernel": (4, 3), "bias": (3,)}}, "extra": [(2,)], "t": ()}
    trees = [
        jax.tree.map(lambda s: values(rng, s), shapes, is_leaf=lambda s: isinstance(s, tuple))
        for _ in range(batch)
    ]
    kernel = get(trees[1], "params/Dense_0/kernel")  # element 1 alone has NaN/inf
    trees[1] = with_leaf(trees[1], "params/Dense_0/kernel", poison(kernel, rng, [np.nan, np.inf]))
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *trees)
    # jit around vmap only to compile once; the batching rules are vmap's either way.
    got = jax.jit(jax.vmap(lambda t: (both(t), leaf_stats(t["params"]["Dense_0"]["kernel"]))))(
        stacked
    )
    for b, tree in enumerate(trees):
        assert all(v.shape == (batch,) for v in got[0].values())
        want, scales = ref_both(tree)
        check({k: np.asarray(v)[b] for k, v in got[0].items()}, want, scales)
        leaf = {k: np.asarray(v)[b] for k, v in got[1].items()}
        check_leaf(leaf, get(tree, "params/Dense_0/kernel"))
    assert np.asarray(got[0]["leaf/params/Dense_0/kernel/nonfinite"]).tolist()[1] > 0
    assert len(got[0]) == 7 * len(STATS)  # leaves kernel, bias, extra/0, t; 3 layers


def test_sharded_inputs():
    """jit(tree_stats) on leaves sharded over (data, model) equals unsharded results and NumPy."""
    assert len(jax.devices()) >= 8
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "model"))
    rng = np.random.default_rng(20)
    tree = {
        "params": {
            "Dense_0": {
                "kernel": values(rng, (16, 8)),
                "bias": poison(values(rng, (4, 2)), rng, [np.nan, -np.inf]),
            }
        },
        "head": values(rng, (12, 4), jnp.bfloat16),
    }
    spec = NamedSharding(mesh, P("data", "model"))
    sharded = jax.tree.map(lambda x: jax.device_put(x, spec), tree)
    leaf = get(sharded, "params/Dense_0/kernel")
    assert leaf.sharding == spec and len({s.device for s in leaf.addressable_shards}) == 8
    got, plain = jax.jit(both)(sharded), both(tree)  # unsharded: eager, no second compile
    want, scales = ref_both(tree)
    check(got, want, scales)
    check(got, {k: float(v) for k, v in plain.items()}, scales, rtol=1e-6)


# ----------------------------------------------------------------------------- global_norm


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_global_norm_matches_numpy(transform, seed):
    """global_norm is sqrt of the sum of squares of every float leaf (integer leaves ignored)."""
    tree = flax_like_tree(seed, (np.float32, jnp.bfloat16))
    tree["step"] = jnp.array(3)
    got = transform(global_norm)(tree)
    assert got.dtype == jnp.float32 and got.shape == ()
    leaves = [np.asarray(x, np.float64).ravel() for p, x in ref_walk(tree) if p != "step"]
    want = np.sqrt(sum(np.sum(x * x) for x in leaves))
    np.testing.assert_allclose(float(got), want, rtol=RTOL)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_global_norm_nonfinite(transform, bad):
    """A NaN or infinite element makes global_norm non-finite (unlike tree_stats)."""
    tree = flax_like_tree(1)
    bias = np.array(get(tree, "params/Dense_0/bias"))
    bias[0] = bad
    got = transform(global_norm)(with_leaf(tree, "params/Dense_0/bias", jnp.asarray(bias)))
    assert not np.isfinite(float(got))


# ----------------------------------------------------------------------------- update_ratio


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_update_ratio_matches_numpy(transform):
    """update_ratio is ||update|| / (||param|| + eps) per layer or leaf, keyed .../update_ratio."""
    rng = np.random.default_rng(8)
    params = {
        "params": {
            "Dense_0": {"kernel": values(rng, (3, 4)), "bias": values(rng, (4,))},
            "Dense_1": {"kernel": values(rng, (4, 2)), "bias": values(rng, (2,))},
        }
    }
    updates = jax.tree.map(lambda x: values(rng, x.shape), params)

    def ratios(u, p):
        return update_ratio(u, p, prefix="opt"), update_ratio(u, p, per="leaf")

    per_layer, per_leaf = transform(ratios)(updates, params)
    for got, per, head in [(per_layer, "layer", "opt/"), (per_leaf, "leaf", "")]:
        u_norm, _ = ref_tree_stats(updates, ["norm"], per=per)
        p_norm, _ = ref_tree_stats(params, ["norm"], per=per)
        want = {
            f"{head}{k.removesuffix('/norm')}/update_ratio": u_norm[k] / (p_norm[k] + 1e-12)
            for k in u_norm
        }
        assert set(got) == set(want)
        for key in want:
            np.testing.assert_allclose(float(got[key]), want[key], rtol=RTOL, err_msg=key)
    assert set(per_layer) == {
        "opt/params/Dense_0/update_ratio",
        "opt/params/Dense_1/update_ratio",
    }
    assert "params/Dense_1/bias/update_ratio" in per_leaf


def test_update_ratio_by_hand():
    """A kernel of 2s updated by 0.5s (zero bias both) has ratio 0.25."""
    params = {"Dense_0": {"kernel": jnp.full((2, 2), 2.0), "bias": jnp.zeros(2)}}
    updates = {"Dense_0": {"kernel": jnp.full((2, 2), 0.5), "bias": jnp.zeros(2)}}
    got = update_ratio(updates, params)
    assert list(got) == ["Dense_0/update_ratio"]
    assert float(got["Dense_0/update_ratio"]) == pytest.approx(0.25)


def test_update_ratio_mismatched_trees_raise():
    """Updates and params with different leaves raise ValueError."""
    params = {"Dense_0": {"kernel": jnp.ones((2, 2))}, "Dense_1": {"kernel": jnp.ones(2)}}
    with pytest.raises(ValueError, match="Dense_1"):
        update_ratio({"Dense_0": {"kernel": jnp.ones((2, 2))}}, params)
    with pytest.raises(ValueError, match="kernel"):
        update_ratio(
            {"Dense_0": {"w": jnp.ones(2)}}, {"Dense_0": {"kernel": jnp.ones(2)}}, per="leaf"
        )


# ----------------------------------------------------------------------------- activation_stats


def ref_dead_frac(x, unit_axis):
    """Fraction of units (indices of unit_axis) that are zero across every other axis."""
    a = np.moveaxis(np.asarray(x, np.float64), unit_axis, 0).reshape(x.shape[unit_axis], -1)
    return float(np.mean(np.all(a == 0, axis=1)))


def relu_like(rng, shape, unit_axis, dead):
    """ReLU of normals with the units in `dead` zeroed for every example and position."""
    x = np.maximum(rng.standard_normal(shape), 0.0).astype(np.float32)
    index = [slice(None)] * len(shape)
    index[unit_axis] = dead
    x[tuple(index)] = 0.0
    return x


MOMENTS = ("mean", "std", "max_abs", "zero_frac")


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_activation_dead_frac_dense(transform):
    """dead_frac of a (batch, units) ReLU output is the fraction of all-zero units."""
    x = relu_like(np.random.default_rng(30), (16, 10), -1, [0, 3, 4])
    got = transform(activation_stats)(jnp.asarray(x))
    assert set(got) == set(ACT_STATS) - {"saturation_frac"}  # no saturation given
    assert ref_dead_frac(x, -1) == pytest.approx(0.3)
    assert float(got["dead_frac"]) == pytest.approx(0.3)
    check_leaf({s: got[s] for s in MOMENTS}, x)


@pytest.mark.parametrize("unit_axis", [-1, 1])
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_activation_dead_frac_conv(transform, unit_axis):
    """dead_frac of a (batch, h, w, channels) activation along unit_axis matches NumPy."""
    rng = np.random.default_rng(31)
    x = relu_like(rng, (4, 5, 6, 8), unit_axis, [1, 2] if unit_axis == 1 else [0, 5, 7])
    x[0, 0, 0, :] = 0.0  # zeros at one position never make a unit dead
    x[:, 3, :, 6] = 0.0  # nor zeros along one row of channel 6 / at h=3 for one channel
    got = transform(lambda a: activation_stats(a, ["dead_frac"], unit_axis=unit_axis))(x)
    assert list(got) == ["dead_frac"]
    want = ref_dead_frac(x, unit_axis)
    assert want == pytest.approx(2 / 5 if unit_axis == 1 else 3 / 8)
    assert float(got["dead_frac"]) == pytest.approx(want)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_activation_dead_frac_pre_activation(transform):
    """Per the docstring a unit <= 0 everywhere is dead; a single positive value keeps it alive."""
    x = np.random.default_rng(34).standard_normal((16, 8)).astype(np.float32)
    x[:, [1, 6]] = -np.abs(x[:, [1, 6]])  # never positive: a ReLU after it is dead
    x[:, 2] = -np.abs(x[:, 2])
    x[5, 2] = 0.5  # one positive value: alive
    x[:, 4] = 0.0
    want = float(np.mean(np.all(x <= 0, axis=0)))
    assert want == 3 / 8
    got = transform(lambda a: activation_stats(a, ["dead_frac"]))(jnp.asarray(x))
    assert float(got["dead_frac"]) == pytest.approx(want)


def away_from(x, thresholds, gap=1e-5):
    """x with values within `gap` of a threshold moved off it (float32 vs float64 thresholds)."""
    for t in thresholds:
        x = np.where(np.abs(x - t) < gap, t - 10 * gap, x)
    return x.astype(np.float32)


@pytest.mark.parametrize("kind", ["tanh", "sigmoid"])
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_activation_saturation_frac(transform, kind):
    """saturation_frac: |x| > 0.99 for tanh, x < 0.01 or x > 0.99 for sigmoid, over elements."""
    z = 3.0 * np.random.default_rng(32).standard_normal((32, 24))
    if kind == "tanh":
        x = away_from(np.tanh(z), [-0.99, 0.99])
        want = np.mean(np.abs(x.astype(np.float64)) > 0.99)
    else:
        x = away_from(1.0 / (1.0 + np.exp(-z)), [0.01, 0.99])
        x64 = x.astype(np.float64)
        want = np.mean((x64 < 0.01) | (x64 > 0.99))
    assert 0.05 < want < 0.95
    got = transform(lambda a: activation_stats(a, saturation=kind))(jnp.asarray(x))
    assert set(got) == set(ACT_STATS)
    np.testing.assert_allclose(float(got["saturation_frac"]), want, rtol=1e-6)
    check_leaf({s: got[s] for s in MOMENTS}, x)


def test_activation_bad_saturation_raises():
    """An unknown saturation name raises ValueError."""
    with pytest.raises(ValueError, match="relu"):
        activation_stats(jnp.ones((2, 3)), saturation="relu")
    with pytest.raises(ValueError, match="relu"):
        activation_stats(jnp.ones((2, 3)), ["saturation_frac"], saturation="relu")


def test_activation_stats_vmap():
    """vmap of activation_stats equals the reference for each batch element."""
    rng = np.random.default_rng(33)
    x = np.stack([relu_like(rng, (8, 6), -1, dead) for dead in ([0], [1, 2, 3], [])])
    got = jax.jit(jax.vmap(lambda a: activation_stats(a, saturation="tanh")))(jnp.asarray(x))
    for b in range(3):
        assert float(got["dead_frac"][b]) == pytest.approx(ref_dead_frac(x[b], -1))
        sat = np.mean(np.abs(x[b].astype(np.float64)) > 0.99)
        assert float(got["saturation_frac"][b]) == pytest.approx(sat)
        check_leaf({s: np.asarray(got[s])[b] for s in MOMENTS}, x[b])


# ----------------------------------------------------------------------------- path_str


class AdamState(typing.NamedTuple):
    """An optax-like state."""

    count: jax.Array
    mu: dict
    nu: list


@flax.struct.dataclass
class TrainState:
    """A flax struct dataclass with a static field."""

    params: dict
    opt: AdamState
    name: str = flax.struct.field(pytree_node=False, default="run")


class Box:
    """A pytree node registered without keys (its paths use FlattenedIndexKey)."""

    def __init__(self, a, b):
        self.a, self.b = a, b


jax.tree_util.register_pytree_node(Box, lambda x: ((x.a, x.b), None), lambda _, c: Box(*c))


def train_state():
    """A TrainState with a 3s kernel, an AdamState of ones and an integer count."""
    return TrainState(
        params={"Dense_0": {"kernel": jnp.full((2, 2), 3.0)}},
        opt=AdamState(jnp.array(0), {"Dense_0": {"kernel": jnp.ones((2, 2))}}, [jnp.ones(2)]),
    )


def test_path_str_key_kinds():
    """Dict, attribute (NamedTuple, struct dataclass), sequence and flattened-index keys."""
    tree = {
        "state": train_state(),
        "stack": [jnp.ones(1), (jnp.ones(1), Box(jnp.ones(1), jnp.ones(1)))],
        "ints": {3: {7: jnp.ones(1)}},
    }
    paths = [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    assert sorted(paths) == [
        "ints/3/7",
        "stack/0",
        "stack/1/0",
        "stack/1/1/0",
        "stack/1/1/1",
        "state/opt/count",
        "state/opt/mu/Dense_0/kernel",
        "state/opt/nu/0",
        "state/params/Dense_0/kernel",
    ]
    assert path_str(()) == ""


def test_tree_stats_on_struct_and_namedtuple():
    """tree_stats keys of a struct dataclass and NamedTuple use field names (int count skipped)."""
    got = tree_stats(train_state(), ["norm"], prefix="s")
    assert {k: float(v) for k, v in got.items()} == {
        "s/params/Dense_0/kernel/norm": 6.0,
        "s/opt/mu/Dense_0/kernel/norm": 2.0,
        "s/opt/nu/0/norm": pytest.approx(np.sqrt(2.0)),
    }
    layers = jax.eval_shape(lambda t: tree_stats(t, ["norm"], per="layer"), train_state())
    assert set(layers) == {"params/Dense_0/norm", "opt/mu/Dense_0/norm", "opt/nu/norm"}


# ----------------------------------------------------------------------------- compilation


def test_no_recompilation():
    """jit(tree_stats) on 20 same-shaped new values (healthy and not) compiles once."""
    events = []

    def listener(event, duration, **kwargs):
        if "compil" in event:
            events.append(event)

    rng = np.random.default_rng(40)
    base = {"Dense_0": {"kernel": values(rng, (4, 3)), "bias": values(rng, (3,))}}
    jitted = jax.jit(lambda t: tree_stats(t))
    jax.block_until_ready(jitted(base))
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        for i in range(20):
            tree = jax.tree.map(lambda x: values(rng, x.shape), base)
            if i % 5 == 0:  # the non-finite branch must not retrace either
                kernel = get(tree, "Dense_0/kernel")
                tree = with_leaf(tree, "Dense_0/kernel", poison(kernel, rng, [np.nan]))
            jax.block_until_ready(jitted(tree))
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert events == []
    if hasattr(jitted, "_cache_size"):
        assert jitted._cache_size() == 1


def test_unmasked_norms_are_non_finite_only_where_the_leaf_is():
    """``masked=False`` (what observe uses for norm-only sets): a leaf with NaN/inf has a
    non-finite norm, and so has the global norm; every clean leaf matches NumPy."""
    rng = np.random.default_rng(7)
    tree = {
        "Dense_0": {
            "kernel": poison(values(rng, (3, 4)), rng, [np.nan]),
            "bias": values(rng, (4,)),
        },
        "scale": values(rng, ()),
    }
    got = jax.jit(
        lambda t: tree_stats(t, ["norm"], prefix="g", with_global_norm=True, masked=False)
    )(tree)
    assert not np.isfinite(got["g/Dense_0/kernel/norm"])
    assert not np.isfinite(got["g/global_norm"])
    clean = {"Dense_0/bias": tree["Dense_0"]["bias"], "scale": tree["scale"]}
    for path, leaf in clean.items():
        want = np.linalg.norm(np.asarray(leaf, np.float64).ravel())
        np.testing.assert_allclose(got[f"g/{path}/norm"], want, rtol=1e-5)
    masked = tree_stats(tree, ["norm"], prefix="g", with_global_norm=True)
    kernel = np.asarray(tree["Dense_0"]["kernel"], np.float64)
    finite = kernel[np.isfinite(kernel)]
    np.testing.assert_allclose(masked["g/Dense_0/kernel/norm"], np.linalg.norm(finite), rtol=1e-5)
