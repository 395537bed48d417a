"""Layering (issue 15): inference and evaluation never import the trainer. The model-file formats live in
`xwin.models.model_file` and the bank spec and training-CT lists in `xwin.data`, both below `xwin.train`, so that
`xwin predict` and `xwin eval` load a model without it. Checked in a fresh interpreter through ``sys.modules``."""
from __future__ import annotations

import json
import subprocess
import sys

CODE = """
import json, sys
import xwin.predict, xwin.eval.world, xwin.eval.domain, xwin.eval.probe, xwin.demo
from xwin.data import bank_spec, training_cts
from xwin.models.model_file import read_weights, write_model_file
print(json.dumps(sorted(m for m in sys.modules if m == "xwin.train" or m.startswith("xwin.train."))))
"""


def test_predict_and_eval_do_not_import_the_trainer():
    proc = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_the_check_sees_the_trainer_when_it_is_imported():
    proc = subprocess.run([sys.executable, "-c", CODE.replace("import json, sys", "import json, sys, xwin.train")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "xwin.train" in json.loads(proc.stdout.strip().splitlines()[-1])
