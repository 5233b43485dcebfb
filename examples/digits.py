"""The scikit-learn digits and a small Flax CNN, shared by the numbered examples, the health
tests and the benchmarks.

The data set (1,797 8x8 images) ships inside scikit-learn: nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import flax.linen as nn
import jax
import numpy as np
import optax
from flax.training import train_state
from sklearn.datasets import load_digits

import jaxobs

NUM_CLASSES = 10


class CNN(nn.Module):
    """Two 3x3 convolutions and two dense layers for 8x8x1 images."""

    num_classes: int = NUM_CLASSES

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(16, (3, 3))(x))
        x = nn.relu(nn.Conv(32, (3, 3))(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(64)(x))
        return nn.Dense(self.num_classes)(x)


def load_data(seed: int, val_fraction: float = 0.2):
    """Digits scaled to [0, 1] as NHWC float32, split into train and validation."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 8, 8, 1)
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = int(len(x) * val_fraction)
    val, train = order[:n_val], order[n_val:]
    return (x[train], y[train].astype(np.int32)), (x[val], y[val].astype(np.int32))


def create_state(
    seed: int,
    learning_rate: float | Callable[[int], float],
    momentum: float | None = 0.9,
    init_scale: float = 1.0,
) -> train_state.TrainState:
    """A TrainState for the CNN with SGD; ``init_scale`` multiplies the initial weights."""
    model = CNN()
    params = model.init(jax.random.key(seed), np.zeros((1, 8, 8, 1), np.float32))["params"]
    if init_scale != 1.0:
        params = jax.tree.map(lambda p: p * init_scale, params)
    return train_state.TrainState.create(
        apply_fn=model.apply, params=params, tx=optax.sgd(learning_rate, momentum=momentum)
    )


def loss_and_logits(params, apply_fn, x, y):
    logits = apply_fn({"params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits


def step_fn(state, x, y):
    """One SGD step; taps the gradients for jaxobs (undecorated: wrap with jaxobs.observe)."""
    (loss, logits), grads = jax.value_and_grad(loss_and_logits, has_aux=True)(
        state.params, state.apply_fn, x, y
    )
    jaxobs.tap(grads=grads)
    state = state.apply_gradients(grads=grads)
    return state, {"loss": loss, "accuracy": (logits.argmax(-1) == y).mean()}


@jax.jit
def eval_step(state, x, y):
    loss, logits = loss_and_logits(state.params, state.apply_fn, x, y)
    return loss, logits.argmax(-1)


def batches(x, y, batch_size: int, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Shuffled batches, epoch after epoch, forever."""
    rng = np.random.default_rng(seed)
    n = len(x) // batch_size
    while True:
        order = rng.permutation(len(x))
        for i in range(n):
            idx = order[i * batch_size : (i + 1) * batch_size]
            yield x[idx], y[idx]


def corrupt(x, y, seed: int, scale: float = 20.0):
    """A corrupted batch: inputs times ``scale`` and shuffled labels."""
    rng = np.random.default_rng(seed)
    return x * scale, rng.permutation(y)


def evaluate(state, x, y) -> dict[str, float]:
    loss, predictions = eval_step(state, x, y)
    return {"val/loss": float(loss), "val/accuracy": float((np.asarray(predictions) == y).mean())}
