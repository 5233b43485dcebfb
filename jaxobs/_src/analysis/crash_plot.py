"""The failure-signature plot of a crash dump (``jaxobs crash plot``): loss, per-layer gradient
norms and per-layer parameter norms (or update ratios) over the recorded steps, with the
trigger marked. matplotlib is imported inside `plot` only, never at import time.
"""

from __future__ import annotations

import io
import pathlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from jaxobs._src.analysis.crash_summary import one_line
from jaxobs._src.analysis.diagnose import diagnosis, layer_norms, layer_stat, rank_by_peak
from jaxobs._src.formats.codec import PathLike, write_atomic
from jaxobs._src.formats.crash_dump import CrashDump

if TYPE_CHECKING:  # matplotlib is optional and imported inside `plot` only
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

# tab10 without its red, which is kept for the trigger line.
_COLORS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#7f7f7f",
)


_TRIGGER_COLOR = "#ff0000"


_GRAD_NORM_COLOR = "#555555"


_MAX_LABELLED_LAYERS = 7


_TITLE_CHARS = 100 - len("failure signature:  — ")  # what fits at 10 in, fontsize 11


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


class _Panel:
    """One axis of the figure: lines of finite values, ``x`` marks for non-finite ones."""

    def __init__(self, ax: Axes, steps: np.ndarray) -> None:
        self.ax = ax
        self.steps = steps
        self.positive: list[np.ndarray] = []
        self.any_finite = False
        self.marks: list[tuple[np.ndarray, str]] = []

    def line(
        self,
        values: np.ndarray,
        recorded: np.ndarray,
        *,
        color: str,
        label: str | None,
        width: float = 1.3,
        zorder: float = 2,
    ) -> None:
        ok = recorded & np.isfinite(values)
        x, y = self.steps[ok], values[ok]
        self.any_finite |= bool(y.size)
        self.positive.append(y[y > 0])
        self.ax.plot(
            x,
            y,
            color=color,
            label=label,
            linewidth=width,
            zorder=zorder,
            marker="o" if y.size == 1 else None,
            markersize=4,
        )
        bad = recorded & ~np.isfinite(values)
        if bad.any():
            self.marks.append((self.steps[bad], color))

    def finish(self, *, log: bool) -> bool:
        """Scale the y axis; draw the non-finite marks at the top edge. Returns whether the
        scale is logarithmic."""
        positive = np.concatenate(self.positive) if self.positive else np.empty(0)
        use_log = log and positive.size > 0
        if use_log:
            self.ax.set_yscale("log")
        elif not self.any_finite:
            self.ax.set_ylim(0, 1)
            if self.marks:
                self.ax.text(
                    0.5, 0.5, "no finite values", transform=self.ax.transAxes, ha="center",
                    color="#555555",
                )  # fmt: skip
        for x, color in self.marks:
            self.ax.plot(
                x,
                np.ones(len(x)),
                linestyle="none",
                marker="x",
                markersize=7,
                markeredgewidth=2,
                color=color,
                clip_on=False,
                transform=self.ax.get_xaxis_transform(),
                zorder=5,
            )
        return use_log


def _nonfinite_proxy() -> Line2D:
    from matplotlib.lines import Line2D

    return Line2D(
        [], [], linestyle="none", marker="x", markeredgewidth=2, color="#444444",
        label="non-finite (at top edge)",
    )  # fmt: skip


def _legend(
    ax: Axes, fig: Figure, extra_handles: Sequence[Artist] = (), offset_pt: float = 6.0
) -> None:
    """The axis' legend outside on the right, ``offset_pt`` points from its edge, so that it
    never hides a line."""
    from matplotlib.transforms import offset_copy

    handles = [*ax.get_legend_handles_labels()[0], *extra_handles]
    if handles:
        anchor = offset_copy(ax.transAxes, fig=fig, x=offset_pt, y=0.0, units="points")
        ax.legend(
            handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), bbox_transform=anchor,
            fontsize=8, framealpha=0.85, borderaxespad=0.0,
        )  # fmt: skip


def _layers_panel(
    panel: _Panel,
    norms: dict[str, np.ndarray],
    diverged: str | None,
    ylabel: str,
    palette: dict[str, str],
    empty_text: str | None = None,
) -> None:
    """One line per layer; the largest ``_MAX_LABELLED_LAYERS`` (and the first to diverge)
    in colour and named, the rest grey. ``palette`` keeps a layer's colour across panels."""
    ax = panel.ax
    if not norms:
        text = empty_text or f"no {ylabel} recorded"
        ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", color="#555555")
        return
    labelled = rank_by_peak(norms)[:_MAX_LABELLED_LAYERS]
    if diverged in norms and diverged not in labelled:
        labelled = [*labelled[:-1], diverged]
    colors = {name: palette[name] for name in labelled if name in palette}
    for name in (n for n in norms if n in labelled and n not in colors):  # forward order
        unused = [c for c in _COLORS if c not in colors.values()]
        color = unused[0] if unused else _COLORS[len(colors) % len(_COLORS)]
        colors[name] = palette[name] = color
    others = [name for name in norms if name not in colors]
    for name in others:  # background first, unlabelled but one legend entry
        values = norms[name]
        panel.line(values, ~np.isnan(values), color="#c8c8c8", label=None, width=0.8, zorder=1)
    if others:
        ax.plot([], [], color="#c8c8c8", label=f"{len(others)} other layers")
    for name in norms:  # legend in forward (model) order
        if name not in colors:
            continue
        values = norms[name]
        first = name == diverged
        panel.line(
            values,
            ~np.isnan(values),
            color=colors[name],
            label=f"{name} (first to diverge)" if first else name,
            width=2.4 if first else 1.3,
            zorder=4 if first else 2,
        )
    ax.set_ylabel(ylabel)


def _save_figure(fig: Figure, path: pathlib.Path) -> None:
    """Render ``fig`` in the format its suffix names and write it atomically (`write_atomic`)."""
    canvas = fig.canvas
    fmt = path.suffix.lower().lstrip(".") or "png"
    if fmt not in canvas.get_supported_filetypes():
        raise ValueError(f"{path}: cannot write a .{fmt} image; use .png (or .svg, .pdf)")
    image = io.BytesIO()
    fig.savefig(image, format=fmt, dpi=fig.dpi)
    write_atomic(path, image.getvalue())


def plot(dump: CrashDump, out_path: PathLike | None = None) -> pathlib.Path:
    """Draw the failure signature of a crash dump and write it as a PNG.

    Three panels over the recorded steps: (a) ``train/loss`` with ``health/grad_norm`` on a
    second log axis; (b) per-layer gradient norms (`layer_norms`), log scale, the first layer
    to diverge drawn thicker and named "(first to diverge)"; (c) per-layer parameter norms,
    or update ratios when no parameter statistics were recorded. Every panel has a red
    dashed line at the trigger step; non-finite values are drawn as ``x`` marks at the top
    edge, so a NaN shows instead of leaving a gap. At most seven layers are named per panel,
    the largest ones; the others are drawn in grey.

    Args:
      dump: A dump from `load_dump`.
      out_path: Where to write the image (default: the dump's path with ``.png``). A
        ``.svg`` or ``.pdf`` suffix writes that format instead.

    Returns:
      The path written.

    Raises:
      ImportError: matplotlib is not installed (``pip install 'jaxobs[report]'``).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError as e:
        raise ImportError("jaxobs.crash.plot needs matplotlib: pip install 'jaxobs[report]'") from e
    path = pathlib.Path(out_path) if out_path is not None else dump.path.with_suffix(".png")
    hit, _ = diagnosis(dump)
    diverged = hit["layer"] if hit is not None else None
    steps = dump.steps.astype(np.float64)

    fig = Figure(figsize=(10, 8), dpi=110, layout="constrained")
    canvas = FigureCanvasAgg(fig)  # Agg for this figure only; pyplot's state is left alone
    ax_loss, ax_grads, ax_third = fig.subplots(3, 1, sharex=True)

    # (a) loss, and the global gradient norm on a twin axis
    loss_panel = _Panel(ax_loss, steps)
    loss_key = "train/loss"
    if loss_key not in dump.series:
        loss_key = next((k for k in dump.series if k.startswith("train/")), loss_key)
    handles: list[Artist] = []
    twin = None
    twin_marks = False
    if loss_key in dump.series:
        loss_panel.line(
            dump.series[loss_key], dump.present[loss_key], color="#1f77b4", label=loss_key
        )
        ax_loss.set_ylabel(loss_key)
        finite = dump.series[loss_key][np.isfinite(dump.series[loss_key])]
        loss_panel.finish(log=bool(finite.size) and bool(np.all(finite > 0)))
    else:
        ax_loss.text(
            0.5, 0.5, "no train/loss recorded", transform=ax_loss.transAxes, ha="center",
            color="#555555",
        )  # fmt: skip
        loss_panel.finish(log=False)
    if "health/grad_norm" in dump.series:
        twin = ax_loss.twinx()
        gn_panel = _Panel(twin, steps)
        gn_panel.line(
            dump.series["health/grad_norm"],
            dump.present["health/grad_norm"],
            color=_GRAD_NORM_COLOR,
            label="health/grad_norm",
            width=1.0,
        )
        gn_panel.finish(log=True)
        twin.set_ylabel("global grad norm", color=_GRAD_NORM_COLOR)
        handles += twin.get_legend_handles_labels()[0]
        twin_marks = bool(gn_panel.marks)
    ax_loss.set_title("(a) loss", loc="left", fontsize=9)

    # (b) per-layer gradient norms
    grads_panel = _Panel(ax_grads, steps)
    palette: dict[str, str] = {}
    _layers_panel(
        grads_panel,
        layer_norms(dump.series, group="grads", present=dump.present),
        diverged,
        "grad norm per layer",
        palette,
    )
    grads_panel.finish(log=True)
    ax_grads.set_title("(b) gradient norm per layer", loc="left", fontsize=9)

    # (c) per-layer parameter norms, else update ratios
    third = _Panel(ax_third, steps)
    params = layer_norms(dump.series, group="params", present=dump.present)
    if params:
        _layers_panel(third, params, diverged, "param norm per layer", palette)
        ax_third.set_title("(c) parameter norm per layer", loc="left", fontsize=9)
    else:
        ratios = layer_stat(dump.series, "updates", "update_ratio")
        empty = "no parameter norms or update ratios recorded"
        _layers_panel(third, ratios, diverged, "update ratio per layer", palette, empty)
        ax_third.set_title("(c) update ratio per layer", loc="left", fontsize=9)
    third.finish(log=True)
    ax_third.set_xlabel("step")
    ax_third.xaxis.set_major_locator(MaxNLocator(integer=True))

    trigger = f"trigger: {dump.trigger_label()}"
    offset_pt = 6.0
    if twin is not None:  # legends go right of the twin axis' ticks and label
        renderer = canvas.get_renderer()
        extra_px = twin.get_tightbbox(renderer).x1 - ax_loss.get_window_extent(renderer).x1
        offset_pt += max(0.0, extra_px) * 72.0 / fig.dpi
    panels: tuple[tuple[_Panel, list[Artist]], ...] = (
        (loss_panel, handles),
        (grads_panel, []),
        (third, []),
    )
    for i, (panel, extra) in enumerate(panels):
        ax = panel.ax
        ax.axvline(
            dump.step, color=_TRIGGER_COLOR, linestyle="--", linewidth=1.5, label=trigger, zorder=3
        )
        if hit is not None and hit["step"] != dump.step and i:
            ax.axvline(
                hit["step"],
                color="#555555",
                linestyle=":",
                linewidth=1.2,
                label=f"first diverged: step {hit['step']}",
                zorder=3,
            )
        ax.grid(True, which="major", alpha=0.3)
        if panel.marks or (i == 0 and twin_marks):
            extra = [*extra, _nonfinite_proxy()]
        _legend(ax, fig, extra, offset_pt)
    ax_loss.annotate(
        trigger,
        xy=(dump.step, 1.0),
        xycoords=ax_loss.get_xaxis_transform(),
        xytext=(-4, -12),
        textcoords="offset points",
        ha="right",
        color=_TRIGGER_COLOR,
        fontsize=8,
    )
    if len(steps) <= 1:  # one step: give the x axis some room around it
        centre = float(steps[0]) if len(steps) else float(dump.step)
        low, high = min(centre, dump.step) - 1, max(centre, dump.step) + 1
        ax_third.set_xlim(low, high)
    name = _shorten(dump.run_name, 40)
    message = one_line(dump.trigger.get("message") or dump.trigger_label(), 400)
    message = _shorten(message, max(30, _TITLE_CHARS - len(name)))
    fig.suptitle(f"failure signature: {name} — {message}", fontsize=11)
    _save_figure(fig, path)
    return path
