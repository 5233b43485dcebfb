"""Tests of the in-memory data model: Series, Curve, MetricHistory, ExperimentLog, TrainLog,
LogDestination, ConfusionMatrix and `jaxobs.summary`.

Expected values are written out by hand or computed with NumPy / the stdlib `json` module.
"""

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest

import jaxobs
from jaxobs import (
    Artifact,
    Curve,
    ExperimentLog,
    MetricHistory,
    RunInfo,
    Series,
    TrainLog,
    TrainLogError,
)
from jaxobs._src.analysis.summary import direction, summarize
from jaxobs.artifacts import ConfusionMatrix, LogDestination

# ----------------------------------------------------------------------------- Curve


def test_curve_default_steps_count_from_zero():
    """Values appended without a step get steps 0, 1, 2, ..."""
    c = Curve("train/loss")
    assert c.next_step == 0
    for v in (2.3, 1.9, 1.5):
        c.append(v)
    assert c.steps == [0, 1, 2]
    assert c.values == [2.3, 1.9, 1.5]
    assert len(c) == 3
    assert c.next_step == 3


def test_curve_explicit_step_jump_then_default_continues():
    """After an explicit step, the default step is one past it."""
    c = Curve("train/loss")
    c.append(1.0)
    c.append(0.5, step=10)
    assert c.next_step == 11
    c.append(0.25)
    c.append(0.125, step=np.int64(50))
    c.append(0.0625)
    assert c.steps == [0, 10, 11, 50, 51]
    assert all(type(s) is int for s in c.steps)


@pytest.mark.parametrize("step", [1.0, np.float32(2.0), "3", True, jnp.array(4)])
def test_curve_non_integer_step_raises(step):
    """A step that is not an integer raises TypeError naming the curve; nothing is appended."""
    c = Curve("loss", [0], [1.0])
    with pytest.raises(TypeError, match="curve 'loss'"):
        c.append(2.0, step=step)
    assert (c.steps, c.values) == ([0], [1.0])


def test_curve_constructor_checks_lengths():
    """A curve built with mismatched steps and values raises ValueError with both lengths."""
    with pytest.raises(ValueError, match=r"2 steps but 3 values"):
        Curve("x", [0, 1], [1.0, 2.0, 3.0])


def test_curve_to_trainlog():
    """Curve.to_trainlog: one series, the curve's steps shared, titled by the curve's name."""
    c = Curve("loss", [0, 5], [2.0, 1.0], color="red")
    log = c.to_trainlog()
    assert log.title == "loss"
    assert log.steps == [0, 5]
    assert log.to_json()["series"] == [{"name": "loss", "values": [2.0, 1.0], "color": "red"}]
    assert c.to_trainlog("custom").title == "custom"


# ----------------------------------------------------------------------------- value conversion


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (3, 3.0),
        (-0.5, -0.5),
        (True, 1.0),
        (np.int8(-4), -4.0),
        (np.uint16(7), 7.0),
        (np.float16(0.1), 0.0999755859375),
        (np.float32(0.1), 0.10000000149011612),
        (np.bool_(False), 0.0),
        (np.array(2.5), 2.5),
        (jnp.array(3), 3.0),
        (jnp.float32(0.5), 0.5),
        (jnp.array([[4.0]]), 4.0),
        (float("nan"), math.nan),
        (np.float32(-np.inf), -math.inf),
    ],
    ids=repr,
)
def test_values_become_python_floats(value, expected):
    """Series, Curve and MetricHistory store every value as a Python float."""
    s = Series("m", [value])
    c = Curve("m")
    c.append(value)
    h = MetricHistory(["m"])
    h.append([value])
    for got in (s.values[0], c.values[0], h.curves["m"].values[0]):
        assert type(got) is float
        assert (math.isnan(got) and math.isnan(expected)) or got == expected


def test_bfloat16_jax_scalar_becomes_float():
    """A bfloat16 jax scalar is accepted as a metric value."""
    c = Curve("train/loss")
    c.append(jnp.bfloat16(0.5))
    assert c.values == [0.5]


@pytest.mark.parametrize(
    "bad",
    [jnp.zeros(2), np.ones((2, 2)), "0.5", None, [1.0], np.array([1 + 1j]), {"a": 1}],
    ids=["jax(2,)", "np(2,2)", "str", "None", "list", "complex", "dict"],
)
def test_non_scalar_values_raise_type_error_naming_metric(bad):
    """Non-scalars raise TypeError naming the metric, in all three builders."""
    with pytest.raises(TypeError, match="'val/acc'"):
        Series("val/acc", [1.0, bad])
    c = Curve("val/acc")
    with pytest.raises(TypeError, match="'val/acc'"):
        c.append(bad)
    assert len(c) == 0 and c.steps == []
    h = MetricHistory(["train/loss", "val/acc"])
    with pytest.raises(TypeError, match="'val/acc'"):
        h.append([0.5, bad])
    assert [len(c) for c in h.curves.values()] == [0, 0]


def test_array_shape_named_in_error():
    """A shape-(2,) array is refused with its shape in the message."""
    with pytest.raises(TypeError, match=r"shape \(2,\)"):
        Curve("x").append(jnp.array([1.0, 2.0]))


def test_series_steps_and_values_lengths_must_match():
    """A series with its own steps must have one step per value."""
    with pytest.raises(ValueError, match=r"series 'a': 1 steps but 2 values"):
        Series("a", [1.0, 2.0], steps=[0])


# ----------------------------------------------------------------------------- MetricHistory


def test_history_aligned_rows_by_sequence_and_mapping():
    """Sequence rows follow `names`; mapping rows go by name; default steps count up."""
    h = MetricHistory(["loss", "accuracy"])
    assert h.append([0.9, 0.5]) == 0
    assert h.append({"accuracy": 0.6, "loss": 0.7}) == 1
    assert h.append((0.5, 0.8), step=5) == 5
    assert h.next_step == 6
    assert h.names == ["loss", "accuracy"]
    assert h.curves["loss"].values == [0.9, 0.7, 0.5]
    assert h.curves["accuracy"].values == [0.5, 0.6, 0.8]
    assert h.curves["loss"].steps == h.curves["accuracy"].steps == [0, 1, 5]


@pytest.mark.parametrize("width", [0, 1, 3, 5])
def test_history_wrong_width_row_raises_and_appends_nothing(width):
    """A sequence row of the wrong width raises ValueError with both widths; nothing changes."""
    h = MetricHistory(["a", "b"])
    h.append([1.0, 2.0])
    with pytest.raises(ValueError) as info:
        h.append([0.0] * width)
    message = str(info.value)
    assert f"has {width} values" in message
    assert "2 metrics" in message
    assert [c.values for c in h.curves.values()] == [[1.0], [2.0]]
    assert [c.steps for c in h.curves.values()] == [[0], [0]]
    assert h.next_step == 1


def test_history_row_with_bad_value_appends_nothing():
    """A mapping row with one unconvertible value raises and leaves every metric unchanged."""
    h = MetricHistory(["a", "b"])
    with pytest.raises(TypeError, match="'b'"):
        h.append({"a": 1.0, "b": "high", "c": 3.0})
    assert h.names == ["a", "b"]
    assert [len(c) for c in h.curves.values()] == [0, 0]


def test_history_row_with_bad_name_appends_nothing():
    """A mapping row with an empty metric name raises and appends nothing at all."""
    h = MetricHistory(["a"])
    with pytest.raises(ValueError, match="non-empty"):
        h.append({"a": 1.0, "": 2.0})
    assert h.curves["a"].values == []


def test_history_mapping_rows_add_metrics_lazily():
    """Unknown names in a mapping row become new metrics, in first-seen order."""
    h = MetricHistory()
    assert h.names == [] and h.next_step == 0
    h.append({"train/loss": 1.0})
    h.append({"train/loss": 0.8, "val/loss": 0.9})
    assert h.names == ["train/loss", "val/loss"]
    assert h.curves["train/loss"].steps == [0, 1]
    assert h.curves["val/loss"].steps == [1]
    assert h.next_step == 2


def test_history_log_at_own_cadence():
    """`log` appends one metric at its own steps, beside the aligned rows."""
    h = MetricHistory(["train/loss"])
    for step in range(250):
        h.append({"train/loss": 1.0 / (step + 1)})
        if step % 100 == 0:
            assert h.log("val/loss", 2.0 / (step + 1), step=step) == step
    assert h.curves["train/loss"].steps == list(range(250))
    assert h.curves["val/loss"].steps == [0, 100, 200]
    assert h.curves["val/loss"].values == [2.0, 2.0 / 101, 2.0 / 201]
    # without a step, `log` continues the metric's own steps
    assert h.log("val/loss", 0.1) == 201
    assert h.next_step == 250


def test_history_log_without_step_starts_new_metric_at_zero():
    """A new metric logged without a step starts at step 0 (its own cadence)."""
    h = MetricHistory(["a"])
    h.append([1.0])
    h.append([2.0])
    assert h.log("b", 5.0) == 0
    assert h.log("b", 6.0) == 1


def test_history_to_series_shares_identical_steps():
    """When every curve has identical steps, they are shared and series carry none."""
    h = MetricHistory(["a", "b"])
    h.append([1.0, 2.0], step=3)
    h.append([3.0, 4.0], step=7)
    steps, series = h.to_series()
    assert steps == [3, 7]
    assert [s.to_json() for s in series] == [
        {"name": "a", "values": [1.0, 3.0]},
        {"name": "b", "values": [2.0, 4.0]},
    ]


def test_history_to_series_separate_steps_when_any_differ():
    """When any curve's steps differ, nothing is shared and each series has its steps."""
    h = MetricHistory(["a", "b"])
    h.append([1.0, 2.0])
    h.append({"a": 3.0})
    steps, series = h.to_series()
    assert steps == []
    assert [s.to_json() for s in series] == [
        {"name": "a", "steps": [0, 1], "values": [1.0, 3.0]},
        {"name": "b", "steps": [0], "values": [2.0]},
    ]


def test_history_same_length_different_steps_not_shared():
    """Equal lengths are not enough: steps must be identical to be shared."""
    h = MetricHistory()
    h.log("a", 1.0, step=0)
    h.log("b", 1.0, step=1)
    steps, series = h.to_series()
    assert steps == []
    assert [s.steps for s in series] == [[0], [1]]


def test_history_colors():
    """Colors given to the constructor reach the series."""
    h = MetricHistory(["a", "b"], colors={"b": "#ff0000"})
    h.append([1.0, 2.0])
    _, series = h.to_series()
    assert [s.color for s in series] == ["", "#ff0000"]


@pytest.mark.parametrize("name", ["", None, 3])
def test_history_bad_metric_name(name):
    """Metric names must be non-empty strings."""
    with pytest.raises(ValueError, match="non-empty strings"):
        MetricHistory().add_metric(name)


# ----------------------------------------------------------------------------- ExperimentLog


def _experiment():
    exp = ExperimentLog(run=RunInfo(project="digits", name="cnn", config={"lr": 0.05}))
    assert exp.log_metric("train/loss", 2.3) == 0
    assert exp.log_metric("train/loss", 1.9) == 1
    assert exp.log_row({"val/loss": 2.1, "val/accuracy": 0.2}, step=1) == 1
    exp.add_artifact("checkpoint", "ckpt/step_1", kind="model", description="weights")
    exp.add_artifact(Artifact("plot", "plots/loss.png"))
    exp.notes.append("first try")
    return exp


def test_experiment_to_trainlog():
    """to_trainlog gathers series, run, artifacts and notes; the title is the run name."""
    log = _experiment().to_trainlog()
    assert log.title == "cnn"
    assert log.steps == []
    assert {s.name: (log.steps_of(s), s.values) for s in log.series} == {
        "train/loss": ([0, 1], [2.3, 1.9]),
        "val/loss": ([1], [2.1]),
        "val/accuracy": ([1], [0.2]),
    }
    assert log.run is not None and log.run.config == {"lr": 0.05}
    assert [a.to_json() for a in log.artifacts] == [
        {"name": "checkpoint", "path": "ckpt/step_1", "kind": "model", "description": "weights"},
        {"name": "plot", "path": "plots/loss.png"},
    ]
    assert log.notes == ["first try"]


@pytest.mark.parametrize(
    ("run", "title", "expected"),
    [
        (RunInfo(project="p", name="n"), None, "n"),
        (RunInfo(project="p"), None, "p"),
        (RunInfo(), None, ""),
        (RunInfo(project="p", name="n"), "explicit", "explicit"),
        (RunInfo(project="p", name="n"), "", ""),
    ],
)
def test_experiment_title_defaults(run, title, expected):
    """The title defaults to the run name, then the project; an explicit title wins."""
    assert ExperimentLog(run=run).to_trainlog(title).title == expected


def test_experiment_add_artifact_needs_path():
    """add_artifact with a bare name and no path raises TypeError."""
    with pytest.raises(TypeError, match="needs a path"):
        ExperimentLog().add_artifact("checkpoint")


def test_experiment_roundtrip_through_trainlog():
    """from_trainlog(to_trainlog()) gives back an equal experiment with the same curves."""
    exp = _experiment()
    back = ExperimentLog.from_trainlog(exp.to_trainlog())
    assert back == exp
    assert back.run.name == "cnn"
    assert back.history.curves["train/loss"].steps == [0, 1]
    assert back.history.curves["val/accuracy"].values == [0.2]
    assert back.notes == ["first try"]


def test_experiment_roundtrip_through_file(tmp_path):
    """An experiment written to a file reads back equal, and the file is plain JSON."""
    exp = _experiment()
    path = exp.write_json(tmp_path / "sub" / "log.json")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    assert data["title"] == "cnn"
    assert data["run"]["config"] == {"lr": 0.05}
    assert ExperimentLog.read_json(path) == exp


def test_experiment_from_trainlog_without_run_uses_title():
    """A TrainLog without run metadata gives an experiment whose run is named by the title."""
    log = TrainLog("t", steps=[0, 2], series=[Series("a", [1.0, 2.0])])
    exp = ExperimentLog.from_trainlog(log)
    assert exp.run.name == "t"
    assert exp.history.curves["a"].steps == [0, 2]


# ----------------------------------------------------------------------------- TrainLog


def test_trainlog_duplicate_series_names_raise():
    """Two series with one name raise ValueError naming it."""
    with pytest.raises(ValueError, match=r"repeat: \['a'\]"):
        TrainLog("t", series=[Series("a", [1.0]), Series("b", [1.0]), Series("a", [2.0])])


def test_trainlog_shared_step_length_mismatch_raises():
    """A series without own steps must match the shared steps' length."""
    with pytest.raises(ValueError, match=r"'b' has 3 values .* shared steps has 2"):
        TrainLog("t", steps=[0, 1], series=[Series("a", [1.0, 2.0]), Series("b", [1.0] * 3)])


def test_trainlog_series_with_own_steps_ignore_shared_length():
    """A series with its own steps may differ in length from the shared steps."""
    log = TrainLog("t", steps=[0, 1], series=[Series("a", [1.0, 2.0, 3.0], steps=[0, 5, 9])])
    assert log.steps_of("a") == [0, 5, 9]


def test_trainlog_steps_of_resolves_shared_own_and_implicit_steps():
    """steps_of: own steps, else shared steps, else 0..n-1."""
    shared = TrainLog(steps=[10, 20], series=[Series("a", [1, 2]), Series("b", [1], steps=[7])])
    assert shared.steps_of("a") == [10, 20]
    assert shared.steps_of(shared["b"]) == [7]
    implicit = TrainLog(series=[Series("c", [1.0, 2.0, 3.0])])
    assert implicit.steps_of("c") == [0, 1, 2]
    with pytest.raises(KeyError, match="no series named 'zzz'"):
        shared.steps_of("zzz")


@pytest.mark.parametrize(
    ("initial", "final", "steps"), [(2.3, 0.1, 100), (1.0, math.nan, 5), (0.0, -0.0, 0)]
)
def test_trainlog_two_point(initial, final, steps):
    """two_point: a 'loss' series at steps 0 and ``steps``."""
    log = TrainLog.two_point(initial, final, steps)
    assert log.title == "loss"
    assert log.steps == [0, steps]
    assert log.names == ["loss"]
    got = log["loss"].values
    assert got[0] == initial
    assert (math.isnan(got[1]) and math.isnan(final)) or got[1] == final
    assert TrainLog.two_point(initial, final, steps, title="x").title == "x"


def test_trainlog_equality_nan_equals_nan():
    """NaN values compare equal (equality is by JSON form)."""
    a = TrainLog("t", series=[Series("a", [1.0, math.nan, math.inf])])
    b = TrainLog("t", series=[Series("a", [1.0, float("nan"), float("inf")])])
    assert a == b
    assert Series("x", [math.nan]) == Series("x", [np.float32(np.nan)])


def test_trainlog_equality_distinguishes_negative_zero():
    """-0.0 and 0.0 are different values in a log."""
    assert TrainLog(series=[Series("a", [-0.0])]) != TrainLog(series=[Series("a", [0.0])])
    assert Series("a", [-0.0]) != Series("a", [0.0])


def test_trainlog_equality_other_differences():
    """Titles, steps and series order all matter; other types are never equal."""
    base = TrainLog("t", steps=[0], series=[Series("a", [1.0]), Series("b", [2.0])])
    assert base == TrainLog("t", steps=[0], series=[Series("a", [1.0]), Series("b", [2.0])])
    assert base != TrainLog("u", steps=[0], series=[Series("a", [1.0]), Series("b", [2.0])])
    assert base != TrainLog("t", steps=[1], series=[Series("a", [1.0]), Series("b", [2.0])])
    assert base != TrainLog("t", steps=[0], series=[Series("b", [2.0]), Series("a", [1.0])])
    assert base != base.to_json()
    assert Series("a", [1.0], steps=[0]) != Curve("a", [0], [1.0])


def test_trainlog_is_unhashable():
    """Mutable logs with value equality are not hashable."""
    with pytest.raises(TypeError):
        hash(TrainLog())


def test_trainlog_dumps_is_strict_json():
    """The written text is strict JSON (no bare NaN) that the stdlib reads back."""
    log = TrainLog("t", steps=[0, 1], series=[Series("a", [math.nan, -math.inf])])
    data = json.loads(log.dumps(), parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert data["series"] == [{"name": "a", "values": ["NaN", "-Infinity"]}]


# ----------------------------------------------------------------------------- LogDestination


@pytest.mark.parametrize("text", ["false", "OFF", " none ", "No", "disabled", "0", "False\n"])
def test_log_destination_disabled_words(text):
    """The disabling words (any case, surrounding blanks) give a disabled destination."""
    dest = LogDestination.parse(text)
    assert dest.enabled is False
    assert dest.path is None
    assert str(dest) == "disabled"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("out/log.json", "out/log.json"),
        ("  runs/a.json ", "runs/a.json"),
        ("nonesuch.json", "nonesuch.json"),
        ("offline", "offline"),
        ("00", "00"),
        ("true", "true"),
    ],
)
def test_log_destination_paths(text, expected):
    """Anything else is a JSON path (blanks stripped)."""
    dest = LogDestination.parse(text)
    assert dest.enabled is True
    assert str(dest.path) == expected
    assert str(dest) == expected


@pytest.mark.parametrize("text", ["", "   ", "\t\n"])
def test_log_destination_empty_raises(text):
    """An empty value raises ValueError suggesting a path or 'off'."""
    with pytest.raises(ValueError, match="empty log destination"):
        LogDestination.parse(text)


def test_log_destination_non_string_raises():
    """parse wants a string."""
    with pytest.raises(TypeError):
        LogDestination.parse(None)


def test_log_destination_parse_optional_and_path_or(tmp_path):
    """parse_optional uses the default path for None; path_or falls back when disabled."""
    default = tmp_path / "default.json"
    assert LogDestination.parse_optional(None, default).path == default
    assert LogDestination.parse_optional("off", default).enabled is False
    assert str(LogDestination.parse_optional("x.json", default).path) == "x.json"
    assert LogDestination.parse("off").path_or(default) == default
    assert str(LogDestination.parse("x.json").path_or(default)) == "x.json"
    assert str(LogDestination.disabled().path_or("fallback.json")) == "fallback.json"


def test_log_destination_disabled_writes_nothing(tmp_path, monkeypatch):
    """A disabled destination writes no file and returns None."""
    monkeypatch.chdir(tmp_path)
    for word in ("off", "0", "none"):
        assert LogDestination.parse(word).write(TrainLog.two_point(1.0, 0.5, 10)) is None
    assert LogDestination.disabled().write(_experiment()) is None
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("which", ["trainlog", "experiment"])
def test_log_destination_enabled_writes_stdlib_json(tmp_path, which):
    """An enabled destination writes a file the stdlib json module reads back."""
    log = TrainLog.two_point(2.0, math.nan, 10) if which == "trainlog" else _experiment()
    target = tmp_path / "deep" / "dir" / "log.json"
    written = LogDestination.parse(str(target)).write(log)
    assert written == target
    with open(target, encoding="utf-8") as f:
        data = json.load(f)
    assert data["format"] == "jaxobs.trainlog"
    assert data["schema_version"] == jaxobs.SCHEMA_VERSION
    if which == "trainlog":
        assert data["steps"] == [0, 10]
        assert data["series"] == [{"name": "loss", "values": [2.0, "NaN"]}]
    else:
        assert data["title"] == "cnn"
    assert sorted(p.name for p in target.parent.iterdir()) == ["log.json"]


# ----------------------------------------------------------------------------- ConfusionMatrix


def _reference_confusion(t, p, n):
    ref = np.zeros((n, n), dtype=np.int64)
    np.add.at(ref, (np.asarray(t), np.asarray(p)), 1)
    return ref


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("how", ["names", "int", "inferred"])
def test_confusion_from_predictions_matches_numpy(seed, how):
    """from_predictions counts like np.add.at, with names, a class count, or inferred classes."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 8))
    size = int(rng.integers(1, 300))
    t = rng.integers(0, n, size)
    p = np.where(rng.random(size) < 0.6, t, rng.integers(0, n, size))
    if how == "inferred":
        t[0], p[0] = n - 1, n - 1  # make the largest class appear
    labels = {"names": [f"class_{i}" for i in range(n)], "int": n, "inferred": None}[how]
    cm = ConfusionMatrix.from_predictions(t, p, labels=labels)
    ref = _reference_confusion(t, p, n)
    assert cm.matrix == ref.tolist()
    expected_labels = labels if how == "names" else [str(i) for i in range(n)]
    assert cm.labels == expected_labels
    assert cm.total == size
    assert cm.accuracy == float(np.trace(ref) / ref.sum())


def test_confusion_from_jax_arrays():
    """jax arrays are accepted as labels and predictions."""
    t = jnp.array([0, 1, 2, 2, 1])
    p = jnp.array([0, 2, 2, 2, 1])
    cm = ConfusionMatrix.from_predictions(t, p, labels=3)
    assert cm.matrix == [[1, 0, 0], [0, 1, 1], [0, 0, 2]]
    assert cm.accuracy == 4 / 5


def test_confusion_docstring_example():
    """The docstring's example, by hand."""
    cm = ConfusionMatrix.from_predictions([0, 1, 1], [0, 1, 0], labels=["cat", "dog"])
    assert cm.matrix == [[1, 0], [1, 1]]
    assert cm.accuracy == 2 / 3


def test_confusion_empty_accuracy_is_nan():
    """An empty matrix has NaN accuracy."""
    cm = ConfusionMatrix.from_predictions([], [], labels=2)
    assert cm.matrix == [[0, 0], [0, 0]]
    assert math.isnan(cm.accuracy)


@pytest.mark.parametrize(
    ("t", "p", "labels", "match"),
    [
        ([0, 1], [0], None, r"shape \(2,\) but y_pred has shape \(1,\)"),
        ([0, 3], [0, 1], 3, r"\[0, 3\)"),
        ([0, 1], [0, 2], ["a", "b"], r"\[0, 2\)"),
        ([0, -1], [0, 1], 2, r"\[0, 2\)"),
        ([0, 1], [-1, 1], None, r"\[0, 2\)"),
    ],
    ids=["length", "true-too-big", "pred-too-big", "negative-true", "negative-pred"],
)
def test_confusion_from_predictions_bad_inputs(t, p, labels, match):
    """Mismatched lengths and class indices outside [0, n) raise ValueError."""
    with pytest.raises(ValueError, match=match):
        ConfusionMatrix.from_predictions(t, p, labels=labels)


@pytest.mark.parametrize(
    ("labels", "matrix", "match"),
    [
        (["a", "b"], [[1, 2]], "2x2"),
        (["a", "b"], [[1, 2], [3]], "2x2"),
        (["a"], [[1, 2]], "1x1"),
        (["a", "b"], [[1, -1], [0, 0]], r"\[0\]\[1\]: expected a count >= 0, got -1"),
        (["a"], [[1.5]], r"\[0\]\[0\]: expected a count"),
        (["a"], [[True]], r"\[0\]\[0\]: expected a count"),
        (["a"], [["3"]], r"\[0\]\[0\]: expected a count"),
    ],
    ids=["rows", "ragged", "cols", "negative", "float", "bool", "str"],
)
def test_confusion_bad_matrix_raises(labels, matrix, match):
    """Non-square matrices and entries that are not counts >= 0 raise ValueError."""
    with pytest.raises(ValueError, match=match):
        ConfusionMatrix(labels, matrix)


def test_confusion_numpy_counts_become_ints():
    """NumPy integer counts are stored as Python ints."""
    cm = ConfusionMatrix(["a", "b"], np.array([[1, 2], [3, 4]], dtype=np.int32))
    assert cm.matrix == [[1, 2], [3, 4]]
    assert all(type(v) is int for row in cm.matrix for v in row)
    assert cm.accuracy == 5 / 10


def test_confusion_json_roundtrip(tmp_path):
    """write_json / read_json round-trips, and the file is stdlib JSON."""
    rng = np.random.default_rng(7)
    cm = ConfusionMatrix.from_predictions(rng.integers(0, 4, 50), rng.integers(0, 4, 50), 4)
    path = cm.write_json(tmp_path / "cm.json")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    assert data["format"] == "jaxobs.confusion_matrix"
    assert data["labels"] == ["0", "1", "2", "3"]
    assert data["matrix"] == cm.matrix
    back = ConfusionMatrix.read_json(path)
    assert back == cm
    assert back.matrix == cm.matrix


def test_trainlog_file_read_as_confusion_matrix_raises(tmp_path):
    """Reading a TrainLog file as a confusion matrix raises TrainLogError naming both formats."""
    path = TrainLog.two_point(1.0, 0.5, 3).write_json(tmp_path / "log.json")
    with pytest.raises(TrainLogError) as info:
        ConfusionMatrix.read_json(path)
    message = str(info.value)
    assert str(path) in message
    assert "jaxobs.trainlog" in message
    assert "jaxobs.confusion_matrix" in message


def test_confusion_file_read_as_trainlog_raises(tmp_path):
    """Reading a confusion matrix file as a TrainLog raises TrainLogError naming both formats."""
    path = ConfusionMatrix(["a"], [[1]]).write_json(tmp_path / "cm.json")
    for read in (TrainLog.read_json, ExperimentLog.read_json):
        with pytest.raises(TrainLogError) as info:
            read(path)
        message = str(info.value)
        assert str(path) in message
        assert "jaxobs.confusion_matrix" in message
        assert "jaxobs.trainlog" in message


# ----------------------------------------------------------------------------- summary


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("val/loss", "min"),
        ("train/loss", "min"),
        ("loss", "min"),
        ("train/accuracy", "max"),
        ("val/top1_acc", "max"),
        ("eval/F1", "max"),
        ("eval/error_rate", "min"),
        ("perf/step_time_s", "min"),
        ("val/perplexity", "min"),
        ("rl/episode_return", "max"),
        ("grads/Dense_0/kernel/norm", None),
        ("optim/learning_rate", None),
        ("perf/tokens_per_s", None),
        ("loss/grad_norm", None),
    ],
)
def test_direction(name, expected):
    """The last segment of the name decides whether lower or higher is better."""
    assert direction(name) == expected


def _reference_summary(name, values, steps):
    arr = np.asarray(values, dtype=np.float64)
    how = {"val/loss": "min", "val/accuracy": "max"}.get(name)
    best = best_step = None
    if how is not None and not np.isnan(arr).all():
        i = int(np.nanargmin(arr) if how == "min" else np.nanargmax(arr))
        best, best_step = float(arr[i]), steps[i]
    return {
        "count": arr.size,
        "last": float(arr[-1]),
        "last_step": steps[-1],
        "direction": how,
        "best": best,
        "best_step": best_step,
        "nonfinite": int((~np.isfinite(arr)).sum()),
    }


def _same(a, b):
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


@pytest.mark.parametrize("seed", range(8))
def test_summarize_matches_numpy(seed):
    """last/best/best_step/nonfinite agree with a NumPy nanargmin/nanargmax reference."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    steps = sorted(rng.choice(1000, size=n, replace=False).tolist())

    def noisy(k):
        v = rng.normal(size=k).round(1)  # rounding makes ties likely
        v[rng.random(k) < 0.2] = np.nan
        v[rng.random(k) < 0.05] = np.inf
        return v.tolist()

    columns = {"val/loss": noisy(n), "val/accuracy": noisy(n), "grads/norm": noisy(n)}
    own = noisy(n // 2 + 1)
    own_steps = list(range(0, 3 * len(own), 3))
    log = TrainLog(
        "t",
        steps=steps,
        series=[Series(k, v) for k, v in columns.items()]
        + [Series("val/own_loss", own, steps=own_steps), Series("empty/loss", [], steps=[])],
    )
    got = {m.name: m for m in summarize(log)}
    assert list(got) == ["val/loss", "val/accuracy", "grads/norm", "val/own_loss"]
    for name, values in columns.items():
        ref = _reference_summary(name, values, steps)
        for field, want in ref.items():
            assert _same(getattr(got[name], field), want), (name, field)
    ref = _reference_summary("val/loss", own, own_steps)
    for field, want in ref.items():
        assert _same(getattr(got["val/own_loss"], field), want), ("val/own_loss", field)


def test_summarize_all_nan_has_no_best():
    """A metric whose values are all NaN has no best value but counts its non-finite values."""
    log = TrainLog(series=[Series("val/loss", [math.nan, math.nan])])
    (m,) = summarize(log)
    assert m.best is None and m.best_step is None
    assert m.nonfinite == 2
    assert math.isnan(m.last) and m.last_step == 1


def test_summarize_infinities_are_counted_and_can_win():
    """Infinities are non-finite; -inf is the best loss (only NaN never wins)."""
    log = TrainLog(steps=[0, 5, 9], series=[Series("val/loss", [1.0, -math.inf, math.inf])])
    (m,) = summarize(log)
    assert (m.best, m.best_step, m.nonfinite) == (-math.inf, 5, 2)
    assert (m.last, m.last_step, m.count) == (math.inf, 9, 3)
