"""Installing the XWin core into Slicer's Python: the decisions, as pure functions (no Slicer, no Qt, no xwin).

`XWinSlicer.py` asks these what to do and then does it with Slicer's calls (``slicer.util.pip_install``,
``PyTorchUtils``, dialogs); Testing/Python/test_slicer_install.py tests them. Importable on Python 3.9 (Slicer 5.8),
so the module can say why it cannot run there instead of failing to load.

Policy (issue 14):

* Supported: 3D Slicer ≥ 5.10, whose Python (3.12) meets XWinCore's ``requires-python`` (≥ 3.10). Slicer 5.8
  bundles Python 3.9: the module loads, says so, and installs nothing.
* Never replace a package Slicer bundles (SlicerTotalSegmentator's approach: install the package itself with
  ``--no-deps``, then each requirement except a skip list; lassoan/SlicerTotalSegmentator,
  TotalSegmentator/TotalSegmentator.py, ``setupPythonRequirements`` / ``pipInstallSelective``, ``packagesToSkip``). A
  bundled package is kept even when XWinCore would ask for a newer one (Slicer's DICOM browser is built on its
  pydicom); such a mismatch is reported, not "fixed". The core works with Slicer 5.10's pydicom 2.4.3
  (``xwin.io.dicom_compat``, tested by XWinCore/tests/test_pydicom24.py).
* torch comes from the PyTorch extension (``PyTorchUtils``, which picks the CUDA/CPU wheel for the machine), and only
  when it is missing; pip never installs it as a dependency of the core.
* Installation happens on the first action that needs the core, after the user agreed; declining is not remembered,
  so the next action asks again.
* An installed core older than the module's offers an upgrade.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

#: Oldest supported release of 3D Slicer (the first whose Python satisfies XWinCore's requires-python).
MIN_SLICER = (5, 10)
#: Python packages 3D Slicer bundles (normalised names; Slicer/Slicer SuperBuild/External_python-*.cmake, e.g.
#: External_python-dicom-requirements.cmake: pydicom 2.4.3, six, Pillow 10.1, retrying, dicomweb-client; numpy, scipy,
#: SimpleITK, requests and its requirements, packaging, pip, setuptools, wheel; VTK, CTK, PythonQt are built in).
SLICER_BUNDLED = frozenset({
    "numpy", "scipy", "simpleitk", "pydicom", "pillow", "six", "retrying", "dicomweb-client", "requests",
    "urllib3", "idna", "certifi", "charset-normalizer", "packaging", "pip", "setuptools", "wheel", "vtk",
    "gitpython", "pyparsing",
})
#: Never installed by pip as a core dependency: torch comes from the PyTorch extension (PyTorchUtils).
FROM_PYTORCH_EXTENSION = frozenset({"torch", "torchvision"})


def normalize(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_version(text: str) -> tuple:
    """A comparable tuple of a release version ('5.10.0' → (5, 10, 0)); pre/post/dev parts are ignored."""
    release = re.match(r"\s*v?(\d+(?:\.\d+)*)", str(text))
    return tuple(int(x) for x in release.group(1).split(".")) if release else ()


def _older(a: tuple, b: tuple) -> bool:
    n = max(len(a), len(b))
    return a + (0,) * (n - len(a)) < b + (0,) * (n - len(b))


@dataclass(frozen=True)
class CoreProject:
    """What XWinCore/pyproject.toml declares."""

    version: str
    requires_python: str
    dependencies: tuple[str, ...]


def read_core_project(pyproject: str | Path) -> CoreProject:
    """Name, version, requires-python and dependencies of XWinCore/pyproject.toml (tomllib where available, else a
    minimal reader of the ``[project]`` table: Python 3.10 has no tomllib)."""
    text = Path(pyproject).read_text(encoding="utf-8")
    try:
        import tomllib
        project = tomllib.loads(text)["project"]
        return CoreProject(project["version"], project.get("requires-python", ""),
                           tuple(project.get("dependencies", ())))
    except ImportError:
        pass
    section = re.search(r"^\[project\]\s*$(.*?)(?=^\[)", text + "\n[", re.S | re.M).group(1)
    version = re.search(r'^version\s*=\s*"([^"]+)"', section, re.M).group(1)
    requires = re.search(r'^requires-python\s*=\s*"([^"]+)"', section, re.M)
    deps = re.search(r"^dependencies\s*=\s*\[(.*?)\]", section, re.S | re.M)
    return CoreProject(version, requires.group(1) if requires else "",
                       tuple(re.findall(r'"([^"]+)"', deps.group(1))) if deps else ())


def unsupported_reason(python_version: tuple, slicer_version: tuple | None, requires_python: str = ">=3.10") -> \
        str | None:
    """Why the core cannot run in this Slicer (None when it can): its Python is older than ``requires_python``."""
    minimum = parse_version(requires_python.lstrip(">=~ ")) if requires_python else ()
    if minimum and _older(tuple(python_version[:len(minimum)]), minimum):
        have = ".".join(str(x) for x in python_version[:3])
        slicer = f"3D Slicer {'.'.join(str(x) for x in slicer_version)}" if slicer_version else "This 3D Slicer"
        return (f"{slicer} runs Python {have}; the XWin core needs Python {requires_python.lstrip('>= ')} or newer. "
                f"Use 3D Slicer {'.'.join(str(x) for x in MIN_SLICER)} or newer.")
    return None


def core_status(installed_version: str | None, module_version: str) -> str:
    """'missing', 'outdated' (installed older than the module's XWinCore: offer an upgrade), or 'current'."""
    if not installed_version:
        return "missing"
    return "outdated" if _older(parse_version(installed_version), parse_version(module_version)) else "current"


@dataclass
class InstallPlan:
    """What to do for the core's dependencies: ``install`` (pip requirement strings), ``torch`` (install it with
    PyTorchUtils first), ``kept`` (bundled with Slicer, left as is even though the core asks for another version:
    (requirement, installed version)), ``satisfied`` (names already fine)."""

    install: list[str] = field(default_factory=list)
    torch: str | None = None
    kept: list[tuple[str, str]] = field(default_factory=list)
    satisfied: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = []
        if self.torch:
            lines.append(f"PyTorch ({self.torch}) through the PyTorch extension")
        if self.install:
            lines.append("pip: " + ", ".join(self.install))
        if self.kept:
            lines.append("kept as bundled with Slicer: " + ", ".join(f"{n} {v} (core asks {r})"
                                                                      for r, v, n in self._kept_named()))
        return "\n".join(lines)

    def _kept_named(self):
        for requirement, version in self.kept:
            yield requirement, version, _split_requirement(requirement)[0]


def _split_requirement(requirement: str) -> tuple[str, str, str]:
    """(name, specifier, marker) of a PEP 508 requirement string (extras dropped)."""
    text, _, marker = requirement.partition(";")
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)", text)
    return m.group(1), m.group(3).strip(), marker.strip()


def satisfies(version: str, specifier: str) -> bool:
    """Whether ``version`` meets ``specifier`` ('>=1.2,<2'); ``packaging`` when present (Slicer bundles it), else the
    comparison operators on release numbers."""
    if not specifier:
        return True
    try:
        from packaging.specifiers import SpecifierSet
        return SpecifierSet(specifier).contains(version, prereleases=True)
    except ImportError:  # pragma: no cover - Slicer and the test venv have packaging
        pass
    v = parse_version(version)
    for clause in specifier.split(","):
        op, ref = re.match(r"\s*(==|!=|>=|<=|~=|>|<)\s*(\S+)", clause).groups()
        r = parse_version(ref)
        ok = {"==": not _older(v, r) and not _older(r, v), "!=": _older(v, r) or _older(r, v),
              ">=": not _older(v, r), "<=": not _older(r, v), ">": _older(r, v), "<": _older(v, r),
              "~=": not _older(v, r)}[op]
        if not ok:
            return False
    return True


def _marker_applies(marker: str) -> bool:
    if not marker:
        return True
    try:
        from packaging.markers import Marker
        return Marker(marker).evaluate()
    except ImportError:  # pragma: no cover
        return True


def plan_install(dependencies, installed: dict[str, str], bundled=SLICER_BUNDLED,
                 from_pytorch_extension=FROM_PYTORCH_EXTENSION) -> InstallPlan:
    """Decide, per requirement of the core, what to do given the ``installed`` distributions (name → version).

    Bundled with Slicer: never touched (kept, mismatch reported). torch: from the PyTorch extension when missing.
    Otherwise pip installs a requirement that is missing or not satisfied."""
    installed = {normalize(k): v for k, v in installed.items()}
    bundled = {normalize(n) for n in bundled}
    plan = InstallPlan()
    for requirement in dependencies:
        name, specifier, marker = _split_requirement(requirement)
        if not _marker_applies(marker):
            continue
        key = normalize(name)
        have = installed.get(key)
        if key in {normalize(n) for n in from_pytorch_extension}:
            if have is None and key == "torch":
                plan.torch = specifier or "any version"
            elif have is not None and not satisfies(have, specifier):
                plan.kept.append((requirement, have))
            continue
        if have is not None and satisfies(have, specifier):
            plan.satisfied.append(name)
        elif key in bundled and have is not None:
            plan.kept.append((requirement, have))
        else:
            plan.install.append(f"{name}{specifier}")
    return plan


def installed_distributions() -> dict[str, str]:
    """name → version of every distribution in this Python (importlib.metadata; nothing imported)."""
    import importlib.metadata
    out = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"] if dist.metadata else None
        if name:
            out[normalize(name)] = dist.version
    return out


def python_version() -> tuple:
    return tuple(sys.version_info[:3])
