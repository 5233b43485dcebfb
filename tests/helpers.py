"""Test helpers that read run files with the standard library only (the independent reader)."""

from __future__ import annotations

import importlib.util
import json
import math
import pathlib
import sys

SENTINELS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
REPO = pathlib.Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def load_script(relpath: str):
    """The script ``REPO/relpath`` (an example, a bench) loaded as a fresh module, its
    ``main`` not yet called."""
    path = REPO / relpath
    spec = importlib.util.spec_from_file_location(f"_example_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def decode(value):
    """Sentinel strings -> floats, recursively."""
    if isinstance(value, str) and value in SENTINELS:
        return SENTINELS[value]
    if isinstance(value, dict):
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def read_events(run_dir) -> list[dict]:
    """Every complete line of events.jsonl, parsed with json (sentinels decoded)."""
    text = (pathlib.Path(run_dir) / "events.jsonl").read_text(encoding="utf-8")
    lines = text.split("\n")
    if not text.endswith("\n"):
        lines = lines[:-1]  # a torn last line
    return [decode(json.loads(line)) for line in lines if line]


def metric_table(events) -> dict[str, dict[int, float]]:
    """{metric: {step: value}} from the metrics records."""
    table: dict[str, dict[int, float]] = {}
    for e in events:
        if e["event"] == "metrics":
            for k, v in e["values"].items():
                table.setdefault(k, {})[e["step"]] = v
    return table


def same_float(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b
