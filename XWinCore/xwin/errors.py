"""The one error type XWin raises for bad user input, and how a run is told to stop (signals)."""
from __future__ import annotations

import os
import signal


class XWinInputError(ValueError):
    """Bad input: names the offending file (when there is one) and the problem; a problem of no file may name the
    library parameters behind it (``parameters``: e.g. ``("sid", "sdd")``), which front ends map to their options.

    The CLI turns it into one readable line on stderr and exit status 2.
    """

    def __init__(self, path: str | os.PathLike | None, problem: str, *, parameters: tuple[str, ...] = ()):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        self.parameters = parameters
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class Terminated(BaseException):
    """SIGTERM (a job scheduler, the Slicer panel), SIGHUP (the terminal closed), SIGQUIT or another signal whose
    default is to end the process (SIGUSR1/2, SIGALRM, SIGXCPU: a CPU-time limit, SIGXFSZ: a file-size limit) raised
    as an exception, so that every output being written is cleaned up on the way out exactly as on Ctrl-C; exit
    status 128 + signum."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(signum)
        self.signum = int(signum)


# the signals that end a command as Terminated (only SIGTERM exists on Windows)
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2",
                                                        "SIGALRM", "SIGXCPU", "SIGXFSZ") if hasattr(signal, name))
