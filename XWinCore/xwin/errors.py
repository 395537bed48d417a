"""The one error type XWin raises for bad user input."""
from __future__ import annotations

import os


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
