"""`PanelController`: what both XWin panels do between a widget event and a render, without Qt.

The 3D Slicer module (``XWinSlicer.py``) and ``xwin viewer`` (`xwin.viewer.app`) only lay out widgets and render; they
forward each slider/spin-box event here and ask, from one single-shot timer, what to render and when to ask again:

    controller.pose_changed(lao, cran, dragging=slider.isSliderDown())
    kind = controller.take_frame()          # 'preview', 'full' or None
    if kind: render(preview=kind == "preview")
    ms = controller.wait_ms()               # None: nothing pending; else restart the timer with it

The throttle (`FrameThrottle`) renders the first change at once and then at most one preview per ``interval_ms``
while changes keep coming, so a drag shows a frame at least every ~70 ms (a debounce would show nothing until the mouse
stops); full quality once the pose has been still for ``settle_ms`` or at once on release. The clock is injectable,
so the throttle is tested without Qt or sleeping (Testing/Python/test_preview_controller.py).

Long work (reconstruction, "Align DRR to CXR") runs as a `Job` on the session's worker thread with progress (0–1 and
a stage) and a cooperative Cancel; the panels poll it from their timer.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Callable

from .session import Session

#: at most one preview per this many ms while the pose keeps changing (≥ 14 frames/s when a preview takes < 70 ms)
THROTTLE_MS = 66
#: full quality once the pose has been still this long (or at once on slider release)
SETTLE_MS = 300
#: training / background-work polling
POLL_MS = 200

PREVIEW, FULL = "preview", "full"


class FrameThrottle:
    """When to render: throttled (leading edge + at most one frame per ``interval_ms``), not debounced.

    changed(dragging): the pose or the geometry changed; while ``dragging`` no full frame is scheduled (it comes on
    `released`), otherwise one comes ``settle_ms`` after the last change. take(): the frame to render now, if any
    (and records it). wait_ms(): how long until `take` may return something (None: nothing pending).
    """

    def __init__(self, interval_ms: float = THROTTLE_MS, settle_ms: float = SETTLE_MS,
                 clock: Callable[[], float] = time.monotonic):
        self.interval = interval_ms / 1000.0
        self.settle = settle_ms / 1000.0
        self.clock = clock
        self._last_frame = -float("inf")
        self._preview_pending = False
        self._full_at: float | None = None
        self.dragging = False

    def changed(self, dragging: bool = False) -> None:
        now = self.clock()
        self.dragging = dragging
        self._preview_pending = True
        self._full_at = None if dragging else now + self.settle

    def released(self) -> None:
        """The slider was let go (or an action wants full quality): a full frame at once."""
        self.dragging = False
        self._full_at = self.clock()

    def take(self) -> str | None:
        now = self.clock()
        if self._full_at is not None and now >= self._full_at:
            self._full_at = None
            self._preview_pending = False
            self._last_frame = now
            return FULL
        if self._preview_pending and now - self._last_frame >= self.interval:
            self._preview_pending = False
            self._last_frame = now
            return PREVIEW
        return None

    def wait_ms(self) -> int | None:
        now = self.clock()
        waits = []
        if self._preview_pending:
            waits.append(self._last_frame + self.interval - now)
        if self._full_at is not None:
            waits.append(self._full_at - now)
        return max(0, int(round(1000 * min(waits)))) if waits else None

    @property
    def pending(self) -> bool:
        return self._preview_pending or self._full_at is not None


class Cancelled(Exception):
    """Raised inside long work when its `Job` was cancelled."""


class Job:
    """Long work on a worker thread: ``progress`` in [0, 1], ``stage`` (text), `cancel`, and the `Future`.

    The work function receives ``report(fraction, stage)``; `report` raises `Cancelled` once `cancel` was called, so
    the work stops at its next report (between chunks of views or iterations). `cancel` returns at once."""

    def __init__(self, name: str = ""):
        self.name = name
        self.progress = 0.0
        self.stage = "queued"
        self.future: Future | None = None
        self._cancel = threading.Event()
        self._lock = threading.Lock()

    def report(self, fraction: float, stage: str | None = None) -> None:
        if self._cancel.is_set():
            raise Cancelled(self.name)
        with self._lock:
            self.progress = min(1.0, max(self.progress, float(fraction)))
            if stage is not None:
                self.stage = stage

    def cancel(self) -> None:
        self._cancel.set()
        if self.future is not None:
            self.future.cancel()  # a job still queued never starts

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def done(self) -> bool:
        return self.future is not None and self.future.done()

    @property
    def status(self) -> str:
        """'running', 'cancelling', 'cancelled', 'failed' or 'done'."""
        if not self.done():
            return "cancelling" if self.cancelled else "running"
        assert self.future is not None  # done() needs a future
        if self.future.cancelled() or isinstance(self.future.exception(), Cancelled):
            return "cancelled"
        return "failed" if self.future.exception() is not None else "done"

    def result(self):
        return self.future.result()


class PanelController:
    """The pose, the frame throttle and the long jobs of one panel over a `Session` (no Qt, no MRML).

    clock: seconds (monotonic); injected in tests.
    """

    def __init__(self, session: Session | None = None, clock: Callable[[], float] = time.monotonic,
                 interval_ms: float = THROTTLE_MS, settle_ms: float = SETTLE_MS):
        self.session = session or Session()
        self.throttle = FrameThrottle(interval_ms, settle_ms, clock)
        self.job: Job | None = None

    # --- pose and frames --------------------------------------------------------------------------------------
    def pose_changed(self, lao: float | None = None, cran: float | None = None, dragging: bool = False) -> None:
        """A pose slider moved (degrees); ``dragging``: the mouse still holds it."""
        changes = {k: float(v) for k, v in (("lao", lao), ("cran", cran)) if v is not None}
        if changes:
            self.session.update(**changes)
        self.throttle.changed(dragging)

    def settings_changed(self, **changes) -> None:
        """Geometry (or another setting that changes the image) changed: previews follow, full frame once settled."""
        if changes:
            self.session.update(**changes)
        self.throttle.changed(False)

    def released(self) -> None:
        self.throttle.released()

    def take_frame(self) -> str | None:
        return self.throttle.take()

    def wait_ms(self) -> int | None:
        return self.throttle.wait_ms()

    # --- long work --------------------------------------------------------------------------------------------
    def start_reconstruction(self, source: str | None = None, **options) -> Job:
        """`Session.reconstruct` as a `Job` named 'reconstruction' on the worker thread (one job at a time)."""
        return self._start("reconstruction", self.session.reconstruct, source, **options)

    def start_alignment(self, **options) -> Job:
        """`Session.align` ("Align DRR to CXR") as a `Job` named 'alignment'; when it is done, apply a converged
        result with `apply_alignment` on the GUI thread."""
        return self._start("alignment", self.session.align, **options)

    def apply_alignment(self, job: Job) -> str:
        """A finished alignment job: a converged pose goes into the session (sliders, roll, isocenter) and a full
        frame is scheduled; returns the one-line status to show (a failure leaves the pose as it was)."""
        result = job.result()
        if not result.converged:
            return f"alignment failed ({result.status}): {result.message}; the pose was left unchanged"
        self.session.apply_pose(result.pose)
        self.throttle.released()
        p = result.pose
        return (f"aligned in {result.seconds:.0f} s: LAO {p.lao:.1f}°, CRAN {p.cran:.1f}°, roll {p.roll:.1f}°, "
                f"isocenter shift ({', '.join(f'{v:.1f}' for v in self.session.settings.iso_offset)}) mm LPS; "
                f"{result.message}")

    def _start(self, name: str, fn: Callable, *args, **options) -> Job:
        if self.job is not None and not self.job.done():
            raise RuntimeError(f"the {self.job.name or 'previous job'} is still running (one job at a time)")
        job = Job(name)
        job.future = self.session.submit(fn, *args, report=job.report, **options)
        self.job = job
        return job

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()

    def finished_job(self) -> Job | None:
        """The job once it has ended (then forgotten), else None: call from the panel's poll timer."""
        job = self.job
        if job is not None and job.done():
            self.job = None
            return job
        return None
