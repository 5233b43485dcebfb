"""Hostile names and steps (issue 12, "Names, paths and terminals"): refused where they enter."""

import json

import pytest

import jaxobs
from jaxobs.artifacts import ConfusionMatrix


def _init(tmp_path, **kw):
    kw.setdefault("terminal", False)
    return jaxobs.init(project="p", dir=tmp_path / "runs", **kw)


@pytest.mark.parametrize("project", ["..", ".", "a/..", "../x", "a\\b", "a\0b"])
def test_project_cannot_leave_dir(tmp_path, project):
    """A project that is not one folder name under dir is refused, naming the argument."""
    root = tmp_path / "runs"
    with pytest.raises(ValueError, match="project"):
        jaxobs.init(project=project, id="r", dir=root, terminal=False)
    assert list(tmp_path.rglob("events.jsonl")) == []


@pytest.mark.parametrize("run_id", ["x\n", "x\nfoo", "\nx"])
def test_run_id_with_newline_is_refused(tmp_path, run_id):
    """``$`` matches before a trailing newline; the id must match in full."""
    with pytest.raises(ValueError, match="run id"):
        _init(tmp_path, id=run_id)
    assert list(tmp_path.rglob("events.jsonl")) == []


def test_confusion_matrix_name_with_newline_is_refused(tmp_path):
    """Artifact names use the same full-match rule as run ids."""
    run = _init(tmp_path)
    with pytest.raises(ValueError, match="artifact name"):
        run.log_confusion_matrix("cm\n", ConfusionMatrix(["a", "b"], [[1, 0], [0, 1]]))
    run.finish()


def test_lone_surrogate_key_is_refused_at_log(tmp_path):
    """A key that cannot be UTF-8 fails at log, naming it; the run still finishes readably."""
    run = _init(tmp_path)
    run.log({"loss": 1.0}, step=0)
    with pytest.raises(ValueError, match=r"loss\\ud800"):
        run.log({"loss\ud800": 2.0}, step=1)
    run.finish()
    assert jaxobs.read_run(run.dir).status == "finished"
    trainlog = json.loads(run.trainlog_path.read_text(encoding="utf-8"))
    assert [s["name"] for s in trainlog["series"]] == ["loss"]


@pytest.mark.parametrize("step", [2**63, 2**64, -(2**63) - 1])
def test_step_outside_int64_is_refused_at_log(tmp_path, step):
    """Steps TensorBoard and the trackers cannot store fail at log, naming step and range."""
    run = _init(tmp_path)
    with pytest.raises(ValueError, match=rf"step {step}\b.*int64"):
        run.log({"loss": 1.0}, step=step)
    run.log({"loss": 1.0}, step=2**63 - 1)
    run.finish()
    assert jaxobs.read_run(run.dir).status == "finished"
