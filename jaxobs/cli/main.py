"""The ``jaxobs`` command.

    jaxobs show RUN                  a summary of a run: metadata, config, last/best values
    jaxobs export RUN --format json  the run's TrainLog as JSON (stdout or --output)
    jaxobs export RUN --format csv   one row per step, one column per metric
    jaxobs crash show DUMP           what a crash dump says: trigger, first layer to diverge,
                                     alerts, checkpoint, the last recorded steps
    jaxobs crash plot DUMP [-o PNG]  draw the failure signature (default: next to the dump)
    jaxobs sync RUN --to wandb       send a run (finished, failed or killed) to a W&B run:
                                     an offline run to upload with `wandb sync`, or online
    jaxobs sync RUN --to tensorboard write it as TensorBoard event files (RUN/tensorboard)

A sync sends only what that destination has not received yet (``RUN/sync/<tracker>.json``
records it), so running it again never duplicates data.

RUN is a run directory (``<dir>/<project>/<run_id>``) or a TrainLog JSON file. A run that
crashed is read from its ``events.jsonl``. DUMP is a flight-recorder crash dump
(``<run dir>/crash/crash-<step>.json``) or a run directory, whose newest dump is used. Bad
input prints one line, ``jaxobs: error: ...``, and exits with status 2.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import pathlib
import sys
import warnings
from collections.abc import Sequence

from jaxobs._src.analysis.summary import summarize
from jaxobs._src.formats.trainlog import TrainLog

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own errors: one line, exit 2
        self.exit(EXIT_USAGE, f"jaxobs: error: {message} (see {self.prog} -h)\n")


def _parser() -> argparse.ArgumentParser:
    from jaxobs import __version__

    p = _Parser(prog="jaxobs", description="Inspect and export jaxobs runs.")
    p.add_argument("--version", action="version", version=f"jaxobs {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    show = sub.add_parser("show", help="summary of a run: metadata, config, last/best values")
    show.add_argument("run", help="run directory or TrainLog JSON file")
    show.add_argument(
        "--all",
        action="store_true",
        help="list every series (default: training metrics only, at most 40)",
    )
    export = sub.add_parser("export", help="write the run's metrics as json or csv")
    export.add_argument("run", help="run directory or TrainLog JSON file")
    export.add_argument("--format", choices=("json", "csv"), default="json")
    export.add_argument("--output", "-o", help="output file (default: stdout)")
    crash = sub.add_parser("crash", help="read a flight-recorder crash dump")
    crash_sub = crash.add_subparsers(
        dest="crash_command", metavar="{show,plot}", required=True, parser_class=_Parser
    )
    dump_help = "crash dump (crash/crash-<step>.json) or run directory (its newest dump)"
    crash_show = crash_sub.add_parser(
        "show", help="trigger, first layer to diverge, alerts, checkpoint, last steps"
    )
    crash_show.add_argument("dump", help=dump_help)
    crash_plot = crash_sub.add_parser("plot", help="write the failure-signature image")
    crash_plot.add_argument("dump", help=dump_help)
    crash_plot.add_argument(
        "--output", "-o", metavar="FILE", help="image file (default: the dump's path with .png)"
    )
    sync = sub.add_parser(
        "sync", help="send a run directory to W&B or TensorBoard (only what is not there yet)"
    )
    sync.add_argument("run", help="run directory")
    sync.add_argument("--to", required=True, choices=("wandb", "tensorboard"), dest="to")
    sync.add_argument("--project", help="W&B project (default: the run's)")
    sync.add_argument("--entity", help="W&B entity")
    sync.add_argument("--id", help="W&B run id (default: the live W&B run's, else the run id)")
    sync.add_argument(
        "--mode",
        choices=("offline", "online"),
        help="W&B mode (default: WANDB_MODE, else online with credentials, offline without)",
    )
    sync.add_argument("--logdir", help="TensorBoard log directory (default: RUN/tensorboard)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from jaxobs._src.formats.errors import RunDirError

    target = args.dump if args.command == "crash" else args.run
    try:
        if args.command == "crash":
            _crash(args)
        elif args.command == "sync":
            _sync(args)
        else:
            _run_command(args)
    except (
        RunDirError,
        ValueError,
        FileNotFoundError,
        IsADirectoryError,
        PermissionError,
        ImportError,  # an optional dependency: matplotlib, wandb, tensorboardX
    ) as e:
        print(f"jaxobs: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except RecursionError:
        print(
            f"jaxobs: error: {target}: JSON nested too deeply to be a jaxobs file",
            file=sys.stderr,
        )
        return EXIT_USAGE
    except BrokenPipeError:  # `jaxobs export ... | head`
        return 0
    return 0


def _run_command(args: argparse.Namespace) -> None:
    """``show`` and ``export``: both read the run's TrainLog first."""
    from jaxobs._src.formats.rundir import load_trainlog

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        log, record = load_trainlog(args.run)
    if args.command != "show":  # show lists them in its table
        for w in caught:
            print(f"jaxobs: warning: {w.message}", file=sys.stderr)
    if args.command == "show":
        _show(log, record, args.all)
    else:
        text = log.dumps() if args.format == "json" else _to_csv(log)
        if args.output:
            pathlib.Path(args.output).write_text(text, encoding="utf-8")
        else:
            sys.stdout.write(text)


def _crash(args: argparse.Namespace) -> None:
    """``crash show`` and ``crash plot``; they never read the run's TrainLog."""
    from jaxobs import crash

    dump = crash.load_dump(crash.find_dump(args.dump))
    if args.crash_command == "show":
        sys.stdout.write(crash.summary(dump))
    else:
        print(crash.plot(dump, args.output))


def _sync(args: argparse.Namespace) -> None:
    """``sync``: replay the run into a tracker through its bridge (imported only here)."""
    wandb_only = [f"--{n}" for n in ("project", "entity", "id", "mode") if getattr(args, n)]
    if args.to == "tensorboard" and wandb_only:
        raise ValueError(f"{', '.join(wandb_only)} apply to --to wandb only")
    if args.to == "wandb" and args.logdir:
        raise ValueError("--logdir applies to --to tensorboard only")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if args.to == "wandb":
            from jaxobs.bridges import wandb as bridge

            result = bridge.sync(
                args.run, project=args.project, entity=args.entity, id=args.id, mode=args.mode
            )
        else:
            from jaxobs.bridges import tensorboard as bridge

            result = bridge.sync(args.run, logdir=args.logdir)
    for w in caught:
        if w.category.__name__ == "RunDirWarning":
            print(f"jaxobs: warning: {w.message}", file=sys.stderr)
    where = f" -> {result.location}" if result.location else ""
    if result.records == 0:
        print(f"jaxobs: {result.destination} is up to date (nothing new to send){where}")
        return
    print(
        f"jaxobs: sent {result.records} records (through step {result.last_step}, run "
        f"{result.status}) to {args.to} {result.destination}{where}"
    )
    if args.to == "wandb" and result.location and "offline-run-" in str(result.location):
        print(f"jaxobs: upload it with: wandb sync {result.location}")
    elif args.to == "tensorboard":
        print(f"jaxobs: view it with: tensorboard --logdir {result.location}")


def _to_csv(log: TrainLog) -> str:
    """Wide CSV: a ``step`` column, then one column per metric; empty cells where a metric
    was not logged at that step. A metric logged more than once at a step gets one row per
    repeat, in order, so nothing is dropped. Non-finite values are written ``nan``, ``inf``,
    ``-inf``."""
    if "step" in log.names:
        raise ValueError("a metric named 'step' collides with the step column; use --format json")
    columns: dict[str, dict[int, list[float]]] = {}
    for series in log.series:
        column: dict[int, list[float]] = {}
        for step, value in zip(log.steps_of(series), series.values, strict=True):
            column.setdefault(step, []).append(value)
        columns[series.name] = column
    all_steps = sorted({step for column in columns.values() for step in column})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["step", *columns])
    for step in all_steps:
        repeats = max(len(c.get(step, ())) for c in columns.values())
        for i in range(repeats):
            cells = []
            for c in columns.values():
                values = c.get(step, ())
                cells.append(repr(values[i]) if i < len(values) else "")
            writer.writerow([step, *cells])
    return out.getvalue()


_STAT_PREFIXES = ("grads/", "params/", "updates/", "acts/")


def _show(log: TrainLog, record, show_all: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    from jaxobs._src.sinks.terminal import format_value

    console = Console()
    if not console.is_terminal:  # piped or redirected: do not squeeze into 80 columns
        console = Console(width=160)
    run = log.run
    meta = Table.grid(padding=(0, 2))
    meta.add_column(style="bold")
    meta.add_column()
    if run is not None:
        meta.add_row("project", run.project)
        meta.add_row("name", run.name)
        meta.add_row("run id", run.run_id)
        if run.group:
            meta.add_row("group", run.group)
        if run.tags:
            meta.add_row("tags", ", ".join(run.tags))
    else:
        meta.add_row("title", log.title)
    if record is not None:
        meta.add_row("status", record.status)
        meta.add_row("directory", str(record.dir))
        env = record.env
        pkgs = env.get("packages", {})
        meta.add_row("started", str(env.get("start_time", "")))
        meta.add_row("host", f"{env.get('hostname', '')} (python {env.get('python', '')})")
        meta.add_row("versions", ", ".join(f"{k} {v}" for k, v in pkgs.items() if v))
        devices = (env.get("jax") or {}).get("devices")
        if devices:
            meta.add_row("devices", ", ".join(devices))
        if env.get("git"):
            g = env["git"]
            meta.add_row("git", f"{g['commit'][:12]}{' (dirty)' if g.get('dirty') else ''}")
        if record.end and record.end.get("error"):
            err = record.end["error"]
            meta.add_row("error", f"{err['type']}: {err['message']}")
        for problem in record.warnings:
            meta.add_row("note", problem)
    console.print(meta)
    if run is not None and run.config:
        table = Table(title="config", title_justify="left", show_header=False)
        table.add_column(style="bold")
        table.add_column()
        for key, value in _flatten(run.config):
            table.add_row(key, json.dumps(value, ensure_ascii=False))
        console.print(table)
    _show_layers(console, log)
    summaries = summarize(log)
    if not summaries:
        console.print("no metrics logged")
        return
    summaries.sort(key=lambda s: s.name.startswith(_STAT_PREFIXES))
    if show_all:
        shown = summaries
    else:  # per-layer statistics are summarised in the layers table above
        shown = [s for s in summaries if not s.name.startswith(_STAT_PREFIXES)][:40] or (
            summaries[:40]
        )
    table = Table(title="metrics", title_justify="left")
    table.add_column("metric", no_wrap=True, overflow="fold")
    for col in ("last", "at step", "best", "at step", "n", "non-finite"):
        table.add_column(col, justify="right", no_wrap=True)
    for s in shown:
        best = "" if s.best is None else f"{format_value(s.best)} ({s.direction})"
        table.add_row(
            s.name,
            format_value(s.last),
            str(s.last_step),
            best,
            "" if s.best_step is None else str(s.best_step),
            str(s.count),
            f"[red]{s.nonfinite}[/]" if s.nonfinite else "",
        )
    console.print(table)
    if len(shown) < len(summaries):
        console.print(
            f"... and {len(summaries) - len(shown)} more series, per-layer statistics included "
            "(--all lists them)"
        )
    if log.artifacts:
        console.print("artifacts: " + ", ".join(f"{a.name} ({a.path})" for a in log.artifacts))


def _layer_table(log: TrainLog) -> dict[str, dict[str, float]]:
    """Per layer, at each metric's last step: norms of grads and params (combined over the
    layer's leaves), the update ratio, and activation dead fraction and mean."""
    import math

    sq: dict[tuple[str, str], float] = {}
    direct: dict[tuple[str, str], float] = {}
    for series in log.series:
        if not series.values:
            continue
        parts = series.name.split("/")
        group, stat, last = parts[0], parts[-1], series.values[-1]
        if group in ("grads", "params") and stat == "norm" and len(parts) >= 4:
            key = (group, "/".join(parts[1:-2]))
            sq[key] = sq.get(key, 0.0) + last * last
        elif group == "updates" and stat == "update_ratio":
            direct[("update_ratio", "/".join(parts[1:-1]))] = last
        elif group == "acts" and stat in ("dead_frac", "mean"):
            direct[(f"acts {stat}", "/".join(parts[1:-1]))] = last
    table: dict[str, dict[str, float]] = {}
    for (group, layer), value in sq.items():
        table.setdefault(layer, {})[f"{group} norm"] = math.sqrt(value)
    for (column, layer), value in direct.items():
        table.setdefault(layer, {})[column] = value
    return table


def _show_layers(console, log: TrainLog) -> None:
    from rich.table import Table

    from jaxobs._src.sinks.terminal import format_value

    table_data = _layer_table(log)
    if not table_data:
        return
    columns = ["grads norm", "params norm", "update_ratio", "acts dead_frac", "acts mean"]
    columns = [c for c in columns if any(c in row for row in table_data.values())]
    table = Table(title="layers (last values)", title_justify="left")
    table.add_column("layer", no_wrap=True)
    for column in columns:
        table.add_column(column, justify="right", no_wrap=True)
    for layer, row in table_data.items():
        table.add_row(layer, *(format_value(row[c]) if c in row else "" for c in columns))
    console.print(table)


def _flatten(config: dict, prefix: str = ""):
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from _flatten(value, f"{name}.")
        else:
            yield name, value
