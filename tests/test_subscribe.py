"""Run.subscribe: a bounded channel of the run's events that never blocks training."""

from __future__ import annotations

import numpy as np
import pytest

import jaxobs
from jaxobs._src.host.subscribe import Subscription


def test_filter_gets_the_logged_metrics_in_order(tmp_path):
    run = jaxobs.init(project="p", dir=tmp_path)
    sub = run.subscribe(types=["metrics"])
    losses = np.linspace(1.0, 0.1, 20)
    for step, loss in enumerate(losses):
        run.log({"loss": float(loss)}, step=step)
    run.finish()
    events = list(sub)
    assert [e.type for e in events] == ["metrics"] * 20
    assert [e.step for e in events] == list(range(20))
    np.testing.assert_array_equal([e.data["values"]["loss"] for e in events], losses)
    assert sub.dropped == 0


def test_a_reader_that_never_reads_drops_the_oldest(tmp_path):
    run = jaxobs.init(project="p", dir=tmp_path)
    sub = run.subscribe(types=lambda e: e.type == "metrics", maxsize=5)
    for step in range(1000):
        run.log({"x": step * 2.0}, step=step)  # returns: never waits for the reader
    run.flush()
    kept = sub.drain()
    assert len(kept) == 5
    assert sub.dropped == 1000 - len(kept)
    steps = [e.step for e in kept]
    assert steps == list(range(steps[0], steps[0] + 5))  # contiguous: the most recent ones
    assert steps[-1] == 999
    run.finish()
    assert list(sub) == []


def test_get_drain_and_end_after_finish(tmp_path):
    run = jaxobs.init(project="p", dir=tmp_path)
    sub = run.subscribe()
    assert not sub.ended
    run.log({"a": 1.0}, step=0)
    run.finish()
    types = [e.type for e in sub]
    assert "metrics" in types and types[-1] == "run_end"
    assert sub.ended and sub.get(timeout=0) is None
    late = run.subscribe()
    assert late.ended and list(late) == []


def test_close_ends_iteration(tmp_path):
    run = jaxobs.init(project="p", dir=tmp_path)
    with run.subscribe(types="metrics") as sub:
        run.log({"a": 1.0}, step=0)
    assert sub.ended and list(sub) == []
    run.finish()


def test_bad_arguments():
    with pytest.raises(ValueError, match="maxsize"):
        Subscription(maxsize=0)
    with pytest.raises(TypeError, match="types"):
        Subscription(types=3)
    with pytest.raises(TypeError, match="strings"):
        Subscription(types=[1])
