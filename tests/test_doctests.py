"""The examples in the docstrings run and print what they say."""

import doctest
import importlib

import pytest

# module -> how many examples it holds at least (so that a module whose examples vanish, or
# are no longer found, fails instead of passing with nothing run)
MODULES = {
    "jaxobs._src.formats.trainlog": 2,
    "jaxobs._src.formats.experiment": 3,
    "jaxobs._src.formats.artifacts": 3,
    "jaxobs._src.formats.crash_dump": 3,
    "jaxobs._src.analysis.summary": 0,
    "jaxobs._src.analysis.diagnose": 4,
    "jaxobs.crash": 2,
    "jaxobs.stats": 0,
    "jaxobs._src.device.stats": 4,
    "jaxobs._src.device.histogram": 2,
}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_docstring_examples(name):
    """Every docstring example of the module passes."""
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted >= MODULES[name]
