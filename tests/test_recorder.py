"""The flight recorder (`jaxobs.FlightRecorder`): a constant-memory ring of the last N steps,
checked against plain Python/NumPy bookkeeping of what was added, and its crash dump read back
with both `json` and `jaxobs.crash.load_dump`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from helpers import decode

import jaxobs
from jaxobs.crash import load_dump


def _f32(x: float) -> float:
    """What a float becomes after a trip through float32 storage."""
    return float(np.float32(x))


def _nbytes(recorder) -> int:
    """Bytes held in the recorder's NumPy arrays, whatever they are called."""
    return sum(v.nbytes for v in vars(recorder).values() if isinstance(v, np.ndarray))


def _same(a, b) -> bool:
    """Arrays equal, NaN matching NaN."""
    return np.array_equal(np.asarray(a, np.float64), np.asarray(b, np.float64), equal_nan=True)


def test_ring_keeps_the_last_capacity_steps_in_step_order():
    """After 37 adds into a ring of 8, the snapshot holds the last 8 steps, ascending."""
    rng = np.random.default_rng(0)
    capacity, total = 8, 37
    rec = jaxobs.FlightRecorder(capacity)
    added: dict[int, dict[str, float]] = {}
    for step in range(total):
        row = {"train/loss": float(rng.normal()), "lr": float(rng.uniform())}
        rec.add(step, row)
        added[step] = row
    steps, series, present = rec.snapshot()
    kept = sorted(added)[-capacity:]
    assert len(rec) == capacity
    np.testing.assert_array_equal(steps, np.asarray(kept))
    for key in ("train/loss", "lr"):
        expected = np.array([_f32(added[s][key]) for s in kept])
        np.testing.assert_array_equal(series[key], expected)
        assert series[key].dtype == np.float64
        assert present[key].all()


def test_partial_ring_before_it_is_full():
    """Fewer adds than the capacity: exactly those steps, in order."""
    rec = jaxobs.FlightRecorder(16)
    for step in (3, 4, 5):
        rec.add(step, {"a": step * 0.5})
    steps, series, _ = rec.snapshot()
    np.testing.assert_array_equal(steps, [3, 4, 5])
    np.testing.assert_array_equal(series["a"], [1.5, 2.0, 2.5])
    assert len(rec) == 3


def test_memory_is_constant_once_the_keys_are_known():
    """Thousands of adds with a known key set do not grow the recorder's arrays."""
    keys = [f"grads/L{i}/kernel/norm" for i in range(20)]
    rec = jaxobs.FlightRecorder(32)
    rec.add(0, dict.fromkeys(keys, 1.0))
    size = _nbytes(rec)
    for step in range(1, 3000):
        rec.add(step, {k: float(step + i) for i, k in enumerate(keys)})
    assert _nbytes(rec) == size
    steps, series, _ = rec.snapshot()
    np.testing.assert_array_equal(steps, np.arange(3000 - 32, 3000))
    np.testing.assert_array_equal(series[keys[7]], [_f32(s + 7) for s in steps])


def test_new_keys_keep_earlier_values():
    """Keys arriving one by one (past the initial column block) keep every earlier value."""
    rec = jaxobs.FlightRecorder(64)
    expected: dict[str, dict[int, float]] = {}
    for step in range(50):
        row = {f"k{j}": float(step * 100 + j) for j in range(step + 1)}  # one new key a step
        rec.add(step, row)
        for k, v in row.items():
            expected.setdefault(k, {})[step] = v
    steps, series, present = rec.snapshot()
    np.testing.assert_array_equal(steps, np.arange(50))
    assert set(series) == set(expected)
    for key, by_step in expected.items():
        ref = np.array([by_step.get(int(s), math.nan) for s in steps])
        assert _same(series[key], ref), key
        np.testing.assert_array_equal(present[key], [int(s) in by_step for s in steps])


def test_same_step_values_merge_into_one_row():
    """A value logged later for a recent step joins that step's row instead of a new one."""
    rec = jaxobs.FlightRecorder(8)
    rec.add(3, {"train/loss": 1.0})
    rec.add(4, {"train/loss": 0.5})
    rec.add(5, {"train/loss": 0.25})
    rec.add(3, {"val/loss": 2.0})  # the validation loss of step 3 arrives late
    rec.add(5, {"train/loss": 0.125})  # a later value for the same key replaces the earlier
    steps, series, present = rec.snapshot()
    assert len(rec) == 3
    np.testing.assert_array_equal(steps, [3, 4, 5])
    np.testing.assert_array_equal(series["train/loss"], [1.0, 0.5, 0.125])
    assert _same(series["val/loss"], [2.0, math.nan, math.nan])
    np.testing.assert_array_equal(present["val/loss"], [True, False, False])


def test_missing_values_are_nan_and_not_present():
    """A key not recorded at a step is NaN with False; a recorded NaN is NaN with True."""
    rec = jaxobs.FlightRecorder(4)
    rec.add(0, {"a": 1.0})
    rec.add(1, {"b": 2.0})
    rec.add(2, {"a": math.nan, "b": math.inf})
    _, series, present = rec.snapshot()
    assert _same(series["a"], [1.0, math.nan, math.nan])
    np.testing.assert_array_equal(present["a"], [True, False, True])
    assert _same(series["b"], [math.nan, 2.0, math.inf])
    np.testing.assert_array_equal(present["b"], [False, True, True])


def test_a_reused_row_forgets_the_old_steps_keys():
    """When the ring wraps, a key the evicted step had but the new one lacks reads as missing."""
    rec = jaxobs.FlightRecorder(2)
    rec.add(0, {"a": 1.0, "only0": 7.0})
    rec.add(1, {"a": 2.0})
    rec.add(2, {"a": 3.0})  # takes step 0's row
    steps, series, present = rec.snapshot()
    np.testing.assert_array_equal(steps, [1, 2])
    np.testing.assert_array_equal(present["only0"], [False, False])
    assert np.isnan(series["only0"]).all()


@pytest.mark.parametrize("capacity", [0, -1, 2.5, True, "8"])
def test_bad_capacity_raises_naming_it(capacity):
    """A capacity that is not a positive integer is refused, naming the argument."""
    with pytest.raises(ValueError, match="capacity"):
        jaxobs.FlightRecorder(capacity)


def test_dump_round_trip_through_load_dump(tmp_path):
    """dump() writes sentinels for NaN/inf and null for gaps; load_dump reads it all back."""
    rec = jaxobs.FlightRecorder(4)
    rows = {
        10: {"train/loss": 0.5, "grads/D/kernel/norm": 1.0},
        11: {"train/loss": math.nan, "grads/D/kernel/norm": math.inf},
        12: {"train/loss": -math.inf},  # the norm is missing here
        13: {"train/loss": 0.25, "grads/D/kernel/norm": 2.0, "val/loss": 0.75},
    }
    for step, row in rows.items():
        rec.add(step, row)
    trigger = {"kind": "alert", "rule": "nonfinite", "severity": "critical", "message": "m"}
    alert = {"rule": "nonfinite", "severity": "critical", "step": 11, "layer": "D"}
    path = rec.dump(
        tmp_path,
        step=11,
        trigger=trigger,
        thresholds={"spike_z": 6.0, "window": 128},
        alerts=[alert],
        run={"project": "p", "run_id": "r", "name": "n", "dir": str(tmp_path)},
    )
    assert path == tmp_path / "crash-11.json"

    raw = json.loads(path.read_text(encoding="utf-8"))
    assert raw["format"] == "jaxobs.crash"
    assert raw["recorder"]["steps"] == [10, 11, 12, 13]
    assert raw["recorder"]["series"]["train/loss"] == [0.5, "NaN", "-Infinity", 0.25]
    assert raw["recorder"]["series"]["grads/D/kernel/norm"] == [1.0, "Infinity", None, 2.0]
    assert raw["recorder"]["series"]["val/loss"] == [None, None, None, 0.75]

    dump = load_dump(path)
    assert dump.step == 11
    assert dump.trigger["kind"] == "alert" and dump.trigger["rule"] == "nonfinite"
    assert dump.thresholds == {"spike_z": 6.0, "window": 128}
    assert dump.alerts == [alert]
    assert dump.run["run_id"] == "r"
    assert dump.checkpoint is None
    np.testing.assert_array_equal(dump.steps, [10, 11, 12, 13])
    for key in ("train/loss", "grads/D/kernel/norm", "val/loss"):
        ref = np.array([rows[s].get(key, math.nan) for s in rows])
        assert _same(dump.series[key], ref), key
        np.testing.assert_array_equal(dump.present[key], [key in rows[s] for s in rows])
    # The raw JSON decoded by the independent reader agrees.
    assert _same(decode(raw["recorder"]["series"]["train/loss"]), dump.series["train/loss"])
    # The recorder's verdict is stored: D's norm went non-finite at step 11.
    assert dump.first_diverged["layer"] == "D"
    assert dump.first_diverged["step"] == 11
    assert dump.first_diverged["nonfinite"] is True


def test_dump_of_the_same_step_is_replaced(tmp_path):
    """A second dump for the same step replaces the first file."""
    rec = jaxobs.FlightRecorder(4)
    rec.add(0, {"a": 1.0})
    first = rec.dump(tmp_path, step=0, trigger={"kind": "exception"})
    rec.add(1, {"a": 2.0})
    second = rec.dump(tmp_path, step=0, trigger={"kind": "sigterm"})
    assert first == second
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crash-0.json"]
    dump = load_dump(second)
    assert dump.trigger["kind"] == "sigterm"
    np.testing.assert_array_equal(dump.steps, [0, 1])


def test_first_diverged_on_a_crafted_ring():
    """The first layer past 10x its baseline (median of its earlier recorded steps) is named."""
    rec = jaxobs.FlightRecorder(8)
    # Steps 0..3 fall out of the ring; the baseline is built from what is left.
    d0 = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, math.nan]
    d1 = [1.0, 1.0, 1.0, 1.0, 2.0, 4.0, 2.0, 4.0, 2.0, 60.0, math.inf, math.nan]
    for step in range(12):
        rec.add(step, {"grads/D0/kernel/norm": d0[step], "grads/D1/kernel/norm": d1[step]})
    steps, _, _ = rec.snapshot()
    np.testing.assert_array_equal(steps, np.arange(4, 12))
    hit = rec.first_diverged()
    baseline = float(np.median([2.0, 4.0, 2.0, 4.0, 2.0]))  # D1 at steps 4..8
    assert hit["layer"] == "D1"
    assert hit["group"] == "grads"
    assert hit["step"] == 9
    assert hit["baseline"] == baseline
    assert hit["ratio"] == 60.0 / baseline
    assert hit["nonfinite"] is False


def test_first_diverged_prefers_the_earlier_nonfinite_layer():
    """A layer whose nonfinite count is set diverges at that step, before a later blow-up."""
    rec = jaxobs.FlightRecorder(16)
    for step in range(10):
        row = {
            "grads/A/kernel/norm": 1.0 if step < 8 else 1e6,
            "grads/B/kernel/norm": 1.0,
            "grads/B/kernel/nonfinite": 1.0 if step == 6 else 0.0,
        }
        rec.add(step, row)
    hit = rec.first_diverged()
    assert (hit["layer"], hit["step"], hit["nonfinite"]) == ("B", 6, True)
    assert math.isinf(hit["ratio"])


def test_first_diverged_none_for_a_healthy_ring():
    """Norms that stay within 10x of their baseline diverge nowhere."""
    rec = jaxobs.FlightRecorder(16)
    rng = np.random.default_rng(1)
    for step in range(16):
        rec.add(step, {"grads/A/kernel/norm": float(rng.uniform(1.0, 3.0))})
    assert rec.first_diverged() is None
