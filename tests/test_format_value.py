"""Numbers as text: one rule (analysis/text.py) for the terminal, the CLI and crash summaries."""

import math

import numpy as np
import pytest

from jaxobs._src.analysis import text
from jaxobs._src.sinks import terminal


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.0, "0"),
        (0.123456, "0.1235"),
        (-2.5, "-2.5"),
        (12345.678, "1.235e+04"),
        (99999.0, "1e+05"),
        (100000.0, "1.000e+05"),
        (0.001, "0.001"),
        (0.000999, "9.990e-04"),
        (7, "7"),
        (np.float32(0.1), "0.1"),
        (math.nan, "nan"),
        (math.inf, "inf"),
        (-math.inf, "-inf"),
        (None, "?"),
    ],
)
def test_format_value_table(value, expected):
    """At most ~9 characters: 4 significant digits, else scientific; nan/inf as words."""
    assert text.format_value(value) == expected


def test_the_terminal_uses_the_shared_rule():
    """The terminal's format_value is the shared one (the CLI imports it from there)."""
    assert terminal.format_value is text.format_value
