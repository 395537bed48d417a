"""CPU kernels (numba) of the Joseph projector and its exact adjoint.

Discretisation (shared with the torch backend, `joseph_torch.py`): every ray S → pixel is walked in continuous voxel
index space (i, j, k) along its dominant axis a (largest |direction| component); at each integer slice position
k_a between the source and the pixel the attenuation is interpolated bilinearly in the two other axes (trilinear with
one integer coordinate), voxels outside the grid counting as 0; the sum is weighted by the ray's length in mm per
slice step, ``‖Q − S‖_mm / |d_a|``. The adjoint scatters with the same weights, so ⟨A x, y⟩ = ⟨x, Aᵀ y⟩ exactly.

Volumes enter zero-padded by one voxel before and two after every axis (``pad_volume``) so the inner loops need no
bounds checks. Ray parameters are given in voxel index space; ``length`` holds the source → pixel distance in mm.
"""
from __future__ import annotations

import math
import os
import stat
import tempfile
import threading
from pathlib import Path

import numba
import numpy as np
from numba import njit, prange

PAD_LO, PAD_HI = 1, 2


def _writable(folder: Path) -> bool:
    """Whether ``folder`` exists or can be made, and takes a file (numba's own test: `_CacheLocator`)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
        return True
    except OSError:
        return False


def _private_temp_folder() -> Path:
    """``$TMPDIR/xwin-numba-<user>``, made 0700 and used only when this user owns it and no one else may write to it
    (a cache is code that numba loads); otherwise a fresh ``mkdtemp`` folder (no reuse across processes)."""
    user = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    folder = Path(tempfile.gettempdir()) / f"xwin-numba-{user}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        st = folder.lstat()
        if stat.S_ISDIR(st.st_mode) and (not hasattr(os, "getuid") or (
                st.st_uid == os.getuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))) and _writable(folder):
            return folder
    except OSError:
        pass
    return Path(tempfile.mkdtemp(prefix="xwin-numba-"))


def ensure_cache_folder(module_file: str) -> None:
    """Give numba a writable cache folder for the ``cache=True`` kernels of ``module_file``, before they are defined.

    numba caches in ``__pycache__`` beside the module, else in the user's cache folder (``~/.cache/numba``), else it
    refuses to define the kernel ("cannot cache function ...: no locator available"): an install in a read-only
    site-packages run by a user with a read-only home (containers, clusters) could not even import the projector.
    Then the cache goes to a private folder under the temp directory (`_private_temp_folder`) through
    ``numba.config.CACHE_DIR``. ``$NUMBA_CACHE_DIR``, when set, is left to numba."""
    if numba.config.CACHE_DIR:  # type: ignore[attr-defined]  # numba.config sets its settings at run time
        return
    if _writable(Path(module_file).resolve().parent / "__pycache__"):
        return
    from numba.misc.appdirs import AppDirs  # the user cache folder numba's UserWideCacheLocator uses

    if _writable(Path(AppDirs(appname="numba", appauthor=False).user_cache_dir)):
        return
    numba.config.CACHE_DIR = str(_private_temp_folder())  # type: ignore[attr-defined]  # as above


ensure_cache_folder(__file__)

#: Held around every launch of a numba ``parallel=True`` kernel of XWin (here and `xwin.recon.fdk`), process-wide.
#: numba's ``workqueue`` threading layer, the one always present (Slicer's Python may have neither TBB nor OpenMP),
#: aborts the whole process ("Concurrent access has been detected", exit 134) when two Python threads launch parallel
#: kernels at once, e.g. a slider preview on the GUI thread while a reconstruction runs on the panel's worker thread
#: (issue 14). A kernel already uses every core, so serialising launches costs no throughput. With a threadsafe layer
#: (``tbb``, ``omp``: https://numba.readthedocs.io/en/stable/user/threading-layer.html) launches are not serialised.
PARALLEL_LOCK = threading.RLock()
_THREADSAFE_LAYERS = ("tbb", "omp")


def _threadsafe_layer() -> bool:
    """Whether the threading layer numba chose (at the first parallel launch) accepts concurrent launches."""
    try:
        return numba.threading_layer() in _THREADSAFE_LAYERS
    except ValueError:  # no parallel kernel has run yet in this process: the layer is not chosen
        return False


class parallel_kernel:  # noqa: N801 - used as a decorator
    """Wraps a numba ``parallel=True`` dispatcher so each call holds `PARALLEL_LOCK` (unless the layer in use is
    threadsafe). Attributes (``stats``, ``signatures``, ``py_func``...) are the dispatcher's. Only for calls from
    Python: a jitted caller must call ``.dispatcher``."""

    def __init__(self, dispatcher):
        self.dispatcher = dispatcher
        self.__doc__ = dispatcher.__doc__
        self.__name__ = dispatcher.__name__
        self.__wrapped__ = dispatcher.py_func

    def __call__(self, *args):
        if _threadsafe_layer():
            return self.dispatcher(*args)
        with PARALLEL_LOCK:
            return self.dispatcher(*args)

    def __getattr__(self, name):
        return getattr(self.dispatcher, name)


EDGE = 1e-4  # rays keep 1e-4 voxel inside the bilinear support (-1, n) so padded reads never leave the array
_reusable = threading.local()  # per calling thread: scratch padding and adjoint buffers, reused between calls


def pad_volume(vol: np.ndarray, scratch: bool = False) -> np.ndarray:
    """Zero-pad a ``[k, j, i]`` array by 1 voxel before and 2 after each axis (contiguous, same dtype).

    scratch: write into this thread's reusable padding buffer (valid until its next scratch call) instead of a new
    array: no allocation and page faults for one-off projections of a changing volume (iterative reconstruction)."""
    shape = tuple(n + PAD_LO + PAD_HI for n in vol.shape)
    out = getattr(_reusable, "padded", None) if scratch else None
    if out is None or out.shape != shape or out.dtype != vol.dtype:
        out = np.zeros(shape, vol.dtype)
        if scratch:
            _reusable.padded = out
    else:
        for axis in range(3):  # only the borders: the interior is overwritten below
            out.swapaxes(0, axis)[:PAD_LO] = 0
            out.swapaxes(0, axis)[-PAD_HI:] = 0
    out[PAD_LO:-PAD_HI, PAD_LO:-PAD_HI, PAD_LO:-PAD_HI] = vol
    return out


@njit(inline="always", fastmath=True)
def _ray_range(s0, s1, s2, d0, d1, d2, n0, n1, n2):
    """Dominant axis, first/last slice and the other two axes of one ray (index space, padded extents)."""
    a0, a1, a2 = abs(d0), abs(d1), abs(d2)
    if a0 >= a1 and a0 >= a2:
        ax, sa, da, na, sb, db, nb, sc, dc, nc = 0, s0, d0, n0, s1, d1, n1, s2, d2, n2
    elif a1 >= a2:
        ax, sa, da, na, sb, db, nb, sc, dc, nc = 1, s1, d1, n1, s0, d0, n0, s2, d2, n2
    else:
        ax, sa, da, na, sb, db, nb, sc, dc, nc = 2, s2, d2, n2, s0, d0, n0, s1, d1, n1
    # t interval where the ray is between source and pixel, in the slab range of the dominant axis and where the
    # two other coordinates stay within (-1, n) (bilinear support)
    tlo, thi = 0.0, 1.0
    inv = 1.0 / da
    t0, t1 = (0.0 - sa) * inv, (na - 1.0 - sa) * inv
    tlo, thi = max(tlo, min(t0, t1)), min(thi, max(t0, t1))
    if db != 0.0:
        t0, t1 = (EDGE - 1.0 - sb) / db, (nb - EDGE - sb) / db
        tlo, thi = max(tlo, min(t0, t1)), min(thi, max(t0, t1))
    elif not (EDGE - 1.0 <= sb <= nb - EDGE):
        thi = -1.0
    if dc != 0.0:
        t0, t1 = (EDGE - 1.0 - sc) / dc, (nc - EDGE - sc) / dc
        tlo, thi = max(tlo, min(t0, t1)), min(thi, max(t0, t1))
    elif not (EDGE - 1.0 <= sc <= nc - EDGE):
        thi = -1.0
    if thi < tlo:
        return ax, 0, -1
    ka, kb = sa + tlo * da, sa + thi * da
    # 1e-7 tolerance: fastmath may round an exact slice position (e.g. 0) to 1e-16; EDGE absorbs the overshoot
    kmin = max(0, int(math.ceil(min(ka, kb) - 1e-7)))
    kmax = min(na - 1, int(math.floor(max(ka, kb) + 1e-7)))
    return ax, kmin, kmax


@njit(inline="always", fastmath=True)
def _ray(b, r, c, src, corner, du, dv, src_mm, corner_mm, du_mm, dv_mm, n0, n1, n2, st0, st1, st2):
    """Walk parameters of the ray through pixel (r, c) of view b: slice range [kmin, kmax] of the dominant axis,
    the array strides (dominant, b, c axes), padded positions x = x0 + k·dx of the two other axes, and the weight
    ``‖pixel − S‖_mm / |d_a|`` (mm per slice step). kmax < kmin: the ray misses the grid."""
    s0, s1, s2 = src[b, 0], src[b, 1], src[b, 2]
    d0 = corner[b, 0] + c * du[b, 0] + r * dv[b, 0] - s0
    d1 = corner[b, 1] + c * du[b, 1] + r * dv[b, 1] - s1
    d2 = corner[b, 2] + c * du[b, 2] + r * dv[b, 2] - s2
    ax, kmin, kmax = _ray_range(s0, s1, s2, d0, d1, d2, n0, n1, n2)
    m0 = corner_mm[b, 0] + c * du_mm[b, 0] + r * dv_mm[b, 0] - src_mm[b, 0]
    m1 = corner_mm[b, 1] + c * du_mm[b, 1] + r * dv_mm[b, 1] - src_mm[b, 1]
    m2 = corner_mm[b, 2] + c * du_mm[b, 2] + r * dv_mm[b, 2] - src_mm[b, 2]
    if ax == 0:
        sa, da, sb, db, sc, dc, sta, stb, stc = s0, d0, s1, d1, s2, d2, st0, st1, st2
    elif ax == 1:
        sa, da, sb, db, sc, dc, sta, stb, stc = s1, d1, s0, d0, s2, d2, st1, st0, st2
    else:
        sa, da, sb, db, sc, dc, sta, stb, stc = s2, d2, s0, d0, s1, d1, st2, st0, st1
    inv = 1.0 / da
    weight = math.sqrt(m0 * m0 + m1 * m1 + m2 * m2) * abs(inv)
    return (kmin, kmax, sta, stb, stc, sb - sa * inv * db + PAD_LO, db * inv, sc - sa * inv * dc + PAD_LO, dc * inv,
            weight)


@parallel_kernel
@njit(parallel=True, fastmath=True, cache=True)
def forward(vol_padded, src, corner, du, dv, src_mm, corner_mm, du_mm, dv_mm, out):
    """Line integrals (Σ μ · mm) of B views into ``out`` (B, H, W).

    vol_padded: padded ``[k, j, i]`` attenuation (per mm). src, corner, du, dv: (B, 3) index-space source, pixel
    (0, 0) centre and one-pixel steps; the ``*_mm`` twins are the same points/steps in LPS mm (for ray lengths).
    """
    nb, h, w = out.shape
    pk, pj, pi = vol_padded.shape
    n0, n1, n2 = pi - PAD_LO - PAD_HI, pj - PAD_LO - PAD_HI, pk - PAD_LO - PAD_HI
    flat = vol_padded.ravel()
    for row in prange(nb * h):
        b, r = row // h, row % h
        for c in range(w):
            kmin, kmax, sta, stb, stc, xb, dxb, xc, dxc, weight = _ray(
                b, r, c, src, corner, du, dv, src_mm, corner_mm, du_mm, dv_mm, n0, n1, n2, 1, pi, pi * pj)
            acc = np.float32(0.0)
            ustc = np.uint64(stc)
            xb, xc = xb + kmin * dxb, xc + kmin * dxc
            base_a = (kmin + PAD_LO) * sta
            for _ in range(kmax + 1 - kmin):
                ib, ic = int(xb), int(xc)  # padded coordinates are >= EDGE > 0: truncation is floor
                wb, wc = np.float32(xb - ib), np.float32(xc - ic)
                base = base_a + ib * stb + ic * stc
                u0, u1 = np.uint64(base), np.uint64(base + stb)  # unsigned: no wrap-around check on loads
                v00, v10 = flat[u0], flat[u1]
                v01, v11 = flat[u0 + ustc], flat[u1 + ustc]
                lo = v00 + wb * (v10 - v00)
                acc += lo + wc * ((v01 + wb * (v11 - v01)) - lo)
                xb += dxb
                xc += dxc
                base_a += sta
            out[b, r, c] = acc * weight
    return out


ROW_BLOCK = 8  # detector rows a worker takes at a time in the adjoint (neighbouring rows share cache lines)


@parallel_kernel
@njit(parallel=True, fastmath=True, cache=True)
def _scatter(buffers, sino, src, corner, du, dv, src_mm, corner_mm, du_mm, dv_mm):
    """Adjoint into ``buffers`` (T, padded k, j, i): worker t spreads the rays of its row blocks (t, t + T, …) into
    its own buffer with the forward kernel's weights, so writes never collide; the caller sums the buffers."""
    nt = buffers.shape[0]
    nb, h, w = sino.shape
    pk, pj, pi = buffers.shape[1:]
    n0, n1, n2 = pi - PAD_LO - PAD_HI, pj - PAD_LO - PAD_HI, pk - PAD_LO - PAD_HI
    nblocks = (nb * h + ROW_BLOCK - 1) // ROW_BLOCK
    for t in prange(nt):
        flat = buffers[t].ravel()
        cast = np.empty(1, buffers.dtype)  # rounds a value to the buffers' precision (float32 math for float32)
        for blk in range(t, nblocks, nt):
            for row in range(blk * ROW_BLOCK, min((blk + 1) * ROW_BLOCK, nb * h)):
                b, r = row // h, row % h
                for c in range(w):
                    if sino[b, r, c] == 0.0:
                        continue
                    kmin, kmax, sta, stb, stc, xb, dxb, xc, dxc, weight = _ray(
                        b, r, c, src, corner, du, dv, src_mm, corner_mm, du_mm, dv_mm, n0, n1, n2, 1, pi, pi * pj)
                    cast[0] = sino[b, r, c] * weight
                    val = cast[0]
                    ustb, ustc = np.uint64(stb), np.uint64(stc)
                    xb, xc = xb + kmin * dxb, xc + kmin * dxc
                    base_a = (kmin + PAD_LO) * sta
                    for _ in range(kmax + 1 - kmin):
                        ib, ic = int(xb), int(xc)
                        wb, wc = np.float32(xb - ib), np.float32(xc - ic)
                        u0 = np.uint64(base_a + ib * stb + ic * stc)  # unsigned: no wrap-around check on stores
                        u1 = u0 + ustb
                        hi_b = val * wb
                        lo_b = val - hi_b
                        flat[u0] += lo_b - lo_b * wc
                        flat[u1] += hi_b - hi_b * wc
                        flat[u0 + ustc] += lo_b * wc
                        flat[u1 + ustc] += hi_b * wc
                        xb += dxb
                        xc += dxc
                        base_a += sta


ADJOINT_BUFFER_BYTES = 2 << 30  # at most this much for the per-worker accumulation buffers of the adjoint


def _buffers(workers: int, padded_shape: tuple[int, int, int], dtype) -> np.ndarray:
    """Zeroed (workers, *padded_shape) accumulation buffers: the previous call's when they match (`_reduce` leaves
    their planes zero; the border planes it does not visit are cleared here), else new ones."""
    buf = getattr(_reusable, "buffers", None)
    if buf is None or buf.shape != (workers, *padded_shape) or buf.dtype != dtype:
        buf = _reusable.buffers = np.zeros((workers, *padded_shape), dtype)
    elif getattr(_reusable, "dirty", False):  # a call interrupted between scatter and reduce
        buf.fill(0)
    else:
        buf[:, :PAD_LO] = 0
        buf[:, buf.shape[1] - PAD_HI:] = 0
    return buf


@parallel_kernel
@njit(parallel=True, fastmath=True, cache=True)
def _reduce(buffers, out):
    """out += Σ_t interior of buffers[t], zeroing each buffer plane once read (the buffers are reused, so the next
    call needs no separate clearing pass); ``out`` may be any strided view (e.g. a transpose of the caller's grid)."""
    n0, n1, n2 = out.shape
    for a in prange(n0):
        for t in range(buffers.shape[0]):
            src = buffers[t, a + PAD_LO]
            for b in range(n1):
                for c in range(n2):
                    out[a, b, c] += src[b + PAD_LO, c + PAD_LO]
            src[:, :] = 0.0


def adjoint(sino, out, src, corner, du, dv, src_mm, corner_mm, du_mm, dv_mm) -> np.ndarray:
    """Back-projection: adds Aᵀ ``sino`` (B, H, W) to ``out``, the unpadded grid in the layout the ray parameters
    index (any strides: pass ``np.transpose(grid, axes)`` to accumulate into a grid stored in another order).

    Each worker thread accumulates into a private padded copy of the grid (as many workers as threads, fewer when
    their copies would exceed ``ADJOINT_BUFFER_BYTES``), then the copies are summed into ``out``."""
    padded_shape = tuple(n + PAD_LO + PAD_HI for n in out.shape)
    one = int(np.prod(padded_shape)) * sino.dtype.itemsize
    workers = int(max(1, min(numba.get_num_threads(), ADJOINT_BUFFER_BYTES // one)))
    buffers = _buffers(workers, padded_shape, sino.dtype)
    _reusable.dirty = True
    _scatter(buffers, np.ascontiguousarray(sino), src, corner, du, dv, src_mm, corner_mm, du_mm, dv_mm)
    _reduce(buffers, out)
    _reusable.dirty = False
    return out


def set_threads(n: int | None) -> None:
    """Limit numba's worker threads (None: all cores)."""
    numba.set_num_threads(n or numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]  # set at run time
