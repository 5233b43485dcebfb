"""Reading flight-recorder crash dumps: load, find the first layer to diverge, summarise, plot.

When a run dies (a critical health alert, an exception, SIGTERM, Ctrl-C, a halt) the flight
recorder writes ``<run dir>/crash/crash-<step>.json``: the trigger, the health alerts, the
health checker's thresholds, and the last ``capacity`` steps of every recorded series. This
module reads such a file back and turns it into an answer to "what broke first?".

- `load_dump` reads and validates a dump into a `CrashDump`.
- `layer_norms` combines per-leaf norms into one norm per layer, marking non-finite steps.
- `first_diverged` names the first layer whose norm blew up (also used by the recorder
  when it writes a dump, so it takes plain NumPy arrays).
- `summary` is a plain-text report; `plot` draws the failure signature as a PNG.

The command line exposes the last two as ``jaxobs crash show`` and ``jaxobs crash plot``.

Nothing here imports jax; `plot` imports matplotlib when called.

Example:
    >>> import numpy as np
    >>> steps = np.arange(10)
    >>> series = {
    ...     "grads/Dense_0/kernel/norm": np.ones(10),
    ...     "grads/Dense_1/kernel/norm": np.r_[np.ones(6), 50.0, np.inf, np.nan, np.nan],
    ... }
    >>> hit = first_diverged(steps, series)
    >>> hit["layer"], hit["step"], hit["ratio"]
    ('Dense_1', 6, 50.0)
"""

from jaxobs._src.analysis.crash_plot import plot
from jaxobs._src.analysis.crash_summary import summary
from jaxobs._src.analysis.diagnose import first_diverged, layer_norms
from jaxobs._src.formats.crash_dump import (
    CRASH_FORMAT,
    CRASH_SCHEMA_VERSION,
    CrashDump,
    find_dump,
    load_dump,
)
from jaxobs._src.formats.errors import CrashDumpError, CrashDumpVersionError

__all__ = [
    "CRASH_FORMAT",
    "CRASH_SCHEMA_VERSION",
    "CrashDump",
    "CrashDumpError",
    "CrashDumpVersionError",
    "find_dump",
    "first_diverged",
    "layer_norms",
    "load_dump",
    "plot",
    "summary",
]
