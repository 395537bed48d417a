"""The installation decisions of the Slicer module (issue 14), as pure functions (`XWinSlicerLib.install`): supported
versions, the skip list of packages Slicer bundles, torch only from the PyTorch extension and only when missing, the
upgrade offer when the installed core is older than the module's."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from XWinSlicerLib import install
from XWinSlicerLib.install import core_status, plan_install, read_core_project, unsupported_reason

ROOT = Path(__file__).resolve().parents[2]

# What Slicer 5.10 ships (Slicer/Slicer SuperBuild/External_python-dicom-requirements.cmake and friends) plus torch
# from the PyTorch extension.
SLICER_5_10 = {"numpy": "1.26.4", "scipy": "1.13.1", "SimpleITK": "2.4.0", "pydicom": "2.4.3", "Pillow": "10.1.0",
               "requests": "2.32.3", "packaging": "24.1", "pip": "24.2", "setuptools": "75.1.0"}


def test_the_module_reads_the_core_it_ships():
    project = read_core_project(ROOT / "XWinCore" / "pyproject.toml")
    assert project.version and project.requires_python == ">=3.10"
    assert any(d.startswith("torch") for d in project.dependencies)
    assert any(d.startswith("pydicom") for d in project.dependencies)


def test_the_fallback_pyproject_reader_agrees_with_tomllib(monkeypatch):
    path = ROOT / "XWinCore" / "pyproject.toml"
    expected = read_core_project(path)
    monkeypatch.setitem(sys.modules, "tomllib", None)  # Python 3.10 (no tomllib)
    assert read_core_project(path) == expected


def test_slicer_5_8_is_refused_with_a_clear_message_and_5_10_is_supported():
    message = unsupported_reason((3, 9, 10), (5, 8, 1), ">=3.10")
    assert message and "Python 3.9.10" in message and "3.10" in message and "5.10" in message
    assert unsupported_reason((3, 12, 10), (5, 10, 0), ">=3.10") is None
    assert unsupported_reason((3, 10, 0), None, ">=3.10") is None


def test_bundled_packages_are_never_replaced_and_torch_comes_from_the_pytorch_extension():
    project = read_core_project(ROOT / "XWinCore" / "pyproject.toml")
    plan = plan_install(project.dependencies, SLICER_5_10)
    names = [install._split_requirement(r)[0].lower() for r in plan.install]
    for bundled in ("numpy", "scipy", "simpleitk", "pydicom", "pillow"):
        assert bundled not in names, f"{bundled} is bundled with Slicer: never replaced"
    assert "pydicom" in plan.satisfied  # the core reads and writes DICOM with Slicer 5.10's pydicom 2.4.3
    newer = plan_install(["pydicom>=3.0"], SLICER_5_10)  # a bundled package the core would want newer
    assert newer.install == [] and newer.kept == [("pydicom>=3.0", "2.4.3")]  # reported, never upgraded
    assert "pydicom 2.4.3" in newer.summary()
    assert "torch" not in names and "torchvision" not in names
    assert plan.torch == ">=2.2"  # missing: PyTorchUtils installs it
    assert {"timm", "monai", "numba", "safetensors", "pyyaml"} <= set(names)
    assert "PyTorch" in plan.summary()


def test_torch_already_installed_is_left_alone_and_satisfied_packages_are_skipped():
    installed = {**SLICER_5_10, "torch": "2.5.1", "timm": "1.0.9", "numba": "0.58.0"}
    plan = plan_install(["torch>=2.2", "timm>=1.0", "numba>=0.59", "pydicom>=3.0", "einops>=0.7"], installed)
    assert plan.torch is None and "timm" in plan.satisfied
    assert plan.install == ["numba>=0.59", "einops>=0.7"]  # too old and not bundled: upgraded; missing: installed
    old_torch = plan_install(["torch>=2.2"], {"torch": "2.0.1"})
    assert old_torch.torch is None and old_torch.install == [] and old_torch.kept == [("torch>=2.2", "2.0.1")]


def test_a_package_slicer_does_not_bundle_but_is_missing_is_installed_even_if_named_like_one():
    plan = plan_install(["SimpleITK>=2.3", "pyyaml>=6; python_version >= '3'", "nothing; python_version < '3'"], {})
    assert plan.install == ["SimpleITK>=2.3", "pyyaml>=6"]  # a plain Python without Slicer's copy: installed


def test_core_status_offers_an_upgrade_when_older_than_the_module():
    assert core_status(None, "0.1.0") == "missing"
    assert core_status("0.0.9", "0.1.0") == "outdated"
    assert core_status("0.1.0", "0.1.0") == "current"
    assert core_status("0.2.0", "0.1.0") == "current"
    assert core_status("0.1", "0.1.0") == "current"


def test_install_decisions_import_without_the_core_and_on_python_3_9_syntax():
    """Slicer 5.8 (Python 3.9) must be able to load the module to show its message: no xwin import, no 3.10 syntax."""
    code = ("import sys; sys.modules['xwin'] = None; sys.path.insert(0, sys.argv[1]); "
            "import XWinSlicerLib.install as i; print(i.core_status(None, '1'))")
    r = subprocess.run([sys.executable, "-c", code, str(ROOT / "XWinSlicer")], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "missing", r.stderr
    import ast
    source = (ROOT / "XWinSlicer" / "XWinSlicerLib" / "install.py").read_text()
    ast.parse(source, feature_version=(3, 9))
    ast.parse((ROOT / "XWinSlicer" / "XWinSlicer.py").read_text(), feature_version=(3, 9))


@pytest.mark.parametrize("text,expected", [("5.10.0", (5, 10, 0)), ("v5.8.1", (5, 8, 1)), ("2.4.3rc1", (2, 4, 3))])
def test_parse_version(text, expected):
    assert install.parse_version(text) == expected
