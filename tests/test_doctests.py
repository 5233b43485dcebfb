"""The examples in the docstrings run and print what they say."""

import doctest

import pytest

import jaxobs.log
import jaxobs.summary


@pytest.mark.parametrize("module", [jaxobs.log, jaxobs.summary])
def test_docstring_examples(module):
    """Every docstring example of the module passes."""
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
