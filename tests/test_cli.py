"""The jaxobs command: show, export, and one-line errors with exit status 2."""

import csv
import io
import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from helpers import same_float

import jaxobs
from jaxobs.cli import main

# The installed console script of the environment running the tests.
JAXOBS = str(pathlib.Path(sys.executable).parent / "jaxobs")


@pytest.fixture
def finished_run(tmp_path):
    """A finished run with train loss every step, val metrics every 10 steps, one NaN."""
    rng = np.random.default_rng(0)
    loss = rng.uniform(0.5, 2.0, size=40).tolist()
    acc = rng.uniform(0.1, 0.9, size=4).tolist()
    with jaxobs.init(
        project="proj",
        name="cli-run",
        dir=tmp_path,
        terminal=False,
        config={"lr": 0.05, "opt": {"name": "sgd"}},
        tags=["x"],
    ) as run:
        for step, v in enumerate(loss):
            run.log({"train/loss": v, "grads/Dense_0/kernel/norm": 1.0}, step=step)
            if step % 10 == 9:
                run.log({"val/accuracy": acc[step // 10]}, step=step)
        run.log({"val/loss": math.nan}, step=39)
    return run, loss, acc


def test_show_prints_metadata_config_and_last_best(finished_run, capsys):
    """show lists run metadata, flattened config, and last/best per metric."""
    run, loss, acc = finished_run
    assert main(["show", str(run.dir), "--all"]) == 0
    out = capsys.readouterr().out
    for text in ("proj", "cli-run", run.id, "finished", "opt.name", '"sgd"', "lr"):
        assert text in out
    rows = {line.split()[1]: line for line in out.splitlines() if "/" in line and "│" in line}
    best = int(np.argmin(loss))
    assert f"{loss[-1]:.4g}" in rows["train/loss"]
    assert f"{loss[best]:.4g} (min)" in rows["train/loss"] and f" {best} " in rows["train/loss"]
    assert f"{max(acc):.4g} (max)" in rows["val/accuracy"]
    assert rows["val/loss"].split("│")[-2].strip() == "1"  # the non-finite column
    assert "(min)" not in rows["grads/Dense_0/kernel/norm"]  # statistics have no direction


def test_show_summarises_layers_and_hides_their_series(finished_run, capsys):
    """By default, per-layer statistics appear in the layers table, not as metric rows."""
    run, _, _ = finished_run
    assert main(["show", str(run.dir)]) == 0
    out = capsys.readouterr().out
    layers = out[out.index("layers (last values)") : out.index("metrics")]
    assert "Dense_0" in layers and "grads norm" in layers
    assert "grads/Dense_0/kernel/norm" not in out
    assert "--all lists them" in out


def test_show_accepts_a_trainlog_file(finished_run, capsys):
    """show reads a TrainLog JSON file as well as a run directory."""
    run, _, _ = finished_run
    assert main(["show", str(run.trainlog_path)]) == 0
    assert "train/loss" in capsys.readouterr().out


def test_export_json_is_the_trainlog(finished_run, tmp_path):
    """export --format json writes the run's TrainLog (same content as trainlog.json)."""
    run, _, _ = finished_run
    out = tmp_path / "out.json"
    assert main(["export", str(run.dir), "--format", "json", "-o", str(out)]) == 0
    assert json.loads(out.read_text()) == json.loads(run.trainlog_path.read_text())


def test_export_csv_has_one_row_per_step(finished_run, capsys):
    """export --format csv: a step column, one column per metric, blanks where not logged."""
    run, loss, acc = finished_run
    assert main(["export", str(run.dir), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [int(r["step"]) for r in rows] == list(range(40))
    assert [float(r["train/loss"]) for r in rows] == loss
    assert [float(r["val/accuracy"]) for r in rows if r["val/accuracy"]] == acc
    assert rows[0]["val/accuracy"] == ""
    assert math.isnan(float(rows[39]["val/loss"]))


def test_export_of_killed_run_uses_events(finished_run):
    """A run without trainlog.json (killed) exports everything from events.jsonl."""
    run, loss, _ = finished_run
    run.trainlog_path.unlink()
    lines = run.events_path.read_text().splitlines(keepends=True)
    run.events_path.write_text("".join(lines[:-1]))  # drop run_end, as after kill -9
    out = subprocess.run(
        [JAXOBS, "export", str(run.dir), "--format", "json"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    series = {s["name"]: s for s in json.loads(out.stdout)["series"]}
    assert all(same_float(a, b) for a, b in zip(series["train/loss"]["values"], loss, strict=True))


def _bad(tmp_path):
    """Paths of bad inputs, each with a fragment its error line must contain."""
    empty = tmp_path / "empty"
    empty.mkdir()
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"series": [\n  {"name": "a", "values": [1, 2,]}\n]}\n')
    future = tmp_path / "future.json"
    future.write_text(json.dumps({"schema_version": "9.0", "series": []}))
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"series": [{"name": "a", "values": ["lots"]}]}))
    return [
        (tmp_path / "missing", "no such file or directory"),
        (empty, "not a jaxobs run directory"),
        (corrupt, "corrupt.json:2:"),
        (future, "upgrade jaxobs"),
        (wrong, "series[0].values[0]"),
    ]


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    """Unknown or corrupt input: exit status 2 and a single 'jaxobs: error:' line."""
    for path, fragment in _bad(tmp_path):
        for command in (["show", str(path)], ["export", str(path), "--format", "csv"]):
            out = subprocess.run([JAXOBS, *command], capture_output=True, text=True)
            assert out.returncode == 2, (command, out)
            lines = out.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("jaxobs: error: "), out.stderr
            assert fragment in lines[0], (fragment, lines[0])
            assert out.stdout == ""


@pytest.mark.parametrize("argv", [["frobnicate"], ["export", "x", "--format", "xml"], [], ["show"]])
def test_usage_errors_exit_2(argv):
    """Unknown commands and bad options exit with status 2 and one line."""
    out = subprocess.run([JAXOBS, *argv], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.startswith("jaxobs: error: ")
    assert len(out.stderr.strip().splitlines()) == 1
