"""The examples run end to end (with few steps) and leave what they promise.

Examples 01 and 03 (what `make demo` runs) run as a user runs them, each in a subprocess of
its own, started together as the module starts (the `demos` fixture, for those of their
tests that were selected): they run beside each other and beside the tests before them.
The NNX example and the benchmarks run their ``main(argv)`` in this process (no interpreter
and JAX start-up of their own), their output read back from the captured stdout.
"""

import json
import os
import pathlib
import re
import subprocess

import numpy as np
import pytest
from helpers import PYTHON, REPO, load_script, metric_table, read_events
from tb_files import read_tensorboard
from wandb_files import find_offline_runs, isolate, read_offline_run

# The tests of examples 01 and 03, and what each runs (besides ``--dir``).
DEMOS = {
    "test_digits_demo_leaves_a_complete_run_directory": (
        "01_digits_cnn.py",
        "--epochs",
        "2",
        "--show",
    ),
    "test_doomed_run_example_halts_and_leaves_a_readable_dump_and_plot": (
        "03_doomed_run.py",
        "--healthy-steps",
        "60",
        "--growth",
        "1.5",
    ),
}


def _wandb_env(root: pathlib.Path) -> dict[str, str]:
    """The environment that the `wandb_env` fixture gives a test, with ``root`` for its
    ``tmp_path``: W&B offline, quiet and lean, its cache and settings inside ``root``."""
    with pytest.MonkeyPatch.context() as mp:
        names = ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR")
        isolate(mp, root / "wandb-home", names)
        for name in ("WANDB_DIR", "WANDB_DATA_DIR"):
            mp.delenv(name, raising=False)
        mp.setenv("NETRC", str(root / "no-netrc"))
        return dict(os.environ)


@pytest.fixture(scope="module", autouse=True)
def demos(request, tmp_path_factory):
    """Start examples 01 and 03 (those whose tests were selected) in subprocesses."""
    started = {}
    for item in request.session.items:
        if item.module is request.module and item.name in DEMOS:
            script, *args = DEMOS[item.name]
            root = tmp_path_factory.mktemp(script.removesuffix(".py"))
            command = [PYTHON, str(REPO / "examples" / script), "--dir", str(root), *args]
            with open(root / "stdout.txt", "w") as out, open(root / "stderr.txt", "w") as err:
                proc = subprocess.Popen(command, stdout=out, stderr=err, env=_wandb_env(root))
            started[item.name] = (proc, root)
    yield started
    for proc, _ in started.values():
        if proc.poll() is None:  # its test failed before waiting for it
            proc.kill()
        proc.wait()


def _finished(demos, request):
    """Wait for this test's example; return its ``--dir``, its stdout and the run directory
    it printed."""
    proc, root = demos[request.node.name]
    proc.wait(timeout=300)
    assert proc.returncode == 0, (root / "stderr.txt").read_text()
    stdout = (root / "stdout.txt").read_text()
    return root, stdout, re.search(r"run directory: (\S+)", stdout).group(1)


def _main(path: str, argv: list[str], capsys) -> str:
    """Load ``REPO/path`` as a fresh module, call its ``main(argv)``; return its stdout."""
    module = load_script(path)
    capsys.readouterr()  # what came before is not the script's
    module.main(argv)
    return capsys.readouterr().out


def test_log_overhead_benchmark_prints_json(capsys):
    """bench/log_overhead.py runs (tiny sizes) and prints the documented JSON fields."""
    stdout = _main(
        "bench/log_overhead.py", ["--calls", "50", "--rounds", "2", "--finish-steps", "100"], capsys
    )
    result = json.loads(stdout)
    assert result["calls"] == 50 and result["finish_steps"] == 100
    assert result["log_us_per_call"] > 0 and result["finish_s"] > 0


def test_reductions_benchmark_prints_json(capsys):
    """bench/reductions.py runs (tiny sizes) and reports every candidate."""
    result = json.loads(_main("bench/reductions.py", ["--size", "4096", "--rounds", "1"], capsys))
    assert {"sum", "leaf_stats_all"} <= set(result["median_us"])


@pytest.mark.slow
def test_nnx_example_records_engine_statistics(tmp_path, capsys):
    """examples/02 (NNX MLP): grads, params, updates and acts series for every layer."""
    stdout = _main(
        "examples/02_digits_nnx_mlp.py", ["--dir", str(tmp_path), "--epochs", "1"], capsys
    )
    run_dir = re.search(r"run directory: (\S+)", stdout).group(1)
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


@pytest.mark.slow
def test_health_false_alarm_benchmark_prints_json(capsys):
    """bench/health_false_alarms.py runs (briefly) and prints its JSON summary."""
    stdout = _main("bench/health_false_alarms.py", ["--seeds", "1", "--steps", "40"], capsys)
    result = json.loads(stdout)
    assert result["runs"][0]["steps"] == 40 and result["total_skipped"] == 0
    assert result["total_warning_or_higher"] == sum(r["warning_or_higher"] for r in result["runs"])


@pytest.mark.slow
def test_digits_demo_leaves_a_complete_run_directory(demos, request):
    """examples/01: prints its run directory; events, trainlog and confusion matrix agree;
    a W&B offline run and TensorBoard event files beside it hold the same values."""
    root, stdout, run_dir = _finished(demos, request)
    events = read_events(run_dir)
    assert events[0]["run"]["config"]["optimizer"] == {"name": "sgd", "lr": 0.05, "momentum": 0.9}
    assert events[-1]["status"] == "finished"
    log = json.loads(
        (root / "digits").joinpath(events[0]["run"]["run_id"], "trainlog.json").read_text()
    )
    series = {s["name"]: s for s in log["series"]}
    steps_per_epoch = events[0]["run"]["config"]["data"]["train"] // 64
    assert (series["train/loss"].get("steps") or log["steps"]) == list(range(2 * steps_per_epoch))
    assert len(series["val/accuracy"]["values"]) == 2
    # The confusion matrix artifact agrees with the logged final validation accuracy.
    art = next(a for a in log["artifacts"] if a["kind"] == "confusion_matrix")
    matrix = np.array(
        json.loads((root / "digits" / events[0]["run"]["run_id"] / art["path"]).read_text())[
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


@pytest.mark.slow
def test_doomed_run_example_halts_and_leaves_a_readable_dump_and_plot(demos, request):
    """examples/03: an alert, TrainingHalted, finite parameters, a crash dump whose
    recorder agrees with events.jsonl, and a PNG that matplotlib reads back."""
    import matplotlib.image

    _, stdout, run_dir = _finished(demos, request)
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
