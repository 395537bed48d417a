"""XWin's default C-arm geometry: a PA chest exam (docs/geometry.md), the one place these numbers are set.

`xwin.geometry.Geometry`, the config's ``data.sid``/``data.sdd`` and the command line's geometry options take their
defaults from here. The module imports nothing, so that ``xwin --help`` can show the defaults without loading NumPy.
(The Slicer module's parameter node and .ui repeat them: they load before the core is installed.)
"""

SID_MM = 1600.0  # source → isocenter distance (mm)
SDD_MM = 1800.0  # source → detector distance (mm)
DETECTOR_PIXELS = (256, 256)  # detector rows, columns
PIXEL_MM = 1.7  # detector pixel size (mm, square)
