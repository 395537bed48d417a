"""The command line stays light: `--help` of every command, and a CPU render, never import torch (issue 15).

Checked in a fresh interpreter through ``sys.modules``, not by timing (speed is measured in bench/cli.py): importing
torch costs a second or more, more than rendering one DRR, so a module-level ``import torch`` that creeps back into
the path of ``xwin.cli``, ``xwin.geometry``, ``xwin.io`` or ``xwin.drr.cpu`` fails here. One DRR of a NRRD CT into a
NRRD file imports neither pydicom (read by the DICOM series and radiograph readers only), Pillow (PNG) nor tqdm
(progress over several poses): together a tenth of a second of its start-up.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from xwin.io import write_volume
from xwin.io.image import Volume

HEAVY = ("torch", "monai", "timm", "matplotlib")  # a model or a plot needs them; --help and a CPU render do not
NOT_FOR_ONE_DRR = ("pydicom", "PIL", "tqdm")  # a DICOM series, a PNG, several poses need them

HELP_ALL = """
import argparse, contextlib, io, json, sys
from xwin.cli import build_parser, main

def commands(parser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,)
                yield from commands(sub, prefix + (name,))

done = []
for argv in [()] + list(commands(build_parser())):
    with contextlib.redirect_stdout(io.StringIO()) as text:
        try:
            main([*argv, "--help"])
        except SystemExit as exc:
            assert exc.code == 0, (argv, exc.code)
    assert "usage: xwin" in text.getvalue(), argv
    done.append(" ".join(argv))
print(json.dumps({"commands": done, "loaded": sorted({m.split(".")[0] for m in sys.modules} & set(%r))}))
""" % (HEAVY + NOT_FOR_ONE_DRR,)


def _run(code: str, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_help_of_every_command_imports_no_torch():
    result = _run(HELP_ALL)
    assert {"", "render", "train", "predict", "eval", "eval world", "reconstruct", "export"} <= set(result["commands"])
    assert result["loaded"] == [], f"--help imported {result['loaded']}"


def test_cpu_render_imports_no_torch(tmp_path):
    arr = np.full((12, 10, 8), -1000.0, np.float32)
    arr[3:9, 2:8, 2:6] = 300.0
    ct = tmp_path / "ct.nrrd"
    write_volume(Volume(arr, (2.0, 2.0, 2.5), (0.0, 0.0, 0.0), np.eye(3)), ct)
    out = tmp_path / "drr.nrrd"
    code = ("import gc, json, sys\nfrom xwin.cli import main\n"
            "rc = main(sys.argv[1:])\n"
            f"loaded = sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY + NOT_FOR_ONE_DRR!r}))\n"
            "print(json.dumps({'rc': rc, 'loaded': loaded, 'gc': gc.isenabled()}))")
    result = _run(code, "render", str(ct), "--lao", "30", "--cran", "10", "--size", "8", "8", "--out", str(out),
                  "--quiet")
    assert result["rc"] == 0 and out.is_file()
    assert result["loaded"] == [], f"xwin render --device cpu imported {result['loaded']}"
    assert result["gc"], "main(argv) called from Python must leave the garbage collector on (only `xwin render` " \
                         "run as a program turns it off)"
