"""The sync marker file (``<run dir>/sync/<tracker>.json``): reading markers old and new,
writing them atomically, and errors that name the file, the field and the remedy."""

import json

import pytest

from jaxobs._src.formats.errors import SyncMarkerError
from jaxobs._src.formats.events import Event, Level
from jaxobs._src.formats.sync_marker import SyncMarker


def _marker_file(run_dir, data, tracker="wandb"):
    path = run_dir / "sync" / f"{tracker}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
    return path


def _old_marker(destinations):
    """A marker as jaxobs wrote it before the shared version check: an integer version."""
    return {"format": "jaxobs.sync", "version": 1, "destinations": destinations}


def test_a_marker_with_the_old_integer_version_still_reads(tmp_path):
    """Markers already on disk ("version": 1) keep working: every field reads back."""
    entry = {
        "sent_through_ns": 1_700_000_000_000_000_123,
        "records": 42,
        "last_step": 17,
        "updated_ns": 1,
        "info": {"dir": "/somewhere", "mode": "offline"},
    }
    _marker_file(tmp_path, _old_marker({"proj/run1": entry, "proj/other": {"records": 5}}))
    marker = SyncMarker(tmp_path, "wandb", "proj/run1")
    assert marker.sent_through_ns == 1_700_000_000_000_000_123
    assert marker.records == 42 and marker.last_step == 17
    assert marker.info == {"dir": "/somewhere", "mode": "offline"}
    fresh = SyncMarker(tmp_path, "wandb", "proj/new")
    assert (fresh.sent_through_ns, fresh.records, fresh.last_step, fresh.info) == (
        None,
        0,
        None,
        {},
    )


def test_save_writes_a_string_schema_version_and_keeps_other_destinations(tmp_path):
    """A saved marker has "schema_version": "1.0" like the other formats; other entries stay."""
    path = _marker_file(tmp_path, _old_marker({"proj/other": {"records": 5, "future": [1]}}))
    marker = SyncMarker(tmp_path, "wandb", "proj/run1")
    marker.advance(Event("metrics", Level.BASIC, 3, 1000, {}))
    marker.advance(Event("metrics", Level.BASIC, 4, 2000, {}))
    marker.save(dir="/x", ignored=None)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["format"] == "jaxobs.sync" and data["schema_version"] == "1.0"
    assert "version" not in data
    assert data["destinations"]["proj/other"] == {"records": 5, "future": [1]}
    entry = data["destinations"]["proj/run1"]
    assert (entry["sent_through_ns"], entry["records"], entry["last_step"]) == (2000, 2, 4)
    assert entry["info"] == {"dir": "/x"}
    names = sorted(p.name for p in path.parent.iterdir())
    assert names == ["wandb.json", "wandb.json.lock"]  # no temp file (the lock stays)
    again = SyncMarker(tmp_path, "wandb", "proj/run1")
    assert (again.sent_through_ns, again.records, again.last_step) == (2000, 2, 4)


@pytest.mark.parametrize(
    ("data", "fragments"),
    [
        (_old_marker({}) | {"version": 2}, ["version 2 is newer", "upgrade jaxobs"]),
        ({"format": "jaxobs.sync", "schema_version": "2.0"}, ["schema_version 2.0", "upgrade"]),
        ({"format": "jaxobs.sync", "version": "one"}, ["version: expected the integer 1"]),
        ({"format": "jaxobs.crash"}, ["not a jaxobs sync marker", "move this file away"]),
        ([1, 2], ["not a jaxobs sync marker", "move this file away"]),
        (
            _old_marker({"proj/run1": {"records": "many"}}),
            ['destinations["proj/run1"].records: expected an integer', "move it away"],
        ),
        (
            _old_marker({"proj/run1": {"info": []}}),
            ['destinations["proj/run1"].info: expected an object'],
        ),
        (_old_marker([]), ["destinations: expected an object of destinations"]),
    ],
)
def test_bad_markers_name_the_file_the_field_and_the_remedy(tmp_path, data, fragments):
    """A marker that cannot be trusted is a SyncMarkerError (a ValueError) saying what to do."""
    path = _marker_file(tmp_path, data)
    with pytest.raises(SyncMarkerError) as info:
        SyncMarker(tmp_path, "wandb", "proj/run1")
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith(f"{path}:")
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


def test_a_marker_that_is_not_json_names_the_line(tmp_path):
    """A torn marker: file:line:column and the remedy."""
    path = tmp_path / "sync" / "tensorboard.json"
    path.parent.mkdir()
    path.write_text('{\n "format": "jaxobs.sync",\n', encoding="utf-8")
    with pytest.raises(SyncMarkerError) as info:
        SyncMarker(tmp_path, "tensorboard", "tensorboard")
    assert str(info.value).startswith(f"{path}:3:1: not valid JSON")
    assert "sends the whole run again" in str(info.value)
