"""jaxobs.testing: the capture against events.jsonl read back with json, and the compilation
log against a jax.monitoring listener registered here."""

from __future__ import annotations

import doctest
import math
import pathlib
import subprocess
import tempfile
import textwrap

import jax
import jax.numpy as jnp
import pytest
import tiny_train
from helpers import PYTHON, metric_table, read_events, same_float

import jaxobs
import jaxobs.testing
from jaxobs.testing import CaptureSink, capture_run, count_compilations, log_compilations


def _same(a, b) -> bool:
    """Equal as JSON data, NaN equal to NaN (tuples compare as lists)."""
    if isinstance(a, float) and isinstance(b, float):
        return same_float(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _log_a_little(run) -> None:
    run.log({"train/loss": 1.0, "train/acc": 0.5}, step=0)
    run.log({"train/loss": math.nan, "train/acc": math.inf}, step=1)
    run.log({"train/loss": 0.25}, step=2)
    run.emit("epoch_end", step=2, epoch=0, metrics={"val/loss": 0.75})
    run.emit(
        "health_check", step=1, rule="nonfinite_loss", severity="critical", message="loss is NaN"
    )
    run.log_histograms({"w": {"counts": [1, 2], "edges": [0.0, 1.0, 2.0]}}, step=2)
    run.add_note("hello")


# ----------------------------------------------------------------------------- capture


def test_capture_holds_every_record_of_events_jsonl(tmp_path):
    """After the run, the capture holds the records of events.jsonl, in order, value for value."""
    with capture_run("cap", dir=tmp_path, config={"lr": 0.1}) as (run, capture):
        _log_a_little(run)
    on_file = read_events(run.dir)
    assert capture.types() == [r["event"] for r in on_file]
    assert capture.types()[0] == "run_start" and capture.types()[-1] == "run_end"
    assert len(capture) == len(on_file)
    for got, want in zip(capture.records(), on_file, strict=True):
        assert _same(got, want), (got, want)


def test_capture_metrics_match_the_file(tmp_path):
    """capture.metrics() is the {key: {step: value}} table of the metrics records on file."""
    with capture_run("cap", dir=tmp_path) as (run, capture):
        _log_a_little(run)
    table = metric_table(read_events(run.dir))
    got = capture.metrics()
    assert got.keys() == table.keys() == {"train/loss", "train/acc"}
    for key in table:
        assert got[key].keys() == table[key].keys()
        assert all(same_float(got[key][s], table[key][s]) for s in table[key])


def test_capture_of_type(tmp_path):
    """of_type keeps the events of the given types, in order, as on file."""
    with capture_run("cap", dir=tmp_path) as (run, capture):
        _log_a_little(run)
    on_file = read_events(run.dir)
    [alert] = capture.of_type("health_check")
    assert isinstance(alert, jaxobs.Event)
    [want] = [r for r in on_file if r["event"] == "health_check"]
    assert (alert.step, alert.severity, alert.data["rule"]) == (1, "critical", "nonfinite_loss")
    assert _same(alert.to_record(), want)
    both = capture.of_type("epoch_end", "note")
    assert [e.type for e in both] == [
        r["event"] for r in on_file if r["event"] in ("epoch_end", "note")
    ]
    assert capture.of_type("no_such_event") == []


@pytest.mark.parametrize("types", [(), (1,), (["metrics"],)])
def test_capture_of_type_rejects_non_strings(types):
    """of_type needs at least one type, each a string."""
    with pytest.raises(TypeError, match="of_type"):
        CaptureSink().of_type(*types)


def test_capture_while_the_run_is_live_after_flush(tmp_path):
    """While the run is live, a flush makes the capture hold every record written so far."""
    with capture_run("cap", dir=tmp_path) as (run, capture):
        for step in range(50):
            run.log({"train/loss": 1.0 / (step + 1)}, step=step)
        run.flush()
        on_file = read_events(run.dir)
        assert capture.types() == [r["event"] for r in on_file]
        assert capture.metrics() == metric_table(on_file)
        capture.clear()
        assert len(capture) == 0 and capture.metrics() == {}
        run.log({"train/loss": 0.0}, step=50)
        run.flush()
        assert capture.metrics() == {"train/loss": {50: 0.0}}


def test_capture_run_uses_a_temporary_directory_removed_at_the_end():
    """Without dir=, the run lives under the system's temporary folder until the block ends."""
    with capture_run("cap") as (run, capture):
        run.log({"x": 1.0}, step=0)
        events = pathlib.Path(run.dir) / "events.jsonl"
        assert events.is_file()
        assert pathlib.Path(tempfile.gettempdir()).resolve() in events.resolve().parents
    assert not events.exists()
    assert capture.metrics() == {"x": {0: 1.0}}


def test_capture_run_passes_init_arguments(tmp_path):
    """Arguments of jaxobs.init reach the run: config, id, level, extra sinks."""
    other = CaptureSink()
    with capture_run(
        "cap", dir=tmp_path, id="r1", config={"lr": 0.1}, level="BASIC", sinks=[other]
    ) as (run, capture):
        run.log_histograms({"w": [1.0, 2.0]}, step=0)  # DETAILED: above BASIC
        run.log({"x": 1.0}, step=0)
    assert run.dir == tmp_path / "cap" / "r1"
    [start] = [r for r in read_events(run.dir) if r["event"] == "run_start"]
    assert start["run"]["config"] == {"lr": 0.1} and start["settings"]["level"] == "BASIC"
    assert capture.of_type("run_start")[0].data["run"]["config"] == {"lr": 0.1}
    assert "histograms" not in capture.types()
    assert other.types() == capture.types()


def test_capture_run_records_a_failure(tmp_path):
    """An exception in the block ends the run as failed, propagates, and the capture has it."""
    with pytest.raises(ValueError, match="boom"), capture_run("cap", dir=tmp_path) as (run, cap):
        raise ValueError("boom")
    [end] = [r for r in read_events(run.dir) if r["event"] == "run_end"]
    assert end["status"] == "failed" and end["error"]["type"] == "ValueError"
    assert cap.of_type("run_end")[0].data["status"] == "failed"


def test_capture_sink_with_init(tmp_path):
    """A CaptureSink passed to jaxobs.init receives what the run records."""
    capture = CaptureSink()
    with jaxobs.init("cap", dir=tmp_path, sinks=[capture], terminal=False) as run:
        run.log({"x": 2.0}, step=3)
    assert capture.metrics() == metric_table(read_events(run.dir)) == {"x": {3: 2.0}}


def test_capture_run_rejects_a_sink_that_is_not_a_list():
    """sinks= must be an iterable of sinks, as for jaxobs.init."""
    with pytest.raises(TypeError, match="sinks"), capture_run(sinks=5):
        pass


# ----------------------------------------------------------------------------- compilations


class _Reference:
    """The test's own jax.monitoring listener: every backend-compile event with its name."""

    def __init__(self):
        self.names: list[str] = []

    def __call__(self, event, duration_secs, **kwargs):
        if event.endswith("backend_compile_duration"):
            self.names.append(kwargs.get("fun_name", ""))

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self)


def test_log_compilations_counts_each_new_shape_once():
    """A jitted function called on N shapes (twice each) compiles N times, as a listener of
    the test's own sees it."""

    def scaled_sum(x):
        return (3.0 * x).sum()

    fn = jax.jit(scaled_sum)
    inputs = [jnp.ones(n) for n in (2, 3, 5, 7)]  # made before counting: eager ops compile
    with _Reference() as reference, log_compilations() as log:
        for x in inputs + inputs:
            fn(x).block_until_ready()
    assert reference.names.count("jit(scaled_sum)") == len(inputs)
    assert log.count_of("scaled_sum") == log.count_of("jit(scaled_sum)") == len(inputs)
    assert log.names == reference.names and log.count == len(reference.names)
    assert all(c.duration_s >= 0.0 for c in log)


def test_log_compilations_stops_when_the_block_ends():
    """Compilations after the block are not added to its log."""

    def after(x):
        return x - 1.0

    x = jnp.ones(4)
    with log_compilations() as log:
        pass
    with _Reference() as reference:
        jax.jit(after)(x).block_until_ready()
    assert reference.names == ["jit(after)"]
    assert log.count == 0 and log.names == []


def test_count_compilations_matches_a_listener():
    """count_compilations(calls) is the number of compile events calls() triggers."""

    def halve(x):
        return x / 2.0

    fn = jax.jit(halve)
    xs = [jnp.zeros(n) for n in (1, 2, 3)]
    with _Reference() as reference:
        count = count_compilations(lambda: [fn(x) for x in xs + xs])
    assert count == len(reference.names) == 3


def test_observing_a_step_adds_no_compilation():
    """Over the same steps, the observed step compiles as often as the bare jitted step, and
    a second run of steps compiles nothing."""
    x, y = tiny_train.data()
    states = [tiny_train.make_state(tiny_train.DEFAULTS) for _ in range(2)]

    def loop(step, state, n=4):
        for _ in range(n):
            state, _ = step(state, x, y)
        return state

    bare = jax.jit(tiny_train.step_fn)
    with _Reference() as reference:
        bare_count = count_compilations(lambda: loop(bare, states[0]))
    assert bare_count == len(reference.names) >= 1
    with capture_run("compiles", config=tiny_train.DEFAULTS) as (_, capture):
        observed = jaxobs.observe(tiny_train.step_fn)
        with log_compilations() as first:
            state = loop(observed, states[1])
            observed.flush()
        with log_compilations() as second:
            loop(observed, state)
            observed.flush()
    assert first.count == bare_count
    assert second.count == 0
    assert sorted(capture.metrics()["train/loss"]) == list(range(8))


# ----------------------------------------------------------------------------- the module


def test_import_jaxobs_testing_imports_no_jax(tmp_path):
    """Importing jaxobs.testing (and making a capture) does not import jax."""
    script = textwrap.dedent(
        """
        import sys
        import jaxobs.testing
        jaxobs.testing.CaptureSink()
        print(any(m.split(".")[0] in ("jax", "jaxlib") for m in sys.modules))
        """
    )
    out = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_docstring_examples():
    """The examples in jaxobs.testing's docstrings pass."""
    result = doctest.testmod(jaxobs.testing, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
