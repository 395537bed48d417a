"""Outputs are published whole or not at all (issue 16): every writer goes through one temporary-then-rename helper
(`xwin.io.writers.atomic_output` / `publish_together`); a full disk, a read-only folder, a name taken by the wrong
kind of entry, an exception or SIGTERM leave nothing of the run behind, and end in one line naming the output.

Disk full is tested two ways: the libraries' write calls patched to fail with ENOSPC the way each fails for real
(ITK's NIfTI writer only prints; MetaImage/NRRD raise RuntimeError; PIL and pydicom OSError; safetensors its own
error), and, where this process may mount one (root on Linux), a real 64 KiB tmpfs.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from xwin.cli import main
from xwin.errors import XWinInputError
from xwin.export import write_ct_series
from xwin.export.dicom_seg import available as highdicom_available
from xwin.io import atomic_output, write_image, write_volume
from xwin.io.image import Volume
from xwin.io.writers import publish_together
from xwin.models.model_file import save_checkpoint
from xwin.predict import export_model

sys.path.insert(0, str(Path(__file__).parent))
from test_export import torso  # noqa: E402

ENOSPC_TEXT = "no space left on device"


def noisy_volume(n: int = 48) -> Volume:
    """Random HU (incompressible: far larger than 64 KiB in every format)."""
    arr = np.random.default_rng(0).normal(0, 300, (n, n, n)).astype(np.float32)
    return Volume(arr, (1.0, 1.0, 2.0), (-20.0, -20.0, -40.0))


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def tiny_checkpoint(root: Path) -> Path:
    torch.manual_seed(0)
    model = torch.nn.Module()
    model.context_encoder = torch.nn.Linear(64, 64)  # an inference module: exported
    return save_checkpoint(root / "run", 1, model, None, {"config": {"data": {"bank": None}}})


WRITERS = {
    "nrrd": lambda d: write_volume(noisy_volume(), d / "v.nrrd"),
    "nii.gz": lambda d: write_volume(noisy_volume(), d / "v.nii.gz"),
    "nii": lambda d: write_volume(noisy_volume(), d / "v.nii"),
    "mha": lambda d: write_volume(noisy_volume(), d / "v.mha"),
    "png": lambda d: write_image(np.random.default_rng(1).random((400, 400)), d / "i.png"),
    "png16": lambda d: write_image(np.random.default_rng(1).random((400, 400)), d / "i.png", bits=16),
    "dicom": lambda d: write_ct_series(noisy_volume(), d / "ct"),
}
TARGETS = {"nrrd": "v.nrrd", "nii.gz": "v.nii.gz", "nii": "v.nii", "mha": "v.mha", "png": "i.png", "png16": "i.png",
           "dicom": "ct"}


# ---- the helper itself --------------------------------------------------------------------------------------------

def test_publish_together_is_all_or_nothing(tmp_path):
    out = tmp_path / "new" / "deeper"
    with pytest.raises(RuntimeError, match="boom"):
        with publish_together() as publication:
            base = publication.stage(out, folder=True, make_parents=True)
            with atomic_output(base / "a.txt") as tmp:
                tmp.write_text("a")
            with atomic_output(base / "sub", folder=True) as tmp:
                (tmp / "b.txt").write_text("b")
            raise RuntimeError("boom")
    assert listing(tmp_path) == []  # not even the parent folders made for it
    with publish_together() as publication:
        base = publication.stage(out, folder=True, make_parents=True)
        with atomic_output(base / "a.txt") as tmp:
            tmp.write_text("a")
        assert not out.exists()  # nothing published before the block ends
    assert listing(tmp_path) == ["new", "new/deeper", "new/deeper/a.txt"]


def test_folder_output_replaces_a_folder_whole(tmp_path):
    target = tmp_path / "series"
    target.mkdir()
    (target / "stale.dcm").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(target, folder=True) as tmp:
            (tmp / "new.dcm").write_text("new")
            raise KeyboardInterrupt
    assert listing(tmp_path) == ["series", "series/stale.dcm"]  # the old folder intact, no temporary
    with atomic_output(target, folder=True) as tmp:
        (tmp / "new.dcm").write_text("new")
    assert listing(tmp_path) == ["series", "series/new.dcm"]


@pytest.mark.parametrize("kind", ["folder-over-file", "file-over-folder", "missing-parent"])
def test_target_of_the_wrong_kind_is_refused_before_writing(tmp_path, kind):
    if kind == "folder-over-file":
        (tmp_path / "ct").write_text("a file")
        call, name = lambda: write_ct_series(noisy_volume(8), tmp_path / "ct"), "ct"
    elif kind == "file-over-folder":
        (tmp_path / "v.nrrd").mkdir()
        call, name = lambda: write_volume(noisy_volume(8), tmp_path / "v.nrrd"), "v.nrrd"
    else:
        call, name = lambda: write_volume(noisy_volume(8), tmp_path / "nope" / "v.nrrd"), "nope/v.nrrd"
    before = listing(tmp_path)
    with pytest.raises(XWinInputError) as info:
        call()
    assert info.value.path == str(tmp_path / name)
    assert listing(tmp_path) == before


# ---- disk full ----------------------------------------------------------------------------------------------------

def _partial(path) -> None:
    with open(path, "wb") as f:
        f.write(b"\0" * 1000)


def patch_disk_full(monkeypatch) -> None:
    """Make every writer library fail as it does on a full disk, after leaving a partial file."""
    import pydicom.dataset
    import safetensors.torch

    def itk(image, path, *args, **kwargs):
        _partial(path)
        if str(path).endswith((".nii", ".nii.gz")):  # niftilib: prints, returns normally
            os.write(2, b"** ERROR: NWAD: wrote only 0 of 442368 bytes to file\n")
            return
        raise RuntimeError(f"Exception thrown in SimpleITK ImageFileWriter_Execute: ITK ERROR: File cannot be "
                           f"written: {path}\nReason: No space left on device")

    def oserror(self, fp, *args, **kwargs):
        _partial(fp)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def safetensors_error(tensors, filename, metadata=None):
        _partial(filename)
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")

    class Full:  # what statvfs says of a full disk (ITK's NIfTI and NRRD writers give no errno)
        f_bavail, f_frsize = 0, 4096

    monkeypatch.setattr(os, "statvfs", lambda path: Full())
    monkeypatch.setattr(sitk, "WriteImage", itk)
    monkeypatch.setattr(Image.Image, "save", oserror)
    monkeypatch.setattr(pydicom.dataset.Dataset, "save_as", oserror)
    monkeypatch.setattr(safetensors.torch, "save_file", safetensors_error)
    monkeypatch.setattr("xwin.models.model_file.save_file", safetensors_error)


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A real 64 KiB tmpfs (needs root and a kernel that lets this process mount; skipped otherwise)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("a real full disk needs root to mount a 64 KiB tmpfs; the patched ENOSPC tests cover it")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}); the patched ENOSPC tests cover it")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=False)


@pytest.mark.parametrize("writer", list(WRITERS))
def test_disk_full_is_one_error_naming_the_output_and_leaves_nothing(tmp_path, monkeypatch, capfd, writer):
    patch_disk_full(monkeypatch)
    with pytest.raises(XWinInputError) as info:
        WRITERS[writer](tmp_path)
    assert info.value.path == str(tmp_path / TARGETS[writer])
    assert info.value.problem == f"cannot write: {ENOSPC_TEXT}"
    assert listing(tmp_path) == []
    assert "NWAD" not in capfd.readouterr().err  # niftilib's own line is not shown ahead of ours


@pytest.mark.parametrize("writer", list(WRITERS))
def test_real_full_disk(tiny_tmpfs, writer):
    with pytest.raises(XWinInputError) as info:
        WRITERS[writer](tiny_tmpfs)
    assert info.value.path == str(tiny_tmpfs / TARGETS[writer])
    assert info.value.problem == f"cannot write: {ENOSPC_TEXT}"
    assert listing(tiny_tmpfs) == []


def fill(disk: Path) -> None:
    """Take every free block of ``disk`` (a file named filler)."""
    try:
        with open(disk / "filler", "wb", buffering=0) as f:
            while True:
                f.write(b"\0" * 4096)
    except OSError:
        pass


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".nii", ".mha"])
def test_real_full_disk_small_volume(tiny_tmpfs, suffix):
    """Campaign 8: with no byte left, ITK wrote a 0-byte file without an error and the run ended with exit 0."""
    fill(tiny_tmpfs)
    with pytest.raises(XWinInputError) as info:
        write_volume(noisy_volume(4), tiny_tmpfs / f"v{suffix}")
    assert info.value.problem == f"cannot write: {ENOSPC_TEXT}"
    assert listing(tiny_tmpfs) == ["filler"]


def test_real_full_disk_inside_a_staged_folder(tiny_tmpfs):
    """Campaign 8: a file of a multi-pose output folder failing on a full disk was blamed on permissions (the
    folder it checked, the output's final path, did not exist yet)."""
    fill(tiny_tmpfs)
    with pytest.raises(XWinInputError) as info:
        with publish_together() as publication:
            folder = publication.stage(tiny_tmpfs / "drrs", folder=True)
            write_volume(noisy_volume(4), folder / "lao_0.nrrd")
    assert info.value.path == str(tiny_tmpfs / "drrs" / "lao_0.nrrd")
    assert info.value.problem == f"cannot write: {ENOSPC_TEXT}"
    assert listing(tiny_tmpfs) == ["filler"]


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
@pytest.mark.parametrize("suffix", [".nrrd", ".nii", ".mha"])
def test_file_size_limit_is_one_error_naming_the_output(tmp_path, suffix):
    """Campaign 8: under `ulimit -f 1` ITK stopped at 1,024 bytes without an error (Python ignores SIGXFSZ, the
    write gets EFBIG) and the cut file was published with exit 0."""
    import resource
    out = tmp_path / f"v{suffix}"
    code = textwrap.dedent(f"""
        import numpy as np
        from xwin.errors import XWinInputError
        from xwin.io import write_volume
        from xwin.io.image import Volume
        try:
            noise = np.random.default_rng(0).normal(0, 300, (16, 16, 16)).astype(np.float32)  # incompressible
            write_volume(Volume(noise, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)), {str(out)!r})
        except XWinInputError as exc:
            print(exc.path, exc.problem, sep="|")
        """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.RLIM_INFINITY)))
    assert done.stdout.strip() == f"{out}|cannot write: file too large for this file system", done.stderr
    assert listing(tmp_path) == []


def test_real_full_disk_model_export_and_checkpoint(tmp_path, tiny_tmpfs):
    folder = tiny_checkpoint(tmp_path)
    with pytest.raises(XWinInputError, match=ENOSPC_TEXT):
        save_checkpoint(tiny_tmpfs / "run", 1, torch.nn.Linear(200, 200), None, {"config": {}})
    assert listing(tiny_tmpfs) in ([], ["run", "run/checkpoints"])  # the run folder itself is the caller's
    big = torch.nn.Module()
    big.context_encoder = torch.nn.Linear(300, 300)
    folder = save_checkpoint(tmp_path / "big", 1, big, None, {"config": {}})
    shutil.rmtree(tiny_tmpfs / "run", ignore_errors=True)
    with pytest.raises(XWinInputError) as info:
        export_model(folder, tiny_tmpfs / "m.safetensors")
    assert info.value.path == str(tiny_tmpfs / "m.safetensors") and ENOSPC_TEXT in info.value.problem
    assert listing(tiny_tmpfs) == []


def test_disk_full_model_export_cli(tmp_path, monkeypatch, capsys):
    folder = tiny_checkpoint(tmp_path)
    before = listing(tmp_path)
    patch_disk_full(monkeypatch)
    out = tmp_path / "model.safetensors"
    assert main(["export-model", str(folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"xwin export-model: error: {out}: cannot write: {ENOSPC_TEXT}"]
    assert listing(tmp_path) == before


def test_disk_full_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    model = torch.nn.Linear(2, 2)
    first = save_checkpoint(tmp_path / "run", 1, model, None, {"config": {}})
    before = listing(tmp_path)
    patch_disk_full(monkeypatch)
    with pytest.raises(XWinInputError, match=f"step_0000002: cannot write: {ENOSPC_TEXT}"):
        save_checkpoint(tmp_path / "run", 2, model, None, {"config": {}})
    assert listing(tmp_path) == before and json.loads((first.parent / "latest.json").read_text())["step"] == 1


@pytest.mark.skipif(not highdicom_available(), reason="DICOM SEG needs highdicom")
def test_disk_full_during_export_leaves_no_output(tmp_path, monkeypatch, capsys):
    """The SEG (written last) fails: neither the NIfTI, the .seg.nrrd, the series nor the new OUT folder remain."""
    import highdicom

    vol, _ = torso()
    src = write_volume(vol, tmp_path / "torso.nrrd")
    before = listing(tmp_path)

    def full(self, fp, *args, **kwargs):
        _partial(fp)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(highdicom.seg.Segmentation, "save_as", full, raising=False)
    out = tmp_path / "out"
    assert main(["export", str(src), "--out", str(out), "--dicom-seg"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"xwin export: error: {out / 'segmentation.dcm'}: cannot write: {ENOSPC_TEXT}"]
    assert listing(tmp_path) == before
    out.mkdir()  # into an existing folder: it stays, empty
    assert main(["export", str(src), "--out", str(out), "--dicom-seg"]) == 2
    assert listing(tmp_path) == sorted(before + ["out"])


# ---- permissions --------------------------------------------------------------------------------------------------

@pytest.fixture
def read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as root (or with CAP_DAC_OVERRIDE): chmod cannot make a folder read-only here; "
                        "test_permission_error_is_one_line covers the message")
        yield folder
    finally:
        folder.chmod(0o755)


@pytest.mark.parametrize("writer", list(WRITERS))
def test_read_only_folder(read_only_folder, writer):
    with pytest.raises(XWinInputError) as info:
        WRITERS[writer](read_only_folder)
    assert info.value.path == str(read_only_folder / TARGETS[writer]) and "permission denied" in info.value.problem
    assert listing(read_only_folder) == []


def test_read_only_folder_cli(tmp_path, read_only_folder, capsys):
    folder = tiny_checkpoint(tmp_path)
    out = read_only_folder / "m.safetensors"
    assert main(["export-model", str(folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0] and "permission denied" in err[0]
    assert listing(read_only_folder) == []


@pytest.mark.parametrize("code,text", [(errno.EACCES, "permission denied"), (errno.EROFS, "read-only file system"),
                                       (errno.EDQUOT, "disk quota exceeded")])
def test_permission_error_is_one_line(tmp_path, monkeypatch, capsys, code, text):
    """What a write refused by the file system (not caught up front, e.g. an ACL or a read-only mount) prints."""
    vol, _ = torso()
    src = write_volume(vol, tmp_path / "torso.nrrd")
    before = listing(tmp_path)

    def refuse(image, path, *args, **kwargs):
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(sitk, "WriteImage", refuse)
    out = tmp_path / "out"
    assert main(["export", str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"xwin export: error: {out / 'segmentation.nii.gz'}: cannot write: {text}"]
    assert listing(tmp_path) == before


# ---- export: all outputs checked up front, published together --------------------------------------------------

@pytest.mark.parametrize("taken", ["dicom", "segmentation.dcm", "segmentation.seg.nrrd"])
def test_export_with_an_output_name_taken_writes_nothing(tmp_path, capsys, taken):
    vol, _ = torso()
    src = write_volume(vol, tmp_path / "torso.nrrd")
    out = tmp_path / "out"
    out.mkdir()
    if taken == "dicom":
        (out / "dicom").write_text("a file where the series folder goes")
    else:
        (out / taken).mkdir()
    before = listing(tmp_path)
    args = ["export", str(src), "--out", str(out), "--dicom"] + (["--dicom-seg"] if highdicom_available() else [])
    if taken == "segmentation.dcm" and not highdicom_available():
        pytest.skip("DICOM SEG needs highdicom")
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"xwin export: error: {out / taken}: cannot write")
    assert listing(tmp_path) == before  # no NIfTI, no .seg.nrrd, no series


@pytest.mark.parametrize("suffix", [".png", ".nrrd", ".mha"])
def test_a_file_name_that_is_not_utf8_is_kept_in_the_metadata_as_escapes(tmp_path, capsys, suffix):
    """Campaign 12: a film named in Latin-1 (b'film_\\xff.png', a surrogate escape in Python) ended `xwin predict`
    in a traceback: PNG text and ITK fields must be UTF-8. The name is stored with the byte escaped."""
    film = tmp_path / os.fsdecode(b"film_\xff.png")
    ramp = np.linspace(0, 255, 64 * 64).reshape(64, 64).astype(np.uint8)
    Image.fromarray(np.maximum(ramp, ramp.T)).save(film)
    out = tmp_path / f"p{suffix}"
    assert main(["predict", str(film), "--lao", "30", "--cran", "0", "--out", str(out)]) == 0, capsys.readouterr().err
    if suffix == ".png":
        text = Image.open(out).text
    else:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(out))
        reader.ReadImageInformation()
        text = {k: reader.GetMetaData(k) for k in reader.GetMetaDataKeys()}
    assert any("film_\\udcff.png" in v for v in text.values()), text


@pytest.mark.parametrize("name", ["V.MHA", "V.NII", "V.NII.GZ", "V.NRRD", "V.Mha"])
def test_upper_case_suffix_is_written_and_read_as_its_format(tmp_path, name):
    """ITK refuses NIfTI names in upper case and writes X.MHA as a detached X.mhd + X.raw pair, and finds no reader
    for X.MHA: the temporary keeps the suffix in lower case, the reader is chosen by the suffix in any case."""
    from xwin.io import read_ct

    vol = noisy_volume(16)
    out = write_volume(vol, tmp_path / name)
    assert listing(tmp_path) == [name]  # one file, the name asked for
    back = read_ct(out)
    np.testing.assert_allclose(back.array, vol.array, atol=1e-3 if "NII" not in name.upper() else 0.5)
    np.testing.assert_allclose(back.origin, vol.origin, atol=1e-6)


def test_render_into_a_plain_file_with_several_poses(tmp_path, capsys):
    src = write_volume(noisy_volume(16), tmp_path / "ct.nrrd")
    (tmp_path / "sweep").write_text("a file")
    before = listing(tmp_path)
    assert main(["render", str(src), "--lao", "0", "30", "--cran", "0", "0", "--size", "8", "8",
                 "--out", str(tmp_path / "sweep"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "sweep") in err[0] and "Traceback" not in err[0]
    assert listing(tmp_path) == before


def test_render_failing_on_a_later_pose_leaves_no_earlier_one(tmp_path, monkeypatch, capsys):
    src = write_volume(noisy_volume(16), tmp_path / "ct.nrrd")
    before = listing(tmp_path)
    real, calls = sitk.WriteImage, []

    def second_fails(image, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(image, path, *args, **kwargs)

    monkeypatch.setattr(sitk, "WriteImage", second_fails)
    assert main(["render", str(src), "--lao", "0", "30", "60", "--cran", "0", "0", "0", "--size", "8", "8",
                 "--out", str(tmp_path / "sweep"), "--quiet"]) == 2
    assert ENOSPC_TEXT in capsys.readouterr().err
    assert listing(tmp_path) == before


# ---- SIGTERM ------------------------------------------------------------------------------------------------------

SLOW_WRITER = textwrap.dedent("""
    import os, sys, time
    import pydicom.dataset, SimpleITK as sitk
    marker = sys.argv[1]
    def slowly(real):
        def write(*args, **kwargs):
            real(*args, **kwargs)
            open(marker, "a").close()   # something is being written: now is the time to terminate
            time.sleep(0.5)
        return write
    pydicom.dataset.Dataset.save_as = slowly(pydicom.dataset.Dataset.save_as)
    sitk.WriteImage = slowly(sitk.WriteImage)
    from xwin.cli import main
    sys.exit(main(sys.argv[2:]))
""")


@pytest.fixture(scope="module")
def sigterm_ct(tmp_path_factory):
    vol, _ = torso()
    return write_volume(vol, tmp_path_factory.mktemp("sigterm") / "torso.nrrd")


@pytest.mark.parametrize("command, sig", [("render", "SIGTERM"), ("reconstruct", "SIGTERM"), ("export", "SIGTERM"),
                                         # campaign 8: SIGHUP / SIGQUIT left a hidden folder of partial DRRs
                                         ("render", "SIGHUP"), ("export", "SIGQUIT"),
                                         # campaign 12: SIGUSR1 (and USR2, ALRM, XCPU) left the staging
                                         ("render", "SIGUSR1"), ("reconstruct", "SIGXCPU")])
def test_sigterm_while_writing_leaves_nothing(tmp_path, sigterm_ct, command, sig):
    if not hasattr(signal, sig):
        pytest.skip(f"no {sig} on this platform")
    out_dir = tmp_path / "work"
    out_dir.mkdir()
    marker = tmp_path / f"marker-{uuid.uuid4().hex}"
    args = {"render": ["render", str(sigterm_ct), "--lao", "0", "20", "40", "--cran", "0", "0", "0", "--size", "8",
                       "8", "--out", str(out_dir / "sweep"), "--quiet"],
            "reconstruct": ["reconstruct", "--from-ct", str(sigterm_ct), "--views", "4", "--size", "8", "8", "8",
                            "--det", "16", "16", "--out", str(out_dir / "series")],
            "export": ["export", str(sigterm_ct), "--out", str(out_dir / "seg"), "--dicom"]}[command]
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(marker), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), proc.communicate(timeout=60)
    number = getattr(signal, sig)
    proc.send_signal(number)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + number, err
    assert err.strip().splitlines()[-1] == f"xwin {command}: terminated" + ("" if sig == "SIGTERM" else f" ({sig})")
    assert listing(out_dir) == []  # no hidden temporaries, no half-written output


def test_stale_temporaries_of_the_same_output_are_swept(tmp_path):
    """A process killed outright (SIGKILL, power loss) leaves its hidden temporaries; the next write of the same output
    removes those older than a day and leaves younger ones (another process may be writing) and other names alone."""
    vol, _ = torso()
    stale_file, stale_dir = tmp_path / ".ct.nrrd.0123abcd.tmp.nrrd", tmp_path / ".ct.nrrd.x1y2z3.tmp"
    young, other = tmp_path / ".ct.nrrd.cafef00d.tmp.nrrd", tmp_path / ".other.nrrd.0123abcd.tmp.nrrd"
    stale_dir.mkdir()
    (stale_dir / "part.nrrd").write_bytes(b"partial")
    for p in (stale_file, young, other):
        p.write_bytes(b"partial")
    two_days_ago = time.time() - 2 * 86400
    for p in (stale_file, stale_dir, other):
        os.utime(p, (two_days_ago, two_days_ago))
    write_volume(vol, tmp_path / "ct.nrrd")
    assert listing(tmp_path) == sorted([".ct.nrrd.cafef00d.tmp.nrrd", ".other.nrrd.0123abcd.tmp.nrrd", "ct.nrrd"])


def test_read_only_folder_as_root_without_dac_override(tmp_path):
    """As root chmod cannot deny a write; run the read-only tests again in a process whose capability bounding set
    lacks CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH (util-linux setpriv), where a 0555 folder is read-only for it."""
    if os.geteuid() != 0:
        pytest.skip("not root: test_read_only_folder runs directly")
    if os.environ.get("XWIN_NO_DAC") or not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) not found" if not shutil.which("setpriv") else "already without DAC")
    done = subprocess.run(["setpriv", "--bounding-set", "-dac_override,-dac_read_search", sys.executable, "-m",
                           "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", "read_only_folder and not root",
                           "--basetemp", str(tmp_path / "base")],
                          capture_output=True, text=True, env={**os.environ, "XWIN_NO_DAC": "1"}, timeout=600)
    if "Operation not permitted" in done.stderr and done.returncode != 0 and "passed" not in done.stdout:
        pytest.skip(f"setpriv cannot drop capabilities here: {done.stderr.strip()[:200]}")
    assert done.returncode == 0 and "skipped" not in done.stdout, done.stdout[-3000:] + done.stderr[-2000:]
