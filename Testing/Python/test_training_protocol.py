"""The panel side of ``xwin train --progress jsonl``: parsing, the process runner's stop (SIGTERM then SIGKILL, no
orphan), and the loss plot nodes. Pure Python; the MRML part skips without slicer-core."""
from __future__ import annotations

import json
import sys
import textwrap

import pytest

from xwin.viewer.training import ProgressParser, TrainingProcess, train_command

FAKE_TRAINER = textwrap.dedent("""
    # Speaks the xwin train --progress jsonl protocol; on SIGTERM writes a "checkpoint" and exits (like the trainer).
    import json, signal, sys, time
    stop = False
    def handle(signum, frame):
        global stop
        stop = True
    if "--ignore-term" in sys.argv:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, handle)
    print(json.dumps({"event": "start", "step": 0, "total": 1000}), flush=True)
    print("a stray non-JSON line", flush=True)
    step = 0
    while not stop and step < int(sys.argv[1]):
        step += 1
        print(json.dumps({"step": step, "epoch": step / 100, "lr": 1e-4, "samples_per_s": 50.0, "eta_s": 10.0,
                          "loss_total": 1.0 / step, "loss_view": 0.5 / step}), flush=True)
        time.sleep(0.01)
    print(json.dumps({"event": "checkpoint", "step": step, "path": "RUN/ckpt_%06d" % step}), flush=True)
    print(json.dumps({"event": "stopped" if stop else "finished", "step": step}), flush=True)
""")


def test_parser_handles_chunks_events_and_noise():
    p = ProgressParser()
    lines = [json.dumps({"event": "start", "step": 0, "total": 10}),
             json.dumps({"step": 1, "lr": 1e-3, "loss_total": 2.0, "loss_view": 1.5, "eta_s": 9}),
             "warning: something",
             json.dumps({"step": 2, "lr": 1e-3, "loss_total": 1.0, "loss_view": 0.7, "eta_s": 8}),
             json.dumps({"event": "checkpoint", "step": 2, "path": "/runs/a/ckpt"})]
    text = "\n".join(lines) + "\n" + json.dumps({"event": "finished", "step": 2})
    records = []
    for i in range(0, len(text), 7):  # arbitrary chunking
        records += p.feed(text[i:i + 7])
    records += p.flush()
    s = p.state
    assert [r.get("step") for r in records] == [0, 1, 2, 2, 2]
    assert s.losses["loss_total"] == [(1, 2.0), (2, 1.0)] and s.losses["loss_view"][-1] == (2, 0.7)
    assert s.checkpoint == "/runs/a/ckpt" and s.status == "finished" and s.fraction == 1.0
    assert "warning: something" in s.log
    assert "step 2/10" in s.summary()


def test_stop_sends_sigterm_and_the_checkpoint_becomes_the_model(tmp_path):
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAINER)
    t = TrainingProcess(grace_s=10)
    t.start([sys.executable, str(script), "100000"])
    for _ in range(500):
        t.poll()
        if t.state.step >= 5:
            break
        __import__("time").sleep(0.01)
    assert t.state.status == "running" and t.state.total == 1000 and 0 < t.state.fraction < 1
    t.stop()
    assert t.wait(10) == 0
    assert t.state.status == "stopped"
    assert t.state.checkpoint and t.state.checkpoint.startswith("RUN/ckpt_")
    assert t.proc.poll() is not None


def test_stop_kills_a_trainer_that_ignores_sigterm(tmp_path):
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAINER)
    t = TrainingProcess(grace_s=0.5)
    t.start([sys.executable, str(script), "100000", "--ignore-term"])
    for _ in range(300):
        t.poll()
        if t.state.step >= 2:
            break
        __import__("time").sleep(0.01)
    t.stop()
    code = t.wait(10)
    assert code is not None and code < 0, "expected death by SIGKILL"
    assert t.state.status == "stopped" and any("killed" in line for line in t.state.log)


def test_finished_run(tmp_path):
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAINER)
    t = TrainingProcess()
    t.start([sys.executable, str(script), "3"])
    assert t.wait(20) == 0
    assert t.state.status == "finished" and t.state.step == 3 and t.state.checkpoint == "RUN/ckpt_000003"


def test_train_command():
    cmd = train_command("cfg.yaml", "runs/a", resume=True)
    assert cmd[1:] == ["-m", "xwin", "train", "--config", "cfg.yaml", "--out", "runs/a", "--resume",
                       "--progress", "jsonl"]
    with pytest.raises(ValueError):
        train_command("", "runs/a")


def test_real_trainer_parses_every_option_the_panel_passes():
    from xwin.cli import build_parser
    cmd = train_command("cfg.yaml", "runs/a", False, "/data/ct", "/data/cxr", "/models/x.safetensors")
    ns = build_parser().parse_args(cmd[3:])
    assert (ns.config, ns.out, ns.resume, ns.progress) == ("cfg.yaml", "runs/a", False, "jsonl")
    assert (ns.ct_dir, ns.cxr_dir, ns.init) == ("/data/ct", "/data/cxr", "/models/x.safetensors")


def test_loss_plot_nodes():
    from conftest import require_slicer
    slicer = require_slicer()
    from XWinSlicerLib.logic import XWinLogic

    scene = slicer.vtkMRMLScene()
    logic = XWinLogic(scene)
    p = ProgressParser()
    p.feed("".join(json.dumps({"step": s, "loss_total": 1 / s, "loss_view": 0.5 / s}) + "\n" for s in (1, 2, 3)))
    chart = logic.updateLossPlot(p.state)
    assert chart.GetNumberOfPlotSeriesNodes() == 2
    table = chart.GetNodeReference("xwinTable").GetTable()
    assert table.GetNumberOfRows() == 3 and table.GetColumnByName("loss_total").GetValue(2) == pytest.approx(1 / 3)
    p.feed(json.dumps({"step": 4, "loss_total": 0.2, "loss_view": 0.1}) + "\n")
    assert logic.updateLossPlot(p.state) is chart and chart.GetNumberOfPlotSeriesNodes() == 2
