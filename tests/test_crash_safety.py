"""Crash safety: a training process killed with -9 or SIGTERM loses nothing it had logged."""

import json
import signal
import subprocess
import sys
import textwrap
import warnings

import pytest
from helpers import PYTHON, REPO, metric_table, read_events

import jaxobs

# A training loop in a child process: a jitted step, one log per step, then an ack on stdout
# once run.log has returned. The parent kills it after some acks.
TRAIN = textwrap.dedent(
    """
    import sys, time
    import jax, jax.numpy as jnp
    import jaxobs

    @jax.jit
    def step_fn(w, x):
        loss = jnp.mean((x @ w) ** 2)
        return w - 0.01 * jax.grad(lambda w: jnp.mean((x @ w) ** 2))(w), loss

    w = jnp.ones((8, 4))
    x = jax.random.normal(jax.random.key(0), (16, 8))
    run = jaxobs.init(project="p", id="r", dir=sys.argv[1], terminal=False)
    with run:
        for step in range(100000):
            w, loss = step_fn(w, x)
            run.log({"train/loss": float(loss), "step_copy": step}, step=step)
            print(step, flush=True)
            time.sleep(float(sys.argv[2]))
    """
)


def _start(tmp_path, pause_s: float) -> subprocess.Popen:
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    return subprocess.Popen(
        [PYTHON, str(script), str(tmp_path / "runs"), str(pause_s)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def _wait_for_acks(proc: subprocess.Popen, count: int) -> int:
    last = -1
    for line in proc.stdout:
        last = int(line)
        if last + 1 >= count:
            return last
    proc.wait(30)
    raise AssertionError(f"child ended early ({proc.returncode}): {proc.stderr.read()}")


def test_kill_9_keeps_every_flushed_step(tmp_path):
    """After kill -9, every step acknowledged by the child is in events.jsonl."""
    with _start(tmp_path, pause_s=0.0) as proc:
        acked = _wait_for_acks(proc, 200)
        proc.kill()  # SIGKILL: no handler, no atexit, no flush
        proc.wait(30)
    run_dir = tmp_path / "runs" / "p" / "r"
    table = metric_table(read_events(run_dir))
    steps = sorted(table["step_copy"])
    assert steps[: acked + 1] == list(range(acked + 1))
    assert all(table["step_copy"][s] == s for s in steps)
    assert not (run_dir / "trainlog.json").exists()

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean kill between lines leaves no torn line...
        record = jaxobs.read_run(run_dir)
    assert record.status == "incomplete"
    assert record.last_step >= acked
    curve = record.log.history.curves["step_copy"]
    assert curve.values == [float(s) for s in curve.steps]


def test_torn_last_line_is_skipped_with_a_warning(tmp_path):
    """A half-written last record is dropped with a RunDirWarning; all else is kept."""
    with _start(tmp_path, pause_s=0.0) as proc:
        acked = _wait_for_acks(proc, 50)
        proc.kill()
        proc.wait(30)
    events = tmp_path / "runs" / "p" / "r" / "events.jsonl"
    complete = read_events(events.parent)
    with open(events, "a", encoding="utf-8") as f:
        f.write('{"event":"metrics","level":"BASIC","step":99999,"values":{"train/lo')
    with pytest.warns(jaxobs.RunDirWarning, match=r"events\.jsonl:\d+: the last line is incomp"):
        record = jaxobs.read_run(events.parent)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warn=False: listed in the record, not warned
        quiet = jaxobs.read_run(events.parent, warn=False)
    assert quiet.warnings == record.warnings and "incomplete" in quiet.warnings[0]
    n_metrics = sum(e["event"] == "metrics" for e in complete)
    assert len(record.log.history.curves["step_copy"]) == n_metrics > acked
    assert 99999 not in record.log.history.curves["step_copy"].steps
    # The CLI reads the crashed run too, warning on stderr.
    out = subprocess.run(
        [PYTHON, "-m", "jaxobs", "export", str(events.parent), "--format", "json"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "last line is incomplete" in out.stderr
    series = {s["name"]: s for s in json.loads(out.stdout)["series"]}
    assert len(series["step_copy"]["values"]) == n_metrics


def test_sigterm_inside_with_block_completes_the_run(tmp_path):
    """SIGTERM ends the with block: status terminated, fsynced, trainlog written, exit 143."""
    with _start(tmp_path, pause_s=0.01) as proc:
        acked = _wait_for_acks(proc, 20)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == 128 + signal.SIGTERM
    run_dir = tmp_path / "runs" / "p" / "r"
    events = read_events(run_dir)
    assert events[-1]["event"] == "run_end" and events[-1]["status"] == "terminated"
    trainlog = json.loads((run_dir / "trainlog.json").read_text())
    logged = {s["name"]: s for s in trainlog["series"]}["step_copy"]["values"]
    assert logged[: acked + 1] == [float(s) for s in range(acked + 1)]


@pytest.mark.skipif(sys.platform != "linux", reason="uses /proc")
def test_sigterm_handler_is_restored(tmp_path):
    """Leaving the with block puts the previous SIGTERM handler back."""
    before = signal.getsignal(signal.SIGTERM)
    with jaxobs.init(project="p", dir=tmp_path, terminal=False):
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize(
    ("tail", "status"), [("", "finished"), ("raise RuntimeError('x')", "failed")]
)
def test_run_never_finished_is_finished_at_exit(tmp_path, tail, status):
    """Without finish() or a with block, interpreter exit ends the run with its status."""
    script = tmp_path / "s.py"
    script.write_text(
        "import jaxobs\n"
        f"run = jaxobs.init(project='p', id='r', dir={str(tmp_path)!r}, terminal=False)\n"
        "run.log({'a': 1.0})\n" + tail + "\n"
    )
    subprocess.run([PYTHON, str(script)], capture_output=True, timeout=120)
    end = read_events(tmp_path / "p" / "r")[-1]
    assert end["event"] == "run_end" and end["status"] == status
    assert (tmp_path / "p" / "r" / "trainlog.json").is_file()
