"""A hostile-input fuzz of jaxobs' readers: every exception that is not jaxobs' own is a bug.

    python bench/fuzz.py [--seconds 60] [--inputs N] [--seed 0] [--against HEAD]

It mutates the golden TrainLog files in ``tests/golden/`` and a real run directory (made
with `jaxobs.init`, `run.log`, a confusion matrix, a crash dump from a failing run), by
truncation at a random point, bit flips, byte insertions, invalid UTF-8, replacing a JSON
value by one of another type (strings, lists, objects, null, booleans, 10**5000, 2**64,
-2**63-1, a 4,301-digit integer, the NaN/Infinity literals, lists nested 100,000 deep, rich
markup), removing and adding keys, repeating or dropping lines, and a newer
``schema_version`` ("99.0"). Each input goes to its reader (`TrainLog.read_json`,
`read_run` and the TrainLog and events built from it, `load_dump` and its summary,
`ConfusionMatrix.read_json`) and, for a share of the inputs, to the `jaxobs` command
(``show``, ``export --format json|csv``, ``crash show``, ``crash plot``) run in-process.

A reader may raise only jaxobs' errors (`TrainLogError`, `RunDirError`, `CrashDumpError`,
`SyncMarkerError`, all ValueError subclasses). The command must return 2 after exactly one
``jaxobs: error: ...`` line, or 0. Anything else is counted as raw, by exception type.

Prints one JSON object: the inputs tried per target, the raw exceptions by type, and a few
examples (target, mutations, the exception). With ``--against REV`` the same inputs (same
seed and count) are also run against the package as committed at ``REV`` (read with
``git archive``, nothing in the working tree changes), reported as ``before``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import math
import os
import pathlib
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from typing import Any

REPO = pathlib.Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "golden" / "v1"

# Values a JSON value is replaced with. Strings of the form @NAME@ are written as raw JSON
# text by `_render` (what json.dumps cannot or will not produce).
_RAW = {
    "@HUGE@": "1" + "0" * 5000,  # 10**5000
    "@DIGITS4301@": "9" * 4301,  # just over Python's int-string limit
    "@NAN@": "NaN",
    "@INF@": "Infinity",
    "@NINF@": "-Infinity",
    "@DEEP@": "[" * 100_000 + "]" * 100_000,
    "@DEEPOBJ@": '{"a":' * 50_000 + "1" + "}" * 50_000,
}
PALETTE: list[Any] = [
    "str",
    "",
    "NaN",
    "Infinity",
    "nan",
    [],
    [1, "x", None],
    {},
    {"k": 1},
    None,
    True,
    False,
    0,
    -1,
    1.5,
    1e308,
    2**64,
    2**63,
    -(2**63) - 1,
    10**30,
    "@HUGE@",
    "@DIGITS4301@",
    "@NAN@",
    "@INF@",
    "@NINF@",
    "@DEEP@",
    "@DEEPOBJ@",
    "[bold red]markup[/]",
    "[/]",
    "[link=x]",
    "\x00\x1b[31m\r\n",
    "\ud800",
    "99.0",
]
_INSERTS = [b"{", b"}", b"[", b"]", b'"', b",", b":", b"\n", b"\\", b"\x00", b"\xff", b"NaN"]
_BAD_UTF8 = [b"\xff", b"\xfe\xff", b"\xc3", b"\xed\xa0\x80", b"\xe2\x82", b"\xf8\x88\x80\x80"]


def _render(value: Any) -> str:
    """JSON text of ``value`` with the @NAME@ placeholders written raw."""
    text = json.dumps(value, ensure_ascii=True)
    for name, raw in _RAW.items():
        text = text.replace(json.dumps(name), raw)
    return text


def _nodes(value: Any, path: tuple = (), out: list | None = None) -> list[tuple]:
    """Paths of every value inside ``value`` (at most 4000)."""
    out = [] if out is None else out
    if len(out) >= 4000:
        return out
    out.append(path)
    if isinstance(value, dict):
        for k, v in value.items():
            _nodes(v, (*path, k), out)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _nodes(v, (*path, i), out)
    return out


def _set(root: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    parent = root
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return root


def _mutate_tree(rng: random.Random, data: Any, applied: list[str]) -> Any:
    """One structural mutation of parsed JSON."""
    paths = _nodes(data)
    path = rng.choice(paths)
    op = rng.random()
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    if op < 0.55:
        value = rng.choice(PALETTE)
        applied.append(f"set {list(path)} = {str(value)[:30]!r}")
        return _set(data, path, json.loads(json.dumps(value)))
    if op < 0.7 and path and isinstance(parent, dict):
        applied.append(f"remove {list(path)}")
        del parent[path[-1]]
        return data
    if op < 0.8 and path and isinstance(parent, list):
        applied.append(f"repeat {list(path)}")
        parent.insert(path[-1], json.loads(json.dumps(parent[path[-1]])))
        return data
    if op < 0.9:
        target = _nodes(data)
        dicts = [p for p in target if isinstance(_get(data, p), dict)]
        if dicts:
            where = rng.choice(dicts)
            key = rng.choice(["schema_version", "format", "status", "step", "event", "x"])
            value = rng.choice(["99.0", "2.0", "jaxobs.crash", "jaxobs.trainlog", *PALETTE])
            applied.append(f"add {list(where)}[{key!r}] = {str(value)[:30]!r}")
            _get(data, where)[key] = json.loads(json.dumps(value))
            return data
    applied.append("schema_version 99.0")
    if isinstance(data, dict):
        data["schema_version"] = "99.0"
    return data


def _get(root: Any, path: tuple) -> Any:
    for key in path:
        root = root[key]
    return root


def _mutate_bytes(rng: random.Random, raw: bytes, applied: list[str]) -> bytes:
    """One byte-level mutation."""
    op = rng.randrange(4)
    at = rng.randrange(len(raw) + 1)
    if op == 0:
        applied.append(f"truncate at {at}")
        return raw[:at]
    if op == 1 and raw:
        buf = bytearray(raw)
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        applied.append("bit flips")
        return bytes(buf)
    if op == 2:
        ins = rng.choice(_INSERTS) * rng.randint(1, 3)
        applied.append(f"insert {ins!r} at {at}")
        return raw[:at] + ins + raw[at:]
    ins = rng.choice(_BAD_UTF8)
    applied.append(f"invalid utf-8 {ins!r} at {at}")
    return raw[:at] + ins + raw[at:]


def mutate_json_file(rng: random.Random, raw: bytes, applied: list[str]) -> bytes:
    """1-3 mutations of one JSON file: structural (when it parses) or byte-level."""
    for _ in range(rng.randint(1, 3)):
        if rng.random() < 0.6:
            try:
                data = json.loads(raw)
            except (ValueError, RecursionError):
                data = None
            if data is not None:
                raw = _render(_mutate_tree(rng, data, applied)).encode()
                continue
        raw = _mutate_bytes(rng, raw, applied)
    return raw


def mutate_jsonl(rng: random.Random, raw: bytes, applied: list[str]) -> bytes:
    """1-3 mutations of events.jsonl: a line's JSON, lines dropped/repeated, or bytes."""
    for _ in range(rng.randint(1, 3)):
        lines = raw.split(b"\n")
        op = rng.random()
        if op < 0.6 and len(lines) > 1:
            i = rng.randrange(len(lines) - 1)
            try:
                data = json.loads(lines[i])
            except (ValueError, RecursionError):
                data = None
            if data is not None:
                applied.append(f"line {i + 1}:")
                lines[i] = _render(_mutate_tree(rng, data, applied)).encode()
                raw = b"\n".join(lines)
                continue
        if op < 0.75 and len(lines) > 2:
            i = rng.randrange(len(lines) - 1)
            if rng.random() < 0.5:
                applied.append(f"drop line {i + 1}")
                del lines[i]
            else:
                applied.append(f"repeat line {i + 1}")
                lines.insert(i, lines[i])
            raw = b"\n".join(lines)
            continue
        raw = _mutate_bytes(rng, raw, applied)
    return raw


# ------------------------------------------------------------------------------- corpus


def build_corpus(folder: pathlib.Path) -> None:
    """Golden files and a real run directory (metrics, notes, config, a confusion matrix, a
    crash dump of a failing run) under ``folder``."""
    import jaxobs
    from jaxobs._src.host.supervisor import Supervisor
    from jaxobs.artifacts import ConfusionMatrix

    golden = folder / "golden"
    golden.mkdir(parents=True)
    for path in sorted(GOLDEN.rglob("*.json")):
        shutil.copy(path, golden / f"{path.parent.name}-{path.name}")
    try:
        with jaxobs.init(
            "p",
            dir=folder / "runs",
            id="r1",
            terminal=False,
            config={"lr": 0.1, "opt": {"b": [1, 2]}},
        ) as run:
            run.add_monitor(Supervisor(recorder=jaxobs.FlightRecorder(6)))
            for s in range(12):
                run.log(
                    {
                        "train/loss": 1.0 / (s + 1),
                        "grads/Dense_0/kernel/norm": float(s),
                        "grads/Dense_1/kernel/norm": 2.0 * s if s < 10 else math.inf,
                        "params/Dense_0/kernel/norm": 1.0,
                        "val/acc": math.nan if s == 5 else 0.5,
                    },
                    step=s,
                )
            run.add_note("a note")
            run.update_config({"extra": 2})
            cm = ConfusionMatrix.from_predictions(
                [0, 1, 1, 2], [0, 1, 0, 2], labels=["a", "b", "c"]
            )
            run.log_confusion_matrix("cm", cm)
            raise RuntimeError("boom")
    except RuntimeError:
        pass


def corpus_items(folder: pathlib.Path) -> list[tuple[str, str, bytes]]:
    """(kind, name, bytes) of every seed input: trainlog, confusion, events, dump."""
    items = []
    for path in sorted((folder / "golden").glob("*.json")):
        kind = "confusion" if "confusion" in path.name else "trainlog"
        items.append((kind, path.name, path.read_bytes()))
    run = folder / "runs" / "p" / "r1"
    items.append(("trainlog", "run-trainlog.json", (run / "trainlog.json").read_bytes()))
    items.append(("events", "events.jsonl", (run / "events.jsonl").read_bytes()))
    for path in sorted((run / "crash").glob("crash-*.json")):
        items.append(("dump", path.name, path.read_bytes()))
    for path in sorted((run / "artifacts").glob("*.json")):
        items.append(("confusion", path.name, path.read_bytes()))
    return items


# ------------------------------------------------------------------------------ targets


def _own_errors() -> tuple[type[BaseException], ...]:
    from jaxobs._src.formats import errors

    names = ("TrainLogError", "CrashDumpError", "RunDirError", "SyncMarkerError")
    return tuple(getattr(errors, n) for n in names)


def _cli(argv: list[str]) -> str | None:
    """Run the command in-process; None when it behaved, else what went wrong."""
    from jaxobs.cli.main import main

    # stdout as a terminal or pipe has it: UTF-8, strict (a lone surrogate cannot be written)
    out, err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8"), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    text = err.getvalue()
    lines = [line for line in text.splitlines() if not line.startswith("jaxobs: warning:")]
    if code == 0 and not lines:
        return None
    one_line = len(lines) == 1 and lines[0].startswith("jaxobs: error: ")
    if code == 2 and one_line and "Traceback" not in text:
        return None
    return f"CLIOutput(exit {code}): {text[:300]!r}"


def run_target(kind: str, path: pathlib.Path, rng: random.Random, cli_share: float) -> None:
    """Read ``path`` with the readers of ``kind`` (and, for a share, the CLI); raise what
    they raise."""
    from jaxobs import TrainLog, crash
    from jaxobs._src.formats.rundir import events_of, read_run
    from jaxobs.artifacts import ConfusionMatrix

    own = _own_errors()
    problem = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if kind == "trainlog":
                TrainLog.read_json(path).dumps()
            elif kind == "confusion":
                ConfusionMatrix.read_json(path)
            elif kind == "events":
                record = read_run(path.parent, warn=False)
                record.log.to_trainlog().dumps()
                events_of(record)
                _ = record.last_step
            elif kind == "dump":
                crash.summary(crash.load_dump(path))
        except own:
            pass
    if rng.random() < cli_share:
        target = str(path.parent if kind == "events" else path)
        if kind in ("trainlog", "events"):
            commands = [
                ["show", target],
                ["export", target, "--format", rng.choice(["json", "csv"])],
            ]
        elif kind == "dump":
            commands = [["crash", "show", target]]
            if rng.random() < 0.05:  # matplotlib is slow: a few
                commands.append(["crash", "plot", target, "-o", str(path.with_suffix(".png"))])
        else:
            commands = []
        for argv in commands:
            problem = problem or _cli(argv)
    if problem:
        raise _CLIProblem(problem)


class _CLIProblem(Exception):
    """The command exited with a traceback, a status other than 0/2, or several lines."""


def fuzz(
    corpus: pathlib.Path, seed: int, seconds: float, inputs: int | None, cli_share: float
) -> dict[str, Any]:
    """Run the fuzz; the summary as a dict."""
    items = corpus_items(corpus)
    run_target("trainlog", corpus / "golden" / "v1-full.json", random.Random(0), 0.0)  # imports
    kinds = sorted({item[0] for item in items})
    rng = random.Random(seed)
    tried: collections.Counter[str] = collections.Counter()
    raw: collections.Counter[str] = collections.Counter()
    examples: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    work = pathlib.Path(tempfile.mkdtemp(prefix="jaxobs-fuzz-"))
    deadline = time.monotonic() + seconds
    n = 0
    try:
        while (inputs is None or n < inputs) and (
            inputs is not None or time.monotonic() < deadline
        ):
            kind = kinds[rng.randrange(len(kinds))]  # each reader as often as the others
            choices = [item for item in items if item[0] == kind]
            _, name, seed_bytes = choices[rng.randrange(len(choices))]
            applied: list[str] = []
            mutate = mutate_jsonl if kind == "events" else mutate_json_file
            data = mutate(rng, seed_bytes, applied)
            case = work / kind  # one folder per reader, the file overwritten each time
            case.mkdir(exist_ok=True)
            path = case / ("events.jsonl" if kind == "events" else name)
            if kind == "dump":
                path = case / "crash-19.json"
            path.write_bytes(data)
            target_rng = random.Random(rng.random())
            n += 1
            tried[kind] += 1
            try:
                run_target(kind, path, target_rng, cli_share)
            except RecursionError as e:  # caught first: formatting it may recurse again
                _note(raw, examples, "RecursionError", kind, name, applied, e)
            except Exception as e:
                label = e.args[0].split("(")[0] if isinstance(e, _CLIProblem) else type(e).__name__
                _note(raw, examples, label, kind, name, applied, e)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "seed": seed,
        "inputs": n,
        "inputs_by_target": dict(sorted(tried.items())),
        "raw_exceptions": sum(raw.values()),
        "raw_by_type": dict(raw.most_common()),
        "examples": {k: v for k, v in sorted(examples.items())},
    }


def _note(raw, examples, label, kind, name, applied, e) -> None:
    raw[label] += 1
    if len(examples[label]) < 3:
        tb = traceback.extract_tb(e.__traceback__)
        ours = [f for f in tb if "jaxobs" in f.filename and "fuzz.py" not in f.filename]
        where = " <- ".join(
            f"{pathlib.Path(f.filename).name}:{f.lineno}" for f in [*tb[-1:], *ours[-1:]]
        )
        examples[label].append(
            {
                "target": kind,
                "seed_file": name,
                "mutations": [m[:120] for m in applied],
                "error": f"{type(e).__name__}: {str(e)[:200]}",
                "raised_at": where,
            }
        )


def _against(rev: str, corpus: pathlib.Path, args: argparse.Namespace, inputs: int) -> Any:
    """The same fuzz run against the package at git revision ``rev``, in a subprocess."""
    with tempfile.TemporaryDirectory(prefix="jaxobs-rev-") as tmp:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", rev, "jaxobs", "bridges"],
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        shutil.move(os.path.join(tmp, "bridges"), os.path.join(tmp, "jaxobs", "bridges"))
        env = {**os.environ, "PYTHONPATH": tmp}
        cmd = [sys.executable, __file__, "--corpus", str(corpus), "--seed", str(args.seed)]
        cmd += ["--inputs", str(inputs), "--cli-share", str(args.cli_share)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        result = json.loads(out)
        result["revision"] = rev
        return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--seconds", type=float, default=60.0, help="time budget (ignored with --inputs)"
    )
    p.add_argument("--inputs", type=int, default=None, help="number of inputs to try")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--cli-share", type=float, default=0.2, help="share of inputs also run via the CLI"
    )
    p.add_argument("--against", metavar="REV", help="also run the same inputs against git REV")
    p.add_argument("--corpus", help=argparse.SUPPRESS)  # a corpus already built (for --against)
    args = p.parse_args(argv)
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 1000))
    with tempfile.TemporaryDirectory(prefix="jaxobs-corpus-") as tmp:
        corpus = pathlib.Path(args.corpus) if args.corpus else pathlib.Path(tmp)
        if not args.corpus:
            build_corpus(corpus)
        result = fuzz(corpus, args.seed, args.seconds, args.inputs, args.cli_share)
        if args.against:
            result = {
                "after": result,
                "before": _against(args.against, corpus, args, result["inputs"]),
            }
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
