"""examples/04 run as a W&B sweep agent runs a trial, offline: the sweep's values are used."""

from __future__ import annotations

import json

import jax
import pytest
from helpers import load_script, metric_table, read_events
from wandb_files import find_offline_runs, read_offline_run, read_records

SWEEP_VALUES = {"learning_rate": 0.2, "momentum": 0.5, "batch_size": 128, "epochs": 1}


def _example():
    return load_script("examples/04_wandb_sweep.py")


@pytest.fixture
def jax_cache(tmp_path_factory):
    """A JAX compilation cache while the test runs; JAX's settings come back afterwards."""
    # the plain run loads the programs the trial compiled (the same step, the same values)
    from jax.experimental.compilation_cache import compilation_cache

    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    saved = {name: getattr(jax.config, name) for name in names}
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax-cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    compilation_cache.reset_cache()
    yield
    for name, value in saved.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()


def _as_agent(monkeypatch, root, function, sweep_id="sw33p", run_id="trial1"):
    """What wandb's Python agent does for one trial (wandb/agents/pyagent.py): the trial's
    config file as {key: {"value": v}}, the sweep's environment, teardown, call, finish."""
    import wandb

    config = root / "wandb" / f"sweep-{sweep_id}" / f"config-{run_id}.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("".join(f"{k}:\n  value: {v}\n" for k, v in SWEEP_VALUES.items()))
    monkeypatch.setenv("WANDB_SWEEP_ID", sweep_id)
    monkeypatch.setenv("WANDB_RUN_ID", run_id)
    monkeypatch.setenv("WANDB_SWEEP_PARAM_PATH", str(config))
    monkeypatch.setenv("WANDB_PROJECT", "digits-sweep")
    wandb.teardown()
    try:
        return function()
    finally:
        wandb.finish()
        wandb.teardown()
        for name in ("WANDB_SWEEP_ID", "WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH"):
            monkeypatch.delenv(name)


# wandb 0.31.0 leaves the sweep's config file open (wandb_setup.py).
@pytest.mark.filterwarnings("ignore:unclosed file <_io\\.TextIOWrapper name=.*\\.yaml'.*")
@pytest.mark.slow
def test_a_sweep_trial_trains_with_the_sweep_values(wandb_env, monkeypatch, jax_cache):
    """The trial's jaxobs config and W&B config hold the sweep's values (never the defaults),
    both runs carry the sweep id, and training matches a plain run with those values."""
    example = _example()
    runs = wandb_env / "runs"
    trial = _as_agent(monkeypatch, wandb_env, lambda: example.train(str(runs)))
    events = read_events(trial.dir)
    final_config = json.loads(trial.trainlog_path.read_text())["run"]["config"]
    assert final_config == {**example.DEFAULTS, **SWEEP_VALUES}
    assert events[0]["run"]["config"] == example.DEFAULTS  # what the script asked for ...
    updates = [e["config"] for e in events if e["event"] == "config_update"]
    assert updates == [SWEEP_VALUES]  # ... and W&B's answer, recorded once, never undone
    (tracker,) = [e for e in events if e["event"] == "tracker"]
    assert (tracker["sweep_id"], tracker["id"]) == ("sw33p", "trial1")

    offline_path = next(p for p in find_offline_runs(trial.dir))
    offline = read_offline_run(offline_path, timeout=30)
    assert (offline.sweep_id, offline.run_id, offline.project) == (
        "sw33p",
        "trial1",
        "digits-sweep",
    )
    assert offline.config == final_config
    for record in read_records(offline_path):  # no config record ever sets a default back
        if record.WhichOneof("record_type") == "config":
            for item in record.config.update:
                key = item.key or "/".join(item.nested_key)
                if key in SWEEP_VALUES:
                    assert json.loads(item.value_json) == SWEEP_VALUES[key], key
    accuracies = [r["val/accuracy"] for r in offline.history if "val/accuracy" in r]
    assert offline.summary["val/accuracy"] == {"max": max(accuracies)}

    # The same values without a sweep train identically: the trial really used them.
    plain = example.train(str(runs), defaults=SWEEP_VALUES)
    ours = metric_table(events)["train/loss"]
    assert metric_table(read_events(plain.dir))["train/loss"] == ours
    n_train = 1797 - int(1797 * 0.2)  # the digits, less the validation fifth
    assert sorted(ours) == list(range(n_train // 128))  # one epoch in batches of 128, not 64
