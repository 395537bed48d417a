"""Package attributes imported on first use (PEP 562): a package whose submodules differ widely in import cost
(numba, torch, pydicom) loads only the one a caller names, so a command imports what it uses (issue 15)."""
from __future__ import annotations

import importlib
import sys


def lazy_attributes(package: str, homes: dict[str, str]):
    """``(__getattr__, __dir__)`` for ``package``: each name of ``homes`` comes from the submodule it maps to,
    imported on first access and then kept in the package's namespace."""
    namespace = vars(sys.modules[package])

    def __getattr__(name: str):
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{home}"), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(homes))

    return __getattr__, __dir__
