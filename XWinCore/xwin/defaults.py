"""XWin's default C-arm geometry: a PA chest exam (docs/geometry.md), the one place these numbers are set.

`xwin.geometry.Geometry`, the config's ``data.sid``/``data.sdd`` and the command line's geometry options take their
defaults from here. The module imports nothing, so that ``xwin --help`` can show the defaults without loading NumPy.
(The Slicer module's parameter node and .ui repeat them: they load before the core is installed.)
"""

SID_MM = 1600.0  # source → isocenter distance (mm)
SDD_MM = 1800.0  # source → detector distance (mm)
DETECTOR_PIXELS = (256, 256)  # detector rows, columns
PIXEL_MM = 1.7  # detector pixel size (mm, square)
SPACING_MM = (1e-4, 1e4)  # a voxel or detector pixel is 0.1 µm to 10 m: beyond, a header error (or no image)
ORIGIN_MM = 1e6  # a grid's origin lies within 1 km of the patient frame's origin; so do the C-arm's source and detector
MIN_ARC_DEG = 1.0  # a reconstruction orbit narrower than this sees the patient from one direction: no depth
