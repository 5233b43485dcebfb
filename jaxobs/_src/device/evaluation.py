"""Deviation buckets of an evaluation, accumulated inside `jit` (documented in
`jaxobs.evaluation`)."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

__all__ = [
    "BUCKETS",
    "CLASS_DEVIATIONS",
    "KINDS",
    "QUALITY_WEIGHTS",
    "EvalState",
    "Evaluation",
    "deviation",
    "init",
    "result",
    "update",
]

# (label, lower edge, upper edge): "perfect" holds deviation exactly 0, then [lower, upper).
BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("perfect", 0.0, 0.0),
    ("excellent", 0.0, 0.05),
    ("good", 0.05, 0.10),
    ("acceptable", 0.10, 0.20),
    ("poor", 0.20, 0.50),
    ("bad", 0.50, 1.00),
    ("failed", 1.00, math.inf),
)
# The credit of a sample in each bucket: 1 - the largest deviation its bucket allows (>= 0).
QUALITY_WEIGHTS: tuple[float, ...] = tuple(
    max(0.0, 1.0 - upper) if math.isfinite(upper) else 0.0 for _, _, upper in BUCKETS
)
KINDS = ("regression", "classification")
CLASS_DEVIATIONS = ("probability", "argmax")
# The thresholds a non-zero deviation is compared with: bucket = 1 + number reached.
_EDGES = tuple(lower for _, lower, _ in BUCKETS[2:])


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=[
        "counts",
        "total",
        "count",
        "rows",
        "worst_deviation",
        "worst_id",
        "worst_expected",
        "worst_predicted",
    ],
    meta_fields=["kind", "class_deviation", "eps"],
)
@dataclasses.dataclass(frozen=True)
class EvalState:
    """What `update` threads through an evaluation loop: a pytree, so it passes through
    `jit`, `lax.scan` and checkpoints. Its ``kind``, ``class_deviation`` and ``eps`` are
    static (part of the tree structure).

    Attributes:
      counts: int32[7], samples per bucket of `BUCKETS`.
      total: float32, sum of the deviations of the samples counted.
      count: int32, samples counted (masked rows excluded).
      rows: int32, rows seen, masked or not: the default id of the next row.
      worst_deviation: float32[k], the largest deviations, largest first (-inf: empty).
      worst_id: int32[k], their sample ids (-1: empty).
      worst_expected: their targets (classification: the label).
      worst_predicted: their predictions (classification: the predicted class).
    """

    counts: Any
    total: Any
    count: Any
    rows: Any
    worst_deviation: Any
    worst_id: Any
    worst_expected: Any
    worst_predicted: Any
    kind: str = "regression"
    class_deviation: str = "probability"
    eps: float = 1e-6


def init(
    k: int = 10,
    kind: str = "regression",
    *,
    sample_shape: tuple[int, ...] = (),
    class_deviation: str = "probability",
    eps: float = 1e-6,
) -> EvalState:
    """An empty evaluation state keeping the ``k`` worst samples.

    Args:
      k: How many of the worst samples to keep (>= 1).
      kind: ``"regression"`` or ``"classification"``.
      sample_shape: Regression only: the shape of one target (``()`` for a scalar target,
        ``(3,)`` for three outputs per sample).
      class_deviation: Classification only: ``"probability"`` (1 - p(true class), the
        default) or ``"argmax"`` (0 when the argmax is the true class, else 1).
      eps: Regression only: the smallest ``|target|`` divided by (> 0).

    Returns:
      An `EvalState` to pass to `update`.

    Raises:
      ValueError: ``k`` < 1, an unknown ``kind`` or ``class_deviation``, a ``sample_shape``
        with classification, or ``eps`` <= 0.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1 (the worst samples kept), got {k!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if class_deviation not in CLASS_DEVIATIONS:
        raise ValueError(
            f"class_deviation must be one of {CLASS_DEVIATIONS}, got {class_deviation!r}"
        )
    sample_shape = tuple(sample_shape)
    if kind == "classification" and sample_shape:
        raise ValueError(
            "sample_shape must be () for classification (the label is a scalar), "
            f"got {sample_shape}"
        )
    if not (isinstance(eps, (int, float)) and eps > 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    if kind == "regression":
        expected = jnp.zeros((k, *sample_shape), jnp.float32)
    else:
        expected = jnp.full((k,), -1, jnp.int32)
    return EvalState(
        counts=jnp.zeros((len(BUCKETS),), jnp.int32),
        total=jnp.zeros((), jnp.float32),
        count=jnp.zeros((), jnp.int32),
        rows=jnp.zeros((), jnp.int32),
        worst_deviation=jnp.full((k,), -jnp.inf, jnp.float32),
        worst_id=jnp.full((k,), -1, jnp.int32),
        worst_expected=expected,
        worst_predicted=jnp.zeros_like(expected),
        kind=kind,
        class_deviation=class_deviation,
        eps=float(eps),
    )


def _check_batch(
    state: EvalState,
    predicted: jax.Array,
    expected: jax.Array,
    ids: ArrayLike | None,
    mask: ArrayLike | None,
) -> int:
    """The batch size, after checking every shape against the state's kind."""
    if predicted.ndim == 0:
        raise ValueError("predicted must have a leading batch axis, got a scalar")
    batch = predicted.shape[0]
    if state.kind == "regression":
        sample_shape = state.worst_expected.shape[1:]
        if predicted.shape != expected.shape:
            raise ValueError(
                f"predicted {predicted.shape} and expected {expected.shape} must have the same "
                "shape for regression"
            )
        if predicted.shape[1:] != sample_shape:
            raise ValueError(
                f"predicted has samples of shape {predicted.shape[1:]} but the state was made "
                f"for sample_shape={sample_shape} (evaluation.init(sample_shape=...))"
            )
    else:
        if predicted.ndim != 2 or expected.shape != (batch,):
            raise ValueError(
                "classification needs predicted logits of shape (batch, classes) and expected "
                f"labels of shape (batch,), got predicted {predicted.shape} and expected "
                f"{expected.shape}"
            )
        if not jnp.issubdtype(expected.dtype, jnp.integer):
            raise ValueError(f"expected must hold integer labels, got dtype {expected.dtype}")
    for name, value in (("ids", ids), ("mask", mask)):
        if value is not None and jnp.shape(value) != (batch,):
            raise ValueError(
                f"{name} must have shape ({batch},), one per sample, got {jnp.shape(value)}"
            )
    return batch


def deviation(
    predicted: ArrayLike,
    expected: ArrayLike,
    kind: str = "regression",
    *,
    class_deviation: str = "probability",
    eps: float = 1e-6,
) -> jax.Array:
    """The deviation of each sample (float32[batch]); non-finite deviations become +inf.

    Args:
      predicted: Regression: predictions shaped like ``expected``. Classification: logits
        (batch, classes); pass ``log(p)`` for probabilities ``p``.
      expected: Regression: targets. Classification: integer labels (batch,).
      kind: ``"regression"`` or ``"classification"``.
      class_deviation: ``"probability"`` or ``"argmax"`` (classification).
      eps: The smallest ``|target|`` divided by (regression).

    Returns:
      float32[batch], >= 0.

    Raises:
      ValueError: an unknown ``kind`` or ``class_deviation``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if class_deviation not in CLASS_DEVIATIONS:
        raise ValueError(
            f"class_deviation must be one of {CLASS_DEVIATIONS}, got {class_deviation!r}"
        )
    if kind == "regression":
        pred = jnp.asarray(predicted, jnp.float32)
        target = jnp.asarray(expected, jnp.float32)
        rel = jnp.abs(pred - target) / jnp.maximum(jnp.abs(target), eps)
        dev = rel.reshape(rel.shape[0], -1).mean(axis=1) if rel.ndim > 1 else rel
    else:
        logits = jnp.asarray(predicted, jnp.float32)
        labels = jnp.asarray(expected, jnp.int32)
        if class_deviation == "argmax":
            dev = (jnp.argmax(logits, axis=1) != labels).astype(jnp.float32)
        else:
            p = jax.nn.softmax(logits, axis=1)
            p_true = jnp.take_along_axis(p, labels[:, None], axis=1)[:, 0]
            dev = jnp.maximum(1.0 - p_true, 0.0)
    return jnp.where(jnp.isnan(dev), jnp.inf, dev)


def update(
    state: EvalState,
    predicted: ArrayLike,
    expected: ArrayLike,
    ids: ArrayLike | None = None,
    mask: ArrayLike | None = None,
) -> EvalState:
    """The state with one batch added: pure, jit-able, no host callbacks.

    Args:
      state: From `init` or a previous `update`.
      predicted: Regression: (batch, *sample_shape) predictions. Classification: logits
        (batch, classes).
      expected: Regression: targets shaped like ``predicted``. Classification: integer
        labels (batch,).
      ids: int (batch,) sample ids for the worst-k list (default: the row's position in
        the stream of rows passed so far, padding included).
      mask: bool (batch,), False for padding rows, which are not counted.

    Returns:
      The new `EvalState`.

    Raises:
      ValueError: shapes that do not match each other or the state (raised when traced).
    """
    predicted, expected = jnp.asarray(predicted), jnp.asarray(expected)
    batch = _check_batch(state, predicted, expected, ids, mask)
    dev = deviation(
        predicted, expected, state.kind, class_deviation=state.class_deviation, eps=state.eps
    )
    valid = jnp.ones((batch,), bool) if mask is None else jnp.asarray(mask, bool)
    # 0 for exactly zero, else 1 + the number of thresholds (5 %, 10 %, ...) reached.
    edges = jnp.asarray(_EDGES, jnp.float32)
    bucket = jnp.where(dev == 0, 0, 1 + jnp.sum(dev[:, None] >= edges, axis=1))
    counts = state.counts + jnp.zeros_like(state.counts).at[bucket].add(valid.astype(jnp.int32))
    if ids is None:
        ids = state.rows + jnp.arange(batch, dtype=jnp.int32)
    if state.kind == "regression":
        exp_rows = jnp.asarray(expected, jnp.float32)
        pred_rows = jnp.asarray(predicted, jnp.float32)
    else:
        exp_rows = jnp.asarray(expected, jnp.int32)
        pred_rows = jnp.argmax(predicted, axis=1).astype(jnp.int32)
    # Current worst first, so that among equal deviations the sample seen first ranks first
    # (lax.top_k keeps the lower index of equal values first).
    all_dev = jnp.concatenate([state.worst_deviation, jnp.where(valid, dev, -jnp.inf)])
    k = state.worst_deviation.shape[0]
    top, idx = lax.top_k(all_dev, k)

    def pick(old, new):
        return jnp.concatenate([old, new.astype(old.dtype)])[idx]

    return dataclasses.replace(
        state,
        counts=counts,
        total=state.total + jnp.sum(jnp.where(valid, dev, 0.0)),
        count=state.count + jnp.sum(valid, dtype=jnp.int32),
        rows=state.rows + batch,
        worst_deviation=top,
        worst_id=pick(state.worst_id, jnp.asarray(ids)),
        worst_expected=pick(state.worst_expected, exp_rows),
        worst_predicted=pick(state.worst_predicted, pred_rows),
    )


def _py(value: np.ndarray) -> Any:
    """A NumPy value as Python numbers (nested lists for arrays)."""
    return value.tolist()


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """An evaluation's outcome, as host values.

    Attributes:
      kind: ``"regression"`` or ``"classification"``.
      count: Samples counted.
      buckets: ``{label: {"count": int, "fraction": float}}`` in the order of `BUCKETS`.
      mean_deviation: Mean deviation (NaN with no sample; inf if any sample was non-finite).
      score: Quality score in percent: the sum over buckets of fraction x `QUALITY_WEIGHTS`
        x 100 (NaN with no sample).
      worst: The worst samples, worst first: dicts of ``id``, ``deviation``, ``expected``,
        ``predicted``.
    """

    kind: str
    count: int
    buckets: dict[str, dict[str, float | int]]
    mean_deviation: float
    score: float
    worst: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict, e.g. for ``run.emit("evaluation", name="val", **e.to_json())``.
        Empty evaluations give ``None`` for the mean and the score."""
        empty = self.count == 0
        return {
            "kind": self.kind,
            "count": self.count,
            "buckets": {label: dict(b) for label, b in self.buckets.items()},
            "mean_deviation": None if empty else self.mean_deviation,
            "score": None if empty else self.score,
            "worst": [dict(w) for w in self.worst],
        }


def result(state: EvalState) -> Evaluation:
    """The `Evaluation` of a state, copied to the host (call it outside `jit`)."""
    host = jax.device_get(state)
    counts = np.asarray(host.counts, np.int64)
    n = int(np.asarray(host.count))
    fractions = counts / n if n else np.zeros(len(BUCKETS))
    buckets = {
        label: {"count": int(c), "fraction": float(f)}
        for (label, _, _), c, f in zip(BUCKETS, counts, fractions, strict=True)
    }
    mean = float(np.asarray(host.total)) / n if n else math.nan
    score = float(np.dot(fractions, QUALITY_WEIGHTS) * 100.0) if n else math.nan
    worst_dev = np.asarray(host.worst_deviation)
    worst = [
        {
            "id": int(host.worst_id[i]),
            "deviation": float(worst_dev[i]),
            "expected": _py(np.asarray(host.worst_expected[i])),
            "predicted": _py(np.asarray(host.worst_predicted[i])),
        }
        for i in range(worst_dev.shape[0])
        if worst_dev[i] != -np.inf
    ]
    return Evaluation(state.kind, n, buckets, mean, score, worst)
