"""Fusions, reductions and passes over the observed trees in the optimized HLO of a step.

    python bench/hlo.py                       # the MLP, every variant
    python bench/hlo.py --model cnn --variants bare,detailed --keep /tmp/hlo

For each variant, a subprocess sets ``XLA_FLAGS=--xla_dump_to=<dir>`` before importing jax,
runs the step of bench/overhead.py twice (MLP or CNN, ``jaxobs.tap(grads=grads)``), and
this script reads the step's module after optimizations
(``*.jit_step_*.<platform>_after_optimizations.txt``) and counts:

- ``fusions``: fusion instructions (one kernel each, one read of its operands), by kind;
- ``reduces``, ``reduce_windows``: reduce and reduce-window instructions, fused or not (a
  blocked reduction is a reduce-window then a reduce of the partial sums);
- ``leaf_reduces``: reductions (either kind) whose operand has as many elements as a leaf of at
  least ``--min-leaf`` elements (4096: smaller sizes collide with the step's own small arrays,
  the logits or the per-leaf sums, and cost little);
- ``leaf_reads``: reads of such leaf-sized arrays by reducing kernels: for each fusion, its
  leaf-sized inputs from which a reduce inside it is computed (reductions sharing a
  multi-output fusion share one read; ``new - old`` reads two arrays), plus each unfused
  leaf-sized reduce. ``leaf_reads_conditional`` are those inside a ``conditional`` branch
  (run only when the branch is taken), not counted in ``leaf_reads``;
- ``extra_leaf_reads``: ``leaf_reads`` minus the bare step's, per leaf size;
- ``reads_per_leaf``: ``extra_leaf_reads`` per large leaf; ``reads_per_leaf_per_tree`` that
  over the three observed trees (grads, params, updates): 1.0 is one read of each tree, the
  floor for statistics of all three.

Variants: ``bare`` (``jax.jit``); ``floor`` (bench/overhead.py's ``floor:norms3``: the bare
step returning the global norms of grads, params and ``new - old``, written by hand);
``basic``, ``detailed``, ``expert``, ``debug`` (the levels, every step); ``norm``
(``stats=["norm"], per="leaf"``); ``plain`` (the plain program that ``every=10`` runs
between samples, default level). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

VARIANTS = ("bare", "floor", "basic", "detailed", "expert", "debug", "norm", "plain")
TREES = 3  # grads, params, updates
REDUCING = ("reduce", "reduce-window")  # XLA:CPU splits a long reduction into both

_COMPUTATION = re.compile(r"^(ENTRY )?%(\S+) .*\{$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (.+?) ([a-z][a-z0-9-]*)\((.*)$")
_SHAPE = re.compile(r"[a-z]+[0-9]*\[([0-9,]*)\]")


def _elements(shape: str) -> int:
    """Elements of the first array shape in ``shape`` (``f32[128,10]{1,0}`` -> 1280)."""
    m = _SHAPE.search(shape)
    if m is None:
        return 0
    n = 1
    for d in filter(None, m.group(1).split(",")):
        n *= int(d)
    return n


def parse_hlo(text: str) -> tuple[dict[str, list[tuple]], str]:
    """Computations of an HLO text module: name -> [(name, shape, opcode, rest)], and the
    entry computation's name."""
    comps: dict[str, list[tuple]] = {}
    entry, current = "", None
    for line in text.splitlines():
        if current is None:
            m = _COMPUTATION.match(line)
            if m:
                current = m.group(2)
                comps[current] = []
                entry = current if m.group(1) else entry
            continue
        if line.startswith("}"):
            current = None
            continue
        m = _INSTRUCTION.match(line)
        if m:
            comps[current].append(m.groups())
    return comps, entry


def _operand_elements(shapes: dict[str, str], rest: str) -> int:
    """Elements of an instruction's first operand (the array a reduce reads)."""
    m = re.search(r"%([^\s,)]+)", rest)
    return 0 if m is None else _elements(shapes.get(m.group(1), ""))


def _operands(rest: str) -> list[str]:
    """The operand names of an instruction, from the text after its opcode's parenthesis."""
    return re.findall(r"%([^\s,)]+)", rest.split(")")[0])


def _called(rest: str, key: str) -> list[str]:
    m = re.search(key + r"=\{?([^},]+(?:, ?%[^},]+)*)\}?", rest)
    return [] if m is None else [c.strip().lstrip("%") for c in m.group(1).split(",")]


def count(text: str, leaf_sizes: set[int]) -> dict:
    """Fusions, reduces and reads of leaf-sized arrays (of ``leaf_sizes`` elements) by
    reducing kernels, in one optimized module's text."""
    comps, entry = parse_hlo(text)
    shapes = {c: {i[0]: i[1] for i in instrs} for c, instrs in comps.items()}

    def reads(comp: str) -> list[int]:
        """Sizes of the leaf-sized inputs of a fused computation that feed a reduce: one
        entry per input, however many reductions share its read."""
        instrs = {i[0]: i for i in comps.get(comp, [])}
        inputs: set[str] = set()
        for _, _, op, rest in instrs.values():
            if op not in REDUCING:
                continue
            stack, visited = _operands(rest)[:1], set()
            while stack:  # back through the elementwise ops to the fusion's inputs
                n = stack.pop()
                if n in visited or n not in instrs:
                    continue
                visited.add(n)
                if instrs[n][2] == "parameter":
                    inputs.add(n)
                else:
                    stack += _operands(instrs[n][3])
        sizes = [_elements(shapes[comp][n]) for n in inputs]
        return [n for n in sizes if n in leaf_sizes]

    fusions: collections.Counter = collections.Counter()
    passes: collections.Counter = collections.Counter()
    passes_cond: collections.Counter = collections.Counter()
    seen: set[str] = set()

    def walk(comp: str, conditional: bool) -> None:  # computations that are not fused
        if comp in seen:
            return
        seen.add(comp)
        for _, _, op, rest in comps.get(comp, []):
            target = passes_cond if conditional else passes
            if op == "fusion":
                kind = re.search(r"kind=(k\w+)", rest)
                fusions[kind.group(1) if kind else "?"] += 1
                for c in _called(rest, "calls"):
                    target.update(reads(c))
            elif op in REDUCING:
                n = _operand_elements(shapes[comp], rest)
                if n in leaf_sizes:
                    target[n] += 1
            elif op == "conditional":
                for key in ("branch_computations", "true_computation", "false_computation"):
                    for c in _called(rest, key):
                        walk(c, True)
            for key in ("body", "condition", "to_apply"):
                if op in ("while", "call"):
                    for c in _called(rest, key):
                        walk(c, conditional)

    walk(entry, False)
    ops = collections.Counter(op for instrs in comps.values() for _, _, op, _ in instrs)
    leaf_red = sum(
        _operand_elements(shapes[c], rest) in leaf_sizes
        for c, instrs in comps.items()
        for _, _, op, rest in instrs
        if op in REDUCING
    )
    return {
        "fusions": sum(fusions.values()),
        "fusion_kinds": dict(sorted(fusions.items())),
        "reduces": ops["reduce"],
        "reduce_windows": ops["reduce-window"],
        "leaf_reduces": leaf_red,
        "leaf_reads": sum(passes.values()),
        "leaf_reads_conditional": sum(passes_cond.values()),
        "entry_instructions": len(comps.get(entry, [])),
        "_reads_by_size": {str(k): v for k, v in sorted(passes.items())},
    }


# -- the child: one variant, dumped


def child(model: str, variant: str) -> None:
    """Run ``variant``'s step twice (XLA_FLAGS already set) and print the leaf sizes."""
    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    import jax
    import overhead

    import jaxobs

    new_state, params, x, y = overhead._problem(model)
    if variant == "bare":
        fn = jax.jit(overhead.step_bare)
    elif variant == "floor":
        fn = jax.jit(overhead._floor_step(3))
    elif variant == "plain":
        fn = jaxobs.observe(overhead.step_tapped, every=10)
    elif variant == "norm":
        fn = jaxobs.observe(overhead.step_tapped, stats=["norm"], per="leaf")
    else:
        fn = jaxobs.observe(overhead.step_tapped, level=variant)
    s = new_state()
    for _ in range(2):
        s, m = fn(s, x, y)
    jax.block_until_ready((s, m))
    if hasattr(fn, "flush"):
        fn.flush()
    sizes = [int(p.size) for p in jax.tree.leaves(params)]
    print(json.dumps({"leaf_sizes": sizes, "platform": jax.default_backend()}))


def _module(dump: pathlib.Path, variant: str) -> pathlib.Path:
    names = {"bare": "jit_step_bare", "floor": "jit_step_floor3", "plain": "jit_step_tapped_plain"}
    name = names.get(variant, "jit_step_tapped")
    found = sorted(dump.glob(f"module_*.{name}.*_after_optimizations.txt"))
    if not found:
        listed = sorted(p.name for p in dump.glob("*after_optimizations.txt"))
        raise SystemExit(f"hlo.py: no module {name} in {dump}; found {listed}")
    return found[-1]  # the last compiled, if it ever compiled twice


def measure(model: str, variant: str, root: pathlib.Path, min_leaf: int) -> dict:
    dump = root / f"{model}-{variant}"
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_dump_to={dump}".strip()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", variant, "--model", model],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"hlo.py: variant {variant} failed:\n{proc.stderr[-3000:]}")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    path = _module(dump, variant)
    large = {n for n in info["leaf_sizes"] if n >= min_leaf}
    result = count(path.read_text(), large)
    result["module"] = path.name
    return result | {"_leaf_sizes": info["leaf_sizes"], "_platform": info["platform"]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset")
    p.add_argument(
        "--min-leaf",
        type=int,
        default=4096,
        help="count reads of leaves of at least this many elements (smaller sizes collide "
        "with the step's own small arrays, and cost little)",
    )
    p.add_argument("--keep", default=None, help="dump into this folder and keep it")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.model, args.child)
        return {}
    names = [v for v in args.variants.split(",") if v]
    for v in names:
        if v not in VARIANTS:
            raise SystemExit(f"hlo.py: unknown variant {v!r}: choose from {', '.join(VARIANTS)}")
    if "bare" not in names:
        names.insert(0, "bare")  # the baseline of extra_leaf_reads
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(args.keep or tmp)
        results = {v: measure(args.model, v, root, args.min_leaf) for v in names}
    sizes = results["bare"]["_leaf_sizes"]
    large = [n for n in sizes if n >= args.min_leaf]
    bare = collections.Counter(results["bare"]["_reads_by_size"])
    for r in results.values():
        own = collections.Counter(r.pop("_reads_by_size"))
        extra = sum(max(0, own[k] - bare[k]) for k in own)
        r["extra_leaf_reads"] = extra
        r["reads_per_leaf"] = round(extra / len(large), 3)
        r["reads_per_leaf_per_tree"] = round(extra / (len(large) * TREES), 3)
        platform = r.pop("_platform")
        r.pop("_leaf_sizes")
    out = {
        "model": args.model,
        "platform": platform,
        "leaf_sizes": sizes,
        "min_leaf": args.min_leaf,
        "large_leaves": len(large),
        "variants": results,
    }
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
