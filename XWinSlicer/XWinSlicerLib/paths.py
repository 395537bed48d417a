"""Where the module finds what it loads, in each layout Slicer runs it from (pure functions; Python 3.9, no xwin).

The .ui and the icon sit in ``Resources/`` beside ``XWinSlicer.py`` in every layout (the source tree is laid out as the
build and install trees are: ``slicerMacroBuildScriptedModule`` copies ``RESOURCES`` to ``Resources/`` beside the
script, and ``ScriptedLoadableModuleWidget.resourcePath`` joins the module's folder with ``Resources``: Slicer/Slicer
v5.8.1, Base/Python/slicer/ScriptedLoadableModule.py and CMake/SlicerMacroBuildScriptedModule.cmake). The XWin core
(``XWinCore/``, installed into Slicer's Python on first use) and the embedded model (``Resources/Models/``) live in
the *shared folder*, found by `shared_folder_candidates`:

* ``$XWIN_SHARE_DIR`` when set;
* source tree (Extension Wizard "Add module", or ``--additional-module-paths``): the repository, parent of the
  module folder;
* build tree (``<build>/lib/Slicer-X.Y/qt-scripted-modules/XWinSlicer.py``): the source directory recorded by CMake
  in ``<build>/CMakeCache.txt`` (``XWinSlicer_SOURCE_DIR``, set by ``project(XWinSlicer)``);
* install tree (``<root>/lib/Slicer-X.Y/qt-scripted-modules``): ``<root>/share/Slicer-X.Y/XWinSlicer`` (CMake
  ``install(DIRECTORY ... DESTINATION ${Slicer_INSTALL_SHARE_DIR}/XWinSlicer)``). On macOS both install dirs carry the
  bundle prefix ``Slicer.app/Contents/`` (``Slicer_INSTALL_ROOT``, Slicer/Slicer CMake/SlicerDirectoryListing.cmake),
  so the share folder is the same relative path from the module; an extension extracted without that prefix is
  covered by also trying ``<root>/Slicer.app/Contents/share/...`` and the prefix-stripped root.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

MODULE_NAME = "XWinSlicer"
PROJECT_NAME = "XWinSlicer"  # project() in the top-level CMakeLists.txt
BUNDLE_CONTENTS = ("Slicer.app", "Contents")


def is_shared_folder(folder: Path) -> bool:
    return (Path(folder) / "XWinCore" / "pyproject.toml").is_file()


def cmake_source_dir(build_dir: Path, project: str = PROJECT_NAME) -> Path | None:
    """``<project>_SOURCE_DIR`` from ``build_dir/CMakeCache.txt``, if there is one."""
    cache = Path(build_dir) / "CMakeCache.txt"
    try:
        text = cache.read_text(errors="replace")
    except OSError:
        return None
    m = re.search(rf"^{re.escape(project)}_SOURCE_DIR:[A-Z]+=(.*)$", text, re.M)
    return Path(m.group(1).strip()) if m else None


def shared_folder_candidates(module_dir: Path, environ=None) -> list[Path]:
    """Folders that may hold ``XWinCore/`` and ``Resources/Models/``, most specific first (see the module doc)."""
    environ = os.environ if environ is None else environ
    here = Path(module_dir)
    out = [Path(environ["XWIN_SHARE_DIR"])] if environ.get("XWIN_SHARE_DIR") else []
    out.append(here.parent)  # source tree
    if len(here.parents) >= 3:
        slicer_dir = here.parent.name  # Slicer-X.Y
        root = here.parents[2]  # <build> or <install root> (…/Slicer.app/Contents on macOS)
        source = cmake_source_dir(root)
        if source is not None:
            out.append(source)  # build tree
        out.append(root / "share" / slicer_dir / MODULE_NAME)  # install tree, macOS included
        out.append(root.joinpath(*BUNDLE_CONTENTS) / "share" / slicer_dir / MODULE_NAME)
        if root.parts[-2:] == BUNDLE_CONTENTS:
            out.append(root.parents[1] / "share" / slicer_dir / MODULE_NAME)
    return out


def find_shared_folder(module_dir: Path, environ=None) -> Path | None:
    return next((c for c in shared_folder_candidates(module_dir, environ) if is_shared_folder(c)), None)


#: Where the embedded model sits in the shared folder, first found wins: ``Resources/Models`` (install tree; in the
#: source tree a link to the second), then the core's package data, its one file in the repository (a checkout
#: without symbolic links, e.g. git on Windows by default, has only that one).
EMBEDDED_MODEL = (("Resources", "Models"), ("XWinCore", "xwin", "models", "weights"))


def embedded_checkpoint(shared: Path | None) -> Path | None:
    if not shared:
        return None
    paths = (Path(shared).joinpath(*folder, "xwin_default.safetensors") for folder in EMBEDDED_MODEL)
    return next((p for p in paths if p.is_file() and p.stat().st_size > 1024), None)  # not a link saved as text


def default_export_folder(scene_folder: str | os.PathLike | None, home: str | os.PathLike | None = None) -> str:
    """Export's default folder: ``XWin`` under Slicer's default scene location (Application settings), else under
    the home folder; never the process's working directory (Slicer's install or bin folder on some systems)."""
    base = Path(scene_folder) if scene_folder else Path(home or Path.home())
    return str(base / "XWin")
