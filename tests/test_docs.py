"""The Python examples in the docs run as written."""

import importlib
import pathlib
import re

import pytest
from helpers import REPO


def _blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / "docs" / page).read_text(), re.S)


def test_getting_started_data_model_example_runs(tmp_path, monkeypatch):
    """The 'data model without a run' example of docs/index.md runs and its assert holds."""
    monkeypatch.chdir(tmp_path)
    block = next(b for b in _blocks("index.md") if "ExperimentLog(run=RunInfo" in b)
    exec(compile(block, "docs/index.md", "exec"), {})
    assert (tmp_path / "log.json").is_file()


def test_trainlog_spec_stdlib_reader_reads_a_real_trainlog(tmp_path):
    """The standard-library reader in the format spec reads what jaxobs writes."""
    import math

    import jaxobs

    block = next(b for b in _blocks("trainlog-format.md") if "def read_trainlog" in b)
    namespace: dict = {}
    exec(compile(block, "docs/trainlog-format.md", "exec"), namespace)
    exp = jaxobs.ExperimentLog(run=jaxobs.RunInfo(project="p"))
    for step, v in enumerate([1.0, float("nan"), float("inf")]):
        exp.log_metric("train/loss", v, step)
    exp.log_metric("val/loss", 0.5, step=2)
    exp.write_json(tmp_path / "trainlog.json")
    got = namespace["read_trainlog"](tmp_path / "trainlog.json")
    steps, values = got["train/loss"]
    assert steps == [0, 1, 2] and values[0] == 1.0
    assert math.isnan(values[1]) and values[2] == math.inf
    assert got["val/loss"] == ([2], [0.5])


def _api_pages() -> list[pathlib.Path]:
    return sorted((REPO / "docs" / "api").glob("*.md"))


def test_api_pages_are_in_the_nav_and_open_with_prose():
    """Every docs/api page is in mkdocs.yml's nav and opens with a heading and a paragraph."""
    nav = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    pages = _api_pages()
    assert len(pages) >= 8
    for page in pages:
        assert f"api/{page.name}" in nav, f"{page.name} is not in mkdocs.yml's nav"
        text = page.read_text(encoding="utf-8")
        head, _, _ = text.partition(":::")
        lines = [line for line in head.splitlines() if line.strip()]
        assert lines[0].startswith("# ") and len(lines) >= 2, f"{page.name}: no prose first"


@pytest.mark.parametrize("page", _api_pages(), ids=lambda p: p.stem)
def test_api_page_targets_import(page):
    """Each `::: target` of an API page names a module or object that imports."""
    targets = re.findall(r"^:::\s*(\S+)", page.read_text(encoding="utf-8"), re.M)
    assert targets, f"{page.name} documents nothing"
    for target in targets:
        try:
            importlib.import_module(target)
        except ModuleNotFoundError:
            module, _, name = target.rpartition(".")
            assert hasattr(importlib.import_module(module), name), target


def test_changelog_page_includes_the_changelog():
    """docs/changelog.md includes the repository's CHANGELOG.md, which exists."""
    assert '--8<-- "CHANGELOG.md"' in (REPO / "docs" / "changelog.md").read_text()
    assert (REPO / "CHANGELOG.md").read_text().startswith("# Changelog")


def test_testing_page_examples_run(tmp_path, monkeypatch):
    """The examples of docs/testing.md run as written, the recompilation check included."""
    import tiny_train

    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    blocks = _blocks("testing.md")
    assert len(blocks) >= 4
    for block in blocks:
        exec(compile(block, "docs/testing.md", "exec"), namespace)
    check = namespace["check_observing_adds_no_compilation"]
    check(tiny_train.step_fn, lambda: tiny_train.make_state(tiny_train.DEFAULTS), tiny_train.data())
