"""The plain-text summary of a crash dump (``jaxobs crash show``): the run, the trigger, the
first layer to diverge, the alerts, the checkpoint, and a table of the last recorded steps.
"""

from __future__ import annotations

import json
import math
import textwrap
from typing import Any

import numpy as np

from jaxobs._src.analysis.diagnose import diagnosis, layer_norms, rank_by_peak
from jaxobs._src.analysis.text import format_value
from jaxobs._src.formats.crash_dump import CrashDump

_LABEL_WIDTH = 18  # summary: "first to diverge: " and the values after it


_WIDTH = 100


def _fmt(value: float, recorded: bool = True) -> str:
    """A table cell: the number (`format_value`), or ``-`` where nothing was recorded."""
    return format_value(value) if recorded else "-"


def one_line(text: Any, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _wrap(text: Any, limit: int = 400) -> str:
    """One paragraph, at most ``limit`` characters, wrapped under the summary's value column."""
    lines = textwrap.wrap(one_line(text, limit), width=_WIDTH - _LABEL_WIDTH)
    return ("\n" + " " * _LABEL_WIDTH).join(lines)


def _describe_divergence(hit: dict[str, Any]) -> str:
    where = f"{hit.get('group') or '?'} of {hit['layer']} at step {hit['step']}"
    ratio = hit.get("ratio", math.nan)
    baseline = hit.get("baseline", math.nan)
    if hit.get("nonfinite") or (isinstance(ratio, float) and math.isinf(ratio)):
        return f"{where}: non-finite values (baseline norm {_fmt(baseline)})"
    return f"{where}: norm {_fmt(ratio)}x its baseline {_fmt(baseline)}"


def _table_columns(
    dump: CrashDump, hit: dict[str, Any] | None, rows: slice
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(header, values, recorded) columns for the last-steps table."""
    columns: list[tuple[str, np.ndarray, np.ndarray]] = []
    for key in ("train/loss", "health/grad_norm"):
        if key in dump.series:
            columns.append((key, dump.series[key][rows], dump.present[key][rows]))
    grads = layer_norms(dump.series, group="grads", present=dump.present)
    chosen: list[tuple[str, str]] = []
    if hit is not None:
        chosen.append((hit.get("group") or "grads", hit["layer"]))
        if ("grads", hit["layer"]) not in chosen and hit["layer"] in grads:
            chosen.append(("grads", hit["layer"]))
    for layer in rank_by_peak(grads, rows):
        if len(chosen) >= 4:  # the diverged layer and the largest others
            break
        if ("grads", layer) not in chosen and np.any(~np.isnan(grads[layer][rows])):
            chosen.append(("grads", layer))
    norms_by_group = {"grads": grads}
    for group, layer in chosen:
        if group not in norms_by_group:
            norms_by_group[group] = layer_norms(dump.series, group=group, present=dump.present)
        values = norms_by_group[group].get(layer)
        if values is None:
            continue
        mark = " *" if hit is not None and layer == hit["layer"] else ""
        columns.append((f"{group} {layer}{mark}", values[rows], ~np.isnan(values[rows])))
    return columns


def summary(dump: CrashDump, *, last_steps: int = 8) -> str:
    """A plain-text report of a crash dump, for a terminal or a file.

    It gives the run, the trigger, the first layer to diverge, the alerts in order, the
    checkpoint, the versions, and a table of the last ``last_steps`` recorded steps with
    ``train/loss``, ``health/grad_norm`` and the gradient norms of the first layer to diverge
    and of the largest layers.

    Args:
      dump: A dump from `load_dump`.
      last_steps: How many recorded steps the table shows.

    Returns:
      The report, lines separated by ``\\n``, ending with a newline.
    """
    lines: list[str] = []

    def row(label: str, text: str) -> None:
        lines.append(f"{label + ':':<{_LABEL_WIDTH}}{text}")

    lines.append(f"crash dump {dump.path}")
    run = dump.run
    project = run.get("project")
    ident = f"{project}/{dump.run_name}" if project else dump.run_name
    if run.get("run_id") and run.get("run_id") != dump.run_name:
        ident += f" (run id {run['run_id']})"
    row("run", ident)
    if run.get("dir"):
        row("directory", str(run["dir"]))
    t = dump.trigger
    detail = ", ".join(
        str(x) for x in (t.get("rule") and f"rule {t['rule']}", t.get("severity")) if x
    )
    row("trigger", f"{t['kind']}{f' ({detail})' if detail else ''} at step {dump.step}")
    if t.get("message"):
        row("message", _wrap(t["message"]))
    error = t.get("error")
    if isinstance(error, dict):
        row("error", _wrap(f"{error.get('type', '?')}: {error.get('message', '')}"))
    hit, computed = diagnosis(dump)
    if hit is None:
        row("first to diverge", "no layer (no non-finite or >10x norms in the recorder)")
    else:
        note = " (computed from the recorder)" if computed else ""
        row("first to diverge", _describe_divergence(hit) + note)
    if dump.alerts:
        row("alerts", f"{len(dump.alerts)}, oldest first")
        shown = dump.alerts if len(dump.alerts) <= 20 else dump.alerts[-20:]
        if len(shown) < len(dump.alerts):
            lines.append(f"  ... {len(dump.alerts) - len(shown)} earlier alerts not shown")
        for alert in shown:
            step = alert.get("step")
            cells = [
                f"step {step if step is not None else '?':>6}",
                f"{alert.get('severity') or '':<8}",
                f"{alert.get('rule') or '':<10}",
            ]
            if alert.get("layer"):
                cells.append(str(alert["layer"]))
            if alert.get("message"):
                cells.append(one_line(alert["message"], 120))
            lines.append("  " + "  ".join(cells).rstrip())
    else:
        row("alerts", "none")
    if dump.checkpoint:
        at = dump.checkpoint.get("step")
        text = f"{dump.checkpoint.get('path')}"
        if at is not None:
            text += f" (step {at})"
        ckpt = dump.checkpoint_path
        if ckpt is not None and str(ckpt) != dump.checkpoint.get("path"):
            text += f" -> {ckpt}"
        row("checkpoint", text)
    else:
        row("checkpoint", "none saved")
    if dump.versions:
        parts = [
            f"{k} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in dump.versions.items()
            if v
        ]
        row("versions", _wrap(", ".join(parts), 600))
    if dump.thresholds:
        row("thresholds", one_line(json.dumps(dump.thresholds, ensure_ascii=False), 160))
    n = len(dump.steps)
    if n == 0:
        row("recorder", "empty")
        return "\n".join(lines) + "\n"
    row("recorder", f"{n} steps ({dump.steps[0]} to {dump.steps[-1]}), {len(dump.series)} series")
    lines.append("")
    rows = slice(max(0, n - last_steps), n)
    columns = _table_columns(dump, hit, rows)
    headers = ["step", *(c[0] for c in columns)]
    body = [
        [str(s), *(_fmt(float(c[1][i]), bool(c[2][i])) for c in columns)]
        for i, s in enumerate(dump.steps[rows])
    ]
    widths = [max(len(h), *(len(r[j]) for r in body)) for j, h in enumerate(headers)]
    lines.append(f"last {len(body)} recorded steps:")
    lines.append("  " + "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
    for r in body:
        lines.append("  " + "  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
    notes = ["-: not recorded"]
    if any(c[0].startswith(("grads ", "params ", "updates ")) for c in columns):
        notes.append("layer norm inf: the layer has non-finite values")
    if any(c[0].endswith(" *") for c in columns):
        notes.append("*: first to diverge")
    lines.append("  (" + "; ".join(notes) + ")")
    return "\n".join(lines) + "\n"
