"""What recording costs on the host: run.log per call, and finish() for a large run.

    python bench/log_overhead.py [--metrics 10] [--calls 2000] [--rounds 7]

Prints one JSON object:

- ``log_us_per_call``: median over rounds of the time per `Run.log` call with ``--metrics``
  scalars (JSON encoding, one write, one flush), measured interleaved (A B A B ...) with
  ``convert_us_per_call``, the same values converted to floats without writing, so that the
  difference is the cost of the write-ahead record itself;
- ``write_ahead_us_per_call``: the median of the per-round differences;
- ``finish_s``: the time `Run.finish` takes for ``--finish-steps`` steps of ``--metrics``
  metrics (it rebuilds trainlog.json from events.jsonl), and the file sizes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time

import numpy as np

import jaxobs
from jaxobs._src.formats import config as _jsonable


def _values(n: int, rng) -> dict[str, np.float32]:
    return {f"layer_{i}/grad_norm": np.float32(v) for i, v in enumerate(rng.random(n))}


def _time_log(run, rows) -> float:
    t0 = time.perf_counter()
    for step, row in enumerate(rows):
        run.log(row, step=step)
    return (time.perf_counter() - t0) / len(rows)


def _time_convert(rows) -> float:
    t0 = time.perf_counter()
    for row in rows:
        {k: _jsonable.scalar(v, k) for k, v in row.items()}
    return (time.perf_counter() - t0) / len(rows)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--metrics", type=int, default=10)
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--finish-steps", type=int, default=10000)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = [_values(args.metrics, rng) for _ in range(args.calls)]
    logs, converts = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            run = jaxobs.init(project="bench", id=f"r{r}", dir=tmp, terminal=False)
            converts.append(_time_convert(rows))
            logs.append(_time_log(run, rows))
            run.finish()
        run = jaxobs.init(project="bench", id="finish", dir=tmp, terminal=False)
        row = _values(args.metrics, rng)
        for step in range(args.finish_steps):
            run.log(row, step=step)
        t0 = time.perf_counter()
        run.finish()
        finish_s = time.perf_counter() - t0
        events_mb = run.events_path.stat().st_size / 2**20
        trainlog_mb = run.trainlog_path.stat().st_size / 2**20
    result = {
        "metrics_per_call": args.metrics,
        "calls": args.calls,
        "rounds": args.rounds,
        "log_us_per_call": statistics.median(logs) * 1e6,
        "convert_us_per_call": statistics.median(converts) * 1e6,
        "write_ahead_us_per_call": statistics.median(
            (a - b) * 1e6 for a, b in zip(logs, converts, strict=True)
        ),
        "finish_steps": args.finish_steps,
        "finish_s": finish_s,
        "events_jsonl_mib": events_mb,
        "trainlog_json_mib": trainlog_mb,
        "python": sys.version.split()[0],
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
