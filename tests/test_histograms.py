"""On-device histograms: `jaxobs.stats.histogram`, ``observe(histograms=N)`` and
`jaxobs.Run.log_histograms`, checked against `numpy.histogram`. Values are read from the
run's events as the sinks receive them (`jaxobs.testing.capture_run`); the layout of the
records is checked on events.jsonl read back with json only."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_train
from helpers import read_events

import jaxobs
from jaxobs import stats
from jaxobs.testing import capture_run

F32_EPS = float(np.finfo(np.float32).eps)
OBSERVE_EVERY = 3  # observe(histograms=3)
OBSERVE_BINS = 16
OBSERVE_STEPS = 8


# ----------------------------------------------------------------------------- references


def _finite64(x) -> np.ndarray:
    """The finite elements of ``x`` (as float32 values, i.e. as the device sees them), in
    float64 for NumPy."""
    x = np.asarray(x, dtype=np.float32).ravel()
    return x[np.isfinite(x)].astype(np.float64)


def _bin_of(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """NumPy's bin of each value: ``edges[i] <= v < edges[i + 1]``, the last bin closed."""
    return np.clip(np.searchsorted(edges, values, side="right") - 1, 0, edges.size - 2)


def _assert_counts_match(counts, samples: np.ndarray, edges: np.ndarray, exact: bool = False):
    """``counts`` are numpy.histogram's counts of ``samples`` over ``edges``, except that an
    element within float32 rounding of an interior edge may land on either side of it.

    The device computes ``floor((x - min) / (max - min) * bins)`` in float32: the
    subtraction, the width, the division and the product each round by at most half an ulp
    of a value no larger than the range (in data units), so an element closer than a few
    ulps of the range to an edge may be binned on either side of it, while NumPy compares
    with its float64 edges exactly. Such elements are few (checked), and every bin that no
    such element touches must match NumPy exactly. ``exact``: every step is exact in float32
    (integers, power-of-two widths), so no element is excused.
    """
    counts = np.asarray(counts, dtype=np.float64)
    bins = edges.size - 1
    assert counts.shape == (bins,)
    reference = np.histogram(samples, edges)[0]
    assert counts.sum() == samples.size  # every finite element is counted exactly once
    tol = 0.0 if exact else 8 * F32_EPS * (edges[-1] - edges[0])
    low, high = _bin_of(samples - tol, edges), _bin_of(samples + tol, edges)
    ambiguous = low != high
    assert ambiguous.sum() <= max(3, samples.size // 1000), "the edge rule excuses too much"
    for i in range(bins):
        touched = np.any(ambiguous & (low <= i) & (high >= i))
        if not touched:
            assert counts[i] == reference[i], f"bin {i}: {counts[i]} != numpy's {reference[i]}"
        else:
            certain = np.sum((low == i) & (high == i))
            possible = np.sum((low <= i) & (high >= i))
            assert certain <= counts[i] <= possible, f"bin {i}: {counts[i]}"


def _assert_sums_close(total, squares, samples: np.ndarray):
    """float32 accumulation against float64: within 1e-5 of the sum of magnitudes."""
    scale = float(np.abs(samples).sum()) + 1e-30
    assert abs(float(total) - samples.sum()) <= 1e-5 * scale
    square_scale = float((samples * samples).sum()) + 1e-30
    assert abs(float(squares) - (samples * samples).sum()) <= 1e-5 * square_scale


def _data(kind: str) -> np.ndarray:
    rng = np.random.default_rng(sum(map(ord, kind)))
    if kind == "normal":
        return rng.normal(0.3, 2.0, size=(100, 100)).astype(np.float32)
    if kind == "uniform":
        return rng.uniform(-3.0, 5.0, size=5000).astype(np.float32)
    if kind == "nonfinite-mixed":
        x = rng.normal(size=3000).astype(np.float32)
        idx = rng.choice(x.size, size=90, replace=False)
        x[idx[:30]], x[idx[30:60]], x[idx[60:]] = np.nan, np.inf, -np.inf
        return x
    if kind == "large-offset":
        return (1000.0 + rng.normal(size=2000)).astype(np.float32)
    raise AssertionError(kind)


# ----------------------------------------------------------------------------- histogram


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize(
    ("kind", "bins"),
    [("normal", 64), ("uniform", 17), ("nonfinite-mixed", 32), ("large-offset", 50)],
)
def test_histogram_matches_numpy(kind, bins, jit):
    """Random data: range, counts, sum and sum of squares as numpy.histogram over finite values."""
    x = _data(kind)
    fn = jax.jit(stats.histogram, static_argnums=1) if jit else stats.histogram
    vector = np.asarray(fn(jnp.asarray(x), bins))
    assert vector.dtype == np.float32
    assert vector.shape == (bins + 4,)
    samples = _finite64(x)
    _, edges = np.histogram(samples, bins)
    assert vector[0] == samples.min() and vector[1] == samples.max()
    _assert_counts_match(vector[4:], samples, edges)
    _assert_sums_close(vector[2], vector[3], samples)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize(
    ("x", "bins"),
    [
        (np.arange(65, dtype=np.float32), 64),  # every value on an edge, the last on the max
        (np.full((4, 5), 3.25, np.float32), 4),  # all equal: range widened by 0.5 each side
        (np.full(7, -2.0, np.float32), 7),
        (np.array([-1.5], np.float32), 5),  # a single element
        (np.array([np.nan, 1.0, np.inf, 1.0, -np.inf], np.float32), 3),  # equal finite part
    ],
    ids=["on-edges", "all-equal-even", "all-equal-odd", "single", "equal-with-nonfinite"],
)
def test_histogram_exact_cases(x, bins, jit):
    """Cases exact in float32 match numpy.histogram (its default range) bin for bin."""
    fn = jax.jit(stats.histogram, static_argnums=1) if jit else stats.histogram
    vector = np.asarray(fn(jnp.asarray(x), bins))
    samples = _finite64(x)
    counts, edges = np.histogram(samples, bins)  # numpy widens an empty range by 0.5
    assert vector[0] == edges[0] and vector[1] == edges[-1]
    np.testing.assert_array_equal(vector[4:], counts)
    _assert_counts_match(vector[4:], samples, edges, exact=True)
    assert vector[2] == samples.sum()
    assert vector[3] == (samples * samples).sum()


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_histogram_without_finite_elements(jit):
    """No finite element: min and max NaN, zero sums and zero counts."""
    x = jnp.array([[np.nan, np.inf], [-np.inf, np.nan]], jnp.float32)
    fn = jax.jit(stats.histogram, static_argnums=1) if jit else stats.histogram
    vector = np.asarray(fn(x, 6))
    assert vector.shape == (10,)
    assert math.isnan(vector[0]) and math.isnan(vector[1])
    np.testing.assert_array_equal(vector[2:], np.zeros(8))


def test_histogram_of_bfloat16():
    """A bf16 array is binned as its float32 values."""
    xb = jnp.asarray(_data("normal"), jnp.bfloat16)
    vector = np.asarray(stats.histogram(xb, 20))
    samples = _finite64(np.asarray(xb.astype(jnp.float32)))
    _, edges = np.histogram(samples, 20)
    _assert_counts_match(vector[4:], samples, edges)
    _assert_sums_close(vector[2], vector[3], samples)


@pytest.mark.parametrize("bins", [0, -1, True, 2.5, "8", None])
def test_histogram_rejects_bad_bins(bins):
    """bins must be a positive int (not a bool)."""
    with pytest.raises(ValueError, match="bins"):
        stats.histogram(jnp.ones(4), bins)


def test_histogram_of_a_range_wider_than_float32():
    """Finite data whose range exceeds float32's max is still binned like numpy."""
    x = np.array([-3e38, -1e38, 0.0, 2e38, 3e38], np.float32)
    vector = np.asarray(stats.histogram(jnp.asarray(x), 4))
    counts, _ = np.histogram(_finite64(x), 4)
    np.testing.assert_array_equal(vector[4:], counts)


def test_histogram_all_equal_large_values():
    """All-equal values >= 2**23 are widened and binned like numpy (the middle bin)."""
    x = np.full(6, 1e8, np.float32)
    vector = np.asarray(stats.histogram(jnp.asarray(x), 4))
    counts, _ = np.histogram(_finite64(x), 4)
    assert vector[0] < vector[1]
    np.testing.assert_array_equal(vector[4:], counts)


# ----------------------------------------------------------------------------- histogram_record


def test_histogram_record_by_hand():
    """A hand-made vector: edges span min..max in equal bins; counts and sums as given."""
    record = stats.histogram_record(np.array([0.0, 4.0, 10.0, 30.0, 1.0, 2.0, 3.0, 4.0]))
    assert set(record) == {"edges", "counts", "sum", "sum_squares"}
    np.testing.assert_array_equal(record["edges"], [0.0, 1.0, 2.0, 3.0, 4.0])
    np.testing.assert_array_equal(record["counts"], [1.0, 2.0, 3.0, 4.0])
    assert record["sum"] == 10.0 and record["sum_squares"] == 30.0


def test_histogram_record_of_device_vector():
    """The record of a device histogram has numpy.histogram's edges and counts."""
    x = _data("uniform")
    record = stats.histogram_record(stats.histogram(jnp.asarray(x), 12))
    samples = _finite64(x)
    _, edges = np.histogram(samples, 12)
    np.testing.assert_allclose(record["edges"], edges, rtol=1e-12)
    _assert_counts_match(record["counts"], samples, edges)
    assert isinstance(record["sum"], float) and isinstance(record["sum_squares"], float)
    _assert_sums_close(record["sum"], record["sum_squares"], samples)


def test_histogram_record_without_finite_data():
    """No finite data: None."""
    assert stats.histogram_record(stats.histogram(jnp.array([np.nan, np.inf]), 4)) is None
    assert stats.histogram_record(np.array([np.nan, np.nan, 0.0, 0.0, 0.0, 0.0])) is None


# ----------------------------------------------------------------------------- observe


def _leaf_paths(tree) -> dict[str, np.ndarray]:
    """{"params/Dense_0/kernel": array} for a nested dict of arrays."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        out["/".join(str(k.key) for k in path)] = np.asarray(leaf)
    return out


@pytest.fixture(scope="module")
def observed(tmp_path_factory):
    """tiny_train's step observed with histograms every 3 steps and 16 bins: the histograms
    events as the sinks received them, every state (states[0] the initial one, states[i + 1]
    the one call i returned), and the histograms records of events.jsonl."""
    root = tmp_path_factory.mktemp("observed")
    with capture_run("hist", dir=root, config=tiny_train.DEFAULTS) as (run, capture):
        state = tiny_train.make_state(run.config)
        step = jaxobs.observe(
            tiny_train.step_fn, histograms=OBSERVE_EVERY, histogram_bins=OBSERVE_BINS
        )
        x, y = tiny_train.data()
        states = [state]
        for _ in range(OBSERVE_STEPS):
            state, _ = step(state, x, y)
            states.append(state)
    hist = capture.of_type("histograms")
    on_file = [e for e in read_events(run.dir) if e["event"] == "histograms"]
    return hist, states, on_file


def test_observe_histogram_steps(observed):
    """Histogram records come exactly every N steps of the TrainState's counter."""
    hist, states, on_file = observed
    assert [int(s.step) for s in states] == list(range(OBSERVE_STEPS + 1))
    assert [e.step for e in hist] == list(range(0, OBSERVE_STEPS, OBSERVE_EVERY))
    assert [e["step"] for e in on_file] == [e.step for e in hist]
    assert all(e.level == jaxobs.Level.DETAILED for e in hist)
    assert all(e["level"] == "DETAILED" for e in on_file)


def test_observe_histogram_records_on_file_hold_what_the_sinks_got(observed):
    """events.jsonl holds each histograms event as the sinks received it (JSON lists)."""
    hist, _, on_file = observed
    assert [r["values"] for r in on_file] == [e.data["values"] for e in hist]


def test_observe_histogram_names_and_shapes(observed):
    """params/, updates/ and grads/ of every parameter leaf, each with B + 1 edges and B counts."""
    _, states, hist = observed  # the layout of the records on file
    leaves = _leaf_paths(states[0].params)
    assert any(name.startswith("params/Dense_0/") for name in leaves)
    expected = {f"{group}/{path}" for group in ("params", "updates", "grads") for path in leaves}
    for record in hist:
        assert set(record["values"]) == expected
        for name, h in record["values"].items():
            assert set(h) == {"edges", "counts", "sum", "sum_squares"}, name
            assert len(h["edges"]) == OBSERVE_BINS + 1 and len(h["counts"]) == OBSERVE_BINS
            assert np.all(np.diff(h["edges"]) > 0), name


def test_observe_histogram_counts_every_element(observed):
    """Each histogram counts every element of its leaf exactly once."""
    hist, states, _ = observed
    sizes = {path: leaf.size for path, leaf in _leaf_paths(states[0].params).items()}
    for event in hist:
        for name, h in event.data["values"].items():
            path = name.split("/", 1)[1]
            assert sum(h["counts"]) == sizes[path], name


@pytest.mark.parametrize("group", ["params", "updates"])
def test_observe_histograms_match_numpy(observed, group):
    """The record at step s bins the parameters returned by call s (and their update) like NumPy."""
    hist, states, _ = observed
    for event in hist:
        s = event.step
        after = _leaf_paths(states[s + 1].params)
        before = _leaf_paths(states[s].params)
        for path, new in after.items():
            leaf = new if group == "params" else (new - before[path])  # float32 arithmetic
            samples = _finite64(leaf)
            h = event.data["values"][f"{group}/{path}"]
            _, edges = np.histogram(samples, OBSERVE_BINS)
            np.testing.assert_allclose(h["edges"], edges, rtol=1e-6)
            _assert_counts_match(h["counts"], samples, edges)
            _assert_sums_close(h["sum"], h["sum_squares"], samples)


def test_observe_without_histograms():
    """histograms=0 (the default) records no histograms."""
    with capture_run("hist", config=tiny_train.DEFAULTS) as (run, capture):
        state = tiny_train.make_state(run.config)
        step = jaxobs.observe(tiny_train.step_fn)
        x, y = tiny_train.data()
        for _ in range(2):
            state, _ = step(state, x, y)
    assert [e.step for e in capture.of_type("metrics")] == [0, 1]
    assert not capture.of_type("histograms")


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("histograms", -1),
        ("histograms", True),
        ("histograms", 2.0),
        ("histogram_bins", 0),
        ("histogram_bins", 513),
        ("histogram_bins", False),
    ],
)
def test_observe_rejects_bad_histogram_options(option, value):
    """Bad histograms / histogram_bins raise ValueError naming the argument."""
    with pytest.raises(ValueError, match=rf"^{option} must"):
        jaxobs.observe(tiny_train.step_fn, **{option: value})


def test_observe_accepts_512_bins():
    """histogram_bins=512 is the documented maximum and is accepted."""
    step = jaxobs.observe(tiny_train.step_fn, histograms=1, histogram_bins=512)
    assert step.histogram_bins == 512


# ----------------------------------------------------------------------------- log_histograms


@pytest.fixture
def captured(tmp_path):
    """A run in tmp_path with a capture of its events, finished after the test."""
    with capture_run("loghist", dir=tmp_path) as pair:
        yield pair


@pytest.fixture
def run(captured):
    """The run of `captured`."""
    return captured[0]


def _histogram_records(run) -> list[dict]:
    """The histograms records of events.jsonl, read with json."""
    return [e for e in read_events(run.dir) if e["event"] == "histograms"]


def _histogram_events(captured) -> list[jaxobs.Event]:
    """The histograms events the sinks received so far."""
    run, capture = captured
    run.flush()
    return capture.of_type("histograms")


def test_log_histograms_numpy_pair(captured):
    """(counts, edges) from numpy.histogram is recorded as they are."""
    run, _ = captured
    samples = np.random.default_rng(1).normal(size=500)
    counts, edges = np.histogram(samples, bins=10)
    run.log_histograms({"w": (counts, edges)}, step=3)
    [event] = _histogram_events(captured)
    assert event.step == 3
    assert event.data["values"] == {"w": {"edges": edges.tolist(), "counts": counts.tolist()}}


def test_log_histograms_mapping_on_file(captured):
    """events.jsonl holds a logged histogram as the sinks received it, sums included."""
    run, _ = captured
    h = {"counts": [1, 0, 2], "edges": [-1.0, 0.0, 0.5, 2.0], "sum": 1.5, "sum_squares": 4.25}
    run.log_histograms({"a/b": h}, step=2)
    [record] = _histogram_records(run)
    [event] = _histogram_events(captured)
    assert record["step"] == event.step == 2 and record["level"] == "DETAILED"
    assert record["values"] == event.data["values"]


def test_log_histograms_mapping(captured):
    """A mapping with counts, edges, sum and sum_squares is recorded as given."""
    run, _ = captured
    h = {"counts": [1, 0, 2], "edges": [-1.0, 0.0, 0.5, 2.0], "sum": 1.5, "sum_squares": 4.25}
    run.log_histograms({"a/b": h, "c": {"counts": [4], "edges": [1.0, 1.0]}}, step=0)
    [event] = _histogram_events(captured)
    record = event.data
    assert record["values"]["a/b"] == {
        "edges": [-1.0, 0.0, 0.5, 2.0],
        "counts": [1.0, 0.0, 2.0],
        "sum": 1.5,
        "sum_squares": 4.25,
    }
    assert record["values"]["c"] == {"edges": [1.0, 1.0], "counts": [4.0]}


@pytest.mark.parametrize("as_jax", [False, True], ids=["numpy", "jax"])
def test_log_histograms_samples(captured, as_jax):
    """An array of samples is binned into 64 bins over its finite values, like numpy."""
    run, _ = captured
    samples = np.random.default_rng(2).uniform(-2.0, 7.0, size=(40, 30)).astype(np.float32)
    samples[0, :5] = [np.nan, np.inf, -np.inf, np.nan, np.inf]
    run.log_histograms({"x": jnp.asarray(samples) if as_jax else samples}, step=1)
    [event] = _histogram_events(captured)
    h = event.data["values"]["x"]
    finite = _finite64(samples)
    counts, edges = np.histogram(finite, 64)
    assert h["counts"] == counts.tolist()
    np.testing.assert_allclose(h["edges"], edges, rtol=1e-12)
    assert h["sum"] == pytest.approx(finite.sum(), rel=1e-12)
    assert h["sum_squares"] == pytest.approx((finite * finite).sum(), rel=1e-12)


def test_log_histograms_default_step(captured):
    """Without a step: the last step logged."""
    run, _ = captured
    run.log({"loss": 1.0}, step=4)
    run.log_histograms({"x": [1.0, 2.0, 3.0]})
    [event] = _histogram_events(captured)
    assert event.step == 4


_EDGES = [0.0, 1.0, 2.0, 3.0]
_BAD = {
    "mapping-lengths": ({"counts": [1, 2, 3], "edges": [0.0, 1.0, 2.0]}, ValueError),
    "mapping-no-edges": ({"counts": [1, 2, 3]}, ValueError),
    "no-counts": ({"counts": [], "edges": [0.0]}, ValueError),
    "decreasing-edges": ({"counts": [1, 2, 3], "edges": [0.0, 2.0, 1.0, 3.0]}, ValueError),
    "negative-count": ({"counts": [1, -2, 3], "edges": _EDGES}, ValueError),
    "nan-count": ({"counts": [1, np.nan, 3], "edges": _EDGES}, ValueError),
    "nan-edge": ({"counts": [1, 2, 3], "edges": [0.0, np.nan, 2.0, 3.0]}, ValueError),
    "inf-edge": ({"counts": [1, 2, 3], "edges": [0.0, 1.0, 2.0, np.inf]}, ValueError),
    "2d-counts": ({"counts": [[1, 2, 3]], "edges": _EDGES}, ValueError),
    "ragged-pair": ((np.ones(3), np.arange(6.0)), ValueError),
    "no-finite-samples": (np.array([np.nan, np.inf, -np.inf]), ValueError),
    "empty-samples": (np.array([]), ValueError),
    "text-samples": (["a", "b"], TypeError),
    "bad-sum": ({"counts": [1], "edges": [0.0, 1.0], "sum": "x"}, TypeError),
}


@pytest.mark.parametrize("case", sorted(_BAD))
def test_log_histograms_rejects_malformed(captured, case):
    """A malformed histogram raises naming it, and nothing of the call is recorded."""
    run, _ = captured
    value, error = _BAD[case]
    good = {"counts": [1.0], "edges": [0.0, 1.0]}
    with pytest.raises(error, match="layer/bad"):
        run.log_histograms({"ok": good, "layer/bad": value}, step=0)
    assert _histogram_records(run) == []
    assert _histogram_events(captured) == []


def test_log_histograms_rejects_pair_of_equal_lengths(run):
    """(counts, centres) with as many edges as counts is malformed, not samples."""
    counts, edges = np.histogram(np.arange(10.0), bins=5)
    centres = (edges[:-1] + edges[1:]) / 2
    with pytest.raises((TypeError, ValueError), match="'w'"):
        run.log_histograms({"w": (counts, centres)}, step=0)


@pytest.mark.parametrize("key", [1, "", None])
def test_log_histograms_rejects_bad_names(run, key):
    """Histogram names must be non-empty strings."""
    with pytest.raises(TypeError, match="histogram names"):
        run.log_histograms({key: [1.0, 2.0]}, step=0)


def test_log_histograms_rejects_non_mapping(run):
    """The argument must be a mapping of names."""
    with pytest.raises(TypeError, match="mapping"):
        run.log_histograms([("x", [1.0])], step=0)


@pytest.mark.parametrize("step", [-1, True, 1.5])
def test_log_histograms_rejects_bad_step(run, step):
    """step must be a non-negative integer."""
    with pytest.raises(TypeError, match="step"):
        run.log_histograms({"x": [1.0]}, step=step)


def test_log_histograms_after_finish(tmp_path):
    """log_histograms after finish raises RuntimeError."""
    run = jaxobs.init("loghist", dir=tmp_path, terminal=False)
    run.finish()
    with pytest.raises(RuntimeError, match="log_histograms"):
        run.log_histograms({"x": [1.0, 2.0]}, step=0)
