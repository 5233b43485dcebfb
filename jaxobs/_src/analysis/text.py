"""Numbers as text: the one formatting rule of the terminal, the CLI, alerts and reports."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["format_value"]


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
