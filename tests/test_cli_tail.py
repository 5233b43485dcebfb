"""`jaxobs tail`: a live view of a run directory that is still being written."""

from __future__ import annotations

import json
import subprocess
import sys


def _line(record):
    return json.dumps(record) + "\n"


def _start():
    return _line({"event": "run_start", "level": "BASIC", "timestamp_ns": 1, "run": {"name": "r1"}})


def _metrics(step, loss):
    rec = {"event": "metrics", "level": "BASIC", "step": step}
    rec.update({"timestamp_ns": 10**9 * (step + 1), "values": {"loss": loss}})
    return _line(rec)


def _tail(directory, *extra):
    return subprocess.run(
        [sys.executable, "-m", "jaxobs", "tail", str(directory), *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_once_shows_the_latest_step_and_value_and_tolerates_a_torn_line(tmp_path):
    text = _start() + _metrics(0, 0.5) + _metrics(1, 0.25) + _metrics(2, 0.125)
    alert = {"event": "health_check", "level": "BASIC", "step": 2, "timestamp_ns": 5}
    alert.update({"rule": "loss_spike", "severity": "warning", "message": "loss jumped"})
    text += _line(alert)
    text += '{"event":"metrics","level":"BASIC","step":3,"val'  # torn: still being written
    (tmp_path / "events.jsonl").write_text(text)
    out = _tail(tmp_path, "--once")
    assert out.returncode == 0, out.stderr
    assert "step 2" in out.stdout and "loss = 0.125" in out.stdout
    assert "1.00 steps/s" in out.stdout  # 1 step per second of timestamp_ns
    assert "running" in out.stdout
    assert "warning loss_spike: loss jumped" in out.stdout


def test_partial_line_is_kept_until_complete(tmp_path):
    from jaxobs.cli.tail import Tail

    path = tmp_path / "events.jsonl"
    whole = _metrics(7, 3.5)
    path.write_text(_start() + whole[:20])
    tail = Tail(tmp_path)
    tail.poll()
    assert tail.step is None
    with open(path, "a") as f:
        f.write(whole[20:])
    tail.poll()
    assert tail.step == 7 and tail.values == {"loss": 3.5}


def test_a_finished_run_ends_the_view(tmp_path):
    script = (
        "import jaxobs\n"
        f"run = jaxobs.init(project='p', dir={str(tmp_path)!r}, name='t')\n"
        "for s in range(5): run.log({'loss': 1.0 / (s + 1)}, step=s)\n"
        "run.finish()\n"
        "print(run.dir)\n"
    )
    made = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    run_dir = made.stdout.strip().splitlines()[-1]
    out = _tail(run_dir, "--interval", "0.2")
    assert out.returncode == 0, out.stderr
    assert "run ended: finished" in out.stdout
    assert "step 4" in out.stdout and "loss = 0.2" in out.stdout


def test_not_a_run_directory(tmp_path):
    out = _tail(tmp_path, "--once")
    assert out.returncode == 2 and "events.jsonl" in out.stderr
