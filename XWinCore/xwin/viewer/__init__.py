"""`xwin viewer`: the XWin panel outside 3D Slicer, and the non-GUI state both panels share.

* `xwin.viewer.model` — `Session`: CT/CXR/geometry/pose state, DRRs (full and preview), prediction, reconstruction,
  export, and the detector-plane placement of a projection (LPS mm). No Qt, no MRML.
* `xwin.viewer.training` — the `xwin train --progress jsonl` protocol: command line, JSONL parser, a process runner
  with SIGTERM-then-kill stop. No Qt.
* `xwin.viewer.app` — the Qt window (Qt.py over PySide6 + VTK); imported only by `xwin viewer`.

Importing this package imports nothing heavy; the Slicer module (`XWinSlicerLib`) reuses `model` and `training`.
"""
