"""The TensorBoard bridge (`jaxobs.bridges.tensorboard`): the live sink and `sync`.

What the event files hold is read back with tensorboard's own loader (tb_files.py, and the raw
event-file loader where duplicates matter) and compared with events.jsonl read with json only
(helpers.py): the run's own record is the reference.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import pathlib
import shutil
import sys

import numpy as np
import pytest
import tiny_train
from helpers import metric_table, read_events
from tb_files import read_tensorboard

import jaxobs
from jaxobs import RunDirWarning, cli
from jaxobs.bridges import tensorboard as tb_bridge
from jaxobs.bridges.tensorboard import TensorBoardSink

CONFIG = {
    **tiny_train.DEFAULTS,
    "optimizer": {"name": "sgd", "nesterov": False},
    "layers": [16, 4],
}
SEVERITIES = {"info": 1, "warning": 2, "danger": 3, "critical": 4}  # the documented codes
FINAL_PREFIXES = ("train/", "val/", "test/", "eval/")


# ----------------------------------------------------------------------------- readers


def _raw_scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} over every event file directly in ``logdir``, read with
    tensorboard's raw event-file loader: no purging of out-of-order steps, so a duplicate
    written by a second writer is seen."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(pathlib.Path(logdir).glob("events.out.tfevents.*")):
        for event in LegacyEventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.WhichOneof("value") == "simple_value":
                    out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def _event_files(logdir) -> list[pathlib.Path]:
    return sorted(pathlib.Path(logdir).rglob("events.out.tfevents.*"))


def _same32(got: float, want: float) -> bool:
    """TensorBoard stores scalars as float32: equal after rounding to float32 (NaN == NaN)."""
    if math.isnan(want):
        return math.isnan(got)
    return np.float32(got) == np.float32(want)


def _expected_scalars(events) -> dict[str, list[tuple[int, float, float]]]:
    """{metric: [(step, value, wall time)]} from the metrics records."""
    out: dict[str, list[tuple[int, float, float]]] = {}
    for e in events:
        if e["event"] == "metrics":
            for key, value in e["values"].items():
                out.setdefault(key, []).append((e["step"], value, e["timestamp_ns"] / 1e9))
    return out


def _assert_scalars_match(events, logdir) -> set[str]:
    """Every metric value of ``events`` is a scalar of ``logdir`` at its step, with its value
    and wall time, exactly once. Returns the scalar tags that are not metrics."""
    tb = read_tensorboard(logdir)
    raw = _raw_scalars(logdir)
    expected = _expected_scalars(events)
    assert expected, "no metrics to compare"
    for tag, want in expected.items():
        assert tag in tb.scalars, f"{tag}: not in the event files"
        assert len(raw[tag]) == len(want), f"{tag}: {len(raw[tag])} points, {len(want)} logged"
        got = sorted(tb.scalars[tag], key=lambda p: (p[0], p[2]))
        want = sorted(want, key=lambda p: (p[0], p[2]))
        assert len(got) == len(want), tag
        for (g_step, g_value, g_wall), (w_step, w_value, w_wall) in zip(got, want, strict=True):
            assert g_step == w_step, tag
            assert _same32(g_value, w_value), f"{tag} at {w_step}: {g_value} != {w_value}"
            assert abs(g_wall - w_wall) < 1e-3, f"{tag} at {w_step}: wall time"
    return set(tb.scalars) - set(expected)


def _assert_histograms_match(events, logdir) -> int:
    """Every histograms record is a TensorBoard histogram at its step with its exact bins.
    Returns how many were compared."""
    tb = read_tensorboard(logdir)
    records = [e for e in events if e["event"] == "histograms"]
    per_tag: dict[str, int] = {}
    for record in records:
        for name, h in record["values"].items():
            per_tag[name] = per_tag.get(name, 0) + 1
            found = [x for x in tb.histograms.get(name, []) if x.step == record["step"]]
            assert len(found) == 1, f"{name} at {record['step']}: {len(found)} histograms"
            value = found[0].histogram_value
            edges, counts = h["edges"], h["counts"]
            assert list(value.bucket) == counts, name
            assert list(value.bucket_limit) == edges[1:], name
            assert value.min == edges[0] and value.max == edges[-1], name
            assert value.num == sum(counts), name
            if "sum" in h:
                assert value.sum == h["sum"] and value.sum_squares == h["sum_squares"], name
            else:  # estimated from the bin centres
                centres = (np.asarray(edges[1:]) + np.asarray(edges[:-1])) / 2
                assert value.sum == pytest.approx(np.dot(counts, centres), rel=1e-9)
                assert value.sum_squares == pytest.approx(
                    np.dot(counts, centres * centres), rel=1e-9
                )
            assert abs(found[0].wall_time - record["timestamp_ns"] / 1e9) < 1e-3, name
    for name, n in per_tag.items():
        assert len(tb.histograms[name]) == n, f"{name}: duplicates"
    return sum(per_tag.values())


def _hparams(logdir) -> tuple[dict, dict, set]:
    """(hparams, final metric scalars, metric tags of the experiment) of ``<logdir>/hparams``."""
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = ea.EventAccumulator(str(pathlib.Path(logdir) / "hparams"), size_guidance={ea.SCALARS: 0})
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]
    ).session_start_info
    hparams = {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/experiment"]
    ).experiment
    metric_tags = {m.name.tag for m in experiment.metric_infos}
    finals = {}
    for tag in acc.Tags()["scalars"]:
        [point] = acc.Scalars(tag)
        finals[tag] = point.value
    return hparams, finals, metric_tags


def _final_values(events) -> dict[str, float]:
    """The last finite value of every train/, val/, test/, eval/ metric."""
    table = metric_table(events)
    out = {}
    for key, by_step in table.items():
        finite = [v for _, v in sorted(by_step.items()) if math.isfinite(v)]
        if key.startswith(FINAL_PREFIXES) and finite:
            out[key] = finite[-1]
    return out


def _write_png(path: pathlib.Path) -> tuple[int, int]:
    """A real PNG drawn by matplotlib; returns its (width, height) as PIL reads it."""
    from matplotlib.figure import Figure
    from PIL import Image

    fig = Figure(figsize=(2.4, 1.6), dpi=50)
    fig.add_subplot().plot([0, 1, 2], [2, 0, 1])
    fig.savefig(path, format="png")
    with Image.open(path) as image:
        return image.size


# ----------------------------------------------------------------------------- the live sink


@dataclasses.dataclass
class Live:
    run_dir: pathlib.Path
    events: list[dict]
    tb: object
    png: pathlib.Path
    png_size: tuple[int, int]
    config: dict


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """tiny_train for 20 steps (histograms every 5) with a TensorBoardSink, plus alerts of every
    severity, a crash dump with a plot, a note, a config update, non-finite metrics and a
    histogram without sums; the event files are read right after the run's ``with`` block."""
    root = tmp_path_factory.mktemp("live")
    png = root / "signature.png"
    png_size = _write_png(png)
    with jaxobs.init(
        "tb", dir=root, config=CONFIG, sinks=[TensorBoardSink()], terminal=False
    ) as run:
        run.update_config({"extra": "updated"})
        tiny_train.train(run, 20, histograms=5)
        run.log({"misc/nan": math.nan, "misc/inf": math.inf, "train/late": 0.5}, step=20)
        samples = np.random.default_rng(0).normal(size=300)
        run.log_histograms({"manual/pair": np.histogram(samples, 8)}, step=20)
        for i, severity in enumerate(SEVERITIES):
            run.emit(
                "health_check",
                step=7 + i,
                rule=f"rule_{severity}",
                severity=severity,
                message=f"{severity} happened",
            )
        run.emit("crash_dump", step=3, path=str(root / "crash.json"), plot=str(png))
        run.add_note("a note for the board")
    return Live(
        run.dir,
        read_events(run.dir),
        read_tensorboard(run.dir / "tensorboard"),
        png,
        png_size,
        run.config,
    )


def test_live_scalars_match_events(live):
    """Every metric record is a scalar at its step with its value and wall time, exactly once."""
    extra = _assert_scalars_match(live.events, live.run_dir / "tensorboard")
    assert extra == {f"health/alert/rule_{s}" for s in SEVERITIES}
    assert live.tb.files  # directly in <run dir>/tensorboard


def test_live_scalars_keep_nonfinite_values(live):
    """NaN and inf metric values arrive as such."""
    [(step, value, _)] = live.tb.scalars["misc/nan"]
    assert step == 20 and math.isnan(value)
    assert live.tb.scalars["misc/inf"][0][:2] == (20, math.inf)


def test_live_histograms_match_events(live):
    """Each histograms record is a TB histogram with its bins, count, sum and sum of squares."""
    n = _assert_histograms_match(live.events, live.run_dir / "tensorboard")
    steps = {e["step"] for e in live.events if e["event"] == "histograms"}
    assert steps == {0, 5, 10, 15, 20}
    assert n == 4 * 12 + 1  # 12 leaves' params/updates/grads at 4 steps, and the manual one


def test_live_config_text(live):
    """The config text is the run's config as JSON in a code block (updates applied)."""
    texts = live.tb.texts["config"]
    start = next(e for e in live.events if e["event"] == "run_start")
    for _, text in texts:
        assert text.startswith("```\n") and text.endswith("\n```")
    assert json.loads(texts[0][1][4:-4]) == start["run"]["config"] == CONFIG
    assert json.loads(texts[-1][1][4:-4]) == {**CONFIG, "extra": "updated"} == live.config


def test_live_health_alerts(live):
    """Alerts are text under health/alerts and health/alert/<rule> = severity code at their step."""
    alerts = dict(live.tb.texts["health/alerts"])
    for i, (severity, code) in enumerate(SEVERITIES.items()):
        step = 7 + i
        assert f"rule_{severity}" in alerts[step]
        assert f"{severity} happened" in alerts[step]
        assert severity.upper() in alerts[step]
        [(got_step, value, _)] = live.tb.scalars[f"health/alert/rule_{severity}"]
        assert (got_step, value) == (step, code)


def test_live_note_and_run_texts(live):
    """Notes go to the notes text; the run text names the run."""
    assert [text for _, text in live.tb.texts["notes"]] == ["a note for the board"]
    [(_, text)] = live.tb.texts["run"]
    assert live.run_dir.name in text and "tb/" in text


def test_live_crash_dump_image(live):
    """The crash dump's plot is the image health/failure_signature, bytes for bytes."""
    [image] = live.tb.images["health/failure_signature"]
    assert image.step == 3
    assert image.encoded_image_string == live.png.read_bytes()
    assert (image.width, image.height) == live.png_size
    assert live.tb.texts["health/crash_dump"] == [(3, str(live.png.parent / "crash.json"))]


def test_live_hparams(live):
    """hparams/ holds the flattened config and the final train/ and val/ values."""
    hparams, finals, metric_tags = _hparams(live.run_dir / "tensorboard")
    assert hparams == {
        "learning_rate": 0.05,
        "width": 16,
        "seed": 0,
        "optimizer.name": "sgd",
        "optimizer.nesterov": False,
        "layers": "[16, 4]",
        "extra": "updated",
    }
    expected = _final_values(live.events)
    assert {"val/accuracy", "train/loss", "train/late"} <= set(expected)
    assert set(finals) == set(expected) == metric_tags
    for tag, value in expected.items():
        assert _same32(finals[tag], value), tag
    last_val = max(metric_table(live.events)["val/accuracy"].items())[1]
    assert _same32(finals["val/accuracy"], last_val)


def test_live_sync_marker(live):
    """The sync marker says the log directory holds everything through the last step."""
    marker = json.loads((live.run_dir / "sync" / "tensorboard.json").read_text())
    entry = marker["destinations"]["tensorboard"]
    assert entry["last_step"] == 20
    end = next(e for e in live.events if e["event"] == "run_end")
    assert entry["sent_through_ns"] == end["timestamp_ns"]
    tracker = [e for e in live.events if e["event"] == "tracker"]
    assert tracker == [
        {**tracker[0], "tracker": "tensorboard", "logdir": str(live.run_dir / "tensorboard")}
    ]


def test_sync_after_live_run_writes_nothing(live, tmp_path):
    """A sync of a run the live sink completed has nothing to send and writes no file."""
    run_dir = shutil.copytree(live.run_dir, tmp_path / "copy")
    before = _event_files(run_dir / "tensorboard")
    result = tb_bridge.sync(run_dir)
    assert result.records == 0
    assert result.last_step == 20
    assert _event_files(run_dir / "tensorboard") == before


def test_close_writes_everything_at_finish(tmp_path):
    """The writer is closed when the run ends: every event is on disk, with no flush interval."""
    with jaxobs.init(
        "tb", dir=tmp_path, sinks=[TensorBoardSink(flush_secs=10_000)], terminal=False
    ) as run:
        for step in range(5):
            run.log({"loss": 1.0 / (step + 1)}, step=step)
    tb = read_tensorboard(run.dir / "tensorboard")
    assert [(s, v) for s, v, _ in tb.scalars["loss"]] == [
        (s, float(np.float32(1.0 / (s + 1)))) for s in range(5)
    ]
    marker = json.loads((run.dir / "sync" / "tensorboard.json").read_text())
    assert marker["destinations"]["tensorboard"]["last_step"] == 4
    assert (run.dir / "tensorboard" / "hparams").is_dir()


def test_custom_logdir(tmp_path):
    """TensorBoardSink(logdir=...) writes there, and nothing under the run directory."""
    logdir = tmp_path / "elsewhere" / "tb"
    with jaxobs.init(
        "tb", dir=tmp_path / "runs", sinks=[TensorBoardSink(logdir=logdir)], terminal=False
    ) as run:
        run.log({"val/acc": 0.25}, step=0)
        run.log({"val/acc": 0.75}, step=1)
    events = read_events(run.dir)
    _assert_scalars_match(events, logdir)
    assert not (run.dir / "tensorboard").exists()
    _, finals, _ = _hparams(logdir)
    assert finals == {"val/acc": 0.75}
    marker = json.loads((run.dir / "sync" / "tensorboard.json").read_text())
    assert list(marker["destinations"]) == [str(logdir.resolve())]


# ----------------------------------------------------------------------------- failures


def _jaxobs_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "jaxobs" and r.levelno >= 30]


def _assert_complete(run_dir, steps: int) -> list[dict]:
    events = read_events(run_dir)
    assert [e["step"] for e in events if e["event"] == "metrics"] == list(range(steps))
    assert events[-1]["event"] == "run_end" and events[-1]["status"] == "finished"
    return events


def test_unusable_logdir_never_stops_the_run(tmp_path, caplog):
    """A log directory that cannot be made: one warning, and the run records everything."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    caplog.set_level(logging.WARNING, logger="jaxobs")
    with jaxobs.init(
        "tb", dir=tmp_path, sinks=[TensorBoardSink(logdir=blocker)], terminal=False
    ) as run:
        for step in range(6):
            run.log({"loss": float(step)}, step=step)
    warnings = _jaxobs_warnings(caplog)
    assert len(warnings) == 1 and "TensorBoardSink" in warnings[0]
    events = _assert_complete(run.dir, 6)
    assert any("TensorBoardSink" in m for m in events[-1]["sink_errors"])
    assert blocker.read_text() == "not a directory"


class _BreakingWriter:
    """Stands in for the sink's writer: passes everything through until ``broken``, then every
    use but ``close`` and ``flush`` raises OSError (a full disk), whichever method the sink
    calls."""

    def __init__(self, real):
        self._real = real
        self.broken = False

    def __getattr__(self, name):
        if self.broken and name not in ("close", "flush"):
            raise OSError(28, "No space left on device")
        return getattr(self._real, name)


def test_writer_failure_is_reported_once_and_sync_completes(tmp_path, caplog):
    """A writer that fails mid-run: one warning, the run goes on, and sync writes the rest once."""
    caplog.set_level(logging.WARNING, logger="jaxobs")
    sink = TensorBoardSink(flush_secs=10_000)
    with jaxobs.init("tb", dir=tmp_path, sinks=[sink], terminal=False) as run:
        writer = sink.writer = _BreakingWriter(sink.writer)
        for step in range(10):
            if step == 5:
                run.flush()  # steps 0-4 are written
                writer.broken = True
            run.log({"train/loss": 1.0 / (step + 1), "lr": 0.1}, step=step)
    warnings = [m for m in _jaxobs_warnings(caplog) if "TensorBoard" in m]
    assert len(warnings) == 1
    assert "OSError" in warnings[0] and "jaxobs sync" in warnings[0]
    events = _assert_complete(run.dir, 10)
    logdir = run.dir / "tensorboard"
    assert sorted(s for s, _ in _raw_scalars(logdir)["train/loss"]) == [0, 1, 2, 3, 4]
    result = tb_bridge.sync(run.dir)
    assert result.records > 0 and result.last_step == 9
    _assert_scalars_match(events, logdir)
    _, finals, _ = _hparams(logdir)
    assert _same32(finals["train/loss"], 0.1)


def test_missing_tensorboardx(tmp_path, monkeypatch, caplog, capsys):
    """Without tensorboardX: one warning naming the extra, the run goes on; sync raises."""
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    caplog.set_level(logging.WARNING, logger="jaxobs")
    with jaxobs.init("tb", dir=tmp_path, sinks=[TensorBoardSink()], terminal=False) as run:
        for step in range(3):
            run.log({"loss": float(step)}, step=step)
    warnings = _jaxobs_warnings(caplog)
    assert len(warnings) == 1 and "jaxobs[tensorboard]" in warnings[0]
    _assert_complete(run.dir, 3)
    assert not (run.dir / "tensorboard").exists()
    with pytest.raises(ImportError, match=r"jaxobs\[tensorboard\]"):
        tb_bridge.sync(run.dir)
    assert cli.main(["sync", str(run.dir), "--to", "tensorboard"]) == 2
    assert "jaxobs[tensorboard]" in capsys.readouterr().err


# ----------------------------------------------------------------------------- sync


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    """tiny_train for 20 steps (histograms every 5) with no TensorBoard sink."""
    root = tmp_path_factory.mktemp("plain")
    with jaxobs.init("plain", dir=root, config=tiny_train.DEFAULTS, terminal=False) as run:
        tiny_train.train(run, 20, histograms=5)
    return run.dir


@pytest.fixture
def plain_copy(plain_run, tmp_path):
    """A fresh copy of the plain run's directory."""
    return pathlib.Path(shutil.copytree(plain_run, tmp_path / "run"))


def test_sync_writes_every_record(plain_copy):
    """sync writes every metric, histogram, the config and the hparams of a run made without
    the sink."""
    events = read_events(plain_copy)
    assert not (plain_copy / "tensorboard").exists()
    result = tb_bridge.sync(plain_copy)
    assert result.tracker == "tensorboard"
    assert result.records == len(events)
    assert result.last_step == 19 and result.status == "finished"
    assert result.location == str(plain_copy / "tensorboard")
    logdir = plain_copy / "tensorboard"
    assert _assert_scalars_match(events, logdir) == set()
    assert _assert_histograms_match(events, logdir) == 4 * 12
    tb = read_tensorboard(logdir)
    assert json.loads(tb.texts["config"][-1][1][4:-4]) == tiny_train.DEFAULTS
    hparams, finals, _ = _hparams(logdir)
    assert hparams == tiny_train.DEFAULTS
    assert set(finals) == set(_final_values(events))
    assert set(finals) == {"train/loss", "train/accuracy", "val/accuracy"}
    assert _same32(finals["val/accuracy"], metric_table(events)["val/accuracy"][19])


def test_sync_twice_writes_nothing_new(plain_copy):
    """A second sync sends nothing and writes no file; no point is duplicated."""
    first = tb_bridge.sync(plain_copy)
    files = _event_files(plain_copy / "tensorboard")
    raw = _raw_scalars(plain_copy / "tensorboard")
    second = tb_bridge.sync(plain_copy)
    assert first.records > 0 and second.records == 0
    assert second.last_step == first.last_step == 19
    assert _event_files(plain_copy / "tensorboard") == files
    assert _raw_scalars(plain_copy / "tensorboard") == raw
    for tag, points in raw.items():
        assert len(points) == len(set(points)), tag


def test_cli_sync_logdir_elsewhere(plain_copy, tmp_path, capsys):
    """The CLI's --logdir writes there; the default log directory is a separate destination."""
    elsewhere = tmp_path / "board"
    events = read_events(plain_copy)
    assert (
        cli.main(["sync", str(plain_copy), "--to", "tensorboard", "--logdir", str(elsewhere)]) == 0
    )
    out = capsys.readouterr().out
    assert f"sent {len(events)} records" in out and str(elsewhere) in out
    _assert_scalars_match(events, elsewhere)
    assert not (plain_copy / "tensorboard").exists()
    assert (
        cli.main(["sync", str(plain_copy), "--to", "tensorboard", "--logdir", str(elsewhere)]) == 0
    )
    assert "up to date" in capsys.readouterr().out
    assert cli.main(["sync", str(plain_copy), "--to", "tensorboard"]) == 0
    _assert_scalars_match(events, plain_copy / "tensorboard")
    marker = json.loads((plain_copy / "sync" / "tensorboard.json").read_text())
    assert set(marker["destinations"]) == {"tensorboard", str(elsewhere.resolve())}


def test_sync_killed_run_then_the_rest(plain_copy, capsys):
    """A killed run (torn last line, no run_end) syncs every complete metrics record, with a
    warning; once the file is complete, a second sync adds only the rest."""
    path = plain_copy / "events.jsonl"
    full = path.read_text(encoding="utf-8")
    lines = full.splitlines(keepends=True)
    kinds = [json.loads(line)["event"] for line in lines]
    cut = [i for i, k in enumerate(kinds) if k == "metrics"][12]  # keep 12 metrics records
    path.write_text("".join(lines[:cut]) + lines[cut][: len(lines[cut]) // 2], encoding="utf-8")
    truncated = read_events(plain_copy)
    assert sum(e["event"] == "metrics" for e in truncated) == 12

    assert cli.main(["sync", str(plain_copy), "--to", "tensorboard"]) == 0
    captured = capsys.readouterr()
    assert f"events.jsonl:{cut + 1}" in captured.err and "incomplete" in captured.err
    assert "run incomplete" in captured.out
    logdir = plain_copy / "tensorboard"
    _assert_scalars_match(truncated, logdir)
    assert sum(len(v) for v in _raw_scalars(logdir).values()) == sum(
        len(e["values"]) for e in truncated if e["event"] == "metrics"
    )

    path.write_text(full, encoding="utf-8")  # the run went on and finished
    result = tb_bridge.sync(plain_copy)
    assert result.records == len(lines) - len(truncated)
    assert result.status == "finished"
    events = read_events(plain_copy)
    _assert_scalars_match(events, logdir)
    _assert_histograms_match(events, logdir)
    _, finals, _ = _hparams(logdir)
    assert _same32(finals["val/accuracy"], metric_table(events)["val/accuracy"][19])


def test_sync_direct_call_warns_on_torn_line(plain_copy):
    """sync() itself warns (RunDirWarning) about a torn last line and keeps the rest."""
    path = plain_copy / "events.jsonl"
    text = path.read_text(encoding="utf-8")
    path.write_text(text[: len(text) - 20], encoding="utf-8")  # run_end torn
    with pytest.warns(RunDirWarning, match="incomplete"):
        result = tb_bridge.sync(plain_copy)
    assert result.status == "incomplete"
    _assert_scalars_match(read_events(plain_copy), plain_copy / "tensorboard")


def test_sync_not_a_run_directory(tmp_path, capsys):
    """sync of a folder without events.jsonl: RunDirError; the CLI exits 2."""
    with pytest.raises(jaxobs.RunDirError):
        tb_bridge.sync(tmp_path)
    assert cli.main(["sync", str(tmp_path), "--to", "tensorboard"]) == 2
    assert "not a jaxobs run directory" in capsys.readouterr().err
