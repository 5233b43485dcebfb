"""A run whose files cannot be written: a full disk, the file size limit, no file descriptor.

The failures are real, made by the operating system without root: a subprocess lowers its
own ``RLIMIT_FSIZE`` (SIGXFSZ ignored, so a write past the limit writes what fits, then
fails with EFBIG: a partial line, as on a disk that fills up mid-write) or ``RLIMIT_NOFILE``
(EMFILE for every file opened after it); and, in this process, the run's open
``events.jsonl`` is swapped for ``/dev/full`` (ENOSPC on every write) with ``os.dup2``.

Each time, events.jsonl is read back strictly with json: only whole lines, no (step, metric)
recorded twice after the retried `log`; and a sink (a plain class) got ``run_end`` and
``close()``.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import subprocess
import sys

import pytest
from helpers import PYTHON, REPO

import jaxobs

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="resource limits and /dev/full as on Linux"
)

PRELUDE = r"""
import errno, json, os, resource, signal, sys
import jaxobs

class Sink:
    def __init__(self):
        self.seen, self.closed = [], False
    def handle_event(self, event):
        self.seen.append([event.type, event.step, sorted(event.data.get("values", {}))])
    def close(self):
        self.closed = True

sink = Sink()
run = jaxobs.init(project="full", dir=sys.argv[1], terminal=False)
run.add_sink(sink)
for s in range(5):
    run.log({"loss": float(s)}, step=s)
big = {f"metric/{i}": float(i) for i in range(20)}  # one line of about 400 bytes
out = {}
"""

FILE_SIZE_LIMIT = (
    PRELUDE
    + r"""
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
out["whole"] = os.path.getsize(run.events_path)
resource.setrlimit(resource.RLIMIT_FSIZE, (out["whole"] + 40, hard))  # 40 bytes of it fit
out["errors"] = []
for attempt in range(2):
    try:
        run.log(big, step=5)
    except OSError as e:
        out["errors"].append([e.errno, str(e)])
out["after_failure"] = os.path.getsize(run.events_path)
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space again: the retry
run.log(big, step=5)
run.log({"loss": 6.0})
# The end of the run does not fit either: run_end and trainlog.json fail.
resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(run.events_path), hard))
out["finish"] = str(run.finish())
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
out["seen"], out["closed"], out["dir"] = sink.seen, sink.closed, str(run.dir)
print(json.dumps(out))
"""
)

NO_FILE_DESCRIPTORS = (
    PRELUDE
    + r"""
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
# Descriptors below 3 (stdin, stdout, stderr) only: no other file can be opened, even once
# the run has closed events.jsonl.
resource.setrlimit(resource.RLIMIT_NOFILE, (3, hard))
try:
    open(os.devnull).close()
except OSError as e:
    out["open_errno"] = e.errno
run.log(big, step=5)  # events.jsonl is open already
run.log({"loss": 6.0})
out["finish"] = str(run.finish())  # trainlog.json cannot be opened
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
out["seen"], out["closed"], out["dir"] = sink.seen, sink.closed, str(run.dir)
print(json.dumps(out))
"""
)


def _run_script(script: str, tmp_path: pathlib.Path) -> tuple[dict, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [PYTHON, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def _strict_lines(path: pathlib.Path) -> list[dict]:
    """Every line of ``path`` parsed with json; the file must end with a whole line."""
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n"), f"{path} ends in a partial line: {text[-80:]!r}"
    return [json.loads(line) for line in text.splitlines()]


def _metric_cells(records: list[dict]) -> list[tuple[int, str]]:
    return [(r["step"], k) for r in records if r["event"] == "metrics" for k in r["values"]]


def _check_once_each(records: list[dict]) -> None:
    cells = _metric_cells(records)
    assert len(cells) == len(set(cells)), "a (step, metric) is recorded twice"
    want = {(s, "loss") for s in (0, 1, 2, 3, 4, 6)} | {(5, f"metric/{i}") for i in range(20)}
    assert set(cells) == want


def _check_sink(out: dict) -> None:
    metrics = [(step, keys) for kind, step, keys in out["seen"] if kind == "metrics"]
    assert [s for s, _ in metrics] == [0, 1, 2, 3, 4, 5, 6]  # the failed write never reached it
    assert metrics[5][1] == sorted(f"metric/{i}" for i in range(20))
    assert out["seen"][0][0] == "run_start" and out["seen"][-1][0] == "run_end"
    assert out["closed"] is True


def test_a_write_past_the_file_size_limit_is_rolled_back_and_retried_once(tmp_path):
    """EFBIG mid-line: log raises naming the file, the partial line is gone, the retry is
    recorded once, and at the end the sink still gets run_end and close."""
    out, stderr = _run_script(FILE_SIZE_LIMIT, tmp_path)
    assert [e for e, _ in out["errors"]] == [errno.EFBIG, errno.EFBIG]
    for _, message in out["errors"]:
        assert "events.jsonl" in message and "nothing of it is in the file" in message
        assert "at step 5" in message and "file size limit" in message
    assert out["after_failure"] == out["whole"]  # the 40 bytes that fit were truncated away
    records = _strict_lines(pathlib.Path(out["dir"]) / "events.jsonl")
    _check_once_each(records)
    assert records[-1]["event"] == "metrics"  # run_end did not fit
    assert out["finish"] == "None" and not (pathlib.Path(out["dir"]) / "trainlog.json").exists()
    assert "the end of the run could not be written" in stderr
    _check_sink(out)
    # what did get written reads back (as a run that never finished)
    log = jaxobs.read_run(out["dir"], warn=False).log.to_trainlog()
    assert log.steps_of("loss") == [0, 1, 2, 3, 4, 6] and log.steps_of("metric/0") == [5]


def test_no_file_descriptor_left_still_ends_the_sinks(tmp_path):
    """EMFILE: events.jsonl (open) keeps recording, trainlog.json cannot be opened, and
    the sink still gets run_end and close."""
    out, stderr = _run_script(NO_FILE_DESCRIPTORS, tmp_path)
    assert out["open_errno"] == errno.EMFILE
    records = _strict_lines(pathlib.Path(out["dir"]) / "events.jsonl")
    _check_once_each(records)
    assert records[-1]["event"] == "run_end" and records[-1]["status"] == "finished"
    assert out["finish"] == "None"
    assert "the end of the run could not be written" in stderr
    _check_sink(out)


def _fd_of(path: pathlib.Path) -> int:
    """The descriptor of this process that has ``path`` open (from /proc/self/fd)."""
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == str(path):
                return int(name)
        except OSError:
            continue
    raise AssertionError(f"{path} is not open")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_enospc_raises_and_a_retry_is_recorded_once(tmp_path):
    """ENOSPC (events.jsonl swapped for /dev/full): log raises a clear OSError, the sink
    never sees the failed record, the retry after space is back is recorded once."""

    class Sink:
        def __init__(self):
            self.seen, self.closed = [], False

        def handle_event(self, event):
            self.seen.append((event.type, event.step))

        def close(self):
            self.closed = True

    sink = Sink()
    run = jaxobs.init(project="full", dir=tmp_path, terminal=False)
    run.add_sink(sink)
    for s in range(5):
        run.log({"loss": float(s)}, step=s)
    fd = _fd_of(run.events_path.resolve())
    saved = os.dup(fd)
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        os.dup2(full, fd)
        for _ in range(2):
            with pytest.raises(OSError, match="disk is full") as raised:
                run.log({f"metric/{i}": float(i) for i in range(20)}, step=5)
            assert raised.value.errno == errno.ENOSPC
            assert raised.value.filename == str(run.events_path)
        os.dup2(saved, fd)  # space again
    finally:
        os.close(full)
        os.close(saved)
    run.log({f"metric/{i}": float(i) for i in range(20)}, step=5)
    run.log({"loss": 6.0})
    run.finish()
    records = _strict_lines(run.events_path)
    _check_once_each(records)
    assert records[-1]["event"] == "run_end"
    assert [s for kind, s in sink.seen if kind == "metrics"] == list(range(7))
    assert sink.seen[-1][0] == "run_end" and sink.closed
