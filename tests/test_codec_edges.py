"""Edge cases of the TrainLog codec: every bad input is a TrainLogError naming file and field."""

import json
import math

import pytest

import jaxobs
import jaxobs._src.formats.fields
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


def test_a_crash_dump_read_as_a_trainlog_says_what_it_is(tmp_path):
    """A crash dump given to the TrainLog reader: the error says so and names the command."""
    path = _write(tmp_path, {"format": "jaxobs.crash", "schema_version": "1.0", "step": 3})
    with pytest.raises(jaxobs.TrainLogError) as info:
        TrainLog.read_json(path)
    text = str(info.value)
    assert text.startswith(f'{path}: not a TrainLog: format "jaxobs.crash"')
    assert f"this is a crash dump: use `jaxobs crash show {path}`" in text


def test_a_confusion_matrix_read_as_a_trainlog_says_what_it_is(tmp_path):
    """A confusion-matrix file given to the TrainLog reader names the reader to use."""
    path = _write(tmp_path, {"format": "jaxobs.confusion_matrix", "labels": [], "matrix": []})
    with pytest.raises(jaxobs.TrainLogError, match=r"ConfusionMatrix\.read_json"):
        TrainLog.read_json(path)


def test_every_jaxobs_format_is_named_when_read_by_the_wrong_reader():
    """check_format knows each format's constant (from the module that owns it)."""
    from jaxobs._src.formats.artifacts import CONFUSION_FORMAT
    from jaxobs._src.formats.crash_dump import CRASH_FORMAT
    from jaxobs._src.formats.fields import check_format
    from jaxobs._src.formats.rundir import EVENTS_FORMAT
    from jaxobs._src.formats.sync_marker import MARKER_FORMAT
    from jaxobs._src.formats.trainlog import TRAINLOG_FORMAT

    names = {
        TRAINLOG_FORMAT: "this is a TrainLog",
        CRASH_FORMAT: "this is a crash dump",
        CONFUSION_FORMAT: "this is a confusion matrix",
        MARKER_FORMAT: "this is a sync marker",
        EVENTS_FORMAT: "this is a run's event log",
    }
    for fmt, words in names.items():
        with pytest.raises(ValueError) as info:
            check_format({"format": fmt}, "f.json", "jaxobs.other", what="something")
        assert str(info.value).startswith(f'f.json: not something: format "{fmt}"')
        assert words in str(info.value), (fmt, str(info.value))
    with pytest.raises(ValueError) as info:
        check_format({"format": "acme.log"}, "f.json", "jaxobs.other", what="something")
    assert (
        str(info.value)
        == 'f.json: not something: format "acme.log", expected format "jaxobs.other"'
    )


@pytest.mark.parametrize("error_name", ["TrainLogError", "CrashDumpError", "SyncMarkerError"])
def test_the_field_reader_raises_each_formats_own_error(error_name):
    """One reader, three formats: the error class is the caller's, the message names the path."""
    from jaxobs._src.formats import errors
    from jaxobs._src.formats.fields import FieldReader

    error = getattr(errors, error_name)
    reader = FieldReader({"a": {"b": [1, "x"], "c": 1.5}}, "", "f.json", error=error)
    inner = reader.child("a")
    with pytest.raises(error) as info:
        inner.ints("b")
    assert str(info.value) == 'f.json: a.b[1]: expected an integer, got a string ("x")'
    with pytest.raises(error) as info:
        inner.string("name", default=jaxobs._src.formats.fields.REQUIRED)
    assert str(info.value) == "f.json: a.name: required field is missing (expected a string)"
    with pytest.raises(error) as info:
        inner.integer("c")
    assert str(info.value) == "f.json: a.c: expected an integer, got a number (1.5)"


def test_the_field_reader_null_rules():
    """null is an absent field by default; with null_is_missing=False only where allowed."""
    from jaxobs._src.formats.errors import CrashDumpError
    from jaxobs._src.formats.fields import NULL, FieldReader

    lenient = FieldReader({"a": None}, "top", "f.json")
    assert lenient.string("a", "default") == "default"
    strict = FieldReader({"a": None}, "top", "f.json", error=CrashDumpError, null_is_missing=False)
    assert strict.get("a", (str, NULL), "default", "a string or null") is None
    with pytest.raises(CrashDumpError, match=r"^f\.json: top\.a: expected a string, got null$"):
        strict.string("a", "default")


def test_load_json_file_names_file_line_and_what_was_expected(tmp_path):
    """A broken JSON file: file:line:column, what the caller expected, the caller's error."""
    from jaxobs._src.formats.codec import load_json_file
    from jaxobs._src.formats.errors import CrashDumpError

    path = tmp_path / "x.json"
    path.write_text('{"a": 1,\n}', encoding="utf-8")
    with pytest.raises(CrashDumpError) as info:
        load_json_file(path, expected="a thing", error=CrashDumpError)
    assert str(info.value).startswith(f"{path}:2:1: not valid JSON (")
    assert str(info.value).endswith("); expected a thing")
    path.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(CrashDumpError, match=r"not UTF-8 text \(byte 7\); expected a thing"):
        load_json_file(path, expected="a thing", error=CrashDumpError)
    with pytest.raises(IsADirectoryError, match="is a directory; expected a thing"):
        load_json_file(tmp_path, expected="a thing")
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        load_json_file(tmp_path / "missing.json")
