"""The status of a run finished at interpreter exit: Ctrl-C, sys.exit codes, slow finish."""

import json
import signal
import subprocess

import pytest
from helpers import PYTHON, read_events

START = (
    "import os, signal, sys, threading, time\n"
    "import jaxobs\n"
    "run = jaxobs.init(project='p', id='r', dir={dir!r}, terminal=False)\n"
    "run.log({{'a': 1.0}})\n"
)

# A sink that keeps finish() waiting while it handles the metrics record.
SLOW = (
    "class Slow:\n"
    "    def handle_metrics(self, event):\n"
    "        time.sleep(2.0)\n"
    "run.add_sink(Slow())\n"
    "run.log({'b': 2.0})\n"
    "threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()\n"
)


def _run(tmp_path, tail: str) -> tuple[subprocess.CompletedProcess, dict, dict]:
    script = tmp_path / "s.py"
    script.write_text(START.format(dir=str(tmp_path)) + tail + "\n")
    proc = subprocess.run([PYTHON, str(script)], capture_output=True, text=True, timeout=120)
    run_dir = tmp_path / "p" / "r"
    end = read_events(run_dir)[-1]
    assert end["event"] == "run_end", proc.stderr
    trainlog = json.loads((run_dir / "trainlog.json").read_text(encoding="utf-8"))
    return proc, end, trainlog


@pytest.mark.parametrize(
    ("tail", "status", "returncode"),
    [
        ("", "finished", 0),
        ("sys.exit(0)", "finished", 0),
        ("sys.exit()", "finished", 0),
        ("sys.exit(None)", "finished", 0),
        ("sys.exit(False)", "finished", 0),
        ("sys.exit(3)", "failed", 3),
        ("sys.exit('bad input')", "failed", 1),
        ("def main():\n    sys.exit(4)\nmain()", "failed", 4),
        ("raise KeyboardInterrupt", "interrupted", -signal.SIGINT),
        ("raise RuntimeError('x')", "failed", 1),
        # a SystemExit caught inside a function does not end the script
        (
            "def f():\n    try:\n        sys.exit(5)\n    except SystemExit:\n        pass\nf()",
            "finished",
            0,
        ),
        # sys.exit on another thread ends that thread only
        ("t = threading.Thread(target=sys.exit, args=(6,))\nt.start()\nt.join()", "finished", 0),
    ],
)
def test_status_at_exit_without_with(tmp_path, tail, status, returncode):
    """A run never finished explicitly gets the status of what ended the script."""
    proc, end, _ = _run(tmp_path, tail)
    assert end["status"] == status, proc.stderr
    assert proc.returncode == returncode, "the wrapper must not change the exit code"


def test_sys_exit_code_is_in_the_error_record(tmp_path):
    """``sys.exit(3)`` records a SystemExit error whose message is the exit code."""
    _, end, _ = _run(tmp_path, "sys.exit(3)")
    assert end["error"]["type"] == "SystemExit"
    assert end["error"]["message"] == "3"


def test_keyboard_interrupt_during_slow_finish_is_interrupted(tmp_path):
    """Ctrl-C while an explicit finish() waits for a slow sink ends the run as interrupted."""
    proc, end, _ = _run(tmp_path, SLOW + "run.finish()\nprint('not reached')")
    assert "not reached" not in proc.stdout
    assert end["status"] == "interrupted", proc.stderr
    assert end["error"]["type"] == "KeyboardInterrupt"


def test_keyboard_interrupt_during_slow_finish_of_with_block(tmp_path):
    """Ctrl-C while a ``with run:`` block finishes ends the run as interrupted, not finished."""
    proc, end, _ = _run(tmp_path, SLOW + "with run:\n    pass")
    assert end["status"] == "interrupted", proc.stderr


@pytest.mark.parametrize(
    ("tail", "status"),
    [
        ("with run:\n    sys.exit(3)", "failed"),
        ("with run:\n    sys.exit(0)", "finished"),
        ("with run:\n    raise KeyboardInterrupt", "interrupted"),
    ],
)
def test_status_with_block_unchanged(tmp_path, tail, status):
    """Inside ``with run:`` the exception leaving the block still decides the status."""
    proc, end, _ = _run(tmp_path, tail)
    assert end["status"] == status, proc.stderr
