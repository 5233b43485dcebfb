"""The examples run end to end (with few steps) and leave what they promise."""

import json
import pathlib
import re
import subprocess

import numpy as np
import pytest
from helpers import PYTHON, REPO, metric_table, read_events
from tb_files import read_tensorboard
from wandb_files import find_offline_runs, read_offline_run


def _run_example(script: str, *args: str):
    """Run an example script; return its stdout and the run directory it printed."""
    out = subprocess.run(
        [PYTHON, str(REPO / "examples" / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout, re.search(r"run directory: (\S+)", out.stdout).group(1)


def test_digits_demo_leaves_a_complete_run_directory(tmp_path, wandb_env):
    """examples/01: prints its run directory; events, trainlog and confusion matrix agree;
    a W&B offline run and TensorBoard event files beside it hold the same values."""
    stdout, run_dir = _run_example(
        "01_digits_cnn.py", "--dir", str(tmp_path), "--epochs", "2", "--show"
    )
    events = read_events(run_dir)
    assert events[0]["run"]["config"]["optimizer"] == {"name": "sgd", "lr": 0.05, "momentum": 0.9}
    assert events[-1]["status"] == "finished"
    log = json.loads(
        (tmp_path / "digits").joinpath(events[0]["run"]["run_id"], "trainlog.json").read_text()
    )
    series = {s["name"]: s for s in log["series"]}
    steps_per_epoch = events[0]["run"]["config"]["data"]["train"] // 64
    assert (series["train/loss"].get("steps") or log["steps"]) == list(range(2 * steps_per_epoch))
    assert len(series["val/accuracy"]["values"]) == 2
    # The confusion matrix artifact agrees with the logged final validation accuracy.
    art = next(a for a in log["artifacts"] if a["kind"] == "confusion_matrix")
    matrix = np.array(
        json.loads((tmp_path / "digits" / events[0]["run"]["run_id"] / art["path"]).read_text())[
            "matrix"
        ]
    )
    assert matrix.sum() == events[0]["run"]["config"]["data"]["val"]
    assert np.trace(matrix) / matrix.sum() == series["val/accuracy"]["values"][-1]
    # Training did something: validation accuracy far above chance (10 classes).
    assert series["val/accuracy"]["values"][-1] > 0.5
    assert "jaxobs show" in stdout and "train/loss" in stdout
    # Beside the run: a W&B offline run and TensorBoard event files, with the same values.
    val = metric_table(events)["val/accuracy"]
    (offline_dir,) = find_offline_runs(pathlib.Path(run_dir) / "wandb")
    offline = read_offline_run(offline_dir, timeout=30)
    assert {
        r["trainer/step"]: r["val/accuracy"] for r in offline.history if "val/accuracy" in r
    } == val
    assert any(r.get("params/Conv_0/kernel/_type") == "histogram" for r in offline.history)
    board = read_tensorboard(pathlib.Path(run_dir) / "tensorboard")
    assert {s: pytest.approx(v) for s, v, _ in board.scalars["val/accuracy"]} == val
    assert len(board.histograms["grads/Conv_0/kernel"]) == len(
        [e for e in events if e["event"] == "histograms"]
    )
    assert f"wandb sync {offline_dir}" in stdout


def test_log_overhead_benchmark_prints_json():
    """bench/log_overhead.py runs (tiny sizes) and prints the documented JSON fields."""
    out = subprocess.run(
        [
            PYTHON,
            str(REPO / "bench" / "log_overhead.py"),
            "--calls",
            "50",
            "--rounds",
            "2",
            "--finish-steps",
            "100",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["calls"] == 50 and result["finish_steps"] == 100
    assert result["log_us_per_call"] > 0 and result["finish_s"] > 0


def test_nnx_example_records_engine_statistics(tmp_path):
    """examples/02 (NNX MLP): grads, params, updates and acts series for every layer."""
    _, run_dir = _run_example("02_digits_nnx_mlp.py", "--dir", str(tmp_path), "--epochs", "1")
    log = json.loads(
        (tmp_path / "digits-nnx" / run_dir.rsplit("/", 1)[-1] / "trainlog.json").read_text()
    )
    names = {s["name"] for s in log["series"]}
    for layer in ("hidden1", "hidden2", "out"):
        for key in (
            f"grads/{layer}/kernel/norm",
            f"params/{layer}/kernel/norm",
            f"updates/{layer}/kernel/norm",
            f"updates/{layer}/update_ratio",
            f"acts/{layer}/dead_frac",
        ):
            assert key in names, key
    assert "train/loss" in names and "val/accuracy" in names


def test_reductions_benchmark_prints_json():
    """bench/reductions.py runs (tiny sizes) and reports every candidate."""
    out = subprocess.run(
        [PYTHON, str(REPO / "bench" / "reductions.py"), "--size", "4096", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert {"sum", "leaf_stats_all"} <= set(result["median_us"])


def test_doomed_run_example_halts_and_leaves_a_readable_dump_and_plot(tmp_path):
    """examples/03: an alert, TrainingHalted, finite parameters, a crash dump whose
    recorder agrees with events.jsonl, and a PNG that matplotlib reads back."""
    import matplotlib.image

    stdout, run_dir = _run_example(
        "03_doomed_run.py", "--dir", str(tmp_path), "--healthy-steps", "60", "--growth", "1.5"
    )
    assert "halted at step" in stdout and "all finite" in stdout
    dump_path = re.search(r"crash dump: (\S+)", stdout).group(1)
    png_path = re.search(r"plot: +(\S+\.png)", stdout).group(1)
    events = read_events(run_dir)
    alerts = [e for e in events if e["event"] == "health_check"]
    assert alerts and alerts[0]["step"] > 60  # nothing before the learning rate ran away
    assert events[-1]["status"] == "failed" and events[-1]["error"]["type"] == "TrainingHalted"
    dump = json.loads(pathlib.Path(dump_path).read_text(encoding="utf-8"))
    assert dump["format"] == "jaxobs.crash" and dump["trigger"]["kind"] == "halt"
    assert dump["first_diverged"]["layer"] in ("Conv_0", "Conv_1", "Dense_0", "Dense_1")
    # the recorder's loss equals what events.jsonl holds for the same steps
    losses = {
        e["step"]: e["values"]["train/loss"]
        for e in events
        if e["event"] == "metrics" and "train/loss" in e["values"]
    }
    recorder = dump["recorder"]
    recorded = dict(zip(recorder["steps"], recorder["series"]["train/loss"], strict=True))
    assert recorded and all(losses[s] == pytest.approx(v, rel=1e-6) for s, v in recorded.items())
    image = matplotlib.image.imread(png_path)
    assert image.shape[0] > 500 and image.shape[1] > 800 and image.std() > 0.05
    artifacts = [e["artifact"]["kind"] for e in events if e["event"] == "artifact"]
    assert "crash_dump" in artifacts and "image" in artifacts
    assert "jaxobs crash show" in stdout and "first to diverge" in stdout


def test_health_false_alarm_benchmark_prints_json():
    """bench/health_false_alarms.py runs (briefly) and prints its JSON summary."""
    out = subprocess.run(
        [PYTHON, str(REPO / "bench" / "health_false_alarms.py"), "--seeds", "1", "--steps", "40"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["runs"][0]["steps"] == 40 and result["total_skipped"] == 0
    assert result["total_warning_or_higher"] == sum(r["warning_or_higher"] for r in result["runs"])
