"""The examples run end to end (with few steps) and leave what they promise."""

import json
import re
import subprocess

import numpy as np
from helpers import PYTHON, REPO, read_events


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


def test_digits_demo_leaves_a_complete_run_directory(tmp_path):
    """examples/01: prints its run directory; events, trainlog and confusion matrix agree."""
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
