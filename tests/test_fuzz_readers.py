"""Hostile input: every reader raises only jaxobs' own errors, and the command prints one line
and exits 2; plus a regression test for each kind of damage the fuzz (bench/fuzz.py) found."""

import contextlib
import io
import json
import math
import os
import pathlib
import shutil
import subprocess

import pytest
from helpers import PYTHON, REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxobs
from jaxobs import TrainLog, crash
from jaxobs._src.formats.errors import CrashDumpError, RunDirError, SyncMarkerError, TrainLogError
from jaxobs._src.formats.events import Event, Level
from jaxobs._src.formats.rundir import events_of, read_run
from jaxobs._src.formats.sync_marker import SyncMarker
from jaxobs._src.host.supervisor import Supervisor
from jaxobs.artifacts import ConfusionMatrix
from jaxobs.cli import main

OWN = (TrainLogError, CrashDumpError, RunDirError, SyncMarkerError)
GOLDEN = REPO / "tests" / "golden" / "v1"
SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
DEEP = "[" * 100_000 + "]" * 100_000
LONG_INT = "9" * 4301
# Raw JSON text for values json.dumps will not write, and values of every other type.
RAW = ["1" + "0" * 5000, LONG_INT, "NaN", "Infinity", "-Infinity", DEEP, "[" * 150 + "]" * 150]
VALUES = [
    "str",
    "",
    [],
    [1, "x", None],
    {},
    {"k": 1},
    None,
    True,
    1.5,
    2**64,
    -(2**63) - 1,
    10**30,
    "[bold red]x[/]",
    "[/]",
    "\x1b[31m\n",
    "\ud800",
    "99.0",
]


# ------------------------------------------------------------------------------ inputs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The golden files and a real run directory: metrics, a note, a config update, a
    confusion matrix, and the crash dump of a run that failed."""
    root = tmp_path_factory.mktemp("corpus")
    with (
        pytest.raises(RuntimeError),
        jaxobs.init(
            "p", dir=root, id="r", terminal=False, config={"lr": 0.1, "opt": {"b": [1, 2]}}
        ) as run,
    ):
        run.add_monitor(Supervisor(recorder=jaxobs.FlightRecorder(5)))
        for s in range(8):
            run.log(
                {
                    "train/loss": 1.0 / (s + 1),
                    "grads/Dense_0/kernel/norm": float(s) if s < 7 else math.inf,
                    "val/acc": math.nan,
                },
                step=s,
            )
        run.add_note("note")
        run.update_config({"b": 2})
        run.log_confusion_matrix("cm", ConfusionMatrix(["a", "b"], [[1, 0], [2, 3]]))
        raise RuntimeError("boom")
    run_dir = root / "p" / "r"
    return {
        "trainlog": [
            *(p.read_bytes() for p in sorted(GOLDEN.glob("*.json")) if "confusion" not in p.name),
            (run_dir / "trainlog.json").read_bytes(),
        ],
        "confusion": [
            (GOLDEN / "confusion.json").read_bytes(),
            *(p.read_bytes() for p in sorted((run_dir / "artifacts").glob("*.json"))),
        ],
        "dump": [p.read_bytes() for p in sorted((run_dir / "crash").glob("crash-*.json"))],
        "events": [(run_dir / "events.jsonl").read_bytes()],
        "run_dir": run_dir,
    }


def _paths(value, path=()):
    yield path
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*path, i))


def _replace(text, data, path, new):
    """JSON text of ``data`` with the value at ``path`` replaced by ``new`` (an index into
    RAW for raw JSON text, else a value), or deleted (``new`` is None and delete)."""
    marker = "@@MARK@@"
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    if not path:
        data = marker
    else:
        parent[path[-1]] = marker
    out = json.dumps(data)
    return out.replace(json.dumps(marker), new if isinstance(new, str) and new in RAW else
                       json.dumps(new))  # fmt: skip


@st.composite
def mutated(draw, seeds, lines=False):
    """Bytes of a seed file, mutated: a JSON value replaced or removed, the file truncated,
    bits flipped, bytes inserted, invalid UTF-8."""
    raw = draw(st.sampled_from(seeds))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["replace", "remove", "version", "truncate", "flip", "insert"]))
        chunks = raw.split(b"\n") if lines else [raw]
        i = draw(st.integers(0, max(0, len(chunks) - 2))) if lines else 0
        chunk = chunks[i]
        try:
            data = json.loads(chunk)
        except (ValueError, RecursionError):
            data = None
        if op in ("replace", "remove", "version") and data is not None:
            paths = list(_paths(data))
            path = draw(st.sampled_from(paths[:2000]))
            if op == "remove" and path and isinstance(_parent(data, path), dict):
                del _parent(data, path)[path[-1]]
                chunk = json.dumps(data).encode()
            elif op == "version" and isinstance(data, dict):
                data["schema_version"] = "99.0"
                chunk = json.dumps(data).encode()
            else:
                new = draw(st.sampled_from(VALUES + RAW))
                chunk = _replace(chunk, data, path, new).encode()
        elif op == "truncate":
            chunk = chunk[: draw(st.integers(0, len(chunk)))]
        elif op == "flip" and chunk:
            at = draw(st.integers(0, len(chunk) - 1))
            chunk = (
                chunk[:at] + bytes([chunk[at] ^ (1 << draw(st.integers(0, 7)))]) + chunk[at + 1 :]
            )
        else:
            at = draw(st.integers(0, len(chunk)))
            junk = draw(
                st.sampled_from([b"\xff", b"\xed\xa0\x80", b"\xc3", b"{", b"]", b'"', b"\n"])
            )
            chunk = chunk[:at] + junk + chunk[at:]
        chunks[i] = chunk
        raw = b"\n".join(chunks)
    return raw


def _parent(data, path):
    for key in path[:-1]:
        data = data[key]
    return data


def _only_own_errors(read, path):
    """``read(path)`` returns or raises one of jaxobs' errors, which names the file."""
    try:
        read(path)
    except OWN as e:
        assert str(path.parent) in str(e) or path.name in str(e), str(e)


def _read_events(path):
    record = read_run(path.parent, warn=False)
    record.log.to_trainlog().dumps()
    events_of(record)


def _read_dump(path):
    crash.summary(crash.load_dump(path))


def _write(folder, name, data):
    path = pathlib.Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------- property tests


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("work")


@SETTINGS
@given(data=st.data())
def test_trainlog_reader_raises_only_its_errors(corpus, work, data):
    """TrainLog.read_json on a mutated TrainLog: a TrainLog or a TrainLogError."""
    path = _write(work, "log/trainlog.json", data.draw(mutated(corpus["trainlog"])))
    _only_own_errors(lambda p: TrainLog.read_json(p).dumps(), path)


@SETTINGS
@given(data=st.data())
def test_confusion_reader_raises_only_its_errors(corpus, work, data):
    """ConfusionMatrix.read_json on a mutated matrix: a matrix or a TrainLogError."""
    path = _write(work, "cm/cm.json", data.draw(mutated(corpus["confusion"])))
    _only_own_errors(ConfusionMatrix.read_json, path)


@SETTINGS
@given(data=st.data())
def test_crash_dump_reader_and_summary_raise_only_their_errors(corpus, work, data):
    """load_dump and its summary on a mutated dump: a summary or a CrashDumpError."""
    path = _write(work, "dump/crash-7.json", data.draw(mutated(corpus["dump"])))
    _only_own_errors(_read_dump, path)


@pytest.fixture(scope="module")
def marker_seed(tmp_path_factory):
    """A real sync marker with two destinations (one with the TensorBoard files record)."""
    run_dir = tmp_path_factory.mktemp("marker")
    for destination, info in (
        ("tensorboard", {"files": {"events.out.tfevents.1.h": 88}}),
        ("elsewhere", {"logdir": "/x"}),
    ):
        marker = SyncMarker(run_dir, "tensorboard", destination)
        marker.advance(Event("metrics", Level.BASIC, 4, 1_000, {"values": {"a": 1.0}}))
        marker.save(**info)
    return [(run_dir / "sync" / "tensorboard.json").read_bytes()]


@SETTINGS
@given(data=st.data())
def test_sync_marker_reader_raises_only_its_errors(marker_seed, work, data):
    """SyncMarker on a mutated marker: a marker or a SyncMarkerError naming the file."""
    path = _write(work, "mk/sync/tensorboard.json", data.draw(mutated(marker_seed)))
    _only_own_errors(lambda p: SyncMarker(p.parent.parent, "tensorboard", "tensorboard"), path)


@SETTINGS
@given(data=st.data())
def test_run_dir_reader_raises_only_its_errors(corpus, work, data):
    """read_run, its TrainLog and its events on a mutated events.jsonl: RunDirError only."""
    path = _write(work, "run/events.jsonl", data.draw(mutated(corpus["events"], lines=True)))
    _only_own_errors(_read_events, path)


def _cli(argv):
    """Run the command in-process: (exit status, stdout, stderr); stdout is strict UTF-8."""
    out, err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8"), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
        out.flush()
    return code, out.buffer.getvalue().decode(), err.getvalue()


def _assert_clean(code, err):
    lines = [line for line in err.splitlines() if not line.startswith("jaxobs: warning:")]
    if code == 0:
        assert not lines, err
    else:
        assert code == 2 and len(lines) == 1 and lines[0].startswith("jaxobs: error: "), err
        assert "Traceback" not in err


@settings(SETTINGS, max_examples=25)
@given(data=st.data())
def test_every_command_on_mutated_input_exits_0_or_2_with_one_line(corpus, work, data):
    """show, export json|csv and crash show on mutated inputs: 0, or 2 after one line."""
    events = _write(work, "cli-run/events.jsonl", data.draw(mutated(corpus["events"], lines=True)))
    log = _write(work, "cli-log/trainlog.json", data.draw(mutated(corpus["trainlog"])))
    dump = _write(work, "cli-dump/crash-7.json", data.draw(mutated(corpus["dump"])))
    for argv in (
        ["show", str(events.parent)],
        ["show", str(log)],
        ["export", str(events.parent), "--format", "csv"],
        ["export", str(log), "--format", "json"],
        ["crash", "show", str(dump)],
    ):
        code, _, err = _cli(argv)
        _assert_clean(code, err)


# ------------------------------------------------------------ regression: each bug class


def _events(run_dir, corpus, edit):
    """A copy of the real run's events.jsonl with ``edit(records)`` applied."""
    records = [json.loads(line) for line in corpus["events"][0].decode().splitlines()]
    edit(records)
    text = "\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n"
    return _write(run_dir, "events.jsonl", text.encode())


@pytest.mark.parametrize("text", [DEEP, '{"a":' * 50_000 + "1" + "}" * 50_000])
def test_deep_nesting_is_each_readers_error(tmp_path, text):
    """JSON nested past the parser's limit is each format's own error, naming the file."""
    path = _write(tmp_path, "x.json", text.encode())
    for read, error in (
        (TrainLog.read_json, TrainLogError),
        (ConfusionMatrix.read_json, TrainLogError),
        (crash.load_dump, CrashDumpError),
    ):
        with pytest.raises(error, match="nested too deeply"):
            read(path)
    events = _write(tmp_path / "run", "events.jsonl", (text + "\n").encode())
    with pytest.raises(RunDirError, match=r"events\.jsonl:1: corrupt record: .*nested too deeply"):
        read_run(events.parent)


def test_nesting_below_the_parsers_limit_is_refused_past_100_levels(tmp_path):
    """A config 150 lists deep parses, but is refused by name before any reader walks it."""
    data = {"run": {"config": {"x": json.loads("[" * 150 + "]" * 150)}}, "series": []}
    path = _write(tmp_path, "log.json", json.dumps(data).encode())
    with pytest.raises(TrainLogError, match=r"log\.json: run\.config\.x\[0\].*more than 100"):
        TrainLog.read_json(path)


def test_an_integer_past_the_int_string_limit_names_line_and_column(tmp_path):
    """4,301 digits (Python's int-string limit) is a TrainLogError at its line and column."""
    path = _write(tmp_path, "log.json", f'{{"steps": [0,\n  {LONG_INT}]}}'.encode())
    with pytest.raises(TrainLogError, match=r"log\.json:2:3: an integer of 4301 digits"):
        TrainLog.read_json(path)
    dump = _write(tmp_path, "crash-1.json", f'{{"step": {LONG_INT}}}'.encode())
    with pytest.raises(CrashDumpError, match=r"crash-1\.json:1:10: an integer of 4301"):
        crash.load_dump(dump)


@pytest.mark.parametrize("step", [2**64, 2**63, -(2**63) - 1])
def test_a_recorder_step_outside_int64_is_a_crash_dump_error(corpus, tmp_path, step):
    """A recorder step of 2**64 (an OverflowError in NumPy before) names its field."""
    data = json.loads(corpus["dump"][0])
    data["recorder"]["steps"][1] = step
    path = _write(tmp_path, "crash-7.json", json.dumps(data).encode())
    with pytest.raises(CrashDumpError, match=r"recorder\.steps\[1\]: the integer .* 64 bits"):
        crash.load_dump(path)


def test_a_metrics_step_outside_int64_is_a_run_dir_error(corpus, tmp_path):
    """A metrics record at step 2**64 is refused (run.log refuses it too), naming the line."""

    def edit(records):
        records[1]["step"] = 2**64

    path = _events(tmp_path, corpus, edit)
    with pytest.raises(
        RunDirError, match=r"events\.jsonl:2: step: the integer 18446744073709551616"
    ):
        read_run(path.parent)


def test_run_end_without_status_reads_as_incomplete(corpus, tmp_path):
    """A run_end record without status (a KeyError before): status incomplete, with a note."""

    def edit(records):
        assert records[-1]["event"] == "run_end"
        del records[-1]["status"]

    path = _events(tmp_path, corpus, edit)
    record = read_run(path.parent)
    assert record.status == "incomplete"
    assert any("run_end record has no status" in w for w in record.warnings)
    code, out, err = _cli(["show", str(path.parent)])
    assert code == 0 and "incomplete" in out, err


@pytest.mark.parametrize(
    ("where", "value", "fragment"),
    [
        ("status", 7, r":\d+: status: expected a string"),
        ("error", "boom", r":\d+: error: expected an object or null"),
    ],
)
def test_run_end_fields_of_the_wrong_type_are_run_dir_errors(
    corpus, tmp_path, where, value, fragment
):
    """A run_end status that is not a string (a rich NotRenderableError in show before)."""

    def edit(records):
        records[-1][where] = value

    path = _events(tmp_path, corpus, edit)
    with pytest.raises(RunDirError, match=fragment):
        read_run(path.parent)
    code, _, err = _cli(["show", str(path.parent)])
    assert code == 2 and err.count("\n") == 1 and "events.jsonl" in err


@pytest.mark.parametrize(
    ("line", "field", "value", "fragment"),
    [
        (1, "values", [1.0], r":2: values: expected an object of metric values, got a list"),
        (1, "values", {"train/loss": "lots"}, r':2: values\["train/loss"\]: expected a number'),
        (1, "values", {"train/loss": True}, r':2: values\["train/loss"\]: expected a number'),
        (1, "step", 1.5, r":2: step: expected an integer step.*, got a number"),
        (1, "step", False, r":2: step: expected an integer step.*, got a boolean"),
        (1, "timestamp_ns", {}, r":2: timestamp_ns: expected an integer"),
        (1, "timestamp_ns", "-Infinity", r":2: timestamp_ns: expected an integer"),
        (0, "run", [], r":1: .*run: expected an object, got a list"),
        (0, "env", 3, r":1: env: expected an object"),
        (0, "format", "jaxobs.crash", r":1: not a jaxobs event log: format \"jaxobs.crash\""),
    ],
)
def test_wrong_types_in_events_are_run_dir_errors(corpus, tmp_path, line, field, value, fragment):
    """A field of the wrong type (TypeError, AttributeError, OverflowError before) is a
    RunDirError naming the file, the line and the field."""

    def edit(records):
        records[line][field] = value

    path = _events(tmp_path, corpus, edit)
    with pytest.raises(RunDirError, match=fragment):
        read_run(path.parent)


def test_wrong_types_in_the_environment_are_shown_as_far_as_they_go(corpus, tmp_path):
    """env.packages, env.jax and env.git of the wrong form (AttributeError in show before)."""

    def edit(records):
        records[0]["env"].update(packages=-1, jax={"devices": 3}, git={"dirty": True})

    path = _events(tmp_path, corpus, edit)
    code, out, err = _cli(["show", str(path.parent)])
    assert code == 0, err
    assert "devices" in out and "3" in out


def test_a_note_that_is_not_a_string_is_a_run_dir_error(corpus, tmp_path):
    """A note record whose text is a number or absent names the line."""

    def edit(records):
        note = next(r for r in records if r["event"] == "note")
        note["text"] = 5

    path = _events(tmp_path, corpus, edit)
    with pytest.raises(RunDirError, match=r"events\.jsonl:\d+: text: expected the note's text"):
        read_run(path.parent)


def test_invalid_utf8_is_each_readers_error(corpus, tmp_path):
    """Invalid UTF-8 names the file (and the line of events.jsonl)."""
    log = _write(
        tmp_path, "log.json", corpus["trainlog"][0][:20] + b"\xff" + corpus["trainlog"][0][20:]
    )
    with pytest.raises(TrainLogError, match="not UTF-8 text"):
        TrainLog.read_json(log)
    lines = corpus["events"][0].split(b"\n")
    lines[2] = lines[2][:10] + b"\xed\xa0\x80" + lines[2][10:]
    events = _write(tmp_path / "run", "events.jsonl", b"\n".join(lines))
    with pytest.raises(RunDirError, match=r"events\.jsonl:3: corrupt record \(not UTF-8"):
        read_run(events.parent)


def test_rich_markup_and_lone_surrogates_are_shown_as_text(corpus, tmp_path):
    """Markup in names is printed literally; a lone surrogate is written out, not a crash."""

    def edit(records):
        records[0]["run"]["name"] = "[bold red]x[/] [/]"
        records[0]["env"]["packages"]["jax"] = "\ud800"
        records[1]["values"]["[/]"] = 1.0

    path = _events(tmp_path, corpus, edit)
    code, out, err = _cli(["show", str(path.parent)])
    assert code == 0, err
    assert "[bold red]x[/] [/]" in out and "\\ud800" in out


def test_export_of_a_lone_surrogate_is_one_line(corpus, tmp_path):
    """A metric name that UTF-8 cannot hold cannot be exported: exit 2, one line."""

    def edit(records):
        records[1]["values"]["\ud800"] = 1.0

    path = _events(tmp_path, corpus, edit)
    code, _, err = _cli(["export", str(path.parent), "--format", "json"])
    assert code == 2 and err.count("\n") == 1 and "lone surrogate" in err


def test_an_unknown_newer_version_is_refused_everywhere(corpus, tmp_path):
    """schema_version 99.0 says to upgrade, in every reader."""
    data = json.loads(corpus["dump"][0]) | {"schema_version": "99.0"}
    with pytest.raises(CrashDumpError, match="upgrade jaxobs"):
        crash.load_dump(_write(tmp_path, "crash-7.json", json.dumps(data).encode()))

    def edit(records):
        records[0]["schema_version"] = "99.0"

    path = _events(tmp_path / "run", corpus, edit)
    with pytest.raises(TrainLogError, match="upgrade jaxobs"):
        read_run(path.parent)


def test_every_command_as_a_process_prints_one_line_and_exits_2(corpus, tmp_path):
    """The installed command on damaged files (a real process): exit 2, one line, no traceback."""
    log = _write(tmp_path, "log.json", b'{"steps": [' + LONG_INT.encode() + b"]}")
    dump = _write(tmp_path, "crash-7.json", DEEP.encode())
    bad_run = tmp_path / "run"
    lines = corpus["events"][0].split(b"\n")
    _write(
        bad_run, "events.jsonl", b"\n".join([lines[0], b'{"event": "metrics", "step": "x"}', b""])
    )
    commands = [
        ["show", str(log)],
        ["show", str(bad_run)],
        ["export", str(bad_run), "--format", "json"],
        ["export", str(log), "--format", "csv"],
        ["crash", "show", str(dump)],
        ["crash", "plot", str(dump)],
    ]
    for argv in commands:
        out = subprocess.run(
            [PYTHON, "-m", "jaxobs.cli", *argv], capture_output=True, text=True, cwd=REPO
        )
        assert out.returncode == 2, (argv, out.stderr)
        assert out.stderr.count("\n") == 1 and out.stderr.startswith("jaxobs: error: "), out.stderr
        assert "Traceback" not in out.stderr


def test_crash_plot_of_a_damaged_dump_is_one_line(corpus, tmp_path):
    """crash plot on a dump with a wrong-typed field: exit 2, one line, no image."""
    data = json.loads(corpus["dump"][0])
    data["recorder"]["series"]["train/loss"][0] = "lots"
    path = _write(tmp_path, "crash-7.json", json.dumps(data).encode())
    code, _, err = _cli(["crash", "plot", str(path), "-o", str(tmp_path / "x.png")])
    assert code == 2 and err.count("\n") == 1 and 'recorder.series["train/loss"][0]' in err
    assert not (tmp_path / "x.png").exists()


# ------------------------------------------------------------------ symlinked temp files


def test_a_planted_symlink_is_never_written_through(tmp_path):
    """Symlinks planted at the old temp names, and at trainlog.json itself, pointing outside:
    finish() leaves the outside file alone and writes a correct trainlog.json."""
    outside = tmp_path / "outside.txt"
    outside.write_text("precious", encoding="utf-8")
    run = jaxobs.init("p", dir=tmp_path / "runs", id="r", terminal=False)
    run.log({"train/loss": 0.5}, step=3)
    pid = os.getpid()
    import threading

    for name in (
        f".trainlog.json.tmp-{pid}",
        f".trainlog.json.tmp-{pid}-{threading.get_ident()}",
        ".trainlog.json.tmp",
        "trainlog.json",
    ):
        (run.dir / name).symlink_to(outside)
    run.finish()
    assert outside.read_text(encoding="utf-8") == "precious"
    log_path = run.dir / "trainlog.json"
    assert not log_path.is_symlink()
    data = json.loads(log_path.read_text(encoding="utf-8"))  # the standard library's reader
    assert [(s["name"], s.get("steps", data["steps"]), s["values"]) for s in data["series"]] == [
        ("train/loss", [3], [0.5])
    ]
    leftovers = [
        p.name for p in run.dir.iterdir() if p.name.endswith(".tmp") and not p.is_symlink()
    ]
    assert leftovers == []


def test_atomic_writes_keep_the_usual_file_mode(tmp_path):
    """The temp file is created new (O_EXCL) with 0666 less the umask, like open()."""
    mask = os.umask(0o022)
    os.umask(mask)
    log = TrainLog(series=[jaxobs.Series("a", [1.0])])
    path = log.write_json(tmp_path / "log.json")
    plain = tmp_path / "plain.json"
    plain.write_text("{}", encoding="utf-8")
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    assert TrainLog.read_json(path) == log
    shutil.rmtree(tmp_path / "nothing", ignore_errors=True)
