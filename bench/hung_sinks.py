"""Sinks that hang or exit: what they cost the training loop, `init` and `finish`.

    .venv/bin/python bench/hung_sinks.py [--steps 3000]

A loop of `--steps` steps x 8 metrics (and an `epoch_end` every 100 steps) with a healthy
recording sink and, each in turn, a sink that hangs in its handler, in `flush`, in `close`
or in `bind`, or raises `SystemExit`, under the default `jaxobs.SinkTimeouts`. Prints JSON:
seconds in `init`, in the loop and in `finish`, whether the healthy sink got every event,
and what `run_end` reports.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time

import jaxobs


class Counting:
    def __init__(self):
        self.n = 0

    def handle_event(self, event):
        self.n += 1


class Hung:
    def __init__(self, where):
        self.where = where
        self.forever = threading.Event()

    def _hang(self, name):
        if name == self.where:
            self.forever.wait()

    def bind(self, run):
        self._hang("bind")

    def handle_event(self, event):
        self._hang("handle")

    def flush(self):
        self._hang("flush")

    def close(self):
        self._hang("close")


class Exits:
    def handle_metrics(self, event):
        raise SystemExit(3)


def trial(root: str, steps: int, bad) -> dict:
    good = Counting()
    sinks = [good] if bad is None else [bad, good]
    t0 = time.perf_counter()
    run = jaxobs.init("bench", dir=root, terminal=False, sinks=sinks)
    t1 = time.perf_counter()
    for step in range(steps):
        run.log({f"m{i}": float(step + i) for i in range(8)}, step=step)
        if step % 100 == 99:
            run.emit("epoch_end", epoch=step // 100)
    t2 = time.perf_counter()
    run.finish()
    t3 = time.perf_counter()
    expected = 1 + steps + steps // 100 + 1  # run_start, metrics, epoch_end, run_end
    with open(run.dir / "events.jsonl") as f:
        end = json.loads(f.read().splitlines()[-1])
    return {
        "init_s": round(t1 - t0, 3),
        "loop_s": round(t2 - t1, 3),
        "finish_s": round(t3 - t2, 3),
        "healthy_sink_got_all": good.n >= expected,
        "sink_errors": [e.split("\n")[0][:160] for e in end["sink_errors"]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3000)
    args = parser.parse_args()
    cases = {
        "no_bad_sink": None,
        "hangs_in_handler": Hung("handle"),
        "hangs_in_flush": Hung("flush"),
        "hangs_in_close": Hung("close"),
        "hangs_in_bind": Hung("bind"),
        "raises_system_exit": Exits(),
    }
    out = {"steps": args.steps, "timeouts": vars(jaxobs.SinkTimeouts())}
    with tempfile.TemporaryDirectory() as root:
        for name, bad in cases.items():
            out[name] = trial(root, args.steps, bad)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
