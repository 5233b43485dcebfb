"""Example 06 (a hung tracker, secrets, a second sync) keeps each promise it prints."""

import collections
import pathlib

from helpers import load_script, read_events


def test_hostile_example_abandons_the_hung_sink_and_leaks_nothing(tmp_path, capsys):
    example = load_script("examples/06_hostile_world.py")
    run = example.main(["--dir", str(tmp_path), "--steps", "12"])
    out = capsys.readouterr().out
    events = read_events(run.dir)
    assert any("HungTracker" in e and "abandoned" in e for e in events[-1]["sink_errors"])
    for path in run.dir.rglob("*"):  # no secret in any file, in any form
        if path.is_file():
            data = path.read_bytes()
            assert not any(s.encode() in data for s in example.SECRETS), path
    assert "secrets found in the run directory: none" in out
    assert "0 records to send" in out
    # every logged step is in TensorBoard's files exactly once (tensorboard's raw loader)
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    counts = collections.Counter()
    for path in sorted(pathlib.Path(run.dir / "tensorboard").glob("events.out.tfevents.*")):
        for event in LegacyEventFileLoader(str(path)).Load():
            counts.update(event.step for v in event.summary.value if v.tag == "train/loss")
    logged = [e["step"] for e in events if e["event"] == "metrics" and "train/loss" in e["values"]]
    assert sorted(counts) == sorted(logged) and set(counts.values()) == {1}
