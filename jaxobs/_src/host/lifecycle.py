"""How a run ends: SIGTERM inside a ``with run:`` block, interpreter exit, and the status
that the exception leaving the block gives.

- Inside ``with run:`` (on the main thread), SIGTERM raises `Terminated`, a `SystemExit`
  with status 143, so that ``finally`` blocks run and the run ends as ``terminated``. A
  SIGTERM that arrives while the run is finishing waits until it has finished. The previous
  handler is put back when the block ends.
- A run never finished explicitly is finished at interpreter exit (``failed`` when an
  uncaught exception ends the script), by the process that started it only.
- The *active run* (`active_run`) is the run started last that has not finished; runs may
  start and finish on any thread.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
import traceback
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jaxobs._src.host.run import Run

__all__ = [
    "ACTIVE",
    "ActiveRun",
    "Lifecycle",
    "Terminated",
    "active_run",
    "error_record",
    "exit_status",
]


class Terminated(SystemExit):
    """Raised inside a ``with run:`` block when the process receives SIGTERM.

    It derives from `SystemExit` (exit status 143, as for a process killed by SIGTERM) so that
    ``finally`` blocks run and the run directory is completed and fsynced on the way out.
    """

    def __init__(self):
        super().__init__(128 + signal.SIGTERM)


class ActiveRun:
    """The run started last by `jaxobs.init` that has not finished. Thread-safe.

    The unfinished runs are kept in the order they started, so that when the last one
    finishes the one started before it is active again. The run started last is held
    strongly (``jaxobs.log`` reaches it without a reference of the caller's); the others
    weakly, so a run dropped without finishing can still be collected.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: Run | None = None
        self._started: list[weakref.ref[Run]] = []

    def get(self) -> Run | None:
        with self._lock:
            if self._last is not None:
                return self._last
            for ref in reversed(self._started):
                run = ref()
                if run is not None:
                    return run
            return None

    def set(self, run: Run) -> None:
        with self._lock:
            self._started.append(weakref.ref(run))
            self._last = run

    def clear(self, run: Run) -> None:
        """Forget ``run``: the latest unfinished run started before it is active again."""
        with self._lock:
            self._started = [ref for ref in self._started if ref() not in (None, run)]
            if self._last is run:
                self._last = None


ACTIVE = ActiveRun()


def active_run() -> Run | None:
    """The run started last by `jaxobs.init` that has not finished, or None."""
    return ACTIVE.get()


def exit_status(exc: BaseException | None) -> str:
    """The ``run_end`` status for ``exc`` leaving a ``with run:`` block (None: no exception).

    ``sys.exit(0)`` and ``sys.exit()`` finish the run; `Terminated` ends it as ``terminated``,
    Ctrl-C as ``interrupted``, anything else (a non-zero exit included) as ``failed``.
    """
    if exc is None or (
        isinstance(exc, SystemExit) and not isinstance(exc, Terminated) and exc.code in (0, None)
    ):
        return "finished"
    if isinstance(exc, Terminated):
        return "terminated"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return "failed"


def error_record(error: BaseException) -> dict[str, str]:
    """The ``error`` field of ``run_end``: type, message and the traceback's last 4,000
    characters."""
    return {
        "type": type(error).__name__,
        "message": str(error),
        "traceback": "".join(traceback.format_exception(error))[-4000:],
    }


_NOT_INSTALLED = object()


class Lifecycle:
    """The SIGTERM handler of a ``with run:`` block and the interpreter-exit hook of a run.

    Args:
      finish: The run's ``finish(status, error)``. It is held weakly, so a run dropped
        without finishing can still be collected.
    """

    def __init__(self, finish: Callable[[str, BaseException | None], Any]):
        self._finish = weakref.WeakMethod(finish)
        self._pid = os.getpid()
        self._saved_sigterm: Any = _NOT_INSTALLED
        self._sigterm_pending = False
        self.finishing = False  # set by the run: a SIGTERM now waits until it has finished

    # -- interpreter exit

    def register_exit(self) -> None:
        """Finish the run at interpreter exit unless it has finished by then."""
        atexit.register(self.finish_at_exit)

    def unregister_exit(self) -> None:
        """The run has finished: nothing to do at exit."""
        atexit.unregister(self.finish_at_exit)

    def finish_at_exit(self) -> None:
        """What runs at interpreter exit: finish the run, with the script's uncaught error."""
        if os.getpid() != self._pid:  # a forked child must not end its parent's run
            return
        finish = self._finish()
        if finish is None:
            return
        # An uncaught exception in a script leaves sys.last_value; in an interactive session it
        # may be an older, unrelated error.
        error = None if hasattr(sys, "ps1") else getattr(sys, "last_value", None)
        finish("failed" if error is not None else "finished", error)

    # -- the with block

    def enter(self) -> None:
        """Make SIGTERM raise `Terminated` (on the main thread; elsewhere Python cannot)."""
        if threading.current_thread() is not threading.main_thread():
            return

        def on_sigterm(signum, frame):
            if self.finishing:  # let the run end completely, then stop
                self._sigterm_pending = True
                return
            raise Terminated()

        self._saved_sigterm = signal.signal(signal.SIGTERM, on_sigterm)

    def restore(self) -> None:
        """Put back the SIGTERM handler that `enter` replaced."""
        if self._saved_sigterm is not _NOT_INSTALLED:
            # None means a handler installed from C: the closest is the default action.
            signal.signal(signal.SIGTERM, self._saved_sigterm or signal.SIG_DFL)
            self._saved_sigterm = _NOT_INSTALLED

    def raise_pending(self, exc: BaseException | None) -> None:
        """Raise the `Terminated` of a SIGTERM that came while finishing, unless ``exc``
        (already leaving the block) is on its way out.

        Raises:
          Terminated: a SIGTERM arrived while the run was finishing.
        """
        if self._sigterm_pending and exc is None:
            self._sigterm_pending = False
            raise Terminated()
