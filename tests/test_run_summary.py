"""`run.summary`: recorded in events.jsonl, rebuilt by read_run, in trainlog.json (1.1), sent
to W&B's summary and TensorBoard's hparams; checked against the files read back with json,
jsonschema, W&B's own records and tensorboard's loader."""

from __future__ import annotations

import json
import math
import pathlib
import shutil

import numpy as np
import pytest
from jsonschema import Draft202012Validator
from tb_files import read_tensorboard
from wandb_files import find_offline_runs, read_offline_run, read_records

import jaxobs
from jaxobs import TrainLog
from jaxobs.cli import main as cli

GOLDEN = pathlib.Path(__file__).parent / "golden" / "v1"
VALIDATOR = Draft202012Validator(json.loads(jaxobs.schema_path().read_text(encoding="utf-8")))


def _init(tmp_path, **kw):
    kw.setdefault("terminal", False)
    return jaxobs.init(project="summ", dir=tmp_path, **kw)


def _records(run_dir) -> list[dict]:
    """events.jsonl parsed line by line with the json module."""
    text = (pathlib.Path(run_dir) / "events.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def _fill(run) -> None:
    """Set, update, overwrite and delete summary keys beside decreasing val/loss values."""
    for step, loss in enumerate([0.5, 0.25, 0.75]):
        run.log({"val/loss": loss}, step=step)
    run.summary["best_val_loss"] = 0.5
    run.summary.update({"best_val_loss": 0.12, "note": "early stop", "tmp": [1, 2]})
    run.summary["eval"] = {"f1": np.float32(0.5), "split": "test"}
    run.summary["best_epoch"] = 7
    del run.summary["tmp"]


EXPECTED = {
    "best_val_loss": 0.12,
    "note": "early stop",
    "eval": {"f1": 0.5, "split": "test"},
    "best_epoch": 7,
}


def test_set_update_overwrite_delete_on_a_run(tmp_path):
    """The mapping reads back what was set, last assignment winning, deletions gone."""
    run = _init(tmp_path)
    _fill(run)
    assert dict(run.summary) == EXPECTED
    assert run.summary["best_val_loss"] == 0.12 and "tmp" not in run.summary
    assert list(run.summary) == ["best_val_loss", "note", "eval", "best_epoch"]
    run.summary["eval"]["f1"] = 99  # a copy: the summary changes only by assignment
    assert run.summary["eval"]["f1"] == 0.5
    with pytest.raises(KeyError, match="missing"):
        del run.summary["missing"]
    run.finish()
    with pytest.raises(RuntimeError, match="finished"):
        run.summary["late"] = 1


def test_each_change_is_a_summary_record_in_events_jsonl(tmp_path):
    """Every assignment and deletion is on disk as a summary record when it returns."""
    run = _init(tmp_path)
    _fill(run)
    records = [r for r in _records(run.dir) if r["event"] == "summary"]
    assert [{k: r.get(k) for k in ("summary", "deleted")} for r in records] == [
        {"summary": {"best_val_loss": 0.5}, "deleted": None},
        {"summary": {"best_val_loss": 0.12, "note": "early stop", "tmp": [1, 2]}, "deleted": None},
        {"summary": {"eval": {"f1": 0.5, "split": "test"}}, "deleted": None},
        {"summary": {"best_epoch": 7}, "deleted": None},
        {"summary": None, "deleted": ["tmp"]},
    ]
    assert all(r["level"] == "BASIC" and isinstance(r["timestamp_ns"], int) for r in records)
    run.finish()


def test_trainlog_json_has_the_summary_at_1_1_and_validates(tmp_path):
    """trainlog.json read with json: schema_version 1.1, the summary field, schema-valid."""
    with _init(tmp_path) as run:
        _fill(run)
    data = json.loads(run.trainlog_path.read_text(encoding="utf-8"))
    assert data["schema_version"] == "1.1" == jaxobs.SCHEMA_VERSION
    assert data["summary"] == EXPECTED
    VALIDATOR.validate(data)
    assert list(data)[-1] == "summary"
    # The automatic best and last values come from the series, untouched by the summary.
    series = {s["name"]: s["values"] for s in data["series"]}
    assert series["val/loss"] == [0.5, 0.25, 0.75]
    assert TrainLog.read_json(run.trainlog_path).summary == EXPECTED


def test_show_prints_the_summary_and_keeps_the_automatic_best(tmp_path, capsys):
    """jaxobs show prints the user summary (strings as text) and the metric's own best."""
    with _init(tmp_path) as run:
        _fill(run)
        run.summary["markup"] = "[bold]not markup[/bold]"
    assert cli(["show", str(run.dir)]) == 0
    out = capsys.readouterr().out
    table = out[out.index("summary") : out.index("metrics")]
    assert "best_val_loss" in table and "0.12" in table
    assert "early stop" in table and '"early stop"' not in table
    assert "[bold]not markup[/bold]" in table
    row = next(line for line in out.splitlines() if "val/loss" in line and "│" in line)
    assert "0.25 (min)" in row  # the automatic best: min of the series, not the summary


def test_a_killed_run_keeps_its_summary(tmp_path):
    """A run directory without run_end (killed) rebuilds the summary from its records."""
    with _init(tmp_path) as run:
        _fill(run)
    killed = tmp_path / "killed"
    shutil.copytree(run.dir, killed)
    (killed / "trainlog.json").unlink()
    lines = (killed / "events.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    assert json.loads(lines[-1])["event"] == "run_end"
    (killed / "events.jsonl").write_text("".join(lines[:-1]), encoding="utf-8")
    record = jaxobs.read_run(killed)
    assert record.status == "incomplete"
    assert record.log.summary == EXPECTED
    data = record.log.to_trainlog().to_json()
    assert data["summary"] == EXPECTED
    VALIDATOR.validate(json.loads(json.dumps(data)))


@pytest.mark.parametrize("name", ["minimal.json", "full.json", "legacy-no-version.json"])
def test_1_0_golden_files_read_with_an_empty_summary(name):
    """The 1.0 files read as before: an empty summary, written back without one, at 1.0."""
    log = TrainLog.read_json(GOLDEN / name)
    assert log.schema_version == "1.0" and log.summary == {}
    written = json.loads(log.dumps())
    assert written["schema_version"] == "1.0" and "summary" not in written


def test_1_0_confusion_golden_still_reads():
    """The confusion matrix written at 1.0 reads with the same counts as the 1.1 one."""
    from jaxobs.artifacts import ConfusionMatrix

    old = ConfusionMatrix.read_json(GOLDEN / "confusion-1.0.json")
    new = ConfusionMatrix.read_json(GOLDEN / "confusion.json")
    ref = json.loads((GOLDEN / "confusion-1.0.json").read_text(encoding="utf-8"))
    assert ref["schema_version"] == "1.0"
    assert old.matrix == new.matrix == ref["matrix"] and old.labels == ref["labels"]


def test_summary_golden_at_1_1_reads_and_round_trips():
    """summary.json (1.1): the summary equals the json module's reading; bytes round-trip."""
    path = GOLDEN / "summary.json"
    ref = json.loads(path.read_text(encoding="utf-8"))
    VALIDATOR.validate(ref)
    log = TrainLog.read_json(path)
    assert ref["schema_version"] == log.schema_version == "1.1"
    assert log.summary == ref["summary"]
    assert log.summary["diverged_at"] == "NaN"  # free-form JSON: a sentinel stays a string
    assert log.dumps() == path.read_text(encoding="utf-8")
    back = jaxobs.ExperimentLog.from_trainlog(log).to_trainlog()
    assert back.summary == ref["summary"]


def test_a_1_0_log_given_a_summary_is_written_as_1_1():
    """A 1.0 reader would drop the summary: a log holding one is written as 1.1."""
    log = TrainLog.read_json(GOLDEN / "minimal.json")
    log.summary = {"best": 1}
    assert json.loads(log.dumps())["schema_version"] == "1.1"


def test_a_summary_that_is_not_an_object_is_refused(tmp_path):
    """A TrainLog whose summary is a list is a TrainLogError naming the field."""
    data = json.loads((GOLDEN / "summary.json").read_text(encoding="utf-8"))
    data["summary"] = [1, 2]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(jaxobs.TrainLogError, match="summary"):
        TrainLog.read_json(path)
    assert not VALIDATOR.is_valid(data)


@pytest.mark.parametrize(
    ("values", "error", "named"),
    [
        ({"best_model": object()}, TypeError, "best_model"),
        ({"fn": len}, TypeError, "fn"),
        ({"": 1}, TypeError, "non-empty"),
        ({3: 1}, TypeError, "3"),
        ({"big": np.zeros(5000)}, TypeError, "big"),
        ({"bad\udc80": 1}, ValueError, "UTF-8"),
    ],
)
def test_bad_values_raise_naming_the_key_and_record_nothing(tmp_path, values, error, named):
    """A value or key that cannot be stored raises naming it; nothing is recorded."""
    run = _init(tmp_path)
    run.summary["kept"] = 1
    with pytest.raises(error, match=named):
        run.summary.update(values)
    assert dict(run.summary) == {"kept": 1}
    assert [r["summary"] for r in _records(run.dir) if r["event"] == "summary"] == [{"kept": 1}]
    run.finish()


def test_emit_refuses_the_summary_type(tmp_path):
    """`summary` is the run's own record type: emit refuses it."""
    with _init(tmp_path) as run, pytest.raises(ValueError, match="run itself"):
        run.emit("summary", best=1)


# ----------------------------------------------------------------------------- trackers


def _summary_updates(run_dir) -> list[dict]:
    """The summary records of the W&B run's .wandb file: {key: value} per update."""
    (path,) = find_offline_runs(run_dir)
    read_offline_run(path, timeout=30)  # waits for W&B's service to finish the file
    out = []
    for record in read_records(path):
        if record.WhichOneof("record_type") == "summary":
            out.append({i.key: json.loads(i.value_json) for i in record.summary.update})
    return out


def test_wandb_summary_holds_the_values_exactly(wandb_env):
    """W&B's offline files hold best_val_loss exactly as set, the deleted key removed."""
    from jaxobs.bridges.wandb import WandbSink

    with _init(wandb_env, sinks=[WandbSink()]) as run:
        _fill(run)
    updates = _summary_updates(run.dir)
    sent = [u for u in updates if "best_val_loss" in u and "_jaxobs_mark_ns" in u]
    assert [u["best_val_loss"] for u in sent] == [0.5, 0.12]
    assert all(type(u["best_val_loss"]) is float for u in sent)
    (path,) = find_offline_runs(run.dir)
    offline = read_offline_run(path, timeout=30)
    assert offline.summary["best_val_loss"] == 0.12
    assert offline.summary["best_epoch"] == 7 and offline.summary["note"] == "early stop"
    assert "tmp" not in offline.summary


def test_wandb_sync_of_a_killed_run_sends_the_summary(wandb_env):
    """`jaxobs sync --to wandb` of a killed run (no run_end, no sink) sends its summary."""
    with _init(wandb_env) as run:
        _fill(run)
    events = run.dir / "events.jsonl"
    lines = events.read_text(encoding="utf-8").splitlines(keepends=True)
    events.write_text("".join(lines[:-1]), encoding="utf-8")  # drop run_end
    (run.dir / "trainlog.json").unlink()
    cli(["sync", str(run.dir), "--to", "wandb"])
    (path,) = find_offline_runs(run.dir)
    offline = read_offline_run(path, timeout=30)
    assert offline.summary["best_val_loss"] == 0.12 and "tmp" not in offline.summary
    assert offline.summary["jaxobs/status"] == "incomplete"
    sent = [u for u in _summary_updates(run.dir) if "best_val_loss" in u]
    assert [u["best_val_loss"] for u in sent] == [0.5, 0.12]
    cli(["sync", str(run.dir), "--to", "wandb"])
    assert len(find_offline_runs(run.dir)) == 1  # nothing sent twice
    assert [u for u in _summary_updates(run.dir) if "best_val_loss" in u] == sent


def _hparams_metrics(logdir) -> tuple[set, dict]:
    """(metric tags of the hparams experiment, final scalars) of ``<logdir>/hparams``."""
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = ea.EventAccumulator(str(pathlib.Path(logdir) / "hparams"), size_guidance={ea.SCALARS: 0})
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/experiment"]
    ).experiment
    finals = {tag: acc.Scalars(tag)[-1].value for tag in acc.Tags()["scalars"]}
    return {m.name.tag for m in experiment.metric_infos}, finals


def test_tensorboard_hparams_and_text_hold_the_summary(tmp_path):
    """The hparams metrics hold the summary's numbers under their keys; text holds it all."""
    from jaxobs.bridges.tensorboard import TensorBoardSink

    with _init(tmp_path, sinks=[TensorBoardSink()]) as run:
        _fill(run)
        run.summary["diverged"] = math.nan  # not a finite number: text only
        run.summary["ok"] = True
    tags, finals = _hparams_metrics(run.dir / "tensorboard")
    assert {"best_val_loss", "best_epoch", "val/loss"} <= tags
    assert not {"note", "eval", "diverged", "ok", "tmp"} & tags
    assert finals["best_val_loss"] == np.float32(0.12)
    assert finals["best_epoch"] == 7.0 and finals["val/loss"] == 0.75
    texts = read_tensorboard(run.dir / "tensorboard").texts["summary"]
    last = texts[-1][1]
    assert '"best_val_loss": 0.12' in last and "early stop" in last and '"tmp"' not in last


def test_a_run_with_a_summary_is_freed_without_the_garbage_collector(tmp_path):
    """The summary makes no reference cycle: a dropped run is released at once."""
    import gc
    import weakref

    gc.disable()
    try:
        run = _init(tmp_path)
        run.summary["best_val_loss"] = 0.12
        _init(tmp_path).finish()  # the active run is another one now
        ref = weakref.ref(run)
        del run
        assert ref() is None
    finally:
        gc.enable()
