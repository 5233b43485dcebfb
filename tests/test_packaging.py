"""Packaging: what `import jaxobs` pulls in, and which top-level packages are installed."""

import importlib.metadata
import subprocess
import sys
import textwrap

from helpers import PYTHON, REPO

HEAVY = ("wandb", "tensorboardX", "tensorboard", "matplotlib", "plotly", "tensorflow", "torch")


def test_import_jaxobs_imports_no_tracker_or_plotting_package(tmp_path):
    """`import jaxobs` (its public modules, and its bridges until they start) never tries to
    import wandb, tensorboardX, matplotlib or plotly."""
    # A meta-path finder sees every import attempt, even of packages that are not installed.
    script = textwrap.dedent(
        f"""
        import sys
        HEAVY = {HEAVY!r}
        tried = []
        class Spy:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in HEAVY:
                    tried.append(name)
                return None
        sys.meta_path.insert(0, Spy())
        import jaxobs, jaxobs.bridges, jaxobs.cli, jaxobs.crash, jaxobs.health, jaxobs.artifacts
        import jaxobs.testing, jaxobs.stats
        import jaxobs.bridges.wandb, jaxobs.bridges.tensorboard  # trackers load at use
        loaded = [m for m in sys.modules if m.split(".")[0] in HEAVY]
        print(repr((tried, loaded)))
        """
    )
    out = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "([], [])"


def test_the_spy_sees_imports(tmp_path):
    """The import spy of the test above does notice an import (so that test can fail)."""
    script = textwrap.dedent(
        """
        import sys
        tried = []
        class Spy:
            def find_spec(self, name, path=None, target=None):
                tried.append(name)
        sys.meta_path.insert(0, Spy())
        try:
            import plotly  # noqa: F401
        except ImportError:
            pass
        print("plotly" in tried)
        """
    )
    out = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.strip() == "True"


def test_no_top_level_bridges_is_installed(tmp_path):
    """Only jaxobs.bridges exists; a bare `bridges` module is not importable from elsewhere."""
    script = (
        "import importlib.util, jaxobs.bridges; "
        "print(importlib.util.find_spec('bridges') is None, jaxobs.bridges.__name__)"
    )
    out = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.split() == ["True", "jaxobs.bridges"], out.stderr


def test_distribution_metadata():
    """One distribution, jaxobs, with the documented extras and the console script."""
    meta = importlib.metadata.metadata("jaxobs")
    assert meta["Name"] == "jaxobs"
    assert {"wandb", "tensorboard", "report", "all", "dev"} <= set(meta.get_all("Provides-Extra"))
    scripts = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts["jaxobs"] == "jaxobs.cli:main"
    requires = meta.get_all("Requires-Dist")
    core = {r.split(">")[0].split("=")[0].strip() for r in requires if "extra ==" not in r}
    assert core == {"jax", "numpy", "rich"}


def test_schema_ships_inside_the_package():
    """The JSON Schema is package data reachable through jaxobs.schema_path()."""
    import jaxobs

    assert jaxobs.schema_path().is_file()
    assert sys.modules["jaxobs"].__file__


def test_every_package_folder_is_listed_for_setuptools():
    """Each folder of jaxobs/ and bridges/ holding Python files is a package (has an
    __init__.py) named in pyproject.toml's [tool.setuptools] packages, so a wheel ships it."""
    import tomllib  # Python 3.11+

    listed = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = set()
    for root, name in (("jaxobs", "jaxobs"), ("bridges", "jaxobs.bridges")):
        for path in sorted((REPO / root).rglob("*.py")):
            folder = path.parent.relative_to(REPO / root)
            assert (path.parent / "__init__.py").is_file(), f"{path.parent} has no __init__.py"
            found.add(".".join([name, *folder.parts]))
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert listed - found == set(), "pyproject.toml lists packages that do not exist"
