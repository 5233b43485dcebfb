"""Presets: ready sets of `jaxobs.init` and `jaxobs.observe` options.

- `production`: `jaxobs.LogLevel.BASIC` every 100 steps, the window of health signals
  between samples, the health guard on, no terminal (seed 000's ``LogConfig.production()``).
- `debug`: `jaxobs.LogLevel.DEBUG` every step, activations and histograms included.

Example:
  >>> import jaxobs
  >>> preset = jaxobs.presets.production()
  >>> preset.observe["every"]
  100
"""

from jaxobs._src.engine.presets import Preset, debug, production

__all__ = ["Preset", "debug", "production"]
