"""Edge cases of the TrainLog codec: every bad input is a TrainLogError naming file and field."""

import json
import math

import pytest

import jaxobs
from jaxobs import Series, TrainLog


def _write(tmp_path, data) -> str:
    path = tmp_path / "log.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"series": [{"name": "a", "values": [10**400]}]}, "series[0].values[0]"),
        ({"schema_version": "\u00b2.0", "series": []}, "schema_version"),
        ({"series": [[1, 2]]}, "series[0]: expected an object"),
        ({"artifacts": [{"name": "", "path": "x"}]}, "artifacts[0]: artifact name"),
        ({"series": [{"name": "a", "values": [1.0], "steps": [1, 2]}]}, "series[0]: series"),
        ({"notes": "hello"}, "notes: expected a list of strings"),
        ({"series": [{"values": [1.0]}]}, "series[0].name: required field is missing"),
    ],
)
def test_bad_fields_name_file_and_path(tmp_path, data, fragment):
    """Overflowing ints, odd versions and bad objects raise TrainLogError with file and path."""
    path = _write(tmp_path, data)
    with pytest.raises(jaxobs.TrainLogError) as info:
        TrainLog.read_json(path)
    assert str(info.value).startswith(path + ":")
    assert fragment in str(info.value)


def test_notes_given_as_a_string_is_refused():
    """TrainLog(notes="text") is an error, not a list of characters."""
    with pytest.raises(TypeError, match="notes"):
        TrainLog(notes="hello")


def test_unwritable_text_leaves_no_file(tmp_path):
    """A lone surrogate cannot be written as UTF-8: a clear error and no temporary file."""
    with pytest.raises(ValueError, match="UTF-8"):
        TrainLog(title="\ud800").write_json(tmp_path / "x.json")
    assert list(tmp_path.iterdir()) == []


def test_non_finite_values_in_unknown_keys_are_written_as_sentinels(tmp_path):
    """Extra (unknown) keys holding NaN/inf are written with the sentinels, like values."""
    log = TrainLog(extra={"x": math.nan}, series=[Series("a", [1.0], extra={"y": -math.inf})])
    text = log.write_json(tmp_path / "x.json").read_text()
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert data["x"] == "NaN" and data["series"][0]["y"] == "-Infinity"
    assert TrainLog.read_json(tmp_path / "x.json") == log
