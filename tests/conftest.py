"""Shared test setup: runs never draw a terminal display unless a test asks for one."""

import pytest


@pytest.fixture(autouse=True)
def _quiet_level(monkeypatch):
    """Tests start from the default level, whatever the caller's environment says."""
    monkeypatch.delenv("JAXOBS_LEVEL", raising=False)
