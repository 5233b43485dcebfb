"""The import contract: layers import only downward, _src never imports the public API, no
module reaches into another's private names, heavy packages load on use, modules stay small.

The checker reads the source with `ast` (nothing is imported), so it sees every import: at
module level, inside functions and under ``if TYPE_CHECKING:``. ``bridges/`` is read as
``jaxobs.bridges``, the package it is installed as. Each violation is printed as
``path:line: rule: what to do``.
"""

from __future__ import annotations

import ast
import dataclasses
import pathlib
import subprocess
import textwrap

import pytest
from helpers import PYTHON, REPO

# Top to bottom: a module may import its own layer and the layers below it, never above.
LAYERS = (
    "jaxobs.cli",
    "jaxobs.bridges",
    "jaxobs._src.engine",
    "jaxobs._src.host",
    "jaxobs._src.sinks",
    "jaxobs._src.analysis",
    "jaxobs._src.formats",
    "jaxobs._src.device",
)
# The public API: re-exports only. Code under jaxobs/_src never imports these.
PUBLIC = (
    "jaxobs",
    "jaxobs.__main__",
    "jaxobs.stats",
    "jaxobs.evaluation",
    "jaxobs.health",
    "jaxobs.crash",
    "jaxobs.artifacts",
    "jaxobs.testing",
    "jaxobs.cli",
    "jaxobs.bridges",
)
# Imported where they are used, never when a module is imported.
TRACKERS = ("wandb", "tensorboardX", "tensorboard", "matplotlib", "plotly", "mlflow")
# Where `import jax` may sit at module level: the jit side (device, engine), the public
# statistics API (`jaxobs.stats` re-exports device code and is only useful with JAX), and
# host modules that only the engine imports: `snapshots.py` (device-to-host copies of the
# train state) and `supervisor.py` (drives the on-device guard's rollback). `import jaxobs`
# reaches neither of them, as test_import_jaxobs_imports_no_jax checks.
JAX_HOST = ("jaxobs._src.host.snapshots", "jaxobs._src.host.supervisor")
JAX_AT_MODULE_LEVEL = ("jaxobs._src.device", "jaxobs._src.engine", "jaxobs.stats", *JAX_HOST)
MAX_LINES = 550
RULES = ("layer", "public-import", "private-name", "heavy-import", "module-size")


@dataclasses.dataclass(frozen=True)
class Violation:
    path: str  # relative to the root that was checked
    line: int
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}: {self.message}"


@dataclasses.dataclass(frozen=True)
class Import:
    target: str  # the module imported, or the module a name is imported from
    name: str | None  # `from target import name` where name is not a module
    line: int
    module_level: bool  # runs when the module is imported (not inside a function)
    type_checking: bool  # under `if TYPE_CHECKING:`, so never run


# ----------------------------------------------------------------------------- reading


def module_files(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """{module name: file} for every .py under jaxobs/ and bridges/ (as jaxobs.bridges)."""
    modules = {}
    for folder, package in (("jaxobs", "jaxobs"), ("bridges", "jaxobs.bridges")):
        base = root / folder
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Imports(ast.NodeVisitor):
    """Every import of one module, and the names they bind."""

    def __init__(self, module: str, is_package: bool, known: set[str]):
        self.package = module if is_package else module.rpartition(".")[0]
        self.known = known
        self.imports: list[Import] = []
        self.aliases: dict[str, str] = {}  # local name -> the dotted name it is bound to
        self._depth = 0
        self._type_checking = 0

    def _add(self, target: str, name: str | None, line: int) -> None:
        self.imports.append(Import(target, name, line, self._depth == 0, self._type_checking > 0))

    def _resolve(self, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        base = self.package.split(".")
        base = base[: len(base) - (node.level - 1)]
        return ".".join(base + ([node.module] if node.module else []))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, None, node.lineno)
            if alias.asname:
                self.aliases[alias.asname] = alias.name
            else:  # `import a.b.c` binds `a`; `a.b.c._x` is read as a dotted name
                top = alias.name.split(".")[0]
                self.aliases.setdefault(top, top)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        target = self._resolve(node)
        for alias in node.names:
            submodule = f"{target}.{alias.name}"
            if submodule in self.known:
                self._add(submodule, None, node.lineno)
                self.aliases[alias.asname or alias.name] = submodule
            else:
                self._add(target, alias.name, node.lineno)
                self.aliases[alias.asname or alias.name] = submodule  # `Run._x` is read too

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
            return
        self.visit(node.test)
        self._type_checking += 1
        for child in node.body:
            self.visit(child)
        self._type_checking -= 1
        for child in node.orelse:
            self.visit(child)

    def _function(self, node: ast.AST) -> None:
        self._depth += 1
        self.generic_visit(node)
        self._depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function


# ----------------------------------------------------------------------------- rules


def line_count(text: str) -> int:
    """Lines of a file, the last one counted whether or not it ends with a newline."""
    return len(text.splitlines())


def _within(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def layer_of(module: str) -> int | None:
    """Index in LAYERS (0 = top), or None for a module outside the layers (the public API)."""
    for i, layer in enumerate(LAYERS):
        if _within(module, (layer,)):
            return i
    return None


def _is_public(module: str) -> bool:
    return module in PUBLIC or _within(module, ("jaxobs.cli", "jaxobs.bridges"))


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def dotted_reads(tree: ast.AST, aliases: dict[str, str]) -> list[tuple[str, int]]:
    """Each outermost ``a.b.c`` whose ``a`` an import bound, spelled out from the import:
    ``("jaxobs._src.formats.codec._cache", line)`` for ``codec._cache``."""
    chains = [node for node in ast.walk(tree) if isinstance(node, ast.Attribute)]
    inner = {id(node.value) for node in chains}
    reads: list[tuple[str, int]] = []
    for node in chains:
        if id(node) in inner:
            continue
        parts: list[str] = []
        value: ast.expr = node
        while isinstance(value, ast.Attribute):
            parts.append(value.attr)
            value = value.value
        if isinstance(value, ast.Name) and value.id in aliases:
            reads.append((".".join([aliases[value.id], *reversed(parts)]), node.lineno))
    return reads


# A namedtuple's public API is spelled with an underscore.
NAMEDTUPLE_API = {"_replace", "_asdict", "_fields", "_field_defaults", "_make"}


def _private_from_dotted(dotted: str, known: set[str]) -> tuple[str, str] | None:
    """(module, name) when ``dotted`` reads a private name in a jaxobs module: one of its
    globals, or an attribute of one (``Run._lock``). Private submodules (``jaxobs._src``,
    ``jaxobs.bridges._tracker``) are modules, not names."""
    parts = dotted.split(".")
    for i in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:i])
        if module in known:
            for name in parts[i:]:
                if _is_private(name) and name not in NAMEDTUPLE_API:
                    return module, name
            return None
    return None


def check(root: pathlib.Path) -> list[Violation]:
    """Every violation of the import contract in ``root``'s jaxobs/ and bridges/."""
    modules = module_files(root)
    known = set(modules)
    texts = {module: path.read_text(encoding="utf-8") for module, path in modules.items()}
    trees = {module: ast.parse(texts[module], filename=str(modules[module])) for module in modules}
    imports: dict[str, _Imports] = {}
    for module, tree in trees.items():
        visitor = _Imports(module, modules[module].name == "__init__.py", known)
        visitor.visit(tree)
        imports[module] = visitor
    # The allow-listed host modules that do import jax when they are imported.
    jax_host = {
        module
        for module in JAX_HOST
        if module in imports
        and any(
            i.target.split(".")[0] == "jax" and i.module_level and not i.type_checking
            for i in imports[module].imports
        )
    }
    found: list[Violation] = []
    for module, path in modules.items():
        rel = path.relative_to(root).as_posix()
        text = texts[module]

        def report(line: int, rule: str, message: str, rel=rel) -> None:
            found.append(Violation(rel, line, rule, message))

        lines = line_count(text)
        if lines > MAX_LINES:
            report(
                1,
                "module-size",
                f"{lines} lines (limit {MAX_LINES}): split {module} by responsibility",
            )
        tree, visitor = trees[module], imports[module]
        own_layer = layer_of(module)
        in_src = _within(module, ("jaxobs._src",))
        for imp in visitor.imports:
            target = imp.target
            target_layer = layer_of(target)
            if own_layer is not None and target_layer is not None and target_layer < own_layer:
                report(
                    imp.line,
                    "layer",
                    f"{module} ({LAYERS[own_layer]}) imports {target}, a higher layer "
                    f"({LAYERS[target_layer]}); move the code it needs down, or pass it in",
                )
            if in_src and _is_public(target):
                report(
                    imp.line,
                    "public-import",
                    f"{module} imports the public module {target}; import from jaxobs._src "
                    "instead (public modules only re-export)",
                )
            if (
                imp.name is not None
                and _is_private(imp.name)
                and _within(target, ("jaxobs",))
                and target != module
            ):
                report(
                    imp.line,
                    "private-name",
                    f"{module} imports {imp.name} from {target}; give it a public name in "
                    f"{target}, or add a public function",
                )
            top = target.split(".")[0]
            heavy = top in TRACKERS or (top == "jax" and not _within(module, JAX_AT_MODULE_LEVEL))
            runs = imp.module_level and not imp.type_checking
            if heavy and runs:
                report(
                    imp.line,
                    "heavy-import",
                    f"{module} imports {target} at module level; import it inside the "
                    "function that uses it",
                )
            elif runs and target in jax_host and not _within(module, JAX_AT_MODULE_LEVEL):
                report(
                    imp.line,
                    "heavy-import",
                    f"{module} imports {target} (which imports jax) at module level; only "
                    "the engine may: import it inside the function that uses it",
                )
        for dotted, line in dotted_reads(tree, visitor.aliases):
            hit = _private_from_dotted(dotted, known)
            if hit is not None and hit[0] != module:
                report(
                    line,
                    "private-name",
                    f"{module} reads {hit[1]} of {hit[0]}; give it a public name in "
                    f"{hit[0]}, or add a public function",
                )
    return sorted(found, key=lambda v: (RULES.index(v.rule), v.path, v.line))


def _sizes(root: pathlib.Path) -> list[tuple[int, str]]:
    """(lines, path) of every module, the largest first."""
    sizes = [
        (line_count(path.read_text(encoding="utf-8")), path.relative_to(root).as_posix())
        for path in module_files(root).values()
    ]
    return sorted(sizes, reverse=True)


# ----------------------------------------------------------------------------- the repository


@pytest.mark.parametrize("rule", RULES)
def test_repository_follows_the_import_contract(rule):
    """No module of jaxobs/ or bridges/ breaks this rule of the import contract."""
    violations = [v for v in check(REPO) if v.rule == rule]
    report = "\n".join(map(str, violations))
    if rule == "module-size":
        lines, path = _sizes(REPO)[0]
        report += f"\nlargest module: {path} ({lines} lines)"
    assert not violations, f"{len(violations)} violation(s) of {rule!r}:\n{report}"


def test_import_jaxobs_imports_no_jax(tmp_path):
    """`import jaxobs` (and the jax-free public modules) never tries to import jax."""
    # A meta-path finder sees every import attempt, even of packages that are not installed.
    script = textwrap.dedent(
        """
        import sys
        tried = []
        class Spy:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("jax", "jaxlib"):
                    tried.append(name)
                return None
        sys.meta_path.insert(0, Spy())
        import jaxobs, jaxobs.testing, jaxobs.crash, jaxobs.artifacts, jaxobs.cli
        loaded = [m for m in sys.modules if m.split(".")[0] in ("jax", "jaxlib")]
        print(repr((tried, loaded)))
        """
    )
    out = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "([], [])"


# ----------------------------------------------------------------------------- the checker

# A small tree with one violation of each kind; the comment names the rule each line breaks.
SYNTHETIC = {
    "jaxobs/__init__.py": "from jaxobs._src.formats.codec import dumps\n",
    "jaxobs/stats.py": "import jax\n",  # allowed: the statistics API is jit-side
    "jaxobs/_src/__init__.py": "",
    "jaxobs/_src/formats/__init__.py": "",
    "jaxobs/_src/formats/codec.py": (
        "import json\n"
        "from . import fields\n"  # relative, same layer: allowed
        "from .fields import __version__\n"  # a dunder: allowed
        "def dumps(x):\n"
        "    import matplotlib\n"  # inside a function: allowed
        "    return json.dumps(x)\n"
        "_cache = {}\n"
    ),
    "jaxobs/_src/formats/fields.py": (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    import jax\n"  # never run: allowed
        "    from jaxobs._src.host import run\n"  # layer (type-only imports count too)
        "__version__ = '1'\n"
        "def read(x):\n"
        "    from jaxobs._src.engine.observe import observe\n"  # layer (inside a function)
        "    return observe\n"
    ),
    "jaxobs/_src/device/__init__.py": "",
    "jaxobs/_src/device/stats.py": "import jax\nfrom .. import formats\n",  # layer (relative)
    "jaxobs/_src/host/__init__.py": "",
    "jaxobs/_src/host/run.py": (
        "import jaxobs\n"  # public-import
        "from jaxobs._src.formats.codec import _cache\n"  # private-name (from import)
        "import jaxobs._src.formats.codec as codec\n"
        "import jaxobs._src.formats.fields\n"
        "size = len(codec._cache)\n"  # private-name (attribute of an alias)
        "version = jaxobs._src.formats.fields.__version__\n"  # a dunder: allowed
        "import jax.numpy as jnp\n"  # heavy-import: jax at module level in host
        "def later():\n"
        "    import jax\n"  # inside a function: allowed
        "    return jaxobs._src.formats.codec._cache\n"  # private-name (dotted)
    ),
    "jaxobs/_src/host/snapshots.py": "import jax\n",  # allowed: only the engine imports it
    "jaxobs/_src/host/monitors.py": (
        "from jaxobs._src.host.snapshots import Snapshots\n"  # heavy-import: jax, indirectly
        "def supervise():\n"
        "    from jaxobs._src.host import snapshots\n"  # inside a function: allowed
        "    return snapshots\n"
    ),
    "jaxobs/_src/engine/__init__.py": "",
    "jaxobs/_src/engine/observe.py": "import jax\nfrom jaxobs._src.host import run\n"
    + "x = 1\n" * MAX_LINES,  # module-size
    "jaxobs/cli/__init__.py": (
        "import jaxobs\n"  # the command may import the public API
        "from jaxobs._src.host import run\n"  # and _src
        "from jaxobs._src.host.run import Run as R\n"
        "fields = R._fields\n"  # a namedtuple's API: allowed
        "lock = run.Run._lock\n"  # private-name (an attribute of a class)
        "later = R.active._pending\n"  # private-name (through the imported name)
    ),
    "bridges/__init__.py": "",
    "bridges/_tracker.py": "class TrackerSink: ...\n",
    "bridges/wandb.py": (
        "from jaxobs.bridges._tracker import TrackerSink\n"  # a private module: allowed
        "from jaxobs.cli import main\n"  # layer: bridges import the command
        "try:\n"
        "    import wandb\n"  # heavy-import: at module level, even guarded
        "except ImportError:\n"
        "    wandb = None\n"
    ),
}
EXPECTED = {
    ("jaxobs/_src/formats/fields.py", 4, "layer"),
    ("jaxobs/_src/formats/fields.py", 7, "layer"),
    ("jaxobs/_src/device/stats.py", 2, "layer"),
    ("bridges/wandb.py", 2, "layer"),
    ("jaxobs/_src/host/run.py", 1, "public-import"),
    ("jaxobs/_src/host/run.py", 2, "private-name"),
    ("jaxobs/_src/host/run.py", 5, "private-name"),
    ("jaxobs/_src/host/run.py", 10, "private-name"),
    ("jaxobs/cli/__init__.py", 5, "private-name"),
    ("jaxobs/cli/__init__.py", 6, "private-name"),
    ("jaxobs/_src/host/run.py", 7, "heavy-import"),
    ("bridges/wandb.py", 4, "heavy-import"),
    ("jaxobs/_src/host/monitors.py", 1, "heavy-import"),
    ("jaxobs/_src/engine/observe.py", 1, "module-size"),
}


def _write_tree(root: pathlib.Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_checker_reports_one_violation_of_each_rule(tmp_path):
    """On a small tree with a known violation of each rule, the checker reports exactly
    those, at their lines."""
    _write_tree(tmp_path, SYNTHETIC)
    got = {(v.path, v.line, v.rule) for v in check(tmp_path)}
    assert got == EXPECTED
    assert {rule for _, _, rule in EXPECTED} == set(RULES)


def test_checker_message_format(tmp_path):
    """A violation prints as `path:line: rule: what to do`."""
    _write_tree(tmp_path, SYNTHETIC)
    [violation] = [v for v in check(tmp_path) if v.path == "bridges/wandb.py" and v.line == 4]
    assert str(violation) == (
        "bridges/wandb.py:4: heavy-import: jaxobs.bridges.wandb imports wandb at module level; "
        "import it inside the function that uses it"
    )


def test_checker_maps_modules_like_the_installed_package(tmp_path):
    """bridges/ is read as jaxobs.bridges and __init__.py as its package."""
    _write_tree(tmp_path, SYNTHETIC)
    modules = module_files(tmp_path)
    assert modules["jaxobs.bridges.wandb"] == tmp_path / "bridges" / "wandb.py"
    assert modules["jaxobs"] == tmp_path / "jaxobs" / "__init__.py"
    assert modules["jaxobs._src.formats"] == tmp_path / "jaxobs/_src/formats/__init__.py"
    assert [layer_of(m) for m in ("jaxobs.cli", "jaxobs.bridges.wandb", "jaxobs.stats")] == [
        0,
        1,
        None,
    ]
