"""`LogLevel`: how much an observed step computes (seed 000's levels, which here decide
the cost). JAX-free."""

from __future__ import annotations

import enum
from typing import Any

__all__ = ["LogLevel"]


class LogLevel(enum.Enum):
    """What `jaxobs.observe` computes by default; explicit ``stats=``, ``per=``, ``watch=``
    and ``histograms=`` win over the level.

    - ``BASIC``: the returned metrics, the global norms of the watched trees
      (``grads/global_norm``, ``params/global_norm``, ``updates/global_norm``), the global
      update ratio (``updates/update_ratio``) and the guard's signals. For production.
    - ``DETAILED`` (the default): ``BASIC`` plus the norm of every leaf
      (``grads/<layer>/kernel/norm``, ...: the per-layer norms follow from them on the host,
      `jaxobs.crash.layer_norms`) and per-layer update ratios
      (``updates/<layer>/update_ratio``).
    - ``EXPERT``: every statistic of `jaxobs.stats.STATS` per leaf, plus activations when
      ``activations=True``.
    - ``DEBUG``: ``EXPERT`` plus histograms of the watched trees at every sampled step.

    The measured cost of each level is in the performance docs.
    """

    BASIC = "basic"
    DETAILED = "detailed"
    EXPERT = "expert"
    DEBUG = "debug"

    @classmethod
    def of(cls, value: Any) -> LogLevel:
        """``value`` as a `LogLevel`: a member, or its name in any case (``"expert"``).

        Raises:
          ValueError: For anything else, naming the levels.
        """
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            try:
                return cls[value.upper()]
            except KeyError:
                pass
        names = ", ".join(m.name.lower() for m in cls)
        raise ValueError(f"observe(level={value!r}): choose one of {names} (or a jaxobs.LogLevel)")
