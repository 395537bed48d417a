"""DRR bank, training loop, checkpoints (SIGKILL + resume), DDP on gloo, prediction and world evaluation."""
from __future__ import annotations

import csv
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from xwin.cli import main
from xwin.config import load_config
from xwin.data import PairSampler, bank_spec, load_bank
from xwin.data.bank import render_views, roll_pose
from xwin.data.cxr import find_images
from xwin.drr import Projector
from xwin.io import read_ct, write_volume
from xwin.io.image import Volume
from xwin.models.model_file import latest_checkpoint, load_checkpoint, save_checkpoint


def _run(args, **kw):
    return subprocess.run([sys.executable, "-m", "xwin", *args], capture_output=True, text=True, **kw)


def _assert_same_run(run: Path, reference: Path) -> None:
    """``run`` logged the reference run's steps with the same losses (metrics.csv keeps 6 decimals) and ended with the
    same weights (EMA target included)."""
    rows, want = _steps(run), _steps(reference)
    assert [r["step"] for r in rows] == [r["step"] for r in want]
    keys = [k for k in want[0] if k.startswith("loss_")]
    assert "loss_total" in keys
    for got, ref in zip(rows, want):
        for k in keys:
            assert float(got[k]) == pytest.approx(float(ref[k]), rel=1e-5, abs=1e-6), (ref["step"], k)
    weights, _, state = load_checkpoint(run)
    ref_weights, _, ref_state = load_checkpoint(reference)
    assert state["step"] == ref_state["step"] and weights.keys() == ref_weights.keys()
    for name, value in ref_weights.items():
        torch.testing.assert_close(weights[name], value, rtol=0, atol=1e-6, msg=name)


def test_a_ct_listed_twice_is_refused_before_any_work(tiny_setup, tmp_path):
    """Campaign 12: the same CT twice in data.ct (here once through a link) trained with that patient counted twice."""
    _, cfg_path, cts = tiny_setup
    cfg = yaml.safe_load(cfg_path.read_text())
    (tmp_path / "again.nrrd").symlink_to(cts[0])
    cfg["data"]["ct"] = [str(cts[0]), str(cts[1]), str(tmp_path / "again.nrrd")]
    path = tmp_path / "twice.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = _run(["train", "--config", str(path), "--out", str(tmp_path / "run"), "--progress", "none"])
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"xwin train: error: {path}: config key 'data.ct': entries 1 and 3 name the same CT ({cts[0]}): list each CT "
        "once"], r.stderr
    assert not (tmp_path / "run").exists()


def test_bank_holds_the_rendered_views_and_respects_the_split(tiny_setup, tiny_bank):
    root, cfg_path, cts = tiny_setup
    cfg = load_config(cfg_path)
    from xwin.data import training_cts
    chosen = training_cts(cfg)
    assert [c["patient_id"] for c in chosen] == ["patient0", "patient1"]  # patient2 is held out
    bank = load_bank(tiny_bank)  # built by the session fixture from the same training_cts(cfg) and bank_spec(cfg)
    assert bank.images.shape == (4, 3, 32, 32)  # 2 CTs × (1 + 1 augmentation), 3 views
    assert 0.0 <= float(bank.images.min()) and float(bank.images.max()) < 1.0
    m = bank.manifest
    assert len(m["instances"]) == 4 and {i["ct_index"] for i in m["instances"]} == {0, 1}
    assert all("seed" in i and "isocenter_lps_mm" in i and "roll_deg" in i for i in m["instances"])
    # instance 0 is the undeformed CT 0: its views equal a direct render at the same geometry
    from xwin.data.ct import ct_transforms, to_volume
    vol = to_volume(ct_transforms(spacing_mm=5.0)({"ct": cts[0]})["ct"])
    direct = render_views(Projector(vol, bank_spec(cfg).geometry()), bank_spec(cfg), 0.0, np.zeros(3))
    np.testing.assert_allclose(bank.images[0], direct, atol=2e-3)  # float16 storage
    assert not np.allclose(bank.images[1], bank.images[0], atol=1e-2)  # the deformed copy differs


def test_pair_sampler_actions_are_pose_differences(tiny_setup, tiny_bank):
    root, cfg_path, _ = tiny_setup
    bank = load_bank(tiny_bank)
    s = PairSampler(bank, real=np.zeros((3, 32, 32), np.float32), augment=False, seed=1)
    b = s.sample(16, real_size=2)
    assert b["context"].shape == (16, 1, 32, 32) and b["real"].shape == (2, 1, 32, 32)
    assert set(np.unique(b["d_lao"].numpy())) <= {-60.0, -30.0, 0.0, 30.0, 60.0}
    grid = [tuple(p) for p in bank.poses[0]]  # the pose is the context view's; pose + action is the target's
    for image, inst, pose, d in zip(b["context"][:, 0].numpy(), b["group"].numpy(), b["pose"].numpy(),
                                    np.stack([b["d_lao"].numpy(), b["d_cran"].numpy()], 1)):
        np.testing.assert_array_equal(image, bank.images[inst, grid.index(tuple(pose))].astype(np.float32))
        assert tuple(pose + d) in grid
    state = s.state()
    again = s.sample(4)
    s.restore(state)
    torch.testing.assert_close(s.sample(4)["target"], again["target"])


def test_sampler_state_continues_the_augmented_stream_exactly(tiny_setup, tiny_bank):
    """A fresh sampler restored from a checkpointed state() (through JSON, as a checkpoint stores it) draws exactly
    the batches, augmentation (MONAI noise and blur) included, that the saved sampler draws next."""
    root, _, _ = tiny_setup
    bank = load_bank(tiny_bank)
    real = np.random.default_rng(0).random((3, 32, 32)).astype(np.float32)
    s = PairSampler(bank, real=real, seed=7)  # augment=True, the training default
    for _ in range(3):
        s.sample(4, real_size=2)
    state = json.loads(json.dumps(s.state()))
    expected = [s.sample(4, real_size=2) for _ in range(3)]
    fresh = PairSampler(bank, real=real, seed=7)
    fresh.restore(state)
    for want in expected:
        got = fresh.sample(4, real_size=2)
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=0)
    plain = PairSampler(bank, real=real, augment=False, seed=7)
    plain.restore(state)
    b = plain.sample(4, real_size=2)
    torch.testing.assert_close(b["group"], expected[0]["group"])  # the same pairs...
    assert (b["context"] - expected[0]["context"]).abs().max() > 1e-3  # ...which augmentation did change
    # a checkpoint from before the augmentation state was saved still restores the pair stream
    legacy = PairSampler(bank, real=real, seed=7)
    legacy.restore({"rng": state["rng"], "draws": state["draws"]})
    torch.testing.assert_close(legacy.sample(4, real_size=2)["group"], expected[0]["group"])
    # another rank's sampler (seed + 1000) does not adopt rank 0's stream
    other = PairSampler(bank, real=real, seed=1007)
    other.restore(state)
    assert (other.sample(4, real_size=2)["context"] - expected[0]["context"]).abs().max() > 1e-3


def test_pairs_per_instance_draws_runs_of_one_instance(tiny_setup, tiny_bank):
    """Hard negatives: with pairs_per_instance = k a batch holds runs of k pairs of one (deformed) CT, each pair at its
    own angles; k = 1 draws exactly as before."""
    root, _, _ = tiny_setup
    bank = load_bank(tiny_bank)
    for k, batch in ((8, 16), (4, 12)):
        s = PairSampler(bank, augment=False, seed=2, pairs_per_instance=k)
        for _ in range(5):
            b = s.sample(batch)
            groups = b["group"].numpy()
            runs = [groups[i:i + k] for i in range(0, batch, k)]
            assert all(len(set(r)) == 1 for r in runs)  # a run shares its CT (its instance, a fortiori)
            assert len(np.unique(b["d_lao"].numpy())) > 2  # at independent angles
    one = PairSampler(bank, augment=False, seed=5).sample(16)
    again = PairSampler(bank, augment=False, seed=5, pairs_per_instance=1).sample(16)
    torch.testing.assert_close(one, again)


def test_zoom_magnifies_both_views_of_a_pair_about_the_detector_centre():
    """data.zoom: a pair's field becomes field / z; column c of the zoomed image shows column 31.5 + (c − 31.5) / z
    (the step every sampler, bank or online, applies to its rendered pairs)."""
    from xwin.data.pairs import _Sampler
    s = _Sampler(None, 0.5, augment=False, seed=3, zoom=(1.0, 3.0))
    ramp = torch.arange(64, dtype=torch.float32).expand(6, 64, 64)
    context, target = s._zoomed(ramp, ramp.flip(-1))
    cols = torch.arange(20, 44, dtype=torch.float32)  # interior: no padding reached
    z = (cols[1] - cols[0]) / (context[:, 32, 21] - context[:, 32, 20])  # slope 1 / z per pair
    assert ((z > 1.0) & (z < 3.0)).all() and z.std() > 0.05  # one factor per pair, drawn in the range
    torch.testing.assert_close(context[:, 32, 20:44], 31.5 + (cols - 31.5) / z[:, None], atol=1e-3, rtol=0)
    torch.testing.assert_close(target, context.flip(-1), atol=1e-3, rtol=0)  # the same factor for both views
    off = _Sampler(None, 0.5, augment=False, seed=3)
    assert off._zoomed(ramp, ramp)[0] is ramp and off.rng.random() == _Sampler(None, 0.5, False, 3).rng.random()
    from xwin.config import XWinConfig
    from xwin.errors import XWinInputError
    with pytest.raises(XWinInputError, match="data.zoom"):
        XWinConfig.from_dict({"data": {"zoom": [0.5, 1.0]}})


def test_online_sampler_renders_pairs_like_the_bank(tiny_setup, tiny_bank):
    """On-the-fly pairs: continuous angles inside the configured ranges, action = target − context, the same image
    as the bank at a grid pose (undeformed CT, no shift or roll), and a checkpointable generator."""
    import dataclasses

    from xwin.data import OnlineDrrSampler, training_cts
    root, cfg_path, _ = tiny_setup
    cfg = load_config(cfg_path)
    bank = load_bank(tiny_bank)
    spec = dataclasses.replace(bank_spec(cfg), augmentations=0, iso_shift_mm=0.0, roll_deg=0.0)
    s = OnlineDrrSampler(training_cts(cfg)[:1], spec, real=np.zeros((3, 32, 32), np.float32), pa_fraction=1.0,
                         augment=False, seed=3)
    b = s.sample(6, real_size=2)
    assert b["context"].shape == b["target"].shape == (6, 1, 32, 32) and b["real"].shape == (2, 1, 32, 32)
    d_lao = b["d_lao"].numpy()
    assert np.all(np.abs(d_lao) <= 30.0) and len(np.unique(d_lao)) == 6  # continuous in [−30, 30]
    assert np.all(b["d_cran"].numpy() == 0.0) and np.all(b["group"].numpy() == 0)
    assert np.all(b["pose"].numpy() == 0.0)  # every context is the PA view here
    pa = int(np.argmin(np.abs(bank.poses[0]).sum(axis=1)))
    for image in b["context"][:, 0].numpy():  # instance 0 of the bank is CT 0 undeformed, unshifted
        np.testing.assert_allclose(image, bank.images[0, pa], atol=2e-3)
    state = s.state()
    again = s.sample(3)
    s.restore(state)
    torch.testing.assert_close(s.sample(3)["target"], again["target"])
    assert s.epoch_size == 1 * len(spec.poses())


@pytest.mark.parametrize("online", [False, True])
def test_shared_rendering_gives_each_group_one_jitter_and_zoom(tiny_setup, tiny_bank, online):
    """data.shared_rendering: the pairs of one draw share isocenter shift, roll and zoom and form one group, so their
    PA contexts are one image; without it they differ (each pair its own jitter online, its own zoom on a bank)."""
    import dataclasses

    from xwin.data import OnlineDrrSampler, training_cts
    root, cfg_path, _ = tiny_setup
    cfg = load_config(cfg_path)
    bank = load_bank(tiny_bank)
    spec = dataclasses.replace(bank_spec(cfg), augmentations=1)

    def sampler(shared):
        mix = dict(pa_fraction=1.0, augment=False, seed=4, pairs_per_instance=4, zoom=(1.0, 1.5),
                   shared_rendering=shared)
        return OnlineDrrSampler(training_cts(cfg)[:2], spec, **mix) if online else PairSampler(bank, **mix)

    shared = sampler(True)
    rendered = []
    for projector in getattr(shared, "projectors", []):  # count the poses each render call is given
        projector.render = (lambda render: lambda pose, **kw: rendered.append(len(pose)) or render(pose=pose, **kw))(
            projector.render)
    b = shared.sample(12)
    if online:  # 12 targets + 1 PA context per group: the repeated context is rendered once
        assert sum(rendered) == 12 + 3
    assert b["group"].tolist() == [0] * 4 + [1] * 4 + [2] * 4  # one group per draw, even of the same instance
    assert len(np.unique(b["d_lao"].numpy())) >= 3  # targets still at their own angles
    for g in range(3):
        ctx = b["context"][4 * g:4 * g + 4]
        torch.testing.assert_close(ctx, ctx[:1].expand_as(ctx))  # one rendering per group
    apart = sampler(False).sample(12)["context"][:4]
    assert (apart - apart[:1]).abs().amax(dim=(1, 2, 3))[1:].min() > 1e-3


def test_rejitter_renders_each_target_again_under_another_jitter(tiny_setup, monkeypatch):
    """data.rejitter: ``target_rejittered`` is the target's view (same instance and angles) under an independent
    shift, roll and zoom: identical to the target without jitter, elsewhere on the detector with it; bank training
    refuses it (it renders)."""
    import dataclasses

    import xwin.data.online as online
    from xwin.data import OnlineDrrSampler, training_cts
    from xwin.errors import XWinInputError
    root, cfg_path, _ = tiny_setup
    cfg = load_config(cfg_path)
    still = dataclasses.replace(bank_spec(cfg), augmentations=0, iso_shift_mm=0.0, roll_deg=0.0)
    mix = dict(pa_fraction=1.0, augment=False, seed=5, pairs_per_instance=4, shared_rendering=True, rejitter=True)
    b = OnlineDrrSampler(training_cts(cfg)[:1], still, **mix).sample(8)
    torch.testing.assert_close(b["target_rejittered"], b["target"], atol=1e-6, rtol=0)
    calls = []
    monkeypatch.setattr(online, "roll_pose", lambda lao, cran, r, s: calls.append((lao, cran, r, *s)) or
                        roll_pose(lao, cran, r, s))
    moved = OnlineDrrSampler(training_cts(cfg)[:1], dataclasses.replace(still, iso_shift_mm=10.0, roll_deg=3.0),
                             zoom=(1.0, 1.3), **mix).sample(8)
    assert (moved["target_rejittered"] - moved["target"]).abs().amax(dim=(1, 2, 3)).min() > 1e-2
    first, again = np.array(calls[:-8]), np.array(calls[-8:])  # the pairs' views (PA once per group), the targets'
    targets = first[np.any(first[:, :2] != 0.0, axis=1)]
    np.testing.assert_array_equal(np.unique(again[:, :2], axis=0), np.unique(targets[:, :2], axis=0))
    for views in (first, again):  # one jitter per group of 4 in each rendering ...
        assert len(np.unique(views[:, 2:], axis=0)) == 2
    assert not np.isin(again[:, 2], first[:, 2]).any()  # ... and another one for the targets rendered again
    with pytest.raises(XWinInputError, match="rejitter"):
        dataclasses.replace(cfg.data, online=False, rejitter=True)._check()


def test_online_training_run(tiny_setup, tmp_path):
    root, cfg_path, _ = tiny_setup
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["data"].update({"online": True, "bank": None})
    cfg["train"].update({"total_steps": 2, "checkpoint_every": 2})
    path = tmp_path / "online.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = _run(["train", "--config", str(path), "--out", str(tmp_path / "run"), "--progress", "none", "--device", "cpu"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert [int(row["step"]) for row in _steps(tmp_path / "run")] == [1, 2]
    assert latest_checkpoint(tmp_path / "run").name == "step_0000002"
    assert not (tmp_path / "run" / "bank").exists()  # nothing pre-rendered


def test_frozen_modules_keep_their_weights(tiny_setup, tiny_bank, trained_run, tmp_path):
    """`train.freeze`: the frozen encoders (and the EMA target: no step) end as they started, the rest trains;
    an unknown module name is a config error that names the key."""
    from xwin.errors import XWinInputError
    from xwin.train import train

    _, cfg_path, _ = tiny_setup
    data = yaml.safe_load(cfg_path.read_text())
    data["train"].update({"init": str(trained_run), "total_steps": 2, "checkpoint_every": 2,
                          "freeze": ["context_encoder", "target_encoder"]})
    path = tmp_path / "frozen.yaml"
    path.write_text(yaml.safe_dump(data))
    train(load_config(path), tmp_path / "run", progress="none", device="cpu")
    before, _, _ = load_checkpoint(latest_checkpoint(trained_run))
    after, _, _ = load_checkpoint(latest_checkpoint(tmp_path / "run"))
    for name, value in after.items():
        if name.startswith(("context_encoder.", "target_encoder.")):
            assert torch.equal(value, before[name]), f"{name} changed although frozen"
    changed = [n for n in after if n.startswith("view_predictor.") and not torch.equal(after[n], before[n])]
    assert changed, "the view predictor did not train"
    data["train"]["freeze"] = ["encoder"]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(XWinInputError, match="train.freeze"):
        load_config(path)


def _steps(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_sigkill_mid_run_then_resume_keeps_checkpoint_and_curve(tiny_setup, straight_run, tmp_path):
    root, cfg_path, _ = tiny_setup
    run = tmp_path / "run_kill"
    proc = subprocess.Popen([sys.executable, "-m", "xwin", "train", "--config", str(cfg_path), "--out", str(run),
                             "--progress", "jsonl", "--device", "cpu"], stdout=subprocess.PIPE, text=True)
    seen_ckpt = False
    for line in proc.stdout:
        rec = json.loads(line)
        seen_ckpt |= rec.get("event") == "checkpoint"
        if seen_ckpt and rec.get("step", 0) >= 6:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    last = latest_checkpoint(run)
    assert last is not None and last.name == "step_0000004"
    weights, optim, state = load_checkpoint(last)  # intact: loads without error
    assert state["step"] == 4 and optim and len(weights) > 10
    assert not list((run / "checkpoints").glob(".step_*"))  # no half-written checkpoint left visible
    before = {int(r["step"]): float(r["loss_total"]) for r in _steps(run)}
    # resuming without --resume is refused; with it, training continues from step 4
    assert _run(["train", "--config", str(cfg_path), "--out", str(run), "--device", "cpu"]).returncode == 2
    r = _run(["train", "--config", str(cfg_path), "--out", str(run), "--resume", "--progress", "none",
              "--device", "cpu"])
    assert r.returncode == 0, r.stderr
    rows = _steps(run)
    steps = [int(r["step"]) for r in rows]
    assert steps == list(range(1, 13))  # continuous: no gap, no duplicate
    for s in range(1, 5):  # the steps before the checkpoint are the ones originally logged
        assert float(rows[s - 1]["loss_total"]) == pytest.approx(before[s])
    assert (run / "loss_curve.png").is_file() and latest_checkpoint(run).name == "step_0000012"
    _assert_same_run(run, straight_run)  # resumed from step 4 = never interrupted (augmentation on)


def test_sigterm_stop_then_resume_reproduces_the_uninterrupted_run(tiny_setup, straight_run, tmp_path, monkeypatch):
    """SIGTERM at step 6 (between checkpoints): the loop finishes the step, writes a checkpoint and stops; `--resume`
    in a new process then trains steps 7-12 exactly as the uninterrupted run of the same seed did: same losses, same
    final weights. The signal is raised from inside the loop after step 6, so the stop is deterministic."""
    from xwin.train import loop

    class StopAfterSix(loop.ProgressLog):
        def step(self, record):
            super().step(record)
            if record["step"] == 6:
                signal.raise_signal(signal.SIGTERM)  # handled (flag set) before raise_signal returns

    root, cfg_path, _ = tiny_setup
    run = tmp_path / "run"
    monkeypatch.setattr(loop, "ProgressLog", StopAfterSix)
    assert main(["train", "--config", str(cfg_path), "--out", str(run), "--progress", "none", "--device", "cpu"]) == 0
    monkeypatch.undo()
    assert latest_checkpoint(run).name == "step_0000006"
    assert [int(r["step"]) for r in _steps(run)] == list(range(1, 7))
    r = _run(["train", "--config", str(cfg_path), "--out", str(run), "--resume", "--progress", "none",
              "--device", "cpu"])
    assert r.returncode == 0, r.stderr[-2000:]
    _assert_same_run(run, straight_run)


@pytest.mark.parametrize("name", ["SIGHUP", "SIGUSR1", "SIGXCPU"])
def test_every_stop_signal_asks_the_loop_to_stop(name):
    """Campaign 12: a signal whose default ends the process (SIGUSR1, SIGXCPU from a CPU-time limit, ...) ended a
    training step midway; the loop now takes each of `STOP_SIGNALS` as a stop request: the step finishes, a checkpoint
    is written (as for SIGTERM above)."""
    from xwin.train.loop import _StopFlag

    if not hasattr(signal, name):
        pytest.skip(f"no {name} on this platform")
    number = getattr(signal, name)
    before = signal.signal(number, lambda *_: None)  # were the flag deaf to it, the test fails rather than dies
    flag = _StopFlag()
    try:
        assert not flag.check()
        signal.raise_signal(number)  # handled (flag set) before raise_signal returns
        assert flag.check()
    finally:
        flag.restore()
        signal.signal(number, before)


def test_ddp_two_gloo_processes_keep_identical_replicas(tiny_setup, tmp_path):
    root, cfg_path, _ = tiny_setup
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["train"].update({"total_steps": 3, "checkpoint_every": 3})
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.socket() as probe:  # a free port, not a fixed one another job may hold
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        port, "-m", "xwin", "train", "--config", str(path), "--out", str(tmp_path / "run"),
                        "--progress", "jsonl", "--device", "cpu"], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    events = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    start = next(e for e in events if e.get("event") == "start")
    assert start["world"] == 2
    replicas = [e for e in events if e.get("event") == "replicas"]
    assert replicas and all(e["max_abs_diff"] == 0.0 for e in replicas)


@pytest.mark.parametrize("env, line", [
    ({"WORLD_SIZE": "abc"}, "WORLD_SIZE must be a whole number from 1 to 65536, got 'abc'"),
    ({"LOCAL_RANK": "x"}, "LOCAL_RANK must be a whole number from 0 to 65536, got 'x'"),
    ({"WORLD_SIZE": "4294967296"}, "WORLD_SIZE must be a whole number from 1 to 65536"),  # campaign 10: torch raised
    ({"WORLD_SIZE": "²"}, "WORLD_SIZE must be a whole number from 1 to 65536, got '²'"),  # isdigit() takes it
    ({"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "²"}, "needs MASTER_ADDR and MASTER_PORT"),
    ({"WORLD_SIZE": "2", "MASTER_ADDR": "a" * 64, "MASTER_PORT": "29500"},  # campaign 11: an idna UnicodeError
     "MASTER_ADDR 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'... is not a host name or address"),
    ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK 2 must be below WORLD_SIZE 2"),
    # campaign 12: an address that could never resolve was waited on for 300 s
    ({"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "[::1", "MASTER_PORT": "29533"},
     "MASTER_ADDR '[::1' is not a host name or address"),
    # campaign 12: LOCAL_RANK 5 of a one-process job trained (on a GPU machine it would pick the sixth GPU)
    ({"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "5"}, "LOCAL_RANK 5 must be below WORLD_SIZE 1"),
    ({"WORLD_SIZE": "2"}, "WORLD_SIZE 2 needs MASTER_ADDR and MASTER_PORT"),
])
def test_a_broken_torchrun_environment_is_one_line(tiny_setup, tmp_path, env, line):
    """Campaign 9: WORLD_SIZE=abc, LOCAL_RANK=x and WORLD_SIZE=2 without MASTER_ADDR were tracebacks; campaign 10:
    WORLD_SIZE 2^32 and Unicode digits ('²') too."""
    _, cfg_path, _ = tiny_setup
    clean = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR",
                                                                "MASTER_PORT", "TORCHELASTIC_RUN_ID")}
    r = _run(["train", "--config", str(cfg_path), "--out", str(tmp_path / "run"), "--progress", "none"],
             env={**clean, **env}, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and line in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("rank", ["1", "0"])
def test_a_rank_waiting_for_a_missing_rank_stops_on_sigterm(tiny_setup, tmp_path, rank):
    """Campaign 9: a rank-1 process whose rank 0 never came retried inside torch for 30 minutes, deaf to SIGTERM.
    It now waits in Python: SIGTERM ends it at once (exit 143, no run folder); alone, it gives up in one line.
    Campaign 12: rank 0 waiting for rank 1 was as deaf (300 s, inside torch's rendezvous): the same; and both waits
    were silent: each says what it waits for after 5 s (here it is in the rendezvous once it has said so)."""
    from xwin.errors import XWinInputError
    from xwin.train.distributed import _wait_for_rank0

    _, cfg_path, _ = tiny_setup
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(XWinInputError, match=f"no rank-0 process answers at 127.0.0.1:{port} after 1 s"):
        _wait_for_rank0("127.0.0.1", port, seconds=1.0)
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": rank, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    env.pop("TORCHELASTIC_RUN_ID", None)
    proc = subprocess.Popen([sys.executable, "-m", "xwin", "train", "--config", str(cfg_path), "--out",
                             str(tmp_path / "run"), "--progress", "none"], env=env, stderr=subprocess.PIPE, text=True)
    waiting = (f"waiting for the other 1 of 2 training processes at 127.0.0.1:{port} (gives up after 300 s)"
               if rank == "0" else f"waiting for the rank-0 process at 127.0.0.1:{port} (gives up after 300 s)")
    try:
        assert proc.stderr is not None and select.select([proc.stderr], [], [], 120)[0], "no line in 120 s"
        assert proc.stderr.readline().strip() == f"xwin train: warning: {waiting}"  # was silent for 300 s
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=2)  # still waiting for the other rank
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 143
        assert proc.stderr.read().strip().splitlines() == ["xwin train: terminated"]
    finally:
        proc.kill()
        proc.wait()
    assert not (tmp_path / "run").exists()


def test_bad_config_exits_2_naming_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss:\n  tau: -1\n")
    r = _run(["train", "--config", str(bad), "--out", str(tmp_path / "run")])
    assert r.returncode == 2 and "loss.tau" in r.stderr and "Traceback" not in r.stderr


def test_export_predict_and_world_eval(tiny_setup, tiny_bank, trained_run, tmp_path):
    root, cfg_path, cts = tiny_setup
    run = trained_run
    model_file = tmp_path / "model.safetensors"
    assert main(["export-model", str(run), "--out", str(model_file)]) == 0
    from xwin.predict import load_model, load_predictor
    loaded = load_model(model_file)
    bank = load_bank(tiny_bank)  # the run's bank (config key data.bank): its mean image per view
    np.testing.assert_allclose(loaded.mean_projection.numpy(), np.asarray(bank.images, np.float32).mean(0), atol=1e-3)
    # --bank names the bank (a data.online run has none of its own); a folder that is not a bank is refused
    assert main(["export-model", str(run), "--out", str(tmp_path / "b.safetensors"), "--bank", str(tiny_bank)]) == 0
    np.testing.assert_allclose(load_model(tmp_path / "b.safetensors").mean_projection.numpy(),
                               loaded.mean_projection.numpy())
    assert main(["export-model", str(run), "--out", str(tmp_path / "c.safetensors"), "--bank", str(tmp_path)]) == 2
    assert not (tmp_path / "c.safetensors").exists()
    # --mean-from copies another model file's mean projections (a fine-tuned online run keeps its parent's)
    assert main(["export-model", str(run), "--out", str(tmp_path / "d.safetensors"), "--mean-from",
                 str(tmp_path / "b.safetensors")]) == 0
    np.testing.assert_array_equal(load_model(tmp_path / "d.safetensors").mean_projection.numpy(),
                                  load_model(tmp_path / "b.safetensors").mean_projection.numpy())
    no_mean = tmp_path / "e.safetensors"
    from xwin.predict import export_model
    export_model(run, no_mean)  # no bank: no mean projection in the file
    assert main(["export-model", str(run), "--out", str(tmp_path / "f.safetensors"), "--mean-from",
                 str(no_mean)]) == 2
    assert not (tmp_path / "f.safetensors").exists()
    noise = np.random.default_rng(0).random((50, 40))
    pred = load_predictor(model_file).predict(noise, [0, 30], [0, 0])
    assert pred.shape == (2, 32, 32)
    # the exported file predicts what the checkpoint it came from predicts (float16 storage: within 1e-3)
    np.testing.assert_allclose(pred, load_predictor(run).predict(noise, [0, 30], [0, 0]), atol=1e-3, rtol=0)
    out = tmp_path / "pred"
    png = root / "cxr" / "real0.png"
    assert main(["predict", str(png), "--lao", "0", "30", "--cran", "0", "0", "--checkpoint", str(model_file),
                 "--out", str(out)]) == 0
    from PIL import Image

    from xwin.io import read_radiograph
    want = load_predictor(model_file).predict(read_radiograph(png).array, [0, 30], [0, 0])
    files = sorted(out.iterdir())
    assert [f.name for f in files] == ["pred_lao+000.00_cran+000.00.png", "pred_lao+030.00_cran+000.00.png"]
    for file, image, lao in zip(files, want, ("0.0", "30.0")):  # 8-bit PNGs of [0, 1]: within half a grey level
        with Image.open(file) as im:
            np.testing.assert_allclose(np.asarray(im, np.float64) / 255, image, atol=0.5 / 255 + 1e-6, rtol=0)
            assert im.text["xwin_lao_deg"] == lao and "learned estimate" in im.text["xwin_kind"]
    from xwin.eval.world import KEYS, evaluate_world
    result = evaluate_world(load_model(run), [read_ct(cts[2])], renderings=1, train_cts=cts[:2], score_size=32)
    assert set(result) == {"model", "baselines", "per_angle", "per_ct", "renderings", "score_size", "decoder_ceiling"}
    assert set(result["baselines"]) == {"copy_context", "mean_projection", "random_init", "nearest_training_patient"}
    for m in [result["model"], *result["baselines"].values()]:
        assert set(KEYS) <= set(m)
    assert result["baselines"]["copy_context"]["retrieval_top1"] is None  # no latent retrieval for a copy
    assert result["baselines"]["mean_projection"]["psnr"] is None  # a checkpoint folder carries no mean projection
    # patient2 (lungs 3 mm posterior, 10 % wider) is nearest patient0 (0 mm, 100 %), not patient1 (4 mm anterior,
    # 90 %); the torsos differ that little, so its DRRs are within ~6 % RMS of the held-out ones (PSNR > 25 dB; 30.4
    # here), far above the untrained architecture (~7 dB: a near-constant grey against dark air and a bright body)
    assert result["per_ct"][0]["nearest_training_ct"] == [cts[0]]
    nearest = result["baselines"]["nearest_training_patient"]["psnr"]
    assert nearest > 25.0 and nearest > result["baselines"]["random_init"]["psnr"] + 15.0
    with_mean = evaluate_world(loaded, [read_ct(cts[2])], renderings=1, train_cts=cts[:2], score_size=32)
    mean = with_mean["baselines"]["mean_projection"]["psnr"]  # the bank's mean DRR of the same torsos: 28.2 here
    assert mean > 25.0 and mean > with_mean["baselines"]["random_init"]["psnr"] + 15.0


def test_fine_tuning_starts_from_a_model_file_or_checkpoint(tiny_setup, trained_run, tmp_path):
    root, cfg_path, _ = tiny_setup
    run = trained_run
    from xwin.config import XWinConfig
    from xwin.errors import XWinInputError
    from xwin.models import create_model
    from xwin.train.loop import load_initial_weights
    cfg = load_config(cfg_path)
    source, _, _ = load_checkpoint(latest_checkpoint(run))
    model_file = tmp_path / "model.safetensors"
    assert main(["export-model", str(run), "--out", str(model_file)]) == 0
    model = create_model(cfg)
    # an exported file holds the inference modules (fp16): the MIM predictor and domain classifier start fresh
    assert load_initial_weights(model, model_file) == ["domain_classifier", "mask_predictor"]
    for name, value in model.state_dict().items():
        if name.startswith(("context_encoder.", "target_encoder.", "view_predictor.", "decoder.")):
            torch.testing.assert_close(value, source[name].half().float(), msg=name)
    model = create_model(cfg)
    assert load_initial_weights(model, run) == []  # a run folder: its latest checkpoint, every module
    assert all(torch.equal(v, source[k]) for k, v in model.state_dict().items())
    wider = XWinConfig.from_dict({**cfg.to_dict(), "model": {**cfg.to_dict()["model"], "embed_dim": 48}})
    with pytest.raises(XWinInputError, match="other model sizes"):
        load_initial_weights(create_model(wider), run)
    # a fine-tuning run: step 0 is the source model (its recon loss is the trained one), the schedule starts afresh
    data = yaml.safe_load(cfg_path.read_text())
    data["train"].update({"init": str(model_file), "total_steps": 2, "checkpoint_every": 2})
    path = tmp_path / "finetune.yaml"
    path.write_text(yaml.safe_dump(data))
    outs = {}
    for name, config in (("finetune", path), ("scratch", cfg_path)):
        r = _run(["train", "--config", str(config), "--out", str(tmp_path / name), "--progress", "jsonl",
                  "--device", "cpu"], timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        outs[name] = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    start = outs["finetune"][0]
    assert start["event"] == "start" and start["init"] == str(model_file) and start["step"] == 0
    first = {name: next(e for e in events if e.get("step") == 1 and "loss_recon" in e) for name, events in outs.items()}
    assert first["finetune"]["loss_recon"] < first["scratch"]["loss_recon"]
    assert first["finetune"]["lr"] == first["scratch"]["lr"]  # warm-up from step 0 again
    data["train"]["init"] = str(tmp_path / "missing.safetensors")
    path.write_text(yaml.safe_dump(data))
    r = _run(["train", "--config", str(path), "--out", str(tmp_path / "bad"), "--device", "cpu"], timeout=120)
    assert r.returncode == 2 and "missing.safetensors" in r.stderr and "model not found" in r.stderr


def test_ct_and_cxr_folders_replace_the_configs_data(tiny_setup, tmp_path):
    """`xwin train --ct-dir/--cxr-dir/--init` (what the Slicer panel's folder fields pass)."""
    import shutil

    from synthetic_dicom import ct_series

    from xwin.errors import XWinInputError
    from xwin.train import with_overrides
    root, cfg_path, cts = tiny_setup
    folder = tmp_path / "my_cts"
    (folder / "nested").mkdir(parents=True)
    shutil.copy(cts[0], folder / "a.nrrd")
    shutil.copy(cts[1], folder / "nested" / "b.nrrd")
    ct_series(folder / "patient7")
    (folder / "notes.txt").write_text("not a CT")
    base = load_config(cfg_path)
    cfg = with_overrides(base, str(folder), str(root / "cxr"), "model.safetensors")
    assert cfg.data.ct == tuple(str(p) for p in (folder / "a.nrrd", folder / "nested" / "b.nrrd", folder / "patient7"))
    assert cfg.data.cxr == (str(root / "cxr"),) and cfg.train.init == "model.safetensors"
    assert cfg.data.holdout == base.data.holdout and cfg.model == base.model
    assert with_overrides(base) == base
    (tmp_path / "empty").mkdir()
    with pytest.raises(XWinInputError, match="contains no CT"):
        with_overrides(base, str(tmp_path / "empty"))
    r = _run(["train", "--config", str(cfg_path), "--out", str(tmp_path / "run"), "--ct-dir", str(tmp_path / "empty")])
    assert r.returncode == 2 and "empty" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize("out", ["run", "new/parents/run", "empty"])
def test_a_failed_start_leaves_no_run_folder(tiny_setup, tmp_path, out):
    """A bad film found while the sampler is prepared (after the run folder was made): exit 2, the folder is gone,
    and with it the parent folders it made; a folder that was there (empty) keeps nothing, not even the run's lock
    file (campaign 12)."""
    root, cfg_path, _ = tiny_setup
    films = tmp_path / "films"
    films.mkdir()
    (films / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "empty").mkdir()
    before = sorted(tmp_path.rglob("*"))
    r = _run(["train", "--config", str(cfg_path), "--out", str(tmp_path / out), "--cxr-dir", str(films)])
    assert r.returncode == 2 and "broken.png" in r.stderr and "Traceback" not in r.stderr
    assert sorted(tmp_path.rglob("*")) == before


def test_a_second_train_into_a_busy_run_folder_is_refused(tiny_setup, tmp_path):
    """Campaign 8: two `xwin train` into one --out both ran, interleaving checkpoints and metrics. The second is
    refused in one line naming the folder and the holder's pid, and leaves the folder alone; the lock dies with its
    process (SIGKILL included)."""
    from xwin.train.loop import lock_run

    _, cfg_path, _ = tiny_setup
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from xwin.train.loop import lock_run; p = Path(sys.argv[1]); p.mkdir(); "
                               "lock = lock_run(p); print('held', flush=True); time.sleep(60)", str(run)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        r = _run(["train", "--config", str(cfg_path), "--out", str(run), "--progress", "none"])
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip().splitlines() == [
            f"xwin train: error: {run}: is in use by another `xwin train` (pid {holder.pid}): wait for it to finish or "
            "stop it, or choose another folder"]
        assert run.is_dir() and not (run / "checkpoints").exists()
    finally:
        holder.kill()
        holder.wait()
    lock_run(run).close()  # released by the kill


def test_a_stop_file_that_exists_or_cannot_appear_and_a_resume_without_checkpoint_are_refused(tiny_setup, tmp_path):
    """Bad-input campaign 4: `--stop-file FOLDER` was accepted (the run stopped after one step) and `--resume` on a
    folder without a checkpoint started a new run silently. Both refused before any step, leaving nothing behind."""
    from xwin.errors import XWinInputError
    from xwin.train import train

    _, cfg_path, _ = tiny_setup
    cfg = load_config(cfg_path)
    run = tmp_path / "run"
    (tmp_path / "stop_folder").mkdir()
    (tmp_path / "stop_now").write_text("")
    for stop, message in ((tmp_path / "stop_folder", "is a folder already"), (tmp_path / "stop_now", "is present"),
                          (tmp_path / "no" / "stop", "its folder .* does not exist")):
        with pytest.raises(XWinInputError, match=message):
            train(cfg, run, stop_file=stop, progress="none")
    with pytest.raises(XWinInputError, match="holds no checkpoint to resume from"):
        train(cfg, run, resume=True, progress="none")
    assert not run.exists()
    r = _run(["train", "--config", str(cfg_path), "--out", str(run), "--stop-file", str(tmp_path / "stop_folder")])
    assert r.returncode == 2 and "stop_folder: --stop-file is a folder already" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not run.exists()


def test_resume_from_a_checkpoint_holding_an_exported_file_names_it(tiny_setup, trained_run, tmp_path):
    """Campaign 5: a checkpoint whose model.safetensors was replaced by an exported model file (export-model --out
    into the checkpoint, now refused too) gave a load_state_dict traceback on --resume."""
    from xwin.errors import XWinInputError
    from xwin.predict import export_model
    from xwin.train import train

    _, cfg_path, _ = tiny_setup
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    last = latest_checkpoint(run)
    export_model(last, tmp_path / "exported.safetensors")
    shutil.copy(tmp_path / "exported.safetensors", last / "model.safetensors")
    with pytest.raises(XWinInputError, match=r"step_\d+/model.safetensors: does not hold this run's training weights"):
        train(load_config(cfg_path), run, resume=True, progress="none")


def _reshaped_optimizer(folder: Path) -> None:
    from safetensors.torch import load_file, save_file
    tensors = load_file(folder / "optimizer.safetensors")
    name = next(k for k, v in tensors.items() if v.ndim == 2)
    tensors[name] = tensors[name].reshape(tensors[name].shape[0] // 2, -1) if tensors[name].shape[0] % 2 == 0 \
        else tensors[name].reshape(-1, 1)
    save_file(tensors, folder / "optimizer.safetensors")


def _extra_optimizer_tensor(folder: Path) -> None:
    from safetensors.torch import load_file, save_file
    tensors = load_file(folder / "optimizer.safetensors")
    tensors["100000.exp_avg"] = torch.zeros(3, 3)
    save_file(tensors, folder / "optimizer.safetensors")


def _state_edit(key: str, value):
    def edit(folder: Path) -> None:
        state = json.loads((folder / "state.json").read_text())
        state[key] = value
        (folder / "state.json").write_text(json.dumps(state))
    return edit


@pytest.mark.parametrize("damage, culprit", [
    (lambda f: (f / "optimizer.safetensors").unlink(), "optimizer.safetensors: missing"),
    (lambda f: ((f / "optimizer.safetensors").unlink(), (f / "optimizer.safetensors").mkdir()),
     "optimizer.safetensors: missing"),
    (_reshaped_optimizer, "optimizer.safetensors: does not hold this run's optimizer state"),
    (_extra_optimizer_tensor, "optimizer.safetensors: does not hold this run's optimizer state"),
    (_state_edit("sampler", {"seed": 0, "garbage": 1}), "state.json: its sampler state cannot be restored"),
    (_state_edit("rng", {"torch": "abc"}), "state.json: its random state cannot be restored"),
    (lambda f: (f.parent / "latest.json").write_text(json.dumps({"step": 999999, "path": f.name})),
     "latest.json: says step 999999 but names step_"),
])
def test_resume_from_a_damaged_optimizer_or_sampler_state_names_the_file(tiny_setup, trained_run, tmp_path, damage,
                                                                        culprit):
    """Campaign 8: a missing or reshaped optimizer file, one with an extra tensor, or a damaged sampler state in
    state.json ended --resume in an AttributeError / ValueError / KeyError traceback, or in the first AdamW step; a
    latest.json whose step disagreed with the folder it names was followed (and that step written over)."""
    from xwin.errors import XWinInputError
    from xwin.train import train

    _, cfg_path, _ = tiny_setup
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    damage(latest_checkpoint(run))
    metrics = (run / "metrics.csv").read_text()
    with pytest.raises(XWinInputError, match=culprit):
        train(load_config(cfg_path), run, resume=True, progress="none")
    assert (run / "metrics.csv").read_text() == metrics  # nothing of the run changed


def test_a_damaged_run_is_reported_against_the_file_that_has_it(tiny_setup, tiny_bank, trained_run, tmp_path):
    """Campaign 6: a truncated model/optimizer file or a garbled state.json was blamed on the checkpoint folder, a
    latest.json pointing outside the run on a missing run/model.safetensors, a truncated images.npy on the bank
    folder (after --resume had already cut metrics.csv back), poses of the wrong shape went unnoticed, a changed
    model section was blamed on the checkpoint, and export-model --out into the bank replaced its images."""
    from xwin.config import XWinConfig
    from xwin.errors import XWinInputError
    from xwin.train import check_resumed_model, train

    _, cfg_path, _ = tiny_setup
    cfg = load_config(cfg_path)
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    last = latest_checkpoint(run)
    for name in ("model.safetensors", "optimizer.safetensors"):
        damaged = tmp_path / f"damaged_{name}"
        shutil.copytree(last, damaged)
        with open(damaged / name, "r+b") as f:
            f.truncate(f.seek(0, 2) // 2)
        with pytest.raises(XWinInputError, match=f"{name}: not a readable safetensors file"):
            load_checkpoint(damaged)
    garbled = tmp_path / "garbled"
    shutil.copytree(last, garbled)
    (garbled / "state.json").write_text('{"step": 2,,')
    with pytest.raises(XWinInputError, match="state.json: not a readable checkpoint state"):
        load_checkpoint(garbled)
    pointer = run / "checkpoints" / "latest.json"
    kept = pointer.read_text()
    pointer.write_text(json.dumps({"step": 2, "path": "../../../../etc"}))
    with pytest.raises(XWinInputError, match="latest.json: names '../../../../etc', not a checkpoint folder"):
        load_checkpoint(run)
    with pytest.raises(XWinInputError, match="latest.json: names"):  # neither resumed nor trained over
        train(cfg, run, progress="none")
    pointer.write_text(kept)

    bank = tmp_path / "bank"
    shutil.copytree(tiny_bank, bank)
    poses = np.load(bank / "poses.npy")
    np.save(bank / "poses.npy", poses.reshape(poses.shape[0], -1))
    with pytest.raises(XWinInputError, match=r"poses.npy: holds a float32 array of shape \(\d+, \d+\)"):
        load_bank(bank)
    np.save(bank / "poses.npy", poses)
    with open(bank / "images.npy", "r+b") as f:
        f.truncate(f.seek(0, 2) - 100)
    with pytest.raises(XWinInputError, match="images.npy: is truncated"):
        load_bank(bank)
    pointer.write_text(json.dumps({"step": 8, "path": "step_0000008"}))  # resuming from step 8 would cut rows 9-12
    metrics = (run / "metrics.csv").read_text()
    on_damaged_bank = XWinConfig.from_dict({**cfg.to_dict(), "data": {**cfg.to_dict()["data"], "bank": str(bank)},
                                            "train": {**cfg.to_dict()["train"], "total_steps": 20}})
    with pytest.raises(XWinInputError, match="images.npy: is truncated"):
        train(on_damaged_bank, run, resume=True, progress="none")
    assert (run / "metrics.csv").read_text() == metrics  # the run is untouched by a resume that could not start
    deeper = XWinConfig.from_dict({**cfg.to_dict(), "model": {**cfg.to_dict()["model"], "depth": 3}})
    with pytest.raises(XWinInputError, match=r"c.yaml: model.depth is 3 here but \d in the run being resumed"):
        check_resumed_model(deeper, run, tmp_path / "c.yaml")
    check_resumed_model(cfg, run, cfg_path)  # the run's own config resumes

    # a binary metrics.csv was a UnicodeDecodeError; a folder named loss_curve.png stopped the run after its first
    # new checkpoint; a deleted latest.json was "no checkpoint to resume from"
    pointer.write_text(kept)
    (run / "metrics.csv").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(XWinInputError, match="metrics.csv: is not the run's metrics table"):
        train(cfg, run, resume=True, progress="none")
    (run / "metrics.csv").write_text(metrics)
    (run / "loss_curve.png").unlink()
    (run / "loss_curve.png").mkdir()
    with pytest.raises(XWinInputError, match="loss_curve.png: cannot write a file here: a folder"):
        train(cfg, run, resume=True, progress="none")
    (run / "loss_curve.png").rmdir()
    pointer.unlink()
    with pytest.raises(XWinInputError, match=r'latest.json: is missing: .* newest folder is step_0000012; write '
                                             r'\{"step": 12, "path": "step_0000012"\}'):
        train(cfg, run, resume=True, progress="none")

    images = (bank / "images.npy").read_bytes()
    assert main(["export-model", str(run), "--out", str(bank / "images.npy")]) == 2
    assert (bank / "images.npy").read_bytes() == images


def test_film_folders_find_suffixless_dicom_and_name_what_they_hold(tiny_setup, tmp_path):
    """A PACS export names DICOM films without a suffix: found by their DICM marker. A folder with no film names a
    file it holds (bad-input campaign 4: a CT .nii in --cxr-dir was reported as the folder alone)."""
    from synthetic_dicom import radiograph

    from xwin.errors import XWinInputError

    root, _, cts = tiny_setup
    films = tmp_path / "films"
    films.mkdir()
    radiograph(films / "IM0001", np.full((16, 16), 900))
    (films / "notes").write_text("not a film")
    assert find_images(films) == [films / "IM0001"]
    ct_only = tmp_path / "ct_only"
    ct_only.mkdir()
    shutil.copy(cts[0], ct_only / "chest.nii")
    with pytest.raises(XWinInputError, match=r"contains no DICOM, PNG or JPEG radiographs; it holds 1 other file\(s\), "
                                             r"e.g. chest.nii \(not a radiograph by its name or content\)"):
        find_images(ct_only)


def test_domain_gap_of_noise_images_against_drrs(tiny_setup, trained_run, capsys):
    root, _, cts = tiny_setup
    run = trained_run
    from xwin.eval.domain import simulated_pa_views
    from xwin.eval.world import render_targets
    from xwin.predict import load_model
    loaded = load_model(run)
    spec = bank_spec(loaded.config)
    still = type(spec)(**{**spec.__dict__, "iso_shift_mm": 0.0, "roll_deg": 0.0})
    volume = read_ct(cts[0])
    torch.testing.assert_close(simulated_pa_views(volume, still, 2),
                               render_targets(volume, spec)[0].expand(2, -1, -1, -1))
    jittered = simulated_pa_views(volume, spec, 2)
    assert not torch.allclose(jittered[0], jittered[1])  # a fresh shift and roll per view
    assert main(["eval", "domain", "--cxr", str(root / "cxr"), "--ct", cts[0], "--ct", cts[1], "--views", "4",
                 "--folds", "2", "--checkpoint", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["n_real"], result["n_simulated"], result["folds"]) == (3, 8, 2)
    assert result["separability_auroc"] > 0.9  # uniform noise "radiographs" are nothing like DRRs
    cos = result["cosine"]
    assert cos["within_simulated"] > cos["real_vs_simulated"]
    for domain in ("real", "simulated"):
        assert 0 < result["identity"][domain]["ssim"] <= 1 and result["identity"][domain]["psnr"] > 0
    assert main(["eval", "domain", "--cxr", str(root / "cxr"), "--ct", cts[0], "--folds", "1"]) == 2
    capsys.readouterr()
    assert main(["eval", "domain", "--cxr", str(root / "cxr"), "--ct", cts[0], "--views", "4", "--folds", "2",
                 "--checkpoint", str(run), "--json"]) == 0  # one CT: its views are the groups (was a traceback)
    assert json.loads(capsys.readouterr().out)["separability_auroc"] > 0.9
    # campaign 9: --folds 1000000000 looped a billion times; at most one fold per group (3 films + 2 CTs)
    assert main(["eval", "domain", "--cxr", str(root / "cxr"), "--ct", cts[0], "--ct", cts[1], "--views", "4",
                 "--folds", "1000000000", "--checkpoint", str(run), "--json"]) == 0
    capped = json.loads(capsys.readouterr().out)
    assert capped["folds"] == 5 and capped["separability_auroc"] > 0.9
    one = root / "one_film"
    one.mkdir()
    shutil.copy(find_images(root / "cxr")[0], one)
    assert main(["eval", "domain", "--cxr", str(one), "--ct", cts[0], "--ct", cts[1], "--views", "4",
                 "--checkpoint", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("xwin eval domain: error: ") and "needs at least 2 of each" in err  # campaign 9: "xwin eval"


def test_reconstruct_from_one_cxr_writes_a_labelled_estimate(tiny_setup, trained_run, tmp_path):
    root, _, _ = tiny_setup
    run = trained_run
    out = tmp_path / "estimate.nrrd"
    assert main(["reconstruct", str(root / "cxr" / "real0.png"), "--checkpoint", str(run), "--views", "5",
                 "--method", "sart", "--iters", "2", "--size", "16", "16", "16", "--out", str(out), "--json"]) == 0
    vol = read_ct(out)
    assert vol.shape_ijk == (16, 16, 16) and np.isfinite(vol.array).all() and vol.array.min() >= -1001
    np.testing.assert_allclose(vol.center, 0.0, atol=1e-6)  # centred on the isocenter (LPS origin)
    # the label: the file itself says it is a learned estimate, read by a fresh reader (SimpleITK's NRRD fields)
    import SimpleITK as sitk

    from xwin.recon.from_cxr import ESTIMATE_DESCRIPTION
    image = sitk.ReadImage(str(out))
    assert {k: image.GetMetaData(k) for k in ("description", "source", "method", "views")} == {
        "description": ESTIMATE_DESCRIPTION, "source": "world-model prediction from one CXR", "method": "sart",
        "views": "5"}
    assert "not a CT" in ESTIMATE_DESCRIPTION
    # the same call with both a CXR and --from-ct is refused before any work, leaving nothing behind
    bad = tmp_path / "bad.nrrd"
    assert main(["reconstruct", str(root / "cxr" / "real0.png"), "--from-ct", str(out), "--out", str(bad)]) == 2
    assert not bad.exists()


def test_outputs_get_the_permissions_of_new_files(tmp_path):
    """Checkpoints, exported models, banks and DICOM series are written through private temporaries (tempfile: 0600
    files, 0700 folders; safetensors: 0600 files); once published they carry the umask's permissions like any new file
    (here umask 022: 0644 files, 0755 folders), so colleagues sharing a run folder can read them."""
    from safetensors.torch import save_file

    from xwin.data import build_bank
    from xwin.data.bank import BankSpec
    from xwin.export import write_ct_series
    from xwin.io import atomic_output

    old = os.umask(0o022)
    try:
        torch.manual_seed(0)
        folder = save_checkpoint(tmp_path / "run", 1, torch.nn.Linear(2, 2), None, {"config": {}})
        model_file = tmp_path / "model.safetensors"  # as `xwin export-model` writes it
        with atomic_output(model_file) as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp))
        blank = Volume(np.zeros((2, 3, 3), np.float32), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
        series = write_ct_series(blank,
                                 tmp_path / "ct")
        bank = tmp_path / "bank"
        ct = tmp_path / "ct.nrrd"
        write_volume(Volume(np.full((8, 8, 8), 40.0, np.float32), spacing=(4.0, 4.0, 4.0), origin=(0.0, 0.0, 0.0)), ct)
        build_bank([{"path": str(ct), "patient_id": "p"}], bank, BankSpec(img_size=16, lao=(0.0,), cran=(0.0,),
                                                                            augmentations=0, spacing_mm=4.0))
    finally:
        os.umask(old)
    files = [*folder.iterdir(), folder.parent / "latest.json", model_file, *series, *bank.iterdir()]
    assert all(f.stat().st_mode & 0o777 == 0o644 for f in files), [oct(f.stat().st_mode) for f in files]
    assert all(d.stat().st_mode & 0o777 == 0o755 for d in (folder, series[0].parent, bank))

