"""Behaviour bugs found by trying the seeds' workflows (issue 12), each against a NumPy
reference or the plain expectation a user has."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxobs.health import GuardConfig, HealthChecker, guard_init, guard_update
from jaxobs.stats import tree_stats, update_ratio

# Mask sizes where 1 - mean(all alive) rounded below zero in float32 under jit.
ODD_SIZES = [3, 5, 7, 13, 23, 101, 4097]


def _dead_fraction(mask: np.ndarray) -> float:
    """``health/dead/L`` of one guard step whose alive mask is ``mask``, under jit."""
    cfg = GuardConfig()

    @jax.jit
    def step(m):
        state = guard_init(cfg, {"L": m})
        _, _, values = guard_update(cfg, state, alive={"L": m})
        return values["health/dead/L"]

    return float(step(jnp.asarray(mask)))


@pytest.mark.parametrize("size", ODD_SIZES)
@pytest.mark.parametrize("alive_frac", [1.0, 0.0, 0.37])
def test_dead_fraction_is_the_dead_masks_mean_within_0_and_1(size, alive_frac):
    """health/dead/<layer> is NumPy's mean of the dead mask, never below 0 or above 1."""
    mask = np.arange(size) < round(alive_frac * size)
    got = _dead_fraction(mask)
    assert 0.0 <= got <= 1.0
    np.testing.assert_allclose(got, np.mean(~mask), rtol=1e-6, atol=0)
    if alive_frac == 1.0:
        assert got == 0.0


@pytest.mark.parametrize("per", ["leaf", "layer"])
@pytest.mark.parametrize("transform", [lambda f: f, jax.jit])
def test_bare_array_keys_have_no_empty_path_segment(per, transform):
    """A bare array (no tree) gives <prefix>/<stat>, like a tapped batch=x."""
    x = np.array([1.0, 2.0, 4.0], np.float32)
    got = transform(lambda a: tree_stats(a, ["mean", "norm"], per=per, prefix="batch"))(x)
    assert set(got) == {"batch/mean", "batch/norm"}
    np.testing.assert_allclose(float(got["batch/mean"]), np.mean(x.astype(np.float64)), rtol=1e-6)
    np.testing.assert_allclose(
        float(got["batch/norm"]), np.linalg.norm(x.astype(np.float64)), rtol=1e-6
    )


def test_bare_array_without_prefix_and_whole_tree_keys():
    """Without a prefix a bare array's keys are the statistics; per="global" keeps global_."""
    x = jnp.ones(3)
    assert set(tree_stats(x, ["mean"])) == {"mean"}
    assert set(tree_stats(x, ["mean"], per="global", prefix="batch")) == {"batch/global_mean"}
    assert set(tree_stats(x, ["norm"], prefix="batch", with_global_norm=True)) == {
        "batch/norm",
        "batch/global_norm",
    }


def test_bare_array_update_ratio_key():
    """update_ratio of bare arrays is <prefix>/update_ratio, ||u|| / ||p|| by NumPy."""
    u, p = np.full(3, 1.0, np.float32), np.full(3, 4.0, np.float32)
    got = update_ratio(jnp.asarray(u), jnp.asarray(p), prefix="updates")
    assert set(got) == {"updates/update_ratio"}
    np.testing.assert_allclose(
        float(got["updates/update_ratio"]), np.linalg.norm(u) / np.linalg.norm(p), rtol=1e-6
    )


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, np.float32("nan")])
@pytest.mark.parametrize("key", ["train/loss", "loss"])
def test_hand_fed_nonfinite_loss_is_critical(bad, key):
    """A non-finite loss fed by hand (no health/* values) raises a critical nonfinite alert."""
    checker = HealthChecker()
    assert checker.check(0, {key: 1.0}) == []
    alerts = checker.check(1, {key: bad})
    assert [(a.rule, a.severity) for a in alerts] == [("nonfinite", "critical")]
    assert key in alerts[0].message
