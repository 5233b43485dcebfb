"""Numbers as text: the one formatting rule of the terminal, the CLI, alerts and reports; and
user strings made safe to print on a terminal."""

from __future__ import annotations

import math
import re
from typing import Any

__all__ = ["format_value", "printable"]

# C0 controls (ESC included), DEL and C1 controls: a terminal acts on them.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # all but tab and newline


def format_value(x: Any, missing: str = "?") -> str:
    """A number in at most ~9 characters: ``0.1234``, ``1.235e+06``, ``nan``, ``inf``;
    ``missing`` for None."""
    if x is None:
        return missing
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0 or 1e-3 <= abs(x) < 1e5:
        return f"{x:.4g}"
    return f"{x:.3e}"


def printable(text: Any) -> str:
    """``text`` with each control character but tab and newline written out as ``\\xNN``,
    so that no escape sequence in a user string (run name, metric name, config key) reaches
    the terminal, while multi-line messages keep their lines."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))
