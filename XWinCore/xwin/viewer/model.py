"""Former name of `xwin.viewer.session` (kept so that existing imports keep working)."""
from .session import *  # noqa: F401,F403
from .session import PREVIEW_FACTOR, LPS_TO_RAS  # noqa: F401
