"""Deviation buckets of an evaluation, accumulated inside `jit` (seed 002's DeviationMetrics).

Instead of "right or wrong", each sample's *deviation* falls in one of seven buckets
(`BUCKETS`):

==============  ======================
``perfect``     deviation exactly 0
``excellent``   0 < deviation < 5 %
``good``        5 % <= deviation < 10 %
``acceptable``  10 % <= deviation < 20 %
``poor``        20 % <= deviation < 50 %
``bad``         50 % <= deviation < 100 %
``failed``      deviation >= 100 %
==============  ======================

Deviation, per sample:

- **regression**: ``|predicted - expected| / max(|expected|, eps)``, relative to the
  target; ``eps`` (default ``1e-6``, `init`'s argument) keeps a zero target finite, so a
  target of 0 predicted exactly is ``perfect`` and predicted as anything else is (almost
  always) ``failed``. A sample with several outputs (``sample_shape``) gets the mean of its
  outputs' relative deviations.
- **classification** (``predicted`` are logits (batch, classes), ``expected`` integer
  labels): ``1 - p(true class)`` with ``p = softmax(logits)`` (``class_deviation=
  "probability"``, the default), because it grades how right or wrong a prediction is,
  which is what the buckets are for: a 0/1 deviation only ever fills ``perfect`` and
  ``failed`` and says no more than accuracy. ``class_deviation="argmax"`` gives that 0/1
  deviation (0 when the argmax is the true class) when accuracy is what you want. Pass
  ``log(p)`` as the logits of probabilities ``p``.

A NaN or infinite deviation counts as +inf (``failed``, and first among the worst).

The **quality score** (percent) is ``100 * sum(fraction[b] * QUALITY_WEIGHTS[b])``, where
each bucket's weight is ``1 -`` the largest deviation it allows (1, 0.95, 0.9, 0.8, 0.5,
0, 0): every sample is credited with the accuracy its bucket guarantees, so the score
favours better buckets (seed 002 gives no formula).

The **worst samples** are the ``k`` largest deviations, merged batch by batch with
`lax.top_k`; among equal deviations the sample seen first ranks first. Each keeps its id
(``ids``, default: its row in the stream of rows passed to `update`), deviation, expected
value and prediction (classification: the label and the predicted class).

Example:
    ```python
    from jaxobs import evaluation

    state = evaluation.init(k=10, kind="regression")
    step = jax.jit(evaluation.update)
    for x, y, mask in batches:  # pad the last batch, mask=False on the padding
        state = step(state, model(x), y, mask=mask)
    e = evaluation.result(state)
    print(f"Quality score: {e.score:.1f}%")
    run.emit("evaluation", name="val", **e.to_json())
    ```
"""

from jaxobs._src.device.evaluation import (
    BUCKETS,
    CLASS_DEVIATIONS,
    KINDS,
    QUALITY_WEIGHTS,
    EvalState,
    Evaluation,
    deviation,
    init,
    result,
    update,
)

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
