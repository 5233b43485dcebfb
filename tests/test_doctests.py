"""The examples in the docstrings run and print what they say."""

import doctest

import pytest

import jaxobs._src.analysis.summary
import jaxobs._src.formats.experiment
import jaxobs._src.formats.trainlog


@pytest.mark.parametrize("module", [jaxobs._src.formats.trainlog, jaxobs._src.formats.experiment, jaxobs._src.analysis.summary])
def test_docstring_examples(module):
    """Every docstring example of the module passes."""
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
