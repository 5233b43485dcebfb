"""The Python examples in the docs run as written."""

import re

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
