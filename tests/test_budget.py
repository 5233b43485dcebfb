"""The metric budget of the tracker bridges, against NumPy and the trackers' own files."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
from helpers import metric_table, read_events
from wandb_files import find_offline_runs, read_offline_run

import jaxobs
from jaxobs._src.formats.rundir import events_of, read_run
from jaxobs._src.formats.sync_marker import SyncMarker
from jaxobs.bridges import _budget
from jaxobs.bridges.tensorboard import TensorBoardSink
from jaxobs.bridges.wandb import MetricBudget, WandbSink

GROUPS = ("params", "updates", "grads")
STATS = ("norm", "rms", "mean", "std", "min", "max", "max_abs", "zero_frac", "nonfinite")
ROLLED = ("norm", "min", "max", "max_abs", "nonfinite")  # what a layer of several leaves keeps
OTHER = {  # keys that are no per-leaf statistics: never touched
    "train/loss": 0.5,
    "val/accuracy": 0.75,
    "health/loss_spike": 0.0,
    "window/loss/max": 0.9,
    "perf/step_time_s": 0.01,
    "my_metric": 3.0,
    "grads/global_norm": 2.0,
    "updates/update_ratio": 0.01,
    "mytap/Dense_0/kernel/norm": 1.5,
}


def _leaf_stats(x: np.ndarray) -> dict[str, float]:
    finite = x[np.isfinite(x)]
    return {
        "norm": float(np.linalg.norm(finite)),
        "rms": float(np.sqrt(np.mean(finite**2))),
        "mean": float(np.mean(finite)),
        "std": float(np.std(finite)),
        "min": float(np.min(x)),
        "max": float(np.max(x)),
        "max_abs": float(np.max(np.abs(x))),
        "zero_frac": float(np.mean(x == 0)),
        "nonfinite": float(np.sum(~np.isfinite(x))),
    }


def _model(n_layers: int, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """{layer path: {leaf name: array}}: conv/dense layers of a kernel and a bias, and one
    embedding layer of a single leaf."""
    rng = np.random.default_rng(seed)
    layers = {
        f"params/Layer_{i}": {
            "kernel": rng.normal(size=12) * (i + 1),
            "bias": rng.normal(size=4),
        }
        for i in range(n_layers)
    }
    layers["params/Embed_0"] = {"embedding": rng.normal(size=6)}
    return layers


def _record(model, scale: float = 1.0) -> dict[str, float]:
    """Every statistic of every leaf of every group (what EXPERT logs), plus OTHER and the
    per-layer update ratios."""
    out = dict(OTHER)
    for g, group in enumerate(GROUPS):
        for layer, leaves in model.items():
            for leaf, x in leaves.items():
                for stat, value in _leaf_stats(x * scale * (g + 1)).items():
                    out[f"{group}/{layer}/{leaf}/{stat}"] = value
    for layer in model:
        out[f"updates/{layer}/update_ratio"] = 0.001
    return out


def _reference_rollup(model, scale: float = 1.0, top=()) -> dict[str, float]:
    """The record `_record` makes, as a budget should send it, from the arrays themselves:
    a layer's statistics are those of its leaves concatenated."""
    out = dict(OTHER)
    for g, group in enumerate(GROUPS):
        for layer, leaves in model.items():
            arrays = [x * scale * (g + 1) for x in leaves.values()]
            whole = _leaf_stats(np.concatenate(arrays))
            kept = STATS if len(arrays) == 1 else ROLLED
            out.update({f"{group}/{layer}/{s}": whole[s] for s in kept})
            for leaf, x in zip(leaves, arrays, strict=True):
                if f"{group}/{layer}/{leaf}" in top:
                    stats = _leaf_stats(x)
                    out.update({f"{group}/{layer}/{leaf}/{s}": v for s, v in stats.items()})
    for layer in model:
        out[f"updates/{layer}/update_ratio"] = 0.001
    return out


def _top_leaves(model, k: int, scale: float = 1.0) -> set[str]:
    """The k leaves of each group with the largest max |x|, among multi-leaf layers."""
    top = set()
    for g, group in enumerate(GROUPS):
        leaves = [
            (float(np.max(np.abs(x * scale * (g + 1)))), f"{group}/{layer}/{leaf}")
            for layer, members in model.items()
            if len(members) > 1
            for leaf, x in members.items()
        ]
        top |= {name for _, name in sorted(leaves, reverse=True)[:k]}
    return top


def _assert_close(got: dict[str, float], want: dict[str, float]) -> None:
    assert set(got) == set(want), sorted(set(got) ^ set(want))[:10]
    for key, value in want.items():
        assert math.isclose(got[key], value, rel_tol=1e-12, abs_tol=1e-12), key


# ----------------------------------------------------------------------------- the roll-up


def test_docstring_examples():
    """The module's examples pass."""
    result = doctest.testmod(_budget)
    assert result.failed == 0 and result.attempted >= 3


def test_rollup_is_the_statistics_of_each_layer_as_a_whole():
    """norm, min, max, max_abs and nonfinite of a layer equal NumPy's over its leaves
    concatenated; mean/rms/std/zero_frac go (but a one-leaf layer keeps them); every key
    that is no per-leaf statistic is kept as it is."""
    model = _model(4)
    _assert_close(_budget.rolled_up(_record(model)), _reference_rollup(model))


def test_rollup_of_leaf_norms_is_the_root_of_their_squares():
    """The norm roll-up is sqrt(sum of squares) of the leaf norms; max/min/nonfinite
    propagate NaN as NumPy does."""
    norms = np.array([3.0, 4.0, 12.0])
    maxes = np.array([1.0, np.nan, 2.0])
    record = {f"grads/L/{i}/norm": float(v) for i, v in enumerate(norms)}
    record |= {f"grads/L/{i}/max": float(v) for i, v in enumerate(maxes)}
    record |= {f"grads/L/{i}/min": float(-v) for i, v in enumerate(maxes)}
    record |= {f"grads/L/{i}/nonfinite": float(i) for i in range(3)}
    got = _budget.rolled_up(record)
    assert got["grads/L/norm"] == float(np.sqrt(np.sum(norms**2)))
    assert np.isnan(got["grads/L/max"]) and np.isnan(np.max(maxes))
    assert np.isnan(got["grads/L/min"])
    assert got["grads/L/nonfinite"] == float(np.sum(np.arange(3)))
    assert set(got) == {"grads/L/norm", "grads/L/max", "grads/L/min", "grads/L/nonfinite"}


def test_top_k_leaves_keep_every_statistic():
    """The leaves with the largest max_abs of each group (non-finite first) keep all theirs."""
    model = _model(5)
    record = _record(model)
    top = _top_leaves(model, 2)
    assert set(_budget.outliers(record, 2)) == top
    _assert_close(_budget.rolled_up(record, keep=top), _reference_rollup(model, top=top))
    record["grads/params/Layer_0/bias/max_abs"] = math.inf
    assert _budget.outliers(record, 1)[0] == "grads/params/Layer_0/bias"  # grads first


# ----------------------------------------------------------------------------- the meter


def test_the_rate_is_the_values_of_the_last_minute_of_records():
    """At one record a second, the budget breaks at the first record that brings the
    minute's count over it; every record after is rolled up, even when the rate falls."""
    model = _model(2)
    record = _record(model)
    n = len(record)
    meter = MetricBudget(values_per_minute=10 * n + n // 2, top_k=0).meter()
    sent = [meter.send(record, step=i, time_s=float(i)) for i in range(10)]
    assert all(s == record for s in sent) and meter.trip is None
    sent.append(meter.send(record, step=10, time_s=10.0))
    late = meter.send(record, step=11, time_s=3600.0)  # an hour later: still rolled up
    assert (
        meter.trip is not None
        and meter.trip.step == 10
        and meter.trip.reason == ("values_per_minute")
    )
    assert meter.trip.values_per_minute == 11 * n
    _assert_close(sent[10], _reference_rollup(model))
    assert set(late) == set(sent[10])


def test_records_older_than_a_minute_leave_the_window():
    """Records spaced so that the minute never holds more than the budget: never rolled up."""
    record = _record(_model(2))
    meter = MetricBudget(values_per_minute=2 * len(record)).meter()
    for i in range(100):
        assert meter.send(record, step=i, time_s=30.0 * i) == record
    assert meter.trip is None


def test_a_low_rate_run_is_untouched():
    """A big record every 10 seconds (every=100 on a fast step) stays under the default."""
    record = _record(_model(60))  # 3 groups x 121 leaves x 9 statistics, about 3,300 keys
    assert len(record) > 3000
    meter = MetricBudget().meter()
    for i in range(360):  # an hour
        assert meter.send(record, step=100 * i, time_s=10.0 * i) == record
    assert meter.trip is None


def test_too_many_distinct_keys_roll_up_at_once():
    """A record with more keys than max_keys is rolled up from the first one."""
    model = _model(3)
    meter = MetricBudget(max_keys=50, top_k=1).meter()
    got = meter.send(_record(model), step=0, time_s=0.0)
    assert meter.trip is not None and meter.trip.reason == "max_keys"
    top = _top_leaves(model, 1)
    assert set(meter.trip.top) == top
    _assert_close(got, _reference_rollup(model, top=top))


def test_the_keys_stay_the_same_once_rolled_up():
    """The top leaves are chosen once: another leaf standing out later adds no key."""
    model = _model(3)
    meter = MetricBudget(max_keys=50, top_k=1).meter()
    first = set(meter.send(_record(model), step=0, time_s=0.0))
    model["params/Layer_0"]["bias"] = model["params/Layer_0"]["bias"] * 1000
    assert set(meter.send(_record(model), step=1, time_s=1.0)) == first


def test_bad_budgets_are_refused():
    """Non-positive limits and a budget of the wrong type say what is expected."""
    with pytest.raises(ValueError, match=r"values_per_minute=0\).*budget=False"):
        MetricBudget(values_per_minute=0)
    with pytest.raises(ValueError, match=r"top_k=-1"):
        MetricBudget(top_k=-1)
    with pytest.raises(TypeError, match=r"WandbSink\(budget=5\): expected a MetricBudget"):
        WandbSink(budget=5)
    assert WandbSink(budget=False).budget is None
    assert TensorBoardSink().budget == MetricBudget()


# ----------------------------------------------------------------------------- end to end


def _budget_warnings(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "jaxobs" and r.levelno >= 30 and "metric budget" in r.getMessage()
    ]


def _history(offline) -> dict[int, dict[str, float]]:
    """{trainer/step: the row's scalars} of a W&B offline run."""
    rows = {}
    for row in offline.history:
        values = {k: v for k, v in row.items() if not k.startswith("_") and k != "trainer/step"}
        assert row["trainer/step"] not in rows
        rows[row["trainer/step"]] = values
    return rows


def _log_steps(run, model, steps: int) -> None:
    for step in range(steps):
        run.log(_record(model, scale=1.0 + step), step=step)


def _every_key_in_events_jsonl(run_dir, model, steps: int) -> None:
    """events.jsonl, read with jaxobs' reader, holds every key of every record."""
    metrics = [e for e in events_of(read_run(run_dir)) if e.type == "metrics"]
    assert [e.step for e in metrics] == list(range(steps))
    for e in metrics:
        assert set(e.metrics) == set(_record(model)), e.step


def test_wandb_receives_layer_rollups_past_the_default_budget(wandb_env, caplog):
    """A model of 10,000+ per-leaf keys: W&B holds the per-layer roll-ups (and the top-3
    leaves of each group), no other per-leaf key; events.jsonl keeps every key; the
    warning is said once."""
    model = _model(200)  # 3 groups x 401 leaves x 9 statistics: 10,827 keys a record
    assert len(_record(model)) > MetricBudget().max_keys
    with jaxobs.init("budget", dir=wandb_env / "runs", terminal=False, sinks=[WandbSink()]) as run:
        _log_steps(run, model, 3)
    (path,) = find_offline_runs(run.dir / "wandb")
    rows = _history(read_offline_run(path, timeout=30))
    top = _top_leaves(model, 3)
    assert sorted(rows) == [0, 1, 2]
    for step, row in rows.items():
        _assert_close(row, _reference_rollup(model, scale=1.0 + step, top=top))
    _every_key_in_events_jsonl(run.dir, model, 3)
    (warning,) = _budget_warnings(caplog)
    assert "W&B metric budget" in warning and "10,000" in warning and "at step 0" in warning
    assert "WandbSink(budget=jaxobs.bridges.wandb.MetricBudget(" in warning
    assert "budget=False" in warning


def test_wandb_sends_everything_until_the_minute_breaks_the_budget(wandb_env, caplog):
    """With a small values_per_minute, W&B holds every key up to the record that brings the
    last minute of records (by their own timestamps) over the budget, roll-ups after."""
    model = _model(3)
    n = len(_record(model))
    budget = MetricBudget(values_per_minute=3 * n + 1, top_k=1)
    sinks = [WandbSink(budget=budget)]
    with jaxobs.init("budget", dir=wandb_env / "runs", terminal=False, sinks=sinks) as run:
        _log_steps(run, model, 8)
    events = [e for e in read_events(run.dir) if e["event"] == "metrics"]
    times = [e["timestamp_ns"] / 1e9 for e in events]
    counts = [  # the values of the minute up to each record, with it
        sum(len(e["values"]) for e, t in zip(events, times, strict=True) if now - 60 < t <= now)
        for now in times
    ]
    tripped = next(i for i, c in enumerate(counts) if c > budget.values_per_minute)
    assert tripped == 3  # the run takes less than a minute
    (path,) = find_offline_runs(run.dir / "wandb")
    rows = _history(read_offline_run(path, timeout=30))
    top = _top_leaves(model, 1, scale=1.0 + tripped)
    table = metric_table(events)
    for step, row in rows.items():
        if step < tripped:
            assert row == {k: table[k][step] for k in _record(model)}
        else:
            _assert_close(row, _reference_rollup(model, scale=1.0 + step, top=top))
    assert len(_budget_warnings(caplog)) == 1


def test_a_low_rate_wandb_run_receives_every_key(wandb_env, caplog):
    """Within the default budget, every key of every record reaches W&B, and nothing is said."""
    model = _model(20)
    with jaxobs.init("budget", dir=wandb_env / "runs", terminal=False, sinks=[WandbSink()]) as run:
        _log_steps(run, model, 10)
    (path,) = find_offline_runs(run.dir / "wandb")
    rows = _history(read_offline_run(path, timeout=30))
    table = metric_table(read_events(run.dir))
    assert {step: set(row) for step, row in rows.items()} == {s: set(table) for s in range(10)}
    assert _budget_warnings(caplog) == []


def test_tensorboard_live_and_sync_write_the_same_rollups(tmp_path, caplog):
    """TensorBoard, read back with tensorboard's loader, holds the roll-up tags, the same
    live and from a sync of the run directory; the warning is said once by each."""
    from tb_files import read_tensorboard

    model = _model(4)
    budget = MetricBudget(max_keys=100, top_k=1)
    sinks = [TensorBoardSink(budget=budget)]
    with jaxobs.init("budget", dir=tmp_path / "runs", terminal=False, sinks=sinks) as run:
        _log_steps(run, model, 4)
    replayed = TensorBoardSink(tmp_path / "synced", budget=budget)
    replayed.replay(read_run(run.dir), SyncMarker(run.dir, "tensorboard", "synced"))
    live = read_tensorboard(run.dir / "tensorboard").scalars
    synced = read_tensorboard(tmp_path / "synced").scalars
    top = _top_leaves(model, 1)
    want = _reference_rollup(model, top=top)
    assert set(live) == set(want) == set(synced)
    for key, value in want.items():
        assert [s for s, _, _ in live[key]] == [0, 1, 2, 3], key
        assert math.isclose(live[key][0][1], value, rel_tol=1e-6, abs_tol=1e-6), key  # float32
        assert [v for _, v, _ in live[key]] == [v for _, v, _ in synced[key]], key
    _every_key_in_events_jsonl(run.dir, model, 4)
    warnings = _budget_warnings(caplog)
    assert len(warnings) == 2 and all("TensorBoard metric budget" in w for w in warnings)
