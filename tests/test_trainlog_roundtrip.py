"""Property tests of the TrainLog codec and of ExperimentLog.log_metric.

Random logs are written and read back; the written text is checked with the standard ``json``
module and the shipped JSON Schema, and every value against the original float. The
``log_metric`` test compares against a plain dict-of-lists model, not against jaxobs.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

import jaxobs
from jaxobs import Artifact, ExperimentLog, RunInfo, Series, TrainLog
from jaxobs._src.formats.config import looks_secret

SENTINELS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
TOP_LEVEL_KEYS = {
    "schema_version",
    "format",
    "title",
    "run",
    "steps",
    "series",
    "notes",
    "artifacts",
}
SERIES_KEYS = {"name", "steps", "values", "color"}

VALIDATOR = Draft202012Validator(json.loads(jaxobs.schema_path().read_text(encoding="utf-8")))


def _refuse_constant(token: str) -> Any:
    raise AssertionError(f"bare {token} token in a TrainLog file")


def _decode(v: Any) -> float:
    """A stored value decoded with the spec's rule alone: a JSON number or a sentinel string."""
    if isinstance(v, str):
        return SENTINELS[v]
    assert isinstance(v, (int, float)) and not isinstance(v, bool), v
    return float(v)


def _same_float(got: float, want: float) -> bool:
    """NaN matches NaN; otherwise exact equality with the same sign (so -0.0 is not 0.0)."""
    if math.isnan(want):
        return math.isnan(got)
    return got == want and math.copysign(1.0, got) == math.copysign(1.0, want)


# ----------------------------------------------------------------------------- strategies

values = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [-0.0, 0.0, math.nan, math.inf, -math.inf, 5e-324, 1.7976931348623157e308]
)
step_ints = st.integers()
texts = st.text(max_size=12)

config_keys = st.text(max_size=8).filter(lambda k: not looks_secret(k))
json_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(config_keys, inner, max_size=3),
    max_leaves=8,
)
configs = st.dictionaries(config_keys, json_values, max_size=4)


def _extras(known: set[str]) -> st.SearchStrategy[dict[str, Any]]:
    keys = st.text(max_size=6).filter(lambda k: k not in known)
    return st.dictionaries(keys, json_values, max_size=2)


run_infos = st.builds(
    RunInfo,
    project=texts,
    name=texts,
    run_id=texts,
    group=texts,
    tags=st.lists(texts, max_size=3),
    config=configs,
)
artifacts = st.builds(
    Artifact,
    name=st.text(min_size=1, max_size=10),
    path=texts,
    kind=texts,
    description=texts,
)


@st.composite
def trainlogs(draw) -> TrainLog:
    """Random logs: shared steps or not, series with and without own steps, empty series."""
    shared = draw(st.lists(step_ints, max_size=5))
    names = draw(st.lists(texts, unique=True, max_size=4))
    series = []
    for name in names:
        own_steps = draw(st.booleans()) or not shared
        n = draw(st.integers(0, 6)) if own_steps else len(shared)
        vals = draw(st.lists(values, min_size=n, max_size=n))
        steps = draw(st.lists(step_ints, min_size=n, max_size=n)) if own_steps else None
        if own_steps and not shared and draw(st.booleans()):
            steps = None  # implicit 0..n-1
        series.append(
            Series(
                name,
                vals,
                steps,
                color=draw(st.sampled_from(["", "red", "#1f77b4"]) | texts),
                extra=draw(_extras(SERIES_KEYS)),
            )
        )
    return TrainLog(
        title=draw(texts),
        steps=shared,
        series=series,
        notes=draw(st.lists(texts, max_size=3)),
        run=draw(st.none() | run_infos),
        artifacts=draw(st.lists(artifacts, max_size=3)),
        extra=draw(_extras(TOP_LEVEL_KEYS)),
    )


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("roundtrip")


# ----------------------------------------------------------------------------- codec


@settings(max_examples=200, deadline=None)
@given(log=trainlogs())
def test_write_read_round_trip_preserves_every_value(log, out_dir):
    """write_json then read_json gives an equal log; the text is strict JSON the schema accepts."""
    path = log.write_json(out_dir / "log.json")
    assert TrainLog.read_json(path) == log

    text = path.read_text(encoding="utf-8")
    assert text == log.dumps()
    data = json.loads(text, parse_constant=_refuse_constant)
    VALIDATOR.validate(data)

    assert data["schema_version"] == jaxobs.SCHEMA_VERSION and data["format"] == "jaxobs.trainlog"
    assert data["title"] == log.title and data["notes"] == log.notes
    assert data["steps"] == log.steps
    assert [s["name"] for s in data["series"]] == log.names
    for stored, original in zip(data["series"], log.series, strict=True):
        assert stored.get("steps") == original.steps
        decoded = [_decode(v) for v in stored["values"]]
        assert len(decoded) == len(original.values)
        for got, want in zip(decoded, original.values, strict=True):
            assert _same_float(got, want), (original.name, got, want)
    for stored, original in zip(data["artifacts"], log.artifacts, strict=True):
        assert (stored["name"], stored["path"]) == (original.name, original.path)
        assert stored.get("kind", "") == original.kind
        assert stored.get("description", "") == original.description


@settings(max_examples=200, deadline=None)
@given(log=trainlogs())
def test_read_log_resolves_steps_like_the_spec(log, out_dir):
    """Each series' steps resolve to its own, else the shared steps, else 0..n-1."""
    back = TrainLog.read_json(log.write_json(out_dir / "steps.json"))
    for s in back.series:
        if s.steps is not None:
            want = s.steps
        elif back.steps:
            want = back.steps
        else:
            want = list(range(len(s.values)))
        assert back.steps_of(s) == want
        assert len(back.steps_of(s)) == len(s.values)


# ----------------------------------------------------------------------------- log_metric


metric_names = st.sampled_from(["train/loss", "val/accuracy", "验证/损失", "ß", "🔥"])
metric_values = values | st.integers(-(2**20), 2**20)
operations = st.lists(
    st.tuples(metric_names, metric_values, st.none() | st.integers(0, 50)), max_size=25
)


@settings(max_examples=200, deadline=None)
@given(ops=operations, run_name=texts)
def test_log_metric_lowers_like_a_dict_of_lists_model(ops, run_name, out_dir):
    """log_metric sequences lower to a TrainLog equal to a plain dict-of-lists model; without
    a step, a value goes to the next step of the whole history (one past its largest)."""
    exp = ExperimentLog(run=RunInfo(name=run_name))
    model: dict[str, tuple[list[int], list[float]]] = {}
    for name, value, step in ops:
        nxt = max((max(s) + 1 for s, _ in model.values() if s), default=0)
        steps, vals = model.setdefault(name, ([], []))
        want_step = step if step is not None else nxt
        assert exp.log_metric(name, value, step) == want_step
        steps.append(want_step)
        vals.append(float(value))

    log = exp.to_trainlog()
    assert log.title == run_name
    assert log.names == list(model)
    for name, (steps, vals) in model.items():
        assert log.steps_of(name) == steps
        got = log[name].values
        assert len(got) == len(vals)
        assert all(_same_float(g, w) for g, w in zip(got, vals, strict=True)), name

    step_lists = [steps for steps, _ in model.values()]
    if step_lists and all(s == step_lists[0] for s in step_lists):
        assert log.steps == step_lists[0]
        assert all(s.steps is None for s in log.series)
    else:
        assert log.steps == []
        assert all(s.steps is not None for s in log.series)

    assert TrainLog.read_json(log.write_json(out_dir / "metrics.json")) == log
