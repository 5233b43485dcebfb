"""Golden files freeze the TrainLog JSON format, schema_version 1.x.

The files under ``tests/golden/v1/`` are written by hand in the canonical layout described in
``docs/trainlog-format.md``. Expected values come from the file text parsed with the standard
``json`` module (plus the three sentinel strings), never from the code under test.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any

import numpy as np
import pytest
from jsonschema import Draft202012Validator

import jaxobs
from jaxobs import ExperimentLog, TrainLog
from jaxobs.artifacts import ConfusionMatrix

GOLDEN = pathlib.Path(__file__).parent / "golden" / "v1"
BAD = GOLDEN / "bad"

# Written exactly as TrainLog.dumps() writes them: reading and writing gives the same bytes.
CANONICAL = ["minimal.json", "full.json", "future-minor.json"]
# Valid TrainLog files of major version 1 (legacy-no-version.json is not in canonical layout).
VALID = [*CANONICAL, "legacy-no-version.json"]

SENTINELS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _no_bare_constants(token: str) -> Any:
    raise AssertionError(f"bare {token} token: the format writes non-finite floats as strings")


def _reference(name: str) -> dict[str, Any]:
    """The golden file parsed by the standard library alone (bare NaN/Infinity refused)."""
    text = (GOLDEN / name).read_text(encoding="utf-8")
    return json.loads(text, parse_constant=_no_bare_constants)


def _decode(v: Any) -> float:
    """A series value as the spec defines it: a JSON number or one of three sentinel strings."""
    return SENTINELS[v] if isinstance(v, str) else float(v)


def _same_float(a: float, b: float) -> bool:
    """Equal as stored: NaN equals NaN, and 0.0 differs from -0.0."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


def _same_floats(got: list[float], want: list[float]) -> bool:
    return len(got) == len(want) and all(map(_same_float, got, want))


def _same_tree(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return _same_float(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_same_tree(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_same_tree, a, b))
    return type(a) is type(b) and a == b


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return json.loads(jaxobs.schema_path().read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def validator(schema) -> Draft202012Validator:
    return Draft202012Validator(schema)


# ----------------------------------------------------------------------------- byte-exact


@pytest.mark.parametrize("name", CANONICAL)
def test_canonical_golden_round_trips_byte_exactly(name):
    """Reading a canonical golden file and dumping it again gives the same text."""
    path = GOLDEN / name
    assert TrainLog.read_json(path).dumps() == path.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", CANONICAL)
def test_write_json_reproduces_golden_bytes(name, tmp_path):
    """write_json writes the golden file's exact bytes: UTF-8, no ASCII escapes, final newline."""
    out = TrainLog.read_json(GOLDEN / name).write_json(tmp_path / "sub" / name)
    assert out.read_bytes() == (GOLDEN / name).read_bytes()
    assert [p.name for p in out.parent.iterdir()] == [name]


def test_full_golden_holds_raw_unicode_not_escapes():
    """The canonical writer keeps non-ASCII characters as UTF-8, never as \\u escapes."""
    raw = (GOLDEN / "full.json").read_bytes()
    assert "验证/损失".encode() in raw and "🚀".encode() in raw
    assert b"\\u" not in raw


# ----------------------------------------------------------------------------- fields


@pytest.mark.parametrize("name", VALID)
def test_fields_match_stdlib_reference(name):
    """Every field read by jaxobs equals the same field parsed with the json module."""
    ref = _reference(name)
    log = TrainLog.read_json(GOLDEN / name)
    assert log.schema_version == ref.get("schema_version", "1.0")
    assert log.title == ref.get("title", "")
    assert log.steps == ref.get("steps", [])
    assert log.notes == ref.get("notes", [])
    assert log.names == [s["name"] for s in ref["series"]]
    for s, r in zip(log.series, ref["series"], strict=True):
        assert _same_floats(s.values, [_decode(v) for v in r["values"]]), s.name
        assert s.steps == r.get("steps")
        assert s.color == r.get("color", "")
    assert [a.to_json() for a in log.artifacts] == ref.get("artifacts", [])


def test_minimal_golden_values():
    """minimal.json: two series share the log's steps."""
    log = TrainLog.read_json(GOLDEN / "minimal.json")
    assert log.title == "mlp on digits"
    assert log.run is None
    assert log.steps == [0, 100, 200, 300]
    assert log.names == ["train/loss", "train/accuracy"]
    assert log["train/loss"].values == [2.302585, 0.8125, 0.4375, 0.3046875]
    assert log.steps_of("train/accuracy") == [0, 100, 200, 300]
    assert log.notes == [] and log.artifacts == [] and log.extra == {}


def test_full_golden_non_finite_values_decode_to_floats():
    """full.json: the three sentinels decode to float NaN, +inf and -inf; -0.0 keeps its sign."""
    log = TrainLog.read_json(GOLDEN / "full.json")
    loss = log["train/loss"].values
    assert loss[:2] == [2.5, 1.25] and math.isnan(loss[2]) and loss[3] == 0.625
    assert log["验证/损失"].values == [2.75, math.inf]
    g = log["ß/grad_norm"].values
    assert g[0] == -math.inf and isinstance(g[0], float)
    assert g[1] == 0.0 and math.copysign(1.0, g[1]) == -1.0
    assert g[2] == 1e-08
    assert log["grads/Dense_0/kernel/norm 🔥"].values[-1] == 1e16
    assert all(isinstance(v, float) for s in log.series for v in s.values)


def test_full_golden_step_resolution():
    """full.json: own steps win, shared steps otherwise; an empty series has no steps."""
    log = TrainLog.read_json(GOLDEN / "full.json")
    assert log.steps_of("train/loss") == [0, 1, 2, 3]
    assert log.steps_of("验证/损失") == [0, 2]
    assert log.steps_of("ß/grad_norm") == [1, 3, 5]
    assert log.steps_of("grads/Dense_0/kernel/norm 🔥") == [0, 1, 2, 3]
    assert log.steps_of("val/empty") == [] and log["val/empty"].values == []


def test_full_golden_run_metadata_and_config():
    """full.json: run metadata and the nested config equal the stdlib reference as is."""
    ref = _reference("full.json")["run"]
    run = TrainLog.read_json(GOLDEN / "full.json").run
    assert run is not None
    assert (run.project, run.name, run.run_id, run.group) == (
        ref["project"],
        ref["name"],
        ref["run_id"],
        ref["group"],
    )
    assert run.tags == ["cnn", "ß", "🔥"]
    assert _same_tree(run.config, ref["config"])
    # Config is free-form JSON: a sentinel string in it is read back as that string.
    assert run.config["max_grad_norm"] == "Infinity"
    assert run.config["optimizer"]["betas"] == [0.9, 0.999]
    assert run.config["schedule"] is None


def test_full_golden_artifacts_with_and_without_optional_fields():
    """full.json: kind and description default to "" when absent."""
    arts = TrainLog.read_json(GOLDEN / "full.json").artifacts
    assert [(a.name, a.path, a.kind) for a in arts] == [
        ("checkpoint", "checkpoints/step_3", "model"),
        ("predictions_csv", "predictions.csv", ""),
        ("confusion", "confusion.json", "confusion_matrix"),
    ]
    assert arts[0].description == "orbax checkpoint after the last step"
    assert arts[1].description == "" and arts[1].extra == {}


def test_legacy_file_takes_documented_defaults():
    """A file with no schema_version or format is read as 1.0 with every default filled in."""
    log = TrainLog.read_json(GOLDEN / "legacy-no-version.json")
    assert log.schema_version == "1.0"
    assert log.title == "legacy run"
    assert log.steps == [] and log.notes == [] and log.artifacts == []
    assert log.run is None and log.extra == {}
    loss, lr = log.series
    assert loss.steps is None and loss.color == "" and loss.extra == {}
    assert log.steps_of(loss) == [0, 1, 2]
    assert log.steps_of(lr) == [0, 10]
    written = json.loads(log.dumps())
    assert written["schema_version"] == "1.0"
    assert written["format"] == "jaxobs.trainlog"
    assert list(written) == [
        "schema_version",
        "format",
        "title",
        "steps",
        "series",
        "notes",
        "artifacts",
    ]


# ----------------------------------------------------------------------------- unknown keys


def test_unknown_keys_survive_write_and_read_at_every_level(tmp_path):
    """Unknown keys at top level, in a series, in run and in an artifact are written back."""
    ref = _reference("full.json")
    log = TrainLog.read_json(GOLDEN / "full.json")
    again = TrainLog.read_json(log.write_json(tmp_path / "again.json"))
    for got in (log, again):
        assert got.extra == {"viewer": ref["viewer"], "x-origin": ref["x-origin"]}
        assert got["ß/grad_norm"].extra == {"smoothing": {"kind": "ema", "alpha": 0.6}}
        assert got.run is not None and got.run.extra == {"host": ref["run"]["host"]}
        assert got.artifacts[2].extra == {"sha256": "9f2c0d1e", "bytes": 412}
    assert again == log
    written = json.loads((tmp_path / "again.json").read_text(encoding="utf-8"))
    assert written["viewer"] == ref["viewer"]
    assert written["series"][2]["smoothing"] == ref["series"][2]["smoothing"]
    assert written["run"]["host"] == ref["run"]["host"]
    assert written["artifacts"][2]["sha256"] == "9f2c0d1e"


# ----------------------------------------------------------------------------- versions


def test_future_major_is_refused_with_upgrade_message():
    """A schema_version 2.0 file raises SchemaVersionError telling the user to upgrade."""
    path = GOLDEN / "future-major.json"
    with pytest.raises(jaxobs.SchemaVersionError) as info:
        TrainLog.read_json(path)
    message = str(info.value)
    assert "2.0" in message and "upgrade" in message and str(path) in message
    assert isinstance(info.value, jaxobs.TrainLogError)


def test_future_minor_is_read_and_its_unknown_key_kept():
    """A schema_version 1.7 file is read; its new top-level field is kept and written back."""
    ref = _reference("future-minor.json")
    log = TrainLog.read_json(GOLDEN / "future-minor.json")
    assert log.schema_version == "1.7"
    assert log.extra == {"system_metrics": ref["system_metrics"]}
    assert log["train/loss"].values == [1.0, 0.5, 0.25]
    assert json.loads(log.dumps())["system_metrics"] == ref["system_metrics"]


# ----------------------------------------------------------------------------- bad files


def test_truncated_file_error_names_path_and_line():
    """A truncated file is a TrainLogError naming the file and the line where JSON broke off."""
    path = BAD / "truncated.json"
    last_line = path.read_text(encoding="utf-8").count("\n") + 1
    assert last_line == 8
    with pytest.raises(jaxobs.TrainLogError) as info:
        TrainLog.read_json(path)
    assert f"{path}:{last_line}:" in str(info.value)
    assert "not valid JSON" in str(info.value)


def test_lowercase_nan_error_names_path_and_field():
    """A value "nan" (not the sentinel "NaN") is refused, naming series[0].values[1]."""
    path = BAD / "values-lowercase-nan.json"
    with pytest.raises(jaxobs.TrainLogError) as info:
        TrainLog.read_json(path)
    message = str(info.value)
    assert str(path) in message
    assert "series[0].values[1]" in message
    assert "'nan'" in message and '"NaN"' in message


def test_series_not_a_list_error_names_path_and_field():
    """series written as an object is refused, naming the series field and what was expected."""
    path = BAD / "series-not-list.json"
    with pytest.raises(jaxobs.TrainLogError) as info:
        TrainLog.read_json(path)
    message = str(info.value)
    assert f"{path}: series:" in message
    assert "expected a list" in message


# ----------------------------------------------------------------------------- JSON Schema


def test_shipped_schema_is_a_valid_draft_2020_12_schema(schema):
    """schema_path() points at a valid draft 2020-12 JSON Schema inside the package."""
    path = jaxobs.schema_path()
    assert path.is_file()
    assert path.parent.parent == pathlib.Path(jaxobs.__file__).parent
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("name", VALID)
def test_valid_golden_files_validate_against_schema(name, validator):
    """Every valid major-1 golden file validates against the shipped JSON Schema."""
    validator.validate(_reference(name))


def test_future_major_does_not_validate_against_v1_schema(validator):
    """A 2.0 file is not a v1 file: its schema_version fails the v1 pattern."""
    errors = list(validator.iter_errors(_reference("future-major.json")))
    assert [list(e.absolute_path) for e in errors] == [["schema_version"]]


def test_bad_values_file_does_not_validate(validator):
    """The lowercase "nan" value fails the schema at series/0/values/1."""
    data = json.loads((BAD / "values-lowercase-nan.json").read_text(encoding="utf-8"))
    errors = list(validator.iter_errors(data))
    assert [list(e.absolute_path) for e in errors] == [["series", 0, "values", 1]]


def test_series_not_list_file_does_not_validate(validator):
    """An object where the series list belongs fails the schema at series."""
    data = json.loads((BAD / "series-not-list.json").read_text(encoding="utf-8"))
    errors = list(validator.iter_errors(data))
    assert [list(e.absolute_path) for e in errors] == [["series"]]


def test_confusion_golden_validates_against_its_schema_definition(schema):
    """confusion.json validates against $defs/confusion_matrix in the shipped schema."""
    sub = {"$schema": schema["$schema"], "$defs": schema["$defs"]}
    confusion = Draft202012Validator({**sub, "$ref": "#/$defs/confusion_matrix"})
    confusion.validate(_reference("confusion.json"))
    trainlog = Draft202012Validator(schema)
    assert not trainlog.is_valid(_reference("confusion.json"))


# ----------------------------------------------------------------------------- confusion


def test_confusion_golden_counts_and_accuracy_match_numpy(tmp_path):
    """confusion.json reads back with its counts; accuracy equals trace/sum computed in NumPy."""
    ref = _reference("confusion.json")
    cm = ConfusionMatrix.read_json(GOLDEN / "confusion.json")
    assert cm.labels == ["cat", "dog", "bird"]
    assert cm.matrix == ref["matrix"]
    m = np.array(ref["matrix"], dtype=np.int64)
    assert m.shape == (3, 3)
    assert cm.total == int(m.sum())
    assert cm.accuracy == pytest.approx(float(np.trace(m) / m.sum()), rel=1e-15)
    out = cm.write_json(tmp_path / "confusion.json")
    assert out.read_bytes() == (GOLDEN / "confusion.json").read_bytes()


def test_confusion_golden_is_not_a_trainlog():
    """Reading the confusion-matrix file as a TrainLog names the format mismatch."""
    with pytest.raises(jaxobs.TrainLogError, match=r"jaxobs\.confusion_matrix"):
        TrainLog.read_json(GOLDEN / "confusion.json")


# ----------------------------------------------------------------------------- ExperimentLog


def test_experimentlog_round_trip_keeps_metrics_run_notes_artifacts():
    """ExperimentLog.from_trainlog(full).to_trainlog() keeps values, resolved steps and the run."""
    log = TrainLog.read_json(GOLDEN / "full.json")
    back = ExperimentLog.from_trainlog(log).to_trainlog()
    assert back.title == log.title
    assert back.run == log.run
    assert back.notes == log.notes
    assert back.artifacts == log.artifacts
    assert back.names == log.names
    for s in log.series:
        assert back.steps_of(s.name) == log.steps_of(s)
        assert _same_floats(back[s.name].values, s.values)
        assert back[s.name].color == s.color


def test_experimentlog_round_trip_keeps_unknown_keys():
    """Unknown top-level and series keys of full.json survive an ExperimentLog round trip."""
    raw = json.loads((GOLDEN / "full.json").read_text(encoding="utf-8"))
    known = {"schema_version", "format", "title", "run", "steps", "series", "notes", "artifacts"}
    back = ExperimentLog.from_trainlog(TrainLog.read_json(GOLDEN / "full.json")).to_trainlog()
    written = json.loads(back.dumps())
    unknown_top = {k: v for k, v in raw.items() if k not in known}
    assert unknown_top and {k: written[k] for k in unknown_top} == unknown_top
    series_known = {"name", "steps", "values", "color"}
    for original in raw["series"]:
        extra = {k: v for k, v in original.items() if k not in series_known}
        if extra:
            mine = next(s for s in written["series"] if s["name"] == original["name"])
            assert {k: mine[k] for k in extra} == extra
