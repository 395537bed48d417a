"""Issue 14, packaging: the CMake lists name every file the module loads, the .ui and icon sit in ``Resources/``
beside the module (source tree = build/install layout), the core and the embedded model are found from a source, a
build and an install tree (macOS bundle included); SampleData sources of the demo CT/CXR; Export's default folder."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from XWinSlicerLib import paths, sampledata

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "XWinSlicer"


def cmake_list(name: str) -> list[str]:
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    m = re.search(rf"set\({name}\s+(.*?)\)", text, re.S)
    assert m, f"{name} is not set in XWinSlicer/CMakeLists.txt"
    return [x.replace("${MODULE_NAME}", "XWinSlicer") for x in m.group(1).split()]


def test_every_module_script_is_listed():
    listed = set(cmake_list("MODULE_PYTHON_SCRIPTS"))
    present = {p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.rglob("*.py") if "__pycache__" not in p.parts}
    assert present == listed, f"not listed: {present - listed}; listed but missing: {listed - present}"


def test_every_loaded_resource_is_listed_and_beside_the_module():
    resources = cmake_list("MODULE_PYTHON_RESOURCES")
    assert resources, "MODULE_PYTHON_RESOURCES is empty"
    for r in resources:
        assert (MODULE_DIR / r).is_file(), r
    source = (MODULE_DIR / "XWinSlicer.py").read_text()
    loaded = {f"Resources/{p}" for p in re.findall(r"resourcePath\(\s*[\"']([^\"']+)[\"']", source)}
    loaded.add("Resources/Icons/XWinSlicer.png")  # the module icon ScriptedLoadableModule looks for
    loaded |= {f"Resources/{p}" for p in re.findall(r"\"Resources\" / \"(Icons)\" / \"([^\"]+)\"", source)
               for p in ["/".join(p)]}
    assert loaded <= set(resources), f"loaded but not listed: {loaded - set(resources)}"
    assert "UI/XWinSlicer.ui" in source


def test_requirements_file_is_not_a_second_list():
    """The core's requirements are read from XWinCore/pyproject.toml (XWinSlicerLib.install); no copy to drift."""
    assert not (ROOT / "Resources" / "requirements.txt").exists()


def make_share(folder: Path) -> Path:
    (folder / "XWinCore").mkdir(parents=True)
    (folder / "XWinCore" / "pyproject.toml").write_text("[project]\nname = 'xwin'\n")
    return folder


def test_shared_folder_from_the_source_tree():
    assert paths.find_shared_folder(MODULE_DIR, environ={}) == ROOT


def test_shared_folder_from_a_build_tree(tmp_path):
    build = tmp_path / "build"
    module = build / "lib" / "Slicer-5.8" / "qt-scripted-modules"
    module.mkdir(parents=True)
    src = make_share(tmp_path / "src")
    (build / "CMakeCache.txt").write_text(f"CMAKE_BUILD_TYPE:STRING=Release\nXWinSlicer_SOURCE_DIR:STATIC={src}\n")
    assert paths.find_shared_folder(module, environ={}) == src


@pytest.mark.parametrize("prefix", ["", "Slicer.app/Contents/"])
def test_shared_folder_from_an_install_tree(tmp_path, prefix):
    root = tmp_path / "XWinSlicer" / prefix
    module = root / "lib" / "Slicer-5.10" / "qt-scripted-modules"
    module.mkdir(parents=True)
    share = make_share(root / "share" / "Slicer-5.10" / "XWinSlicer")
    assert paths.find_shared_folder(module, environ={}) == share


def test_shared_folder_macos_prefix_on_one_side_only(tmp_path):
    root = tmp_path / "ext"
    module = root / "Slicer.app" / "Contents" / "lib" / "Slicer-5.8" / "qt-scripted-modules"
    module.mkdir(parents=True)
    share = make_share(root / "share" / "Slicer-5.8" / "XWinSlicer")
    assert paths.find_shared_folder(module, environ={}) == share


def test_environment_override_wins(tmp_path):
    share = make_share(tmp_path / "mine")
    assert paths.find_shared_folder(MODULE_DIR, environ={"XWIN_SHARE_DIR": str(share)}) == share


def test_embedded_model_found_in_the_source_tree():
    assert paths.embedded_checkpoint(ROOT) == ROOT / "Resources" / "Models" / "xwin_default.safetensors"
    assert paths.embedded_checkpoint(ROOT).resolve() == \
        ROOT / "XWinCore" / "xwin" / "models" / "weights" / "xwin_default.safetensors"  # one file (issue 15)


def test_embedded_model_in_a_checkout_without_links(tmp_path):
    """git without symbolic links (Windows' default) writes Resources/Models as a text file holding the link's target:
    the module then uses the core's package data, the model's one file in the repository."""
    share = make_share(tmp_path / "src")
    (share / "Resources").mkdir()
    (share / "Resources" / "Models").write_text("../XWinCore/xwin/models/weights")
    assert paths.embedded_checkpoint(share) is None
    model = share / "XWinCore" / "xwin" / "models" / "weights" / "xwin_default.safetensors"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"\0" * 4096)
    assert paths.embedded_checkpoint(share) == model


def test_install_tree_gets_the_model_files_not_a_link():
    """CMake copies a symbolic link as a link: the model is installed from the package folder it lives in."""
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    m = re.search(r"install\(DIRECTORY (\S+)\s+DESTINATION (\S+)/Resources/Models\b", text)
    assert m, "the embedded model is not installed to Resources/Models"
    source = Path(m.group(1).replace("${PROJECT_SOURCE_DIR}", str(ROOT)))
    assert not source.is_symlink() and (source / "xwin_default.safetensors").is_file()
    assert (source / "MODEL_CARD.md").is_file()


def test_sample_data_sources_point_at_the_shipped_files():
    sources = sampledata.sample_data_sources(ROOT)
    assert [s["nodeNames"] for s in sources] == ["XWinDemoCT", "XWinDemoCXR"]
    for s in sources:
        path = Path(s["uris"].removeprefix("file://"))
        assert path.is_file() and s["checksums"] == f"SHA256:{sampledata.sha256(path)}"
        assert s["loadFileType"] == "VolumeFile" and s["category"] == "XWin"
    assert sampledata.sample_data_sources(None) == []


def test_export_default_folder_is_not_the_working_directory(tmp_path):
    assert paths.default_export_folder(str(tmp_path)) == str(tmp_path / "XWin")
    assert paths.default_export_folder("", home=tmp_path) == str(tmp_path / "XWin")
    assert Path(paths.default_export_folder(None)) != Path.cwd()
