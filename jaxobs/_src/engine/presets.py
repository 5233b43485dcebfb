"""Presets: sets of `jaxobs.init` and `jaxobs.observe` options for common situations
(seed 000's ``LogConfig.production()``). JAX-free."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from jaxobs._src.engine.levels import LogLevel

__all__ = ["Preset", "debug", "production"]


@dataclasses.dataclass(frozen=True)
class Preset:
    """Options for `jaxobs.init` (``init``) and `jaxobs.observe` (``observe``), to unpack:

    Example:
      >>> preset = jaxobs.presets.production()
      >>> run = jaxobs.init(project="lm", **preset.init)          # doctest: +SKIP
      >>> train_step = jaxobs.observe(step, **preset.observe)      # doctest: +SKIP

    Attributes:
      name: What the preset is for.
      init: Keyword arguments of `jaxobs.init` (read-only).
      observe: Keyword arguments of `jaxobs.observe` (read-only).
    """

    name: str
    init: Mapping[str, Any]
    observe: Mapping[str, Any]

    def with_options(self, **observe: Any) -> Preset:
        """The preset with some `jaxobs.observe` options changed (``every=10``)."""
        return Preset(self.name, self.init, MappingProxyType({**self.observe, **observe}))


def production(every: int = 100) -> Preset:
    """Observing for the smallest cost: `LogLevel.BASIC` (metrics, global norms, the guard's
    signals) at one step in ``every`` (100), the window of the health signals between
    samples (nothing slips through), the on-device health guard on, no terminal output."""
    return Preset(
        "production",
        MappingProxyType({"terminal": False}),
        MappingProxyType({"level": LogLevel.BASIC, "every": every, "health": True}),
    )


def debug() -> Preset:
    """Everything, every step: `LogLevel.DEBUG` (every statistic per leaf, histograms),
    activation statistics, the health guard, the terminal on."""
    return Preset(
        "debug",
        MappingProxyType({"terminal": True}),
        MappingProxyType({"level": LogLevel.DEBUG, "activations": True, "health": True}),
    )
