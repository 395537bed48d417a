"""Stop from the panel through a launcher that forwards no signal (issue 14).

In 3D Slicer the trainer is started with ``PythonSlicer``, a CTKAppLauncher that starts the real Python as a child and
forwards no signal. `LAUNCHER` plays that part: it starts its arguments as a child, ignores SIGTERM/SIGINT/SIGHUP and
forwards nothing. A real (tiny) ``xwin train`` run is started through it by the panel logic's process object
(`TrainingProcess`, the one `XWinSlicerLib.logic` and ``xwin viewer`` use) and stopped with its `stop`: the run must end
with a checkpoint and a "stopped" event, ``--resume`` must continue from that checkpoint, and no process the test
started may survive. A trainer that ignores the stop request is killed with its whole tree after the grace period,
and `terminate` (closing the panel) returns at once.
"""
from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import write_synthetic_ct

from xwin.viewer.training import TrainingProcess, new_stop_file, train_command

LAUNCHER = textwrap.dedent("""
    # Like CTKAppLauncher (PythonSlicer): run the real program as a child; forward no signal, ignore them itself.
    import signal, subprocess, sys
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: None)  # a handler, not SIG_IGN: the child starts with default dispositions
    with open(sys.argv[1], "w") as f:
        child = subprocess.Popen(sys.argv[2:])
        f.write(str(child.pid))
    sys.exit(child.wait())
""")

STUBBORN = textwrap.dedent("""
    # A trainer that never stops by itself: ignores SIGTERM and any stop file, prints a step now and then.
    import json, signal, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print(json.dumps({"event": "start", "step": 0, "total": 100}), flush=True)
    step = 0
    while True:
        step += 1
        print(json.dumps({"step": step, "loss_total": 1.0}), flush=True)
        time.sleep(0.05)
""")

TINY = {
    "model": {"encoder": "tiny", "embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 32,
              "predictor_depth": 1, "predictor_width": 32, "predictor_heads": 2, "mask_predictor_depth": 1,
              "mask_predictor_width": 32, "mask_predictor_heads": 2, "decoder_depth": 1, "decoder_width": 32,
              "decoder_heads": 2, "domain_hidden": 16},
    "mask": {"num_targets": 1, "min_keep": 1},
    "data": {"lao": [-30.0, 0.0, 30.0], "cran": [0.0], "augmentations": 1, "spacing_mm": 5.0, "sid": 400.0,
             "sdd": 600.0, "field_mm": 200.0, "real_per_batch": 2},
    # far more steps than the test lets it run, checkpoints far apart: the checkpoint at the stop is the stop's
    "train": {"lr": 1e-3, "warmup_steps": 2, "total_steps": 100000, "batch_size": 4, "checkpoint_every": 100000,
              "amp": False},
}


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (Linux /proc; elsewhere os.kill probing)."""
    stat = Path(f"/proc/{pid}/stat")
    if stat.parent.parent.is_dir() and Path("/proc/self").exists():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_gone(pids, timeout=10.0) -> list[int]:
    end = time.monotonic() + timeout
    while time.monotonic() < end and any(_alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


def _poll_until(t: TrainingProcess, cond, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        t.poll()
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out; status {t.state.status}, log tail: {t.state.log[-15:]}")


@pytest.fixture(scope="module")
def tiny_run_config(tmp_path_factory):
    root = tmp_path_factory.mktemp("stop")
    cts = [str(write_synthetic_ct(root / f"patient{n}.nrrd", ball_lps=(n * 5.0, 0.0, 0.0))) for n in range(3)]
    cxr = root / "cxr"
    cxr.mkdir()
    from PIL import Image
    rng = np.random.default_rng(0)
    for n in range(3):
        Image.fromarray((rng.random((48, 40)) * 255).astype(np.uint8)).save(cxr / f"real{n}.png")
    cfg = json.loads(json.dumps(TINY))
    cfg["data"].update({"ct": cts, "holdout": ["patient2"], "cxr": [str(cxr)], "bank": str(root / "bank")})
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    launcher = root / "launcher.py"
    launcher.write_text(LAUNCHER)
    return root, path, launcher


def _through_launcher(launcher: Path, pid_file: Path, cmd: list[str]) -> list[str]:
    return [sys.executable, str(launcher), str(pid_file), *cmd]


def _events(t: TrainingProcess) -> list[str]:
    return [line for line in t.state.log if line.startswith(("started", "checkpoint", "stopped", "finished"))]


@pytest.mark.skipif(os.name == "nt", reason="the launcher stand-in and /proc checks are POSIX")
def test_stop_through_a_launcher_that_forwards_no_signal(tiny_run_config, tmp_path):
    from xwin.models.model_file import latest_checkpoint, load_checkpoint

    root, cfg_path, launcher = tiny_run_config
    run = tmp_path / "run"

    def start(resume: bool) -> tuple[TrainingProcess, int, int]:
        pid_file = tmp_path / f"child_{int(resume)}.pid"
        stop_file = new_stop_file()
        cmd = train_command(str(cfg_path), str(run), resume=resume, python=sys.executable, stop_file=stop_file)
        cmd += ["--device", "cpu"]
        t = TrainingProcess(grace_s=120)
        t.start(_through_launcher(launcher, pid_file, cmd))
        assert t.stop_file == stop_file
        _poll_until(t, lambda: pid_file.exists() and pid_file.read_text(), 60)
        return t, t.proc.pid, int(pid_file.read_text())

    # 1. a fresh run, stopped from the panel after a few steps
    t, launcher_pid, trainer_pid = start(resume=False)
    _poll_until(t, lambda: t.state.step >= 3, 300)
    assert t.state.status == "running" and _alive(trainer_pid)
    t.stop()
    assert t.state.status == "stopping"
    assert t.wait(120) == 0, t.state.log[-15:]
    stopped_at = t.state.step
    assert t.state.status == "stopped", t.state.log[-15:]
    assert any(line.startswith("stopped at step") for line in t.state.log), _events(t)
    assert t.state.checkpoint and Path(t.state.checkpoint).is_dir(), _events(t)
    last = latest_checkpoint(run)
    assert last is not None and load_checkpoint(last)[2]["step"] == stopped_at >= 3
    assert not any("killed" in line for line in t.state.log), "stopped by the stop file, not by the last resort"
    assert not Path(t.stop_file).exists() and not Path(t.stop_file).parent.exists()  # cleaned up
    assert _wait_gone([launcher_pid, trainer_pid]) == [], "a process of the stopped run survived"

    # 2. --resume continues from the stop's checkpoint (then stop it again)
    t2, launcher_pid2, trainer_pid2 = start(resume=True)
    _poll_until(t2, lambda: t2.state.step >= stopped_at + 2, 300)
    assert f"started at step {stopped_at} of 100000" in t2.state.log, _events(t2)
    t2.stop()
    assert t2.wait(120) == 0 and t2.state.status == "stopped"
    assert load_checkpoint(latest_checkpoint(run))[2]["step"] == t2.state.step > stopped_at
    assert _wait_gone([launcher_pid2, trainer_pid2]) == []


@pytest.mark.skipif(os.name == "nt", reason="the launcher stand-in and /proc checks are POSIX")
def test_a_trainer_that_ignores_stop_is_killed_with_its_tree_and_terminate_never_blocks(tiny_run_config, tmp_path):
    _, _, launcher = tiny_run_config
    script = tmp_path / "stubborn.py"
    script.write_text(STUBBORN)
    pid_file = tmp_path / "child.pid"

    # Stop, then the last resort from `poll` after the grace period
    t = TrainingProcess(grace_s=1.0)
    t.start(_through_launcher(launcher, pid_file, [sys.executable, str(script), "--stop-file", new_stop_file()]))
    _poll_until(t, lambda: t.state.step >= 2 and pid_file.exists() and pid_file.read_text(), 30)
    pids = [t.proc.pid, int(pid_file.read_text())]
    t.stop()
    assert t.wait(15) is not None
    assert t.state.status == "stopped" and any("process tree killed" in line for line in t.state.log)
    assert _wait_gone(pids) == [], "the launcher's child survived the kill"

    # Closing the panel: `terminate` returns at once; its watchdog kills the tree after the grace period
    pid_file.unlink()
    t = TrainingProcess(grace_s=1.0)
    t.start(_through_launcher(launcher, pid_file, [sys.executable, str(script)]))
    _poll_until(t, lambda: t.state.step >= 1 and pid_file.exists() and pid_file.read_text(), 30)
    pids = [t.proc.pid, int(pid_file.read_text())]
    tick = time.perf_counter()
    t.terminate()
    assert time.perf_counter() - tick < 0.5, "terminate blocked the panel"
    assert _wait_gone(pids, timeout=15) == [], "terminate's watchdog left a process alive"


FAKE_PYTHONSLICER = textwrap.dedent("""\
    #!/bin/sh
    # Stands in for PythonSlicer: a launcher (forwards no signal) running a trainer that honours --stop-file.
    exec "{python}" "{launcher}" "{pid_file}" "{python}" "{trainer}" "$@"
""")

STOP_FILE_TRAINER = textwrap.dedent("""
    # Speaks the xwin train --progress jsonl protocol and stops like it: when its --stop-file appears.
    import json, os, sys, time
    stop_file = sys.argv[sys.argv.index("--stop-file") + 1]
    print(json.dumps({"event": "start", "step": 0, "total": 1000}), flush=True)
    step = 0
    while True:
        step += 1
        print(json.dumps({"step": step, "loss_total": 1.0 / step}), flush=True)
        if os.path.exists(stop_file):
            break
        time.sleep(0.02)
    print(json.dumps({"event": "checkpoint", "step": step, "path": "RUN/step_%07d" % step}), flush=True)
    print(json.dumps({"event": "stopped", "step": step}), flush=True)
""")


@pytest.mark.skipif(os.name == "nt", reason="the launcher stand-in is a POSIX shell script")
def test_the_slicer_logic_starts_training_through_the_launcher_with_a_stop_file(tiny_run_config, tmp_path, logic):
    """`XWinLogic.startTraining` (what the widget's Start calls, with PythonSlicer as ``python``) names a stop file,
    and Stop stops through the launcher with the trainer's own checkpoint."""
    _, _, launcher = tiny_run_config
    trainer = tmp_path / "trainer.py"
    trainer.write_text(STOP_FILE_TRAINER)
    pid_file = tmp_path / "child.pid"
    fake = tmp_path / "PythonSlicer"
    fake.write_text(FAKE_PYTHONSLICER.format(python=sys.executable, launcher=launcher, pid_file=pid_file,
                                             trainer=trainer))
    fake.chmod(0o755)
    store = logic.parameters()
    settings = store.settings()
    settings.train_config, settings.train_run_dir = "cfg.yaml", str(tmp_path / "run")
    settings.device = "cpu"  # the panel's "Compute on" choice reaches the trainer
    store.setSettings(settings)

    t = logic.startTraining(resume=False, python=str(fake))
    assert t.stop_file and "--stop-file" in t.proc.args
    assert t.proc.args[t.proc.args.index("--device") + 1] == "cpu"
    _poll_until(t, lambda: t.state.step >= 3 and pid_file.exists() and pid_file.read_text(), 30)
    pids = [t.proc.pid, int(pid_file.read_text())]
    t.stop()
    assert t.wait(20) == 0 and t.state.status == "stopped" and t.state.checkpoint.startswith("RUN/step_")
    assert not any("killed" in line for line in t.state.log)
    assert _wait_gone(pids) == []
