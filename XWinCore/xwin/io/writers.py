"""Write volumes and 2D images atomically: a temporary file in the target folder, renamed only once complete."""
from __future__ import annotations

import errno
import glob
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import SimpleITK as sitk

from ..errors import XWinInputError
from .formats import has_extension
from .image import Radiograph, Volume, VoxelFrame
from .validate import ITK_EXTENSIONS, check_name_encoding, file_problem

ITK_WRITE_EXTENSIONS = (".nrrd", ".nii", ".nii.gz", ".mha")


def _suffix(name: str) -> str:
    """The file type suffix, keeping a compression suffix with its type: '.nii.gz', '.png'."""
    stem, ext = os.path.splitext(name)
    return os.path.splitext(stem)[1] + ext if ext.lower() == ".gz" else ext


def _umask() -> int:
    """The process umask: read from /proc where there is one (no race), else set and restored."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: str | os.PathLike) -> None:
    """Give ``path`` (and, for a folder, everything in it) the permissions of a new file or folder under the umask.

    Written through a private temporary (``tempfile`` makes 0600 files and 0700 folders, safetensors writes 0600
    files), an output would otherwise stay unreadable to the colleagues who share the folder.
    """
    mask = _umask()
    path = Path(path)
    items = [path] + (sorted(path.rglob("*")) if path.is_dir() else [])
    for item in items:
        os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~mask)


# ---- publishing outputs -------------------------------------------------------------------------------------------
# Every output XWin writes (files and folders) is written to a hidden temporary in its destination folder and renamed
# into place only when complete. `publish_together` groups several outputs: all are published at the end, or none.

WRITE_ERRORS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                errno.EACCES: "permission denied", errno.EPERM: "permission denied",
                errno.EROFS: "read-only file system", errno.EFBIG: "file too large for this file system"}
LOW_SPACE_BYTES = 256 * 1024  # a writer failing without an errno while less than this is free: the disk is full
_PUBLICATION: ContextVar["Publication | None"] = ContextVar("xwin_publication", default=None)


def check_target(path: str | os.PathLike, folder: bool = False, make_parents: bool = False,
                 inputs: tuple[str | os.PathLike | None, ...] = ()) -> Path:
    """Refuse an output path that cannot be written, before any work: a file where a folder is needed or the
    reverse, one of the command's ``inputs`` (it would be overwritten), a missing parent folder (unless
    ``make_parents``), a parent that is a file or not writable."""
    path = Path(path)
    if folder or has_extension(path, ITK_EXTENSIONS):  # what ITK will write (PNG and DICOM take any name)
        check_name_encoding(path)
    if path.exists() and not (path.is_dir() or path.is_file()):  # a device, FIFO or socket would be replaced
        raise XWinInputError(path, f"cannot write here: {file_problem(path)}")
    if folder and path.exists() and not path.is_dir():
        raise XWinInputError(path, "cannot write a folder here: a file of that name exists")
    if not folder and path.is_dir():
        raise XWinInputError(path, "cannot write a file here: a folder of that name exists")
    if path.exists() and any(_same_file(path, Path(i)) for i in inputs if i):
        raise XWinInputError(path, "is an input of this command: writing the output there would destroy it")
    parent = path.parent
    while not parent.exists() and make_parents and parent != parent.parent:
        parent = parent.parent
    if not parent.exists():
        raise XWinInputError(path, f"cannot write: folder {path.parent} does not exist")
    if not parent.is_dir():
        raise XWinInputError(path, f"cannot write: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise XWinInputError(path, f"cannot write: permission denied (folder {parent})")
    return path


def _short(name: str, keep: int = 200) -> str:
    """``name`` cut to ``keep`` characters for a temporary beside it (file systems allow 255 bytes per name)."""
    return name if len(name.encode("utf-8", "surrogateescape")) <= keep else name[:keep // 4]


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _errno_of(exc: BaseException, folder: Path, stray: str = "", tmp: Path | None = None) -> int | None:
    """The errno behind a failed write: the exception's own, one named in its text (safetensors says 'os error 28',
    ITK 'No space left on device'), else what the destination folder tells ((nearly) full, not writable) or the
    file-size limit (`ulimit -f`) that a file written to ``tmp`` reached."""
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    text = f"{exc}\n{stray}"
    match = re.search(r"os error (\d+)", text)
    if match:
        return int(match.group(1))
    for code in WRITE_ERRORS:
        if os.strerror(code) in text:
            return code
    folder = next((p for p in (folder, *folder.parents) if p.exists()), folder)  # a staged folder may be gone
    try:
        st = os.statvfs(folder)
        if st.f_bavail * st.f_frsize < LOW_SPACE_BYTES:
            return errno.ENOSPC
        if not os.access(folder, os.W_OK):
            return errno.EACCES
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        pass
    limit = _file_size_limit()  # a write stopped by `ulimit -f` (SIGXFSZ is ignored: the write gets EFBIG)
    if limit is not None and tmp is not None and _largest_file(tmp) >= limit:
        return errno.EFBIG
    return None


def _file_size_limit() -> int | None:
    """The soft RLIMIT_FSIZE of this process in bytes (`ulimit -f`), None when unlimited or unknown."""
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    except (ImportError, OSError, ValueError):  # no resource module on Windows
        return None
    return None if soft == resource.RLIM_INFINITY else soft


def _largest_file(path: Path) -> int:
    """Bytes of ``path``, or of the largest file inside it when it is a folder (0 when nothing is there)."""
    try:
        if not path.is_dir():
            return path.stat().st_size if path.exists() else 0
        return max((p.stat().st_size for p in path.rglob("*") if p.is_file()), default=0)
    except OSError:
        return 0


def write_error(path: Path, exc: BaseException, tmp: Path | None = None, stray: str = "") -> BaseException:
    """The `XWinInputError` (one line naming ``path``) for a failed write, or ``exc`` itself when it is no I/O error
    (a bug stays a traceback). Call before the temporary is removed: its space still counts as used."""
    if isinstance(exc, XWinInputError) or not isinstance(exc, Exception):
        return exc
    code = _errno_of(exc, path.parent, stray, tmp)
    if code in WRITE_ERRORS:
        return XWinInputError(path, f"cannot write: {WRITE_ERRORS[code]}")
    if isinstance(exc, OSError):
        return XWinInputError(path, f"cannot write: {exc.strerror or exc}")
    if "SimpleITK" in str(exc) or stray:
        lines = [ln.strip() for ln in f"{exc}\n{stray}".splitlines() if "ERROR" in ln or "rror" in ln]
        return XWinInputError(path, f"cannot write ({(lines or [str(exc)])[-1][:200]})")
    return exc


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except OSError:
            pass


STALE_TEMPORARY_S = 24 * 3600  # a temporary this old was left by a process killed outright (SIGKILL, power loss)


def _sweep_stale(parent: Path, stem: str) -> None:
    """Remove what earlier writes of the same output left behind when they were killed outright: their hidden
    temporaries (``.STEM.*.tmp*``) not modified for `STALE_TEMPORARY_S`."""
    now = time.time()
    for p in parent.glob(f".{glob.escape(stem)}.*.tmp*"):
        try:
            stale = now - p.lstat().st_mtime > STALE_TEMPORARY_S
        except OSError:
            continue
        if stale:
            _remove(p)


class Publication:
    """Outputs staged as hidden temporaries next to their destinations, published together or discarded together.

    ``stage(path)`` returns the temporary to write (a new folder for ``folder=True``; for a file only a name with
    the destination's suffix), first removing the stale temporaries of the same output (`_sweep_stale`). `publish`
    renames every temporary into place, innermost first (a file staged inside a staged folder goes in before its
    folder); an existing folder is replaced as a whole; then the paths given to
    `retire` (an earlier run's outputs this one does not replace) are removed. `discard` removes every temporary and
    the parent folders `stage` created, and retires nothing.
    """

    def __init__(self) -> None:
        self.items: list[tuple[Path, Path, bool]] = []  # (temporary, destination, is folder)
        self.made: list[Path] = []  # parent folders created for the outputs (removed again on discard)
        self.retired: list[Path] = []  # removed once everything is published

    def retire(self, path: str | os.PathLike) -> None:
        """Remove ``path`` (a file or folder, if present) when the outputs are published, not before."""
        self.retired.append(Path(path))

    def stage(self, path: str | os.PathLike, folder: bool = False, make_parents: bool = False) -> Path:
        path = check_target(path, folder, make_parents)
        missing = [p for p in path.parents if not p.exists()][::-1]
        try:
            for p in missing:
                p.mkdir()
                self.made.append(p)
            stem = _short(path.name)  # a legal 250-character name must leave room for the temporary's additions
            _sweep_stale(path.parent, stem)
            if folder:
                tmp = Path(tempfile.mkdtemp(prefix=f".{stem}.", suffix=".tmp", dir=path.parent))
            else:
                # the suffix in lower case: ITK writes NIfTI only so, and X.MHA as a detached X.mhd + X.raw pair
                tmp = path.with_name(f".{stem}.{uuid.uuid4().hex[:8]}.tmp{_suffix(path.name).lower()}")
        except OSError as exc:
            raise write_error(path, exc) from None
        self.items.append((tmp, path, folder))
        return tmp

    def destination(self, path: Path) -> Path:
        """Where ``path`` (possibly inside a staged folder) ends up once published: the name errors must show."""
        for tmp, final, folder in reversed(self.items):
            if folder and path != tmp and tmp in path.parents:
                return self.destination(final / path.relative_to(tmp))
        return path

    def publish(self) -> None:
        try:
            for tmp, path, folder in reversed(self.items):
                apply_umask(tmp)
                if folder and path.is_dir():
                    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
                    os.replace(path, old / path.name)
                    os.replace(tmp, path)
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    os.replace(tmp, path)
            for path in self.retired:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                elif path.exists() or path.is_symlink():
                    path.unlink()
        except OSError as exc:
            raise write_error(path, exc) from None
        self.items, self.made, self.retired = [], [], []

    def discard(self) -> None:
        for tmp, _, _ in reversed(self.items):
            _remove(tmp)
        for folder in reversed(self.made):
            try:
                folder.rmdir()
            except OSError:
                pass
        self.items, self.made, self.retired = [], [], []


@contextmanager
def publish_together() -> Iterator[Publication]:
    """Every `atomic_output` inside the block is staged and published when the block ends without an error; on any
    exception (SIGTERM raised as one by the CLI included) every staged temporary is removed: nothing of the block
    remains. Nested blocks join the outermost one."""
    outer = _PUBLICATION.get()
    if outer is not None:
        yield outer
        return
    publication = Publication()
    token = _PUBLICATION.set(publication)
    try:
        yield publication
        publication.publish()
    except BaseException:
        publication.discard()
        raise
    finally:
        _PUBLICATION.reset(token)


@contextmanager
def atomic_output(path: str | os.PathLike, folder: bool = False, make_parents: bool = False) -> Iterator[Path]:
    """Yield a temporary path (same folder and suffix as ``path``; a new empty folder for ``folder=True``) to write
    to; on success it replaces ``path`` (inside `publish_together`: at the end of that block).

    On any exception the temporary is deleted, so neither a partial ``path`` nor litter is left behind; an I/O error
    (disk full, permission, read-only) becomes one `XWinInputError` naming ``path``. make_parents: create missing
    parent folders (removed again on failure).
    """
    path = Path(path)
    shared = _PUBLICATION.get()
    publication = shared or Publication()
    shown = publication.destination(path)  # a file inside a staged folder is named by its final path
    try:
        tmp = publication.stage(path, folder, make_parents)
    except XWinInputError as exc:
        raise XWinInputError(shown, exc.problem) from None
    try:
        yield tmp
    except BaseException as exc:
        error = write_error(shown, exc, tmp)
        if shared is None:
            publication.discard()
        if error is exc:
            raise
        raise error from None
    if shared is None:
        try:
            publication.publish()
        except BaseException:
            publication.discard()
            raise


@contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Collect what C/C++ libraries print on file descriptor 2 (ITK's and niftilib's write errors) instead of letting
    it reach the terminal ahead of XWin's own one-line message; the text is appended to the yielded list."""
    out: list[str] = []
    try:
        sys.stderr.flush()
        buf = tempfile.TemporaryFile()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield out
        return
    try:
        os.dup2(buf.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
    finally:
        os.close(saved)
        buf.seek(0)
        out.append(buf.read().decode("utf-8", "replace"))
        buf.close()


def itk_image(frame: VoxelFrame, array: np.ndarray | None = None, vector: bool = False) -> sitk.Image:
    """The one `Volume` → SimpleITK conversion: ``array`` (``[k, j, i]``, or ``[k, j, i, c]`` with ``vector``) on
    ``frame``'s grid (a `Volume` or a `xwin.recon.grid.Grid`: spacing, LPS origin, direction); without ``array`` an
    empty float32 image of the frame's size (a resampling reference)."""
    if array is None:
        image = sitk.Image([int(n) for n in frame.shape_ijk], sitk.sitkFloat32)
    else:
        image = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=vector)
    image.SetSpacing(tuple(float(s) for s in frame.spacing))
    image.SetOrigin(tuple(float(o) for o in frame.origin))
    image.SetDirection(tuple(float(d) for d in np.asarray(frame.direction).ravel()))
    return image


def itk_write(image: sitk.Image, path: Path, compress: bool = True) -> None:
    """``sitk.WriteImage`` that fails loudly. ITK's writers may report a short write (a full disk, a file-size
    limit) only on stderr, or not at all, and return normally: the file is read back, and its size and pixel type
    must be the image's. ITK's text, an exception or a file that does not read back becomes a RuntimeError."""
    check_name_encoding(path)
    with captured_stderr() as stray:
        try:
            sitk.WriteImage(image, str(path), compress)
            back = sitk.ReadImage(str(path))
            error = None if (back.GetSize(), back.GetPixelID()) == (image.GetSize(), image.GetPixelID()) else \
                RuntimeError(f"SimpleITK write of {path.name} failed: the file does not read back as written")
        except RuntimeError as exc:
            error = exc
    text = "".join(stray).strip()
    if error is not None:
        raise RuntimeError(f"SimpleITK write of {path.name} failed: {error}\n{text}".strip())
    if "ERROR" in text or "rror writing" in text:
        raise RuntimeError(f"SimpleITK write of {path.name} failed: {text}")


def _itk_extension(path: Path) -> None:
    if not path.name.lower().endswith(ITK_WRITE_EXTENSIONS):
        raise XWinInputError(path, "unknown extension for a volume; use " + ", ".join(ITK_WRITE_EXTENSIONS))


NOT_WRITTEN_META = ("patient_id", "series_uid")  # identifiers read from DICOM headers stay out of written volumes
NIFTI_DESCRIP_CHARS = 79  # the NIfTI-1 header's descrip field holds 80 bytes, NUL included


def _utf8(text: str) -> str:
    """``text`` that encodes as UTF-8, as file metadata must: the undecodable bytes of a file name (Python's surrogate
    escapes, e.g. from a Latin-1 name) shown as escapes (\\udcff) instead of failing the write."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _volume_meta(meta: dict[str, Any]) -> dict[str, str]:
    """``Volume.meta`` as the key/value strings a volume file keeps: one line each, keys of letters, digits, ``_``,
    ``-`` and ``.``; ITK's and NRRD's reserved prefixes and the patient identifiers of `NOT_WRITTEN_META` dropped."""
    text = {}
    for key, value in meta.items():
        key = re.sub(r"[^A-Za-z0-9_.-]", "_", str(key))
        if key and key not in NOT_WRITTEN_META and not key.startswith(("ITK_", "NRRD_")):
            text[key] = _utf8(" ".join(str(value).split()))
    return text


def write_volume(volume: Volume, path: str | os.PathLike) -> Path:
    """Write a `Volume` (float32 HU) to .nrrd / .nii / .nii.gz / .mha with its spacing (mm), LPS origin and direction.

    ``volume.meta`` is kept (as strings, see `_volume_meta`): NRRD and MHA store each entry as a key/value field;
    NIfTI has one free-text field, ``descrip`` (79 characters), which gets ``meta["description"]`` or else the entries
    as ``key=value; ...``. Returns ``path``. NIfTI stores the geometry in float32, the other formats in full precision.
    """
    path = Path(path)
    _itk_extension(path)
    image = itk_image(volume, volume.array)
    meta = _volume_meta(volume.meta)
    if path.name.lower().endswith((".nii", ".nii.gz")):
        descrip = meta.get("description") or "; ".join(f"{k}={v}" for k, v in meta.items())
        if descrip:
            ascii_text = descrip.encode("ascii", "replace")[:NIFTI_DESCRIP_CHARS].decode("ascii")
            image.SetMetaData("ITK_FileNotes", ascii_text)  # ITK's NIfTI writer puts it in descrip
    else:
        for key, value in meta.items():
            image.SetMetaData(key, value)
    with atomic_output(path) as tmp:
        itk_write(image, tmp)
    return path


def write_image(image: np.ndarray | Radiograph, path: str | os.PathLike,
                spacing: tuple[float, float] | None = None, meta: dict[str, Any] | None = None,
                bits: int = 8) -> Path:
    """Write a 2D image ``[row, col]`` to .nrrd / .mha / .nii / .nii.gz (float32, spacing kept) or .png.

    spacing: (row, col) mm; defaults to a Radiograph's own pixel_spacing. meta: key/value strings stored in the file
    where the format allows (NRRD and MHA fields, PNG text chunks). PNG (``bits`` 8 or 16, no spacing): floats within
    [0, 1] are scaled to the full range, anything else is min-max scaled.
    """
    path = Path(path)
    if isinstance(image, Radiograph):
        spacing = image.pixel_spacing if spacing is None else spacing
        array = image.array
    else:
        array = np.asarray(image)
    if array.ndim != 2 or not np.all(np.isfinite(array)):
        raise XWinInputError(path, f"cannot write: need a finite 2D image, got shape {array.shape}")
    text = {_utf8(str(k)): _utf8(str(v)) for k, v in (meta or {}).items()}
    if path.name.lower().endswith(".png"):
        return _write_png(array, path, text, bits)
    _itk_extension(path)
    out = sitk.GetImageFromArray(array.astype(np.float32))
    if spacing is not None:
        out.SetSpacing((float(spacing[1]), float(spacing[0])))
    for key, value in text.items():
        out.SetMetaData(key, value)
    with atomic_output(path) as tmp:
        itk_write(out, tmp)
    return path


def _write_png(array: np.ndarray, path: Path, text: dict[str, str], bits: int) -> Path:
    from PIL import Image  # here: NRRD/MHA/NIfTI writers (`xwin render`'s default) need no Pillow
    from PIL.PngImagePlugin import PngInfo

    if bits not in (8, 16):
        raise XWinInputError(path, f"PNG bit depth must be 8 or 16, got {bits}")
    values = array.astype(np.float64)
    lo, hi = float(values.min()), float(values.max())
    if not (np.issubdtype(array.dtype, np.floating) and lo >= 0.0 and hi <= 1.0):
        values = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    top = 2 ** bits - 1
    pixels = np.rint(np.clip(values, 0.0, 1.0) * top).astype(np.uint8 if bits == 8 else np.uint16)
    info = PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    with atomic_output(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG", pnginfo=info)
    return path
