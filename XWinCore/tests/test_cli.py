"""The `xwin` command line as a contract: render/info/demo, exact outputs, one-line errors with exit status 2."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from xwin.cli import main
from xwin.drr import render
from xwin.geometry import Geometry
from xwin.io import read_ct, write_volume
from xwin.io.image import Volume


@pytest.fixture(scope="module")
def small_ct(tmp_path_factory):
    """A 40×36×30 oblique CT (soft-tissue box with a dense ball) written as NRRD."""
    rng = np.random.default_rng(0)
    arr = np.full((30, 36, 40), -1000.0, np.float32)
    arr[5:25, 6:30, 8:32] = 40.0
    k, j, i = np.ogrid[:30, :36, :40]
    arr[(k - 15) ** 2 + (j - 18) ** 2 + (i - 24) ** 2 < 25] = 1200.0
    arr += rng.normal(0, 5, arr.shape).astype(np.float32)
    c, s = np.cos(0.3), np.sin(0.3)
    vol = Volume(arr, (2.0, 2.5, 3.0), (-40.0, -45.0, -45.0), np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]))
    path = tmp_path_factory.mktemp("ct") / "small.nrrd"
    write_volume(vol, path)
    return path


GEO = ["--sid", "500", "--sdd", "700", "--size", "24", "32", "--pixel", "3"]


def test_render_one_pose_matches_the_library(small_ct, tmp_path):
    out = tmp_path / "drr.nrrd"
    assert main(["render", str(small_ct), "--lao", "30", "--cran", "-10", *GEO, "--mode", "line", "--out", str(out),
                 "--quiet"]) == 0
    img = sitk.ReadImage(str(out))
    assert img.GetSize() == (32, 24)  # W columns, H rows
    assert img.GetSpacing() == pytest.approx((3.0, 3.0))
    ref = render(read_ct(small_ct), 30, -10, Geometry(500, 700, 24, 32, 3.0), mode="line")[0]
    np.testing.assert_allclose(sitk.GetArrayFromImage(img), ref, rtol=1e-6, atol=1e-6)
    assert float(img.GetMetaData("xwin_lao_deg")) == 30.0


def test_render_paired_poses_into_a_folder(small_ct, tmp_path):
    out = tmp_path / "sweep"
    assert main(["render", str(small_ct), "--lao", "0", "15", "30", "--cran", "0", "0", "10", *GEO,
                 "--out", str(out), "--quiet"]) == 0
    files = sorted(out.iterdir())
    assert [f.name for f in files] == ["drr_lao+000.00_cran+000.00.nrrd", "drr_lao+015.00_cran+000.00.nrrd",
                                       "drr_lao+030.00_cran+010.00.nrrd"]
    third = sitk.GetArrayFromImage(sitk.ReadImage(str(files[2])))
    ref = render(read_ct(small_ct), 30, 10, Geometry(500, 700, 24, 32, 3.0), mode="radiograph")[0]
    np.testing.assert_allclose(third, ref, atol=1e-6)
    assert 0 <= third.min() and third.max() < 1


@pytest.mark.parametrize("ext", ["png", "mha", "nii.gz"])
def test_render_formats(small_ct, tmp_path, ext):
    out = tmp_path / f"drr.{ext}"
    assert main(["render", str(small_ct), "--lao", "0", "--cran", "0", *GEO, "--out", str(out), "--quiet"]) == 0
    assert sitk.ReadImage(str(out)).GetSize() == (32, 24)


@pytest.mark.parametrize("args,needle", [
    (["--lao", "0", "15", "--cran", "0", "1", "2"], "paired"),
    (["--lao", "0", "--cran", "0", "--sid", "900", "--sdd", "800"], "SDD"),
    (["--lao", "0", "--cran", "0", "--pixel", "-1"], "pixel"),
    (["--lao", "0", "--cran", "0", "--mu-water", "0"], "mu_water"),
])
def test_bad_render_arguments_exit_2_without_output(small_ct, tmp_path, capsys, args, needle):
    out = tmp_path / "drr.nrrd"
    assert main(["render", str(small_ct), *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0]
    assert list(tmp_path.iterdir()) == []


def test_bad_ct_is_one_line_exit_2_subprocess(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b this is not a nifti")
    out = tmp_path / "drr.png"
    r = subprocess.run([sys.executable, "-m", "xwin", "render", str(bad), "--lao", "0", "--cran", "0",
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "broken.nii.gz" in lines[0] and "Traceback" not in r.stderr
    assert not out.exists()


def test_info_reports_geometry(small_ct, capsys):
    assert main(["info", str(small_ct)]) == 0
    rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in capsys.readouterr().out.splitlines())
    assert rows["kind"] == "CT volume" and rows["format"] == "NRRD"
    assert rows["size ijk"] == "(40, 36, 30)"  # i, j, k: not the array's [k, j, i] order
    assert rows["spacing mm"] == "(2, 2.5, 3)" and rows["origin lps mm"] == "(-40, -45, -45)"
    # the i axis is the first column of the direction matrix: (cos 0.3, sin 0.3, 0)
    assert rows["direction axes ijk"] == "((0.955336, 0.29552, 0), (-0.29552, 0.955336, 0), (0, 0, 1))"


def test_help_names_units():
    r = subprocess.run([sys.executable, "-m", "xwin", "render", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "mm" in r.stdout and "degrees" in r.stdout


def test_demo_writes_sheets_and_gif(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--step", "45", "--quiet"]) == 0
    out = capsys.readouterr().out
    sheet, gif, world = tmp_path / "drr_sweep.png", tmp_path / "drr_sweep.gif", tmp_path / "world_model.png"
    assert str(sheet) in out and str(gif) in out and str(world) in out
    from PIL import Image
    with Image.open(gif) as im:
        assert im.n_frames == 5 + 3  # −90, −45, 0, 45, 90 and the way back
    with Image.open(sheet) as im:
        assert im.size[0] > 400
    with Image.open(world) as im:  # 5 true DRRs over the 5 predicted views
        assert im.size[0] > 2 * im.size[1]


def test_predict_reads_an_xwin_drr_in_the_training_convention(tmp_path):
    """A DRR written by `xwin render` goes into the model unstretched (as the training DRRs did): the embedded model's
    Δ = 0 prediction then keeps the DRR's brightness; contrast-stretched like a film, it comes out ~0.04 brighter."""
    from xwin.io import read_radiograph
    from xwin.predict import load_predictor
    from xwin.recon import model_geometry
    from xwin.sample_data import demo_ct_path

    predictor = load_predictor()
    g = model_geometry(predictor.loaded.config)
    drr = tmp_path / "pa.nrrd"
    assert main(["render", str(demo_ct_path()), "--lao", "0", "--cran", "0", "--sid", str(g.sid), "--sdd",
                 str(g.sdd), "--size", str(g.height), str(g.width), "--pixel", str(g.pixel), "--out", str(drr)]) == 0
    image = read_radiograph(drr)
    assert image.simulated
    assert main(["predict", str(drr), "--lao", "0", "--cran", "0", "--out", str(tmp_path / "p.nrrd")]) == 0
    predicted = read_radiograph(tmp_path / "p.nrrd")
    assert not predicted.simulated  # a prediction is not a DRR
    as_film = predictor.predict(image.array, [0.0], [0.0], simulated=False)[0]
    assert abs(predicted.array.mean() - image.array.mean()) < 0.02
    assert as_film.mean() - image.array.mean() > 0.02


def test_angle_errors_speak_library_terms_and_the_cli_adds_its_flags(small_ct, tmp_path, capsys):
    from xwin.errors import XWinInputError
    from xwin.geometry import parse_angles

    with pytest.raises(XWinInputError) as err:
        parse_angles([0.0, 10.0, 20.0], [0.0, 5.0])
    assert "--" not in str(err.value) and "3 LAO angles and 2 CRAN angles" in str(err.value)
    assert main(["render", str(small_ct), "--lao", "0", "10", "20", "--cran", "0", "5",
                 "--out", str(tmp_path / "drrs")]) == 2
    assert "--lao/--cran: 3 LAO angles and 2 CRAN angles" in capsys.readouterr().err
    assert not (tmp_path / "drrs").exists()


@pytest.mark.parametrize("lao, cran, message", [("190", "0", "LAO 190 deg is outside -180...180"),
                                                ("0", "-90.5", "CRAN -90.5 deg is outside -90...90"),
                                                ("0", "200", "CRAN 200 deg")])
def test_angles_beyond_the_c_arm_range_are_refused(small_ct, tmp_path, capsys, lao, cran, message):
    """`predict --cran 200` was accepted (bad-input campaign 4): LAO lies in ±180°, CRAN in ±90°, as the panel's
    sliders; the edges themselves are poses."""
    from xwin.errors import XWinInputError
    from xwin.geometry import parse_angles

    assert parse_angles([-180.0, 180.0], [-90.0, 90.0])[1].tolist() == [-90.0, 90.0]
    with pytest.raises(XWinInputError, match=message):
        parse_angles([float(lao)], [float(cran)])
    for command in (["render", str(small_ct)], ["predict", str(small_ct)]):
        assert main(command + ["--lao", lao, "--cran", cran, "--out", str(tmp_path / "out.png")]) == 2
        assert f"--lao/--cran: {message}" in capsys.readouterr().err
    assert not (tmp_path / "out.png").exists()


def test_control_characters_in_a_file_name_are_escaped_in_the_error(tmp_path, capsys):
    """A file name holding ESC sequences drove the terminal from the error line (bad-input campaign 4)."""
    bad = tmp_path / "scan\x1b[2J\x1b]0;owned\x07.nrrd"
    bad.write_bytes(b"NRRD0004\nnot a header\n")
    assert main(["info", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err and "scan\\x1b[2J\\x1b]0;owned\\x07.nrrd" in err
    assert len(err.splitlines()) == 1
    with pytest.raises(SystemExit):
        main(["render", str(bad), "--lao", "0", "--cran", "0", "--mode", "\x1b[31mred", "--out", "x.png"])
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\\x1b[31mred" in err


def test_names_that_are_not_utf8_are_refused_not_aborted(small_ct, tmp_path):
    """Campaign 5: a NRRD named with bytes that are not UTF-8 killed the process inside SimpleITK (std::logic_error,
    exit 134, no message), as input and as output. ITK formats refuse such names; PNG takes them."""

    bad_ct = os.fsencode(tmp_path) + b"/ct_\xff\xfe.nrrd"
    with open(bad_ct, "wb") as f:
        f.write(small_ct.read_bytes())

    def xwin(*args):
        return subprocess.run([sys.executable, "-m", "xwin", *args], capture_output=True, timeout=300)

    for args in (["info", bad_ct],
                 ["render", str(small_ct), "--lao", "0", "--cran", "0", "--out",
                  os.fsencode(tmp_path) + b"/d\xff.nrrd"],
                 ["export", str(small_ct), "--out", os.fsencode(tmp_path) + b"/seg_\xff"]):
        r = xwin(*args)
        assert r.returncode == 2, r.stderr
        assert b"its name is not valid UTF-8" in r.stderr and len(r.stderr.splitlines()) == 1
    r = xwin("render", str(small_ct), "--lao", "0", "--cran", "0", "--out", os.fsencode(tmp_path) + b"/d\xff.png")
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(os.fsencode(tmp_path))) == [b"ct_\xff\xfe.nrrd", b"d\xff.png"]  # nothing else left


def test_a_legal_250_character_output_name_is_written(small_ct, tmp_path):
    """Campaign 5: the temporary beside a 250-character --out (legal) exceeded 255 characters: "File name too long"."""
    out = tmp_path / ("o" * 245 + ".nrrd")
    assert main(["render", str(small_ct), "--lao", "0", "--cran", "0", "--size", "16", "16", "--out", str(out)]) == 0
    assert sitk.ReadImage(str(out)).GetSize()[:2] == (16, 16) and [p.name for p in tmp_path.iterdir()] == [out.name]


def test_deflated_dicom_is_read(tmp_path):
    """Campaign 5: a Deflated Explicit VR Little Endian film was refused as "pixel data is truncated" (the length
    check compared the inflated offsets with the compressed file)."""
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian
    from synthetic_dicom import radiograph

    from xwin.io import read_radiograph
    from xwin.io.dicom_compat import save

    pixels = (np.arange(32 * 32).reshape(32, 32) % 4000).astype(np.uint16)
    plain = radiograph(tmp_path / "plain.dcm", pixels, BitsStored=12, HighBit=11)
    ds = pydicom.dcmread(plain)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    save(ds, tmp_path / "deflated.dcm")
    assert (tmp_path / "deflated.dcm").stat().st_size < plain.stat().st_size  # really deflated
    np.testing.assert_array_equal(read_radiograph(tmp_path / "deflated.dcm").array,
                                  read_radiograph(plain).array)


def test_a_closed_output_pipe_ends_quietly(small_ct):
    """Campaign 5: `xwin info CT | head -1` ended in a BrokenPipeError traceback; now quietly, exit 141."""

    read, write = os.pipe()
    os.close(read)  # the reader has gone before xwin writes
    r = subprocess.run([sys.executable, "-m", "xwin", "info", str(small_ct)], stdout=write, stderr=subprocess.PIPE,
                       timeout=300)
    os.close(write)
    assert r.returncode == 141 and r.stderr == b""


def test_a_full_output_is_one_line_exit_2(small_ct):
    """Campaign 6: `xwin info CT > /dev/full` ended in an OSError traceback (ENOSPC)."""
    with open("/dev/full", "wb") as full:
        r = subprocess.run([sys.executable, "-m", "xwin", "info", str(small_ct)], stdout=full, stderr=subprocess.PIPE,
                           timeout=300)
    assert r.returncode == 2
    assert r.stderr.decode() == "xwin info: error: cannot write the output: No space left on device\n"


def test_closed_standard_streams(small_ct, tmp_path):
    """Campaign 7: with stdout closed (`>&-`) `xwin info` and a valid `xwin render` (its output written) ended in an
    AttributeError traceback, exit 1; with stderr closed (`2>&-`) the error line went into stdout."""
    ok = subprocess.run(["sh", "-c", '"$0" -m xwin render "$1" --lao 0 --cran 0 --size 8 8 --out "$2" >&-',
                         sys.executable, str(small_ct), str(tmp_path / "drr.nrrd")], capture_output=True, timeout=300)
    assert ok.returncode == 0 and ok.stderr == b"" and (tmp_path / "drr.nrrd").is_file()
    bad = subprocess.run(["sh", "-c", '"$0" -m xwin info "$1" 2>&-', sys.executable, str(tmp_path / "nope.nrrd")],
                         capture_output=True, timeout=300)
    assert bad.returncode == 2 and bad.stdout == b""


@pytest.mark.parametrize("stop, code, line", [(KeyboardInterrupt, 130, "interrupted"), (None, 143, "terminated")])
def test_a_signal_inside_compiled_code_is_still_an_interruption(small_ct, monkeypatch, capsys, stop, code, line):
    """Campaign 7: Ctrl-C or SIGTERM landing inside a numba-compiled call surfaces as `SystemError: ... returned a
    result with an exception set` caused by the interruption: it was a traceback, exit 1."""
    import xwin.cli as cli

    def interrupted(ns):
        raise SystemError("CPUDispatcher(<function forward>) returned a result with an exception set") from (
            stop or cli.Terminated)()
    monkeypatch.setattr(cli, "cmd_info", interrupted)
    assert main(["info", str(small_ct)]) == code
    assert capsys.readouterr().err == f"xwin info: {line}\n"
    monkeypatch.setattr(cli, "cmd_info", lambda ns: (_ for _ in ()).throw(SystemError("another bug")))
    with pytest.raises(SystemError, match="another bug"):
        main(["info", str(small_ct)])


def test_a_stop_signal_after_the_command_finished_does_not_change_its_exit(small_ct, tmp_path):
    """Campaign 9: SIGTERM or SIGINT in the ~0.4 s between a finished export and the process's end (torch's and
    numba's teardown) gave exit 143/130 with nothing on stderr, though every output was in place. Once the process's
    own command is done, stop signals are ignored; a call from Python gets its handlers back."""
    script = ("import os, signal, sys\n"
              "from xwin.cli import main\n"
              "sys.argv = ['xwin', 'render', sys.argv[1], '--lao', '0', '--cran', '0', '--size', '8', '8', '--out', "
              "sys.argv[2]]\n"
              "code = main()\n"
              "os.kill(os.getpid(), signal.SIGTERM)\n"
              "os.kill(os.getpid(), signal.SIGINT)\n"
              "print('exit', code)\n"
              "sys.exit(code)\n")
    r = subprocess.run([sys.executable, "-c", script, str(small_ct), str(tmp_path / "drr.nrrd")], capture_output=True,
                       text=True, timeout=300)
    assert (r.returncode, r.stdout.splitlines()[-1], r.stderr) == (0, "exit 0", "")
    assert (tmp_path / "drr.nrrd").is_file()
    before = signal.getsignal(signal.SIGTERM)
    assert main(["info", str(small_ct)]) == 0 and signal.getsignal(signal.SIGTERM) == before


def test_json_output_is_strict_json():
    """Campaign 10: `reconstruct --json` printed {"psnr": Infinity} (identical images), which no JSON parser reads."""
    from xwin.cli import _dumps

    text = _dumps({"psnr": float("inf"), "scores": [float("nan"), 1.5, -float("inf")], "n": 3, "name": "a"})
    assert json.loads(text) == {"psnr": None, "scores": [None, 1.5, None], "n": 3, "name": "a"}


def test_a_name_the_output_encoding_lacks_is_escaped(small_ct, tmp_path):
    """Campaign 9: `PYTHONIOENCODING=ascii xwin info 'ç t é 李.mha'` was a UnicodeEncodeError traceback, exit 1."""
    named = tmp_path / "ç t é 李.nrrd"
    shutil.copy(small_ct, named)
    r = subprocess.run([sys.executable, "-m", "xwin", "info", str(named)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONIOENCODING": "ascii"}, timeout=300)
    assert r.returncode == 0 and r.stderr == "" and "\\xe7 t \\xe9 \\u674e.nrrd" in r.stdout


def test_a_negative_angle_in_exponent_form_is_a_value(small_ct, tmp_path):
    """Campaign 6: argparse took `--lao -3e1` for an option ("expected at least one argument")."""
    assert main(["render", str(small_ct), "--lao", "-3e1", "--cran", "-0", "--size", "8", "8", "--out",
                 str(tmp_path / "sci.nrrd")]) == 0
    assert main(["render", str(small_ct), "--lao", "-30", "--cran", "0", "--size", "8", "8", "--out",
                 str(tmp_path / "plain.nrrd")]) == 0
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "sci.nrrd"))),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "plain.nrrd"))))


@pytest.mark.parametrize("name,value,expected", [
    ("NUMBA_THREADING_LAYER", "bogus", "NUMBA_THREADING_LAYER='bogus' cannot be used here (The threading layer "
                                       "requested 'bogus' is unknown to Numba.)"),
    ("NUMBA_DISABLE_JIT", "1", "NUMBA_DISABLE_JIT is set"),
    ("NUMBA_OPT", "fast", "NUMBA_OPT must be 0, 1, 2, 3 or max, got 'fast'")])
def test_numba_settings_that_break_the_projector_are_one_line(tmp_path, small_ct, name, value, expected):
    """Campaign 12: a threading layer numba does not know was a ValueError traceback at the first DRR,
    NUMBA_DISABLE_JIT an ImportError, a NUMBA_OPT numba cannot parse a warning with its source line."""
    r = subprocess.run([sys.executable, "-m", "xwin", "render", str(small_ct), "--lao", "0", "--cran", "0", "--size",
                        "8", "8", "--out", str(tmp_path / "d.nrrd")], env={**os.environ, name: value},
                       capture_output=True, text=True, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and expected in lines[0], r.stderr[-800:]
    assert not (tmp_path / "d.nrrd").exists()
    r = subprocess.run([sys.executable, "-m", "xwin", "render", str(small_ct), "--lao", "0", "--cran", "0", "--size",
                        "8", "8", "--out", str(tmp_path / "d.nrrd")],
                       env={**os.environ, "NUMBA_THREADING_LAYER": "workqueue", "NUMBA_OPT": "max"},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stderr == "", r.stderr[-800:]


@pytest.mark.parametrize("name", ["drr.jpg", "drr.TIFF", "drr.dcm"])
def test_out_naming_a_file_type_xwin_does_not_write_is_refused(tmp_path, small_ct, capsys, name):
    """Campaign 12: `--out drr.jpg` became a folder drr.jpg/ holding an NRRD. An existing folder of that name is
    still written into."""
    out = tmp_path / name
    assert main(["render", str(small_ct), "--lao", "0", "--cran", "0", "--size", "8", "8", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0] and ".png file, or a folder" in err[0], err
    assert not out.exists()
    out.mkdir()
    assert main(["render", str(small_ct), "--lao", "0", "--cran", "0", "--size", "8", "8", "--out", str(out)]) == 0
    assert [p.suffix for p in out.iterdir()] == [".nrrd"]


@pytest.mark.parametrize("name", ["OMP_NUM_THREADS", "MKL_NUM_THREADS"])
@pytest.mark.parametrize("value, refused", [("abc", True), ("0", True), ("4,x", True), ("2", False), ("4,2", False)])
def test_omp_num_threads_is_checked_like_numba_num_threads(name, value, refused, tmp_path, monkeypatch, capsys):
    """Campaign 12: OMP_NUM_THREADS=abc let PyTorch's OpenMP print a line of its own and go on, MKL_NUM_THREADS=-3
    was ignored; a bad value is now one line before any work (a comma-separated list of thread counts, OpenMP's
    nested form, is accepted)."""
    ct = write_volume(Volume(np.zeros((4, 5, 6), np.float32), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0)), tmp_path / "ct.nrrd")
    monkeypatch.setenv(name, value)
    assert main(["info", str(ct)]) == (2 if refused else 0)
    err = capsys.readouterr().err
    assert err == (f"xwin info: error: {name} must be a whole number of threads from 1 to 4096 (or a "
                   f"comma-separated list of them), got '{value}' (unset it to use every core)\n" if refused else "")


def test_an_unwritable_home_gives_matplotlib_a_quiet_temporary_folder(tmp_path):
    """Campaign 12: with HOME unwritable, matplotlib printed two lines of its own (its settings folder could not be
    made); XWin now hands it a temporary folder, removed at exit."""
    env = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME")}
    env.update({"HOME": "/proc/nonexistent", "TMPDIR": str(tmp_path)})
    r = subprocess.run([sys.executable, "-m", "xwin", "demo", "--step", "90", "--out", str(tmp_path / "demo")],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-500:]
    assert "matplotlib" not in r.stderr.lower(), r.stderr
    assert (tmp_path / "demo" / "world_model.png").is_file() and not list(tmp_path.glob("xwin-matplotlib-*"))


def test_version_and_environment_settings_that_broke_a_library(tmp_path, capsys):
    """Campaign 6: `xwin --version` asked for a COMMAND; NUMBA_NUM_THREADS=0 and an MPLBACKEND matplotlib does not
    know were tracebacks from numba's and matplotlib's imports. Files are drawn with Agg whatever MPLBACKEND says."""

    from xwin import __version__

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out == f"xwin {__version__}\n"
    for threads in ("0", "99999", "²"):  # campaign 9: 99,999 threads was a segmentation fault; 10: '²' a traceback
        env = {**os.environ, "NUMBA_NUM_THREADS": threads}
        r = subprocess.run([sys.executable, "-m", "xwin", "demo", "--step", "90", "--out", str(tmp_path / "a")],
                           env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and r.stderr == ("xwin demo: error: NUMBA_NUM_THREADS must be a whole number of "
                                                  f"threads from 1 to 4096, got '{threads}' (unset it to use every "
                                                  "core)\n")
    env = {**os.environ, "MPLBACKEND": "no_such_backend"}
    r = subprocess.run([sys.executable, "-m", "xwin", "demo", "--step", "90", "--out", str(tmp_path / "b")], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-500:]
    assert (tmp_path / "b" / "world_model.png").is_file()
