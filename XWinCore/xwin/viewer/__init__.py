"""`xwin viewer`: the XWin panel outside 3D Slicer, and the non-GUI state both panels share.

* `xwin.viewer.session` (formerly `xwin.viewer.model`, still importable) — `Session`: CT/CXR/geometry/pose state,
  DRRs (full and preview), prediction, reconstruction,
  export, and the detector-plane placement of a projection (LPS mm). No Qt, no MRML.
* `xwin.viewer.controller` — `PanelController`: the preview throttle (injectable clock), the pose, and long jobs with
  progress and Cancel; both front ends forward events to it and render what it says. No Qt.
* `xwin.viewer.training` — the `xwin train --progress jsonl` protocol: command line, JSONL parser, a process runner
  with SIGTERM-then-kill stop. No Qt.
* `xwin.viewer.app` — the Qt window (Qt.py over PySide6 + VTK); imported only by `xwin viewer`.

Importing this package imports nothing heavy; the Slicer module (`XWinSlicerLib`) reuses `session`, `controller` and
`training`.
"""
