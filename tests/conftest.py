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
