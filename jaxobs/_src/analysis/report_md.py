"""A run as a Markdown report that GitHub renders: tables of what the run was and how it
ended, and PNG plots (drawn with matplotlib, imported inside the drawing functions only)
in a folder beside it.

The report holds every value as logged; only the plots thin a long curve (every k-th
point, at least `MIN_PLOT_POINTS` of them) to keep drawing fast.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
import urllib.parse
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from jaxobs._src.analysis.summary import summarize
from jaxobs._src.analysis.text import format_value, printable
from jaxobs._src.device.keys import flatten_mapping, layer_norms, layer_of, split_stat_key
from jaxobs._src.formats.rundir import RunRecord
from jaxobs._src.formats.trainlog import Series, TrainLog

if TYPE_CHECKING:  # matplotlib is optional and imported where a figure is drawn
    from matplotlib.axes import Axes

__all__ = ["MIN_PLOT_POINTS", "md_escape", "thin", "write_markdown_report"]

MIN_PLOT_POINTS = 2000
_STAT_PREFIXES = ("grads/", "params/", "updates/", "acts/")
_SEVERITY_COLORS = {"critical": "tab:red", "warning": "tab:orange"}
_MAX_MESSAGE = 300
# Characters Markdown (CommonMark and GitHub's tables) may read as syntax.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]#|~])")


def md_escape(text: Any) -> str:
    """``text`` as Markdown that renders as exactly that text, on one line.

    Markup characters (``\\ ` * _ [ ] # | ~``) are backslash-escaped, ``&``,
    ``<`` and ``>`` written as entities (so no HTML tag reaches the page), line breaks
    become spaces and other control characters are written out (``\\x1b``).

    Example:
      >>> md_escape("<b>*x*</b> | y")
      '&lt;b&gt;\\\\*x\\\\*&lt;/b&gt; \\\\| y'
    """
    text = str(text).replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
    text = printable(text).replace("\t", " ")
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", text)


def write_markdown_report(
    record: RunRecord | TrainLog, out_path: str | os.PathLike[str]
) -> list[pathlib.Path]:
    """Write a Markdown report of a run, and its plots as PNGs beside it.

    The report has an overview table (project, run id, status, steps, duration, start,
    group, tags), the config (flattened keys), the user's summary, the last and best values
    of the training metrics, one plot per metric group (``train/``, ``val/``, ...; log scale
    when every value is positive and they span more than two decades), a heatmap of the
    per-layer gradient norms when ``grads/<layer>/.../norm`` series exist, the health
    alerts (a table, and dashed vertical lines on the plots) and a link to the crash dump's
    failure-signature image (``crash/crash-*.png``) when the run has one.

    Args:
      record: A run directory read back (`read_run`), or a `TrainLog` (no status, alerts
        or crash dump then).
      out_path: The Markdown file to write (``report.md``). The plots go to the folder
        ``<stem>_files`` beside it (``report_files/``).

    Returns:
      The paths written: the report first, then the PNGs.

    Raises:
      ImportError: matplotlib is not installed (``pip install 'jaxobs[report]'``).
    """
    path = pathlib.Path(out_path)
    if isinstance(record, RunRecord):
        log, run = record.log.to_trainlog(), record
    else:
        log, run = record, None
    files_dir = path.parent / f"{path.stem}_files"
    alerts = _alerts(run)
    lines = [f"# {md_escape(_title(log, run))}", ""]
    lines += _table(["", ""], _overview(log, run), header=False)
    if run is not None and run.warnings:
        lines += ["", *(f"> note: {md_escape(w)}" for w in run.warnings)]
    if log.run is not None and log.run.config:
        config = flatten_mapping(log.run.config, sep=".")
        rows = [[md_escape(k), md_escape(_json(v))] for k, v in config.items()]
        lines += ["", "## Config", "", *_table(["key", "value"], rows)]
    if log.summary:
        rows = [[md_escape(k), md_escape(_json(v))] for k, v in log.summary.items()]
        lines += ["", "## Summary", "", *_table(["key", "value"], rows)]
    lines += ["", "## Metrics", "", *_metrics(log)]
    written: list[pathlib.Path] = []
    groups = _groups(log)
    if groups or _grad_layers(log):
        files_dir.mkdir(parents=True, exist_ok=True)
    if groups:
        lines += ["", "## Curves", ""]
        for i, (group, series) in enumerate(groups.items()):
            png = files_dir / f"{i:02d}-{_file_name(group)}.png"
            _plot_group(log, group, series, alerts, png)
            written.append(png)
            lines += [f"![{md_escape(group)}]({_link(png, path.parent)})", ""]
    heatmap = _grad_heatmap(log, files_dir / "grad-norms.png")
    if heatmap is not None:
        written.append(heatmap)
        lines += ["", "## Gradient norms per layer", ""]
        lines += [f"![gradient norms per layer]({_link(heatmap, path.parent)})", ""]
    if alerts:
        lines += ["", "## Health alerts", ""]
        rows = [
            [
                str(a.get("step", "")),
                md_escape(a.get("severity", "")),
                md_escape(a.get("rule", "")),
                md_escape(a.get("layer") or ""),
                md_escape(str(a.get("message", ""))[:_MAX_MESSAGE]),
            ]
            for a in alerts
        ]
        lines += _table(["step", "severity", "rule", "layer", "message"], rows)
    crash_pngs = sorted((run.dir / "crash").glob("crash-*.png")) if run is not None else []
    if crash_pngs:
        lines += ["", "## Crash dump", ""]
        for png in crash_pngs:
            lines += [f"![failure signature {md_escape(png.stem)}]({_link(png, path.parent)})", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n") + "\n"
    path.write_text(text, encoding="utf-8")
    return [path, *written]


# -- tables


def _title(log: TrainLog, run: RunRecord | None) -> str:
    info = log.run
    if info is not None and (info.name or info.run_id):
        name = info.name or info.run_id
        return f"{name} ({info.run_id})" if info.name and info.run_id else name
    return log.title or (run.dir.name if run is not None else "run report")


def _overview(log: TrainLog, run: RunRecord | None) -> list[list[str]]:
    info = log.run
    rows: list[list[str]] = []

    def add(field: str, value: Any) -> None:
        if value not in (None, ""):
            rows.append([f"**{field}**", md_escape(value)])

    if info is not None:
        add("project", info.project)
        add("name", info.name)
        add("run id", info.run_id)
    else:
        add("title", log.title)
    if run is not None:
        add("status", run.status)
        end = run.end or {}
        error = end.get("error")
        if isinstance(error, dict):
            add("error", f"{error.get('type', '?')}: {error.get('message', '')}")
    steps = sorted({step for s in log.series for step in log.steps_of(s)})
    if steps:
        add("steps", f"{len(steps)} (last step {steps[-1]})")
    if run is not None:
        duration = (run.end or {}).get("duration_s")
        if isinstance(duration, int | float) and math.isfinite(duration):
            add("duration", _duration(float(duration)))
        add("started", run.env.get("start_time"))
    if info is not None:
        add("group", info.group)
        add("tags", ", ".join(info.tags))
    return rows


def _metrics(log: TrainLog) -> list[str]:
    summaries = summarize(log)
    main = [s for s in summaries if not s.name.startswith(_STAT_PREFIXES)] or summaries
    if not main:
        return ["No metrics were logged."]
    rows = []
    for s in main:
        best = "" if s.best is None else f"{format_value(s.best)} ({s.direction})"
        rows.append(
            [
                md_escape(s.name),
                format_value(s.last),
                str(s.last_step),
                best,
                "" if s.best_step is None else str(s.best_step),
                str(s.count),
                str(s.nonfinite) if s.nonfinite else "",
            ]
        )
    head = ["metric", "last", "at step", "best", "at step", "n", "non-finite"]
    out = _table(head, rows)
    if len(main) < len(summaries):
        out += ["", f"{len(summaries) - len(main)} per-layer statistics are not listed."]
    return out


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], header: bool = True) -> list[str]:
    """A GitHub table; without ``header`` its header row is empty (a key/value table)."""
    out = ["| " + " | ".join(head if header else [" "] * len(head)) + " |"]
    out.append("|" + "|".join("---" for _ in head) + "|")
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def _alerts(run: RunRecord | None) -> list[dict[str, Any]]:
    if run is None:
        return []
    return [e for e in run.events if e.get("event") == "health_check"]


def _json(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min {secs} s" if hours else f"{minutes} min {secs} s"


def _file_name(group: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", group).strip("._") or "metrics"


def _link(target: pathlib.Path, base: pathlib.Path) -> str:
    """``target`` relative to ``base``, as a URL path (spaces and the like quoted)."""
    rel = os.path.relpath(target, base).replace(os.sep, "/")
    return urllib.parse.quote(rel)


# -- plots


def _groups(log: TrainLog) -> dict[str, list[Series]]:
    """The series to plot by their prefix (``train``, ``val``; ``metrics`` for names without
    one), per-layer statistics left out."""
    groups: dict[str, list[Series]] = {}
    for series in log.series:
        if series.values and not series.name.startswith(_STAT_PREFIXES):
            head, sep, _ = series.name.partition("/")
            groups.setdefault(head if sep else "metrics", []).append(series)
    return groups


def thin(steps: Sequence[int], values: Sequence[float]) -> tuple[list[int], list[float]]:
    """Every k-th point of a curve, with k such that at least `MIN_PLOT_POINTS` remain (all
    of a shorter curve); the last point is always kept."""
    k = max(1, len(values) // MIN_PLOT_POINTS)
    if k == 1:
        return list(steps), list(values)
    idx = list(range(0, len(values), k))
    if idx[-1] != len(values) - 1:
        idx.append(len(values) - 1)
    return [steps[i] for i in idx], [values[i] for i in idx]


def _log_scale(values: Iterable[float]) -> bool:
    finite = [v for v in values if math.isfinite(v)]
    return bool(finite) and min(finite) > 0 and max(finite) / min(finite) > 100


def _figure(size: tuple[float, float]) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(
            "jaxobs report needs matplotlib for its plots: pip install 'jaxobs[report]'"
        ) from e
    fig = Figure(figsize=size, dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # Agg for this figure only; pyplot's state is left alone
    return fig


def _plot_group(
    log: TrainLog,
    group: str,
    series: list[Series],
    alerts: list[dict[str, Any]],
    png: pathlib.Path,
) -> None:
    fig = _figure((8, 4))
    ax = fig.subplots()
    every: list[float] = []
    for s in series:
        steps, values = thin(log.steps_of(s), s.values)
        drawn = [v if math.isfinite(v) else math.nan for v in values]  # non-finite: a gap
        ax.plot(steps, drawn, label=s.name, marker="." if len(drawn) < 50 else None)
        every += s.values
    if _log_scale(every):
        ax.set_yscale("log")
    _mark_alerts(ax, alerts)
    ax.set_title(group)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    fig.savefig(png, format="png")


def _mark_alerts(ax: Axes, alerts: list[dict[str, Any]]) -> None:
    """A dashed vertical line at each alert's step (red: critical, orange: warning)."""
    seen: set[tuple[int, str]] = set()
    labelled: set[str] = set()
    for alert in alerts:
        step, severity = alert.get("step"), str(alert.get("severity", ""))
        if not isinstance(step, int) or (step, severity) in seen:
            continue
        seen.add((step, severity))
        color = _SEVERITY_COLORS.get(severity, "tab:gray")
        label = None if severity in labelled else f"alert ({severity})"
        labelled.add(severity)
        ax.axvline(step, color=color, linestyle="--", linewidth=1, label=label)


def _grad_layers(log: TrainLog) -> dict[str, list[Series]]:
    """The ``grads/<leaf>/norm`` series by layer, in the order layers first appear."""
    layers: dict[str, list[Series]] = {}
    for series in log.series:
        split = split_stat_key(series.name, "grads")
        if split is not None and split[1] == "norm" and series.values:
            layers.setdefault(layer_of(split[0]), []).append(series)
    return layers


def _grad_heatmap(log: TrainLog, png: pathlib.Path) -> pathlib.Path | None:
    """Per-layer gradient norms (from the leaves' norms, `layer_norms`) over the steps, as
    a heatmap (log10 color scale when all are positive); None when there are none."""
    layers = _grad_layers(log)
    if not layers:
        return None
    import numpy as np

    leaf_at: dict[int, list[tuple[str, float]]] = {}
    for items in layers.values():
        for s in items:
            path = split_stat_key(s.name, "grads")
            assert path is not None
            for step, value in zip(log.steps_of(s), s.values, strict=True):
                leaf_at.setdefault(step, []).append((path[0], value))
    steps = sorted(leaf_at)
    names = list(layers)
    grid = np.full((len(names), len(steps)), np.nan)
    for j, step in enumerate(steps):
        for layer, norm in layer_norms(leaf_at[step]).items():
            grid[names.index(layer), j] = norm
    thinned, _ = thin(list(range(len(steps))), [0.0] * len(steps))
    grid = grid[:, thinned]
    shown = [steps[j] for j in thinned]
    finite = grid[np.isfinite(grid)]
    positive = finite.size > 0 and bool((finite > 0).all())
    image = np.where(np.isfinite(grid), np.log10(np.where(grid > 0, grid, 1.0)), np.nan)
    if not positive:
        image = np.where(np.isfinite(grid), grid, np.nan)
    fig = _figure((8, max(2.5, 0.35 * len(names) + 1.5)))
    ax = fig.subplots()
    lo, hi = (shown[0], shown[-1]) if len(shown) > 1 else (shown[0] - 0.5, shown[0] + 0.5)
    mesh = ax.imshow(
        image,
        aspect="auto",
        interpolation="nearest",
        extent=(lo, hi, len(names) - 0.5, -0.5),
        cmap="viridis",
    )
    ax.set_yticks(range(len(names)), [printable(n) for n in names], fontsize="small")
    ax.set_xlabel("step")
    ax.set_title("gradient norm per layer")
    fig.colorbar(mesh, ax=ax, label="log10 norm" if positive else "norm")
    fig.savefig(png, format="png")
    return png
