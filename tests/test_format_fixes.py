"""Behaviour fixes of issue 12: history steps, config devices, CSV export of `step`."""

import csv
import io
import json

import jax
import numpy as np
import pytest

import jaxobs
from jaxobs._src.formats.config import ConfigError, to_config
from jaxobs._src.formats.experiment import MetricHistory
from jaxobs.cli import main


def test_history_next_step_is_one_past_the_largest_step():
    """After a row at step 10 and one at step 2, the next step is 11, not 3."""
    h = MetricHistory(["loss"])
    h.append([1.0], step=10)
    h.append([2.0], step=2)
    assert h.next_step == 11
    assert h.append([3.0]) == 11


def test_config_stores_a_jax_device_as_its_string():
    """A jax.Device in a config is stored as str(device), as W&B does, and JSON-dumps."""
    device = jax.devices()[0]
    got = to_config({"device": device, "devices": jax.devices()[:1], "dtype": np.float32})
    assert got == {"device": str(device), "devices": [str(device)], "dtype": "float32"}
    assert json.loads(json.dumps(got)) == got


def test_config_still_refuses_arbitrary_objects():
    """An object that is not a jax.Device still raises ConfigError naming the key."""
    with pytest.raises(ConfigError, match=r"config\.thing"):
        to_config({"thing": object()})


def test_csv_export_of_a_metric_named_step(tmp_path, capsys):
    """A metric named `step` is exported as `step_` beside the step column; `step_` as `step__`."""
    path = tmp_path / "log.json"
    series = [
        jaxobs.Series("step", [5.0, 6.0], steps=[0, 1]),
        jaxobs.Series("step_", [7.0], steps=[1]),
        jaxobs.Series("a", [1.0, 2.0], steps=[0, 1]),
    ]
    jaxobs.TrainLog(series=series).write_json(path)
    assert main(["export", str(path), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [list(r) for r in rows] == [["step", "step_", "step__", "a"]] * 2
    assert [r["step"] for r in rows] == ["0", "1"]
    assert [r["step_"] for r in rows] == ["5.0", "6.0"]
    assert [r["step__"] for r in rows] == ["", "7.0"]
    assert [r["a"] for r in rows] == ["1.0", "2.0"]
