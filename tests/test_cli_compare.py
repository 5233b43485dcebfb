"""jaxobs list, compare and get, checked against the numbers the runs logged."""

import json
import math

import numpy as np
import pytest
from helpers import read_events

import jaxobs
from jaxobs.cli import main

STEPS = 30


def _losses(seed):
    rng = np.random.default_rng(seed)
    loss = rng.uniform(0.5, 2.0, size=STEPS).tolist()
    loss[5] = math.nan  # a NaN never wins "best"
    acc = rng.uniform(0.1, 0.9, size=STEPS // 10).tolist()
    return loss, acc


def _log(run, loss, acc, upto):
    for step in range(upto):
        run.log({"train/loss": loss[step]}, step=step)
        run.log({"train/grad_norm": math.inf if step == 7 else 1.0 + step}, step=step)
        if step % 10 == 9:
            run.log({"val/accuracy": acc[step // 10]}, step=step)


@pytest.fixture
def runs(tmp_path):
    """Three runs started in this order: finished, failed at step 14, killed (no run_end);
    their ids sort the other way round. Plus a damaged run directory."""
    root = tmp_path / "runs"
    logged = {}
    loss, acc = _losses(0)
    with jaxobs.init(
        project="proj", id="z-first", name="alpha", dir=root, terminal=False, group="sweep",
        config={"lr": 0.1, "opt": {"name": "sgd"}, "seed": 0, "batch": 32},
    ) as run:  # fmt: skip
        _log(run, loss, acc, STEPS)
    logged["z-first"] = (run.dir, loss, acc, STEPS)
    loss, acc = _losses(1)
    with pytest.raises(RuntimeError), jaxobs.init(
        project="proj", id="m-second", name="[red]x[/red]", dir=root, terminal=False,
        group="sweep", config={"lr": 0.01, "opt": {"name": "adam"}, "seed": 0, "batch": 32},
    ) as run:  # fmt: skip
        _log(run, loss, acc, 15)
        raise RuntimeError("diverged")
    logged["m-second"] = (run.dir, loss, acc, 15)
    loss, acc = _losses(2)
    with jaxobs.init(
        project="proj", id="a-third", name="gamma", dir=root, terminal=False, group="other",
        config={"lr": 0.1, "opt": {"name": "sgd"}, "seed": 1, "batch": 32},
    ) as run:  # fmt: skip
        _log(run, loss, acc, 25)
    events = run.dir / "events.jsonl"
    lines = events.read_text(encoding="utf-8").splitlines(keepends=True)
    assert json.loads(lines[-1])["event"] == "run_end"
    events.write_text("".join(lines[:-1]), encoding="utf-8")  # killed: no run_end
    logged["a-third"] = (run.dir, loss, acc, 25)
    broken = root / "proj" / "broken"
    broken.mkdir()
    (broken / "events.jsonl").write_text("not json\n", encoding="utf-8")
    return root, logged


def _best_min(values):
    finite = [(v, s) for s, v in enumerate(values) if not math.isnan(v)]
    return min(finite)


def test_list_json_rows_match_the_logged_numbers(runs, capsys):
    """list --json: one row per run by start time, status, steps, duration, best, config
    diff; the damaged run is listed last with its error on one line."""
    root, logged = runs
    assert main(["list", str(root), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r.get("run_id") for r in rows] == ["z-first", "m-second", "a-third", None]
    assert [r.get("status") for r in rows[:3]] == ["finished", "failed", "incomplete"]
    for row in rows[:3]:
        run_dir, loss, acc, upto = logged[row["run_id"]]
        assert row["path"] == str(run_dir) and row["project"] == "proj"
        assert row["steps"] == upto - 1
        value, step = _best_min(loss[:upto])
        assert row["best"]["train/loss"] == {"value": value, "step": step, "direction": "min"}
        n_val = upto // 10
        best_acc = max(acc[:n_val])
        assert row["best"]["val/accuracy"]["value"] == best_acc
        assert row["best"]["val/accuracy"]["step"] == acc.index(best_acc) * 10 + 9
        assert "train/grad_norm" not in row["best"]  # not a main metric
        events = read_events(run_dir)
        if events[-1]["event"] == "run_end":
            assert row["duration_s"] == events[-1]["duration_s"]
        else:
            expected = (events[-1]["timestamp_ns"] - events[0]["timestamp_ns"]) / 1e9
            assert row["duration_s"] == pytest.approx(expected)
    assert rows[0]["group"] == "sweep" and rows[2]["group"] == "other"
    # batch is the same everywhere; lr, opt.name and seed differ
    assert rows[0]["config"] == {"lr": 0.1, "opt.name": "sgd", "seed": 0}
    assert rows[1]["config"] == {"lr": 0.01, "opt.name": "adam", "seed": 0}
    assert rows[2]["config"] == {"lr": 0.1, "opt.name": "sgd", "seed": 1}
    assert rows[3]["path"] == str(root / "proj" / "broken")
    assert "events.jsonl:1" in rows[3]["error"] and "\n" not in rows[3]["error"]


def test_list_table_prints_names_literally(runs, capsys):
    """The table shows every run; a name holding rich markup is printed as it is."""
    root, _ = runs
    assert main(["list", str(root)]) == 0
    out = capsys.readouterr().out
    assert "[red]x[/red]" in out
    for text in ("z-first", "m-second", "a-third", "finished", "failed", "incomplete"):
        assert text in out
    assert "unreadable" in out and "opt.name" in out and "batch" not in out
    assert out.index("z-first") < out.index("m-second") < out.index("a-third")


def test_compare_json_config_diff_and_metrics(runs, capsys):
    """compare --json: differing config keys per run, last/best of each chosen metric."""
    _, logged = runs
    dirs = [str(logged[k][0]) for k in ("z-first", "m-second", "a-third")]
    argv = ["compare", *dirs, "--metric", "train/loss", "--metric", "val/accuracy", "--json"]
    assert main(argv) == 0
    got = json.loads(capsys.readouterr().out)
    # grouped: the sweep's two runs first, then "other"
    assert [r["run_id"] for r in got["runs"]] == ["z-first", "m-second", "a-third"]
    assert got["groups"] == {"sweep": ["z-first", "m-second"], "other": ["a-third"]}
    assert got["config"] == {
        "lr": [0.1, 0.01, 0.1],
        "opt.name": ["sgd", "adam", "sgd"],
        "seed": [0, 0, 1],
    }
    assert list(got["metrics"]) == ["train/loss", "val/accuracy"]
    for cell, key in zip(
        got["metrics"]["train/loss"], ["z-first", "m-second", "a-third"], strict=True
    ):
        _, loss, _, upto = logged[key]
        value, step = _best_min(loss[:upto])
        assert cell["last"] == loss[upto - 1] and cell["last_step"] == upto - 1
        assert (cell["best"], cell["best_step"]) == (value, step)
        assert cell["count"] == upto and cell["direction"] == "min"
    acc_cells = got["metrics"]["val/accuracy"]
    _, _, acc_b, _ = logged["m-second"]
    assert acc_cells[1]["last"] == acc_b[0] and acc_cells[1]["count"] == 1


def test_compare_table_defaults_to_shared_metrics_and_says_it_is_grouped(runs, capsys):
    """Without --metric the metrics every run logged are compared; groups are named."""
    _, logged = runs
    dirs = [str(logged[k][0]) for k in ("a-third", "z-first", "m-second")]
    assert main(["compare", *dirs]) == 0
    out = capsys.readouterr().out
    assert "grouped by group" in out and "[red]x[/red]" in out
    for text in ("train/loss", "train/grad_norm", "val/accuracy", "opt.name", "adam"):
        assert text in out
    assert "batch" not in out
    # the "other" group's run came first on the command line, so its column comes first
    header = next(line for line in out.splitlines() if "gamma" in line and "alpha" in line)
    assert header.index("gamma") < header.index("alpha") < header.index("[red]x[/red]")


def test_get_json_window_matches_the_logged_values(runs, capsys):
    """get --json: each series' values at steps within STEP ± N, non-finite as sentinels."""
    _, logged = runs
    run_dir, loss, acc, _ = logged["z-first"]
    assert main(["get", str(run_dir), "--around", "7", "--window", "2", "--json"]) == 0
    text = capsys.readouterr().out
    got = json.loads(text)
    assert (got["run"], got["step"], got["window"]) == ("z-first", 7, 2)
    assert set(got["series"]) == {"train/loss", "train/grad_norm", "val/accuracy"}
    assert got["series"]["val/accuracy"] == [[9, acc[0]]]  # logged every 10 steps
    assert [s for s, _ in got["series"]["train/loss"]] == [5, 6, 7, 8, 9]
    assert got["series"]["train/loss"][0][1] == "NaN"
    assert [v for _, v in got["series"]["train/loss"][1:]] == loss[6:10]
    assert got["series"]["train/grad_norm"] == [
        [5, 6.0],
        [6, 7.0],
        [7, "Infinity"],
        [8, 9.0],
        [9, 10.0],
    ]
    assert main(["get", str(run_dir), "--around", "10", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["window"] == 5 and got["series"]["val/accuracy"] == [[9, acc[0]]]
    assert [s for s, _ in got["series"]["train/loss"]] == list(range(5, 16))
    assert main(["get", str(run_dir), "--around", "500", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["series"] == {}


def test_get_table_lists_keys_by_steps(runs, capsys):
    """Without --json, get prints a keys x steps table."""
    _, logged = runs
    run_dir, loss, _, _ = logged["a-third"]
    assert main(["get", str(run_dir), "--around", "12", "--window", "1"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "train/loss" in line)
    assert [c.strip() for c in row.split("│")[2:5]] == [f"{v:.4g}" for v in loss[11:14]]
    assert "val/accuracy" not in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["list", "{root}/proj/z-first/events.jsonl"], "not a directory"),
        (["list", "{root}/nothing"], "no such file or directory"),
        (["list", "{empty}"], "no jaxobs runs"),
        (["compare", "{root}/proj/z-first", "{root}/proj/m-second", "--metric", "val/nope"],
         "unknown metric 'val/nope'"),
        (["compare", "{root}/proj/z-first"], "at least two runs"),
        (["compare", "{root}/proj/z-first", "{root}/proj/broken"], "events.jsonl:1"),
        (["get", "{root}/proj/z-first", "--around", "x"], "--around: expected an integer"),
        (["get", "{root}/proj/z-first", "--around", "3", "--window", "-1"], "--window"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(runs, tmp_path, capsys, argv, message):
    """Bad input prints one `jaxobs: error:` line naming the problem and exits with 2."""
    root, _ = runs
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = [a.format(root=root, empty=empty) for a in argv]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxobs: error: ")
    assert message in lines[0]
