"""jaxobs.evaluation against a NumPy reference on the concatenated batches.

The reference restates the module docstring in float64: regression deviation
|p - y| / max(|y|, eps) (mean over a sample's outputs), classification 1 - softmax(p)[y]
or argmax != y, NaN as +inf; buckets 0, [0, 5 %), ..., >= 100 %; the worst k by a stable
descending sort (the first seen ranks first among equal deviations).
"""

from __future__ import annotations

import importlib
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import read_events

from jaxobs import evaluation

EDGES = (0.05, 0.10, 0.20, 0.50, 1.00)
LABELS = ("perfect", "excellent", "good", "acceptable", "poor", "bad", "failed")
WEIGHTS = (1.0, 0.95, 0.90, 0.80, 0.50, 0.0, 0.0)


def ref_deviation(pred, target, kind, class_deviation="probability", eps=1e-6):
    pred, target = np.asarray(pred, np.float64), np.asarray(target)
    if kind == "regression":
        rel = np.abs(pred - target) / np.maximum(np.abs(target.astype(np.float64)), eps)
        dev = rel.reshape(len(rel), -1).mean(axis=1)
    elif class_deviation == "argmax":
        dev = (pred.argmax(axis=1) != target).astype(np.float64)
    else:
        z = np.exp(pred - pred.max(axis=1, keepdims=True))
        p = z / z.sum(axis=1, keepdims=True)
        dev = np.maximum(1.0 - p[np.arange(len(target)), target], 0.0)
    return np.where(np.isnan(dev), np.inf, dev)


def ref_bucket(dev):
    out = []
    for d in dev:
        out.append(0 if d == 0 else 1 + sum(d >= e for e in EDGES))
    return np.bincount(out, minlength=7)


def regression_batches(rng, n_batches=4, batch=16, shape=()):
    batches = []
    for _ in range(n_batches):
        y = rng.normal(size=(batch, *shape)).astype(np.float32)
        # a scale per sample and bucket, jittered so that non-zero deviations are distinct
        scale = rng.choice([0.0, 0.01, 0.07, 0.15, 0.3, 0.7, 3.0], size=batch)
        scale = (scale * rng.uniform(1.0, 1.1, size=batch)).reshape(-1, *[1] * len(shape))
        p = (y * (1 + scale * rng.choice([-1, 1], size=scale.shape))).astype(np.float32)
        batches.append((p, y))
    return batches


def classification_batches(rng, n_batches=4, batch=16, classes=5):
    batches = []
    for _ in range(n_batches):
        logits = (rng.normal(size=(batch, classes)) * 3).astype(np.float32)
        labels = rng.integers(0, classes, size=batch).astype(np.int32)
        batches.append((logits, labels))
    return batches


def run(state, batches, masks=None, ids=None):
    step = jax.jit(evaluation.update)
    for i, (p, y) in enumerate(batches):
        state = step(
            state,
            p,
            y,
            None if ids is None else ids[i],
            None if masks is None else masks[i],
        )
    return state


def check_against_reference(result, dev, expected, predicted, ids, k):
    """The buckets, mean, score and worst k of `result` equal NumPy's on these samples."""
    counts = ref_bucket(dev)
    n = len(dev)
    assert result.count == n
    assert [result.buckets[label]["count"] for label in LABELS] == counts.tolist()
    np.testing.assert_allclose(
        [result.buckets[label]["fraction"] for label in LABELS], counts / n, rtol=1e-12
    )
    np.testing.assert_allclose(result.mean_deviation, dev.mean(), rtol=1e-5)
    np.testing.assert_allclose(result.score, 100 * np.dot(counts / n, WEIGHTS), rtol=1e-9)
    order = np.argsort(-dev, kind="stable")[:k]
    assert [w["id"] for w in result.worst] == ids[order].tolist()
    np.testing.assert_allclose([w["deviation"] for w in result.worst], dev[order], rtol=1e-5)
    np.testing.assert_allclose([w["expected"] for w in result.worst], expected[order])
    np.testing.assert_allclose([w["predicted"] for w in result.worst], predicted[order])


@pytest.mark.parametrize("shape", [(), (3,)], ids=["scalar", "vector"])
def test_regression_matches_numpy(shape):
    """Bucket counts, mean deviation, score and worst k of jitted regression updates."""
    rng = np.random.default_rng(0)
    batches = regression_batches(rng, shape=shape)
    state = run(evaluation.init(k=7, sample_shape=shape), batches)
    p = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    dev = ref_deviation(p, y, "regression")
    nonzero = dev[dev > 0]
    assert len(set(nonzero.tolist())) == len(nonzero)  # distinct: the order is unambiguous
    assert (ref_bucket(dev) > 0).all()  # every bucket is exercised
    result = evaluation.result(state)
    check_against_reference(result, dev, y, p, np.arange(len(dev)), 7)


@pytest.mark.parametrize("class_deviation", evaluation.CLASS_DEVIATIONS)
def test_classification_matches_numpy(class_deviation):
    """Classification: 1 - p(true class), or argmax != label; worst k keeps label and class."""
    rng = np.random.default_rng(1)
    batches = classification_batches(rng)
    state = evaluation.init(k=5, kind="classification", class_deviation=class_deviation)
    ids = [rng.permutation(1000)[:16] + 1000 * i for i in range(len(batches))]
    state = run(state, batches, ids=ids)
    logits = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    dev = ref_deviation(logits, labels, "classification", class_deviation)
    result = evaluation.result(state)
    assert result.kind == "classification"
    if class_deviation == "argmax":
        # ties everywhere: the first seen of the wrong predictions rank first
        assert set(dev.tolist()) == {0.0, 1.0}
        counts = ref_bucket(dev)
        assert counts[1:6].sum() == 0
    check_against_reference(result, dev, labels, logits.argmax(axis=1), np.concatenate(ids), 5)


def test_masked_padding_is_excluded():
    """Rows with mask=False count nowhere: not in buckets, mean or worst k."""
    rng = np.random.default_rng(2)
    batches = regression_batches(rng, n_batches=3, batch=8)
    # pad the last batch: half its rows are garbage (huge deviation) and masked out
    p_last, y_last = batches[-1]
    p_last = p_last.copy()
    p_last[4:] = 1e6
    batches[-1] = (p_last, y_last)
    masks = [np.ones(8, bool), np.ones(8, bool), np.arange(8) < 4]
    state = run(evaluation.init(k=4), batches, masks=masks)
    keep = np.concatenate(masks)
    p = np.concatenate([b[0] for b in batches])[keep]
    y = np.concatenate([b[1] for b in batches])[keep]
    dev = ref_deviation(p, y, "regression")
    result = evaluation.result(state)
    check_against_reference(result, dev, y, p, np.arange(24)[keep], 4)


def test_k_larger_than_the_samples():
    """With fewer samples than k, worst lists every sample, worst first."""
    p = np.array([1.0, 2.0, 3.5], np.float32)
    y = np.array([1.0, 2.5, 3.0], np.float32)
    state = jax.jit(evaluation.update)(evaluation.init(k=10), p, y)
    result = evaluation.result(state)
    dev = ref_deviation(p, y, "regression")
    assert len(result.worst) == 3
    check_against_reference(result, dev, y, p, np.arange(3), 10)
    assert result.buckets["perfect"]["count"] == 1


def test_nonfinite_predictions_are_failed_and_worst():
    """A NaN prediction counts as an infinite deviation: failed, first of the worst."""
    p = np.array([1.0, np.nan, 2.0], np.float32)
    y = np.array([1.1, 1.0, 2.0], np.float32)
    result = evaluation.result(evaluation.update(evaluation.init(k=2), p, y))
    assert result.buckets["failed"]["count"] == 1
    assert result.worst[0]["id"] == 1 and result.worst[0]["deviation"] == math.inf
    assert result.mean_deviation == math.inf


def test_zero_target_uses_eps():
    """A zero target: exact prediction is perfect, any other is relative to eps."""
    p = np.array([0.0, 1e-3], np.float32)
    y = np.array([0.0, 0.0], np.float32)
    result = evaluation.result(evaluation.update(evaluation.init(k=2, eps=1e-2), p, y))
    assert result.buckets["perfect"]["count"] == 1
    assert result.buckets["acceptable"]["count"] == 1  # 1e-3 / 1e-2 = 10 %
    np.testing.assert_allclose(result.worst[0]["deviation"], 0.1, rtol=1e-5)


def test_update_runs_inside_a_jitted_scan():
    """The state threads through lax.scan inside jit: the whole loop compiles once."""
    rng = np.random.default_rng(3)
    p = rng.normal(size=(5, 8)).astype(np.float32)
    y = rng.normal(size=(5, 8)).astype(np.float32)

    @jax.jit
    def loop(state, p, y):
        def body(s, xs):
            return evaluation.update(s, *xs), None

        return jax.lax.scan(body, state, (p, y))[0]

    result = evaluation.result(loop(evaluation.init(k=3), p, y))
    dev = ref_deviation(p.ravel(), y.ravel(), "regression")
    check_against_reference(result, dev, y.ravel(), p.ravel(), np.arange(40), 3)


def test_to_json_is_json():
    """to_json() gives plain JSON values; an empty evaluation has no mean or score."""
    empty = evaluation.result(evaluation.init(k=3))
    assert empty.count == 0 and empty.worst == [] and math.isnan(empty.score)
    assert json.loads(json.dumps(empty.to_json(), allow_nan=False))["score"] is None
    p = np.array([[1.0, 2.0], [0.0, 3.0]], np.float32)
    state = evaluation.update(evaluation.init(k=3, sample_shape=(2,)), p, p * 1.5)
    got = json.loads(json.dumps(evaluation.result(state).to_json(), allow_nan=False))
    assert got["count"] == 2 and got["kind"] == "regression"
    assert list(got["buckets"]) == list(LABELS)
    assert got["worst"][0]["expected"] == [1.5, 3.0]


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: evaluation.init(k=0), "k"),
        (lambda: evaluation.init(k=2.5), "k"),
        (lambda: evaluation.init(kind="ranking"), "kind"),
        (lambda: evaluation.init(class_deviation="hinge"), "class_deviation"),
        (lambda: evaluation.init(kind="classification", sample_shape=(2,)), "sample_shape"),
        (lambda: evaluation.init(eps=0.0), "eps"),
        (lambda: evaluation.deviation(jnp.zeros(2), jnp.zeros(2), "ranking"), "kind"),
        (lambda: evaluation.update(evaluation.init(), jnp.zeros(3), jnp.zeros(4)), "predicted"),
        (
            lambda: evaluation.update(evaluation.init(), jnp.zeros((3, 2)), jnp.zeros((3, 2))),
            "sample_shape",
        ),
        (
            lambda: evaluation.update(
                evaluation.init(kind="classification"), jnp.zeros((3, 2)), jnp.zeros(4, int)
            ),
            "expected",
        ),
        (
            lambda: evaluation.update(
                evaluation.init(kind="classification"), jnp.zeros((3, 2)), jnp.zeros(3)
            ),
            "integer labels",
        ),
        (
            lambda: evaluation.update(
                evaluation.init(), jnp.zeros(3), jnp.zeros(3), mask=jnp.ones(2, bool)
            ),
            "mask",
        ),
        (
            lambda: jax.jit(evaluation.update)(
                evaluation.init(), jnp.zeros(3), jnp.zeros(3), jnp.arange(4)
            ),
            "ids",
        ),
    ],
)
def test_bad_input_raises_naming_the_argument(call, name):
    """Bad arguments raise ValueError naming what is wrong (under jit too)."""
    with pytest.raises(ValueError, match=name):
        call()


def test_public_module_imports():
    """`import jaxobs.evaluation` works and re-exports its documented names."""
    module = importlib.import_module("jaxobs.evaluation")
    assert set(module.__all__) >= {"init", "update", "result", "Evaluation", "BUCKETS"}
    assert [label for label, _, _ in module.BUCKETS] == list(LABELS)
    assert module.QUALITY_WEIGHTS == WEIGHTS


def test_to_json_is_recorded_by_run_emit(tmp_path):
    """run.emit("evaluation", **to_json()) lands in events.jsonl, read back with json."""
    import jaxobs

    p = np.array([1.0, 2.0, np.nan], np.float32)
    y = np.array([1.0, 2.2, 1.0], np.float32)
    result = evaluation.result(evaluation.update(evaluation.init(k=2), p, y))
    run = jaxobs.init(project="p", dir=tmp_path, terminal=False)
    run.emit("evaluation", name="val", **result.to_json())
    run.finish()
    [event] = [e for e in read_events(run.dir) if e["event"] == "evaluation"]
    assert event["name"] == "val" and event["count"] == 3
    assert event["buckets"]["failed"] == {"count": 1, "fraction": 1 / 3}
    assert event["mean_deviation"] == math.inf  # the NaN prediction, stored as a sentinel
    assert [w["id"] for w in event["worst"]] == [2, 1]
