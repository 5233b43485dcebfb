"""Example 05 (the production preset) runs and shows the spike between two samples."""

import numpy as np
from helpers import load_script, metric_table, read_events


def test_production_example_marks_the_window_with_the_spike(tmp_path, capsys):
    run = load_script("examples/05_production_preset.py").main(
        ["--dir", str(tmp_path), "--steps", "61", "--spike-at", "47"]
    )
    out = capsys.readouterr().out
    table = metric_table(read_events(run.dir))
    assert sorted(table["window/grad_norm/max"]) == [0, 20, 40, 60]
    assert sorted(table["train/loss"]) == list(range(61))
    assert not any(k.endswith("/kernel/norm") for k in table)  # BASIC: global norms only
    assert "level BASIC, every 20 steps" in out
    # The guard's gradient norm, delivered at every step, is the reference for the window
    # of steps 41..60 that holds the corrupted batch.
    norms = table["health/grad_norm"]
    window = [norms[s] for s in range(41, 61)]
    assert int(np.argmax(window)) + 41 == 47
    np.testing.assert_allclose(table["window/grad_norm/max"][60], max(window), rtol=1e-6)
    np.testing.assert_allclose(
        table["window/loss/max"][60], max(table["train/loss"][s] for s in range(41, 61)), rtol=1e-6
    )
    assert "60            20" in out and "<- the spike" in out
