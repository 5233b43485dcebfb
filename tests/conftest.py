"""Shared test setup.

JAX gets 8 simulated CPU devices, so sharded inputs (a mesh with data and model axes) are
tested on a machine without accelerators. This must happen before JAX starts its backend.
"""

import jax
import pytest

jax.config.update("jax_num_cpu_devices", 8)


@pytest.fixture(autouse=True)
def _quiet_level(monkeypatch):
    """Tests start from the default level, whatever the caller's environment says."""
    monkeypatch.delenv("JAXOBS_LEVEL", raising=False)


@pytest.fixture
def wandb_env(monkeypatch, tmp_path):
    """W&B offline, quiet and lean, with its cache and settings inside ``tmp_path``.

    WANDB_DIR and WANDB_DATA_DIR are left unset, as on a user's machine, so that the bridge's
    defaults (the run directory) are what is tested. The wandb service is torn down after the
    test, so its files are complete.
    """
    from wandb_files import isolate

    names = ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR")
    isolate(monkeypatch, tmp_path / "wandb-home", names)
    for name in ("WANDB_DIR", "WANDB_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    yield tmp_path
    import wandb

    wandb.teardown()
