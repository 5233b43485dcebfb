"""How a run ends: SIGTERM inside a ``with run:`` block, interpreter exit, and the status
that the exception leaving the block gives.

- Inside ``with run:`` (on the main thread), SIGTERM raises `Terminated`, a `SystemExit`
  with status 143, so that ``finally`` blocks run and the run ends as ``terminated``. A
  SIGTERM that arrives while the run is finishing waits until it has finished. The previous
  handler is put back when the block ends.
- A run never finished explicitly is finished at interpreter exit, by the process that
  started it only, with the status of what ended the script: ``interrupted`` for an uncaught
  Ctrl-C (also one that interrupts a slow ``finish``), ``failed`` for another uncaught
  exception or a ``sys.exit(n)`` with a non-zero or non-integer ``n``, else ``finished``.
  See `exit_seen` for how an exit code is learnt, and its limits.
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
from typing import TYPE_CHECKING, Any, NoReturn

from jaxobs._src.formats.redact import redact_text

if TYPE_CHECKING:
    from jaxobs._src.host.run import Run

__all__ = [
    "ACTIVE",
    "ActiveRun",
    "Lifecycle",
    "Terminated",
    "active_run",
    "error_record",
    "exit_seen",
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
    characters, with secrets redacted (`redact_text`: a URL's credentials, token formats)."""
    return {
        "type": type(error).__name__,
        "message": redact_text(str(error)),
        "traceback": redact_text("".join(traceback.format_exception(error))[-4000:]),
    }


# -- exit codes. SystemExit never reaches sys.excepthook and leaves no trace for atexit, so
# sys.exit is wrapped (once per process, calling the original) to see the exception it raises.

_exit_lock = threading.Lock()
_exit_seen: list[tuple[SystemExit, Any, Any]] = []  # (exception, wrapper frame, bottom frame)
_original_exit: Callable[..., NoReturn] | None = None


def _bottom_frame(frame: Any) -> Any:
    while frame.f_back is not None:
        frame = frame.f_back
    return frame


def _exit(status: object = None, /) -> NoReturn:
    """`sys.exit`, noting the `SystemExit` it raises on the main thread (see `exit_seen`)."""
    assert _original_exit is not None
    if threading.current_thread() is not threading.main_thread():
        _original_exit(status)
    here = sys._getframe()
    try:
        _original_exit(status)
    except SystemExit as e:
        _exit_seen[:] = [(e, here, _bottom_frame(here))]
        raise


def install_exit_hook() -> None:
    """Wrap `sys.exit` (once per process) so that `exit_seen` can report its exit code."""
    global _original_exit
    with _exit_lock:
        if _original_exit is None:
            _original_exit = sys.exit
            sys.exit = _exit


def exit_seen() -> SystemExit | None:
    """The `SystemExit` of the last ``sys.exit(...)`` called on the main thread, when nothing
    caught it on its way out (best effort), else None.

    ``sys.exit`` is wrapped by the first run that registers for interpreter exit (the wrapper
    calls the original, so other wrappers and the exit code are unaffected). A ``sys.exit``
    whose `SystemExit` is caught inside a function counts as caught: its traceback then begins
    at the catching frame, not at the wrapper or the bottom of the stack.

    Limits: ``raise SystemExit(n)``, the ``exit()``/``quit()`` builtins, and an ``exit`` bound
    before the first run started (``from sys import exit``) are not seen, so the run is
    ``finished``; a `SystemExit` caught at the top level of the script itself (not inside a
    function) and followed by a normal end still counts; before Python 3.12 a `SystemExit`
    caught and re-raised inside a function counts as caught.
    """
    if not _exit_seen:
        return None
    exc, wrapper, bottom = _exit_seen[0]
    tb = exc.__traceback__
    if tb is not None and tb.tb_frame is not wrapper and tb.tb_frame is not bottom:
        return None  # caught on its way up (by the frame the traceback now begins at)
    return exc


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
        install_exit_hook()
        atexit.register(self.finish_at_exit)

    def unregister_exit(self) -> None:
        """The run has finished: nothing to do at exit."""
        atexit.unregister(self.finish_at_exit)

    def finish_at_exit(self) -> None:
        """What runs at interpreter exit: finish the run with the status of what ended the
        script (`exit_status` of the uncaught exception or of `exit_seen`)."""
        if os.getpid() != self._pid:  # a forked child must not end its parent's run
            return
        finish = self._finish()
        if finish is None:
            return
        # An uncaught exception in a script (Ctrl-C included) leaves sys.last_value, set
        # before sys.excepthook runs; in an interactive session it may be an older, unrelated
        # error. A SystemExit leaves nothing there: exit_seen knows sys.exit's.
        error = None if hasattr(sys, "ps1") else getattr(sys, "last_value", None)
        if error is None and not hasattr(sys, "ps1"):
            error = exit_seen()
        status = exit_status(error)
        finish(status, error if status != "finished" else None)

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
