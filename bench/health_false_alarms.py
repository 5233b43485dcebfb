"""Healthy runs must raise no alert: count alerts and skips on the digits CNN at lr 0.05.

    python bench/health_false_alarms.py [--seeds 5] [--steps 2000]

Each seed trains the examples' CNN with SGD (lr 0.05, momentum 0.9, batch 64) under
``HealthChecker(action="skip")`` with activation statistics (so the dead-unit rule runs) and
a validation loss every 100 steps (so stagnation and overfitting run). Prints one JSON
object: per seed, the alerts by severity and rule, the skipped steps, the final validation
accuracy, and the wall time.
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "examples"))

import digits  # the data, the CNN and the train step shared by the examples

import jaxobs


def run_seed(seed: int, steps: int, root: str) -> dict:
    (x_train, y_train), (x_val, y_val) = digits.load_data(seed)
    state = digits.create_state(seed, 0.05)
    checker = jaxobs.HealthChecker(num_classes=10, action="skip")
    train_step = jaxobs.observe(digits.step_fn, health=checker, activations=True)
    data = digits.batches(x_train, y_train, 64, seed)
    start = time.perf_counter()
    with jaxobs.init(project="false-alarms", dir=root, config={"seed": seed}) as run:
        for s in range(steps):
            state, _ = train_step(state, *next(data))
            if (s + 1) % 100 == 0:
                run.log(digits.evaluate(state, x_val, y_val), step=s)
    skips = []
    for line in (run.dir / "events.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["event"] == "metrics" and record["values"].get("health/skipped"):
            skips.append(record["step"])
    by = collections.Counter((a.severity, a.rule) for a in checker.alerts)
    return {
        "seed": seed,
        "steps": steps,
        "alerts": {f"{sev}:{rule}": n for (sev, rule), n in sorted(by.items())},
        "warning_or_higher": sum(n for (sev, _), n in by.items() if sev != "info"),
        "skipped_steps": skips,
        "val_accuracy": digits.evaluate(state, x_val, y_val)["val/accuracy"],
        "wall_s": round(time.perf_counter() - start, 1),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as root:
        runs = [run_seed(seed, args.steps, root) for seed in range(args.seeds)]
    out = {
        "benchmark": "health_false_alarms",
        "runs": runs,
        "total_warning_or_higher": sum(r["warning_or_higher"] for r in runs),
        "total_skipped": sum(len(r["skipped_steps"]) for r in runs),
    }
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
