"""World-model speed on this machine: training throughput (float32 and bfloat16), share of time spent rendering,
memory, prediction latency.

    .venv/bin/python bench/model.py [--bank runs/v2/bank] [--steps 20] [--out docs/benchmarks.md]

Training: `xwin train` with the committed CPU config for ``--steps`` steps on an existing DRR bank (a child process;
samples/s from its JSONL progress after 5 warm-up steps; peak RSS from /proc VmHWM). Precision: the same model's
training step (all losses, forward + backward + AdamW) on a synthetic batch of the config's size, float32 against
bfloat16 autocast, alternating, median of 5 each (whether this CPU has native bfloat16 is printed: `train.amp` uses it
only then). Rendering share: the time to render one bank instance (the config's poses at 2× the input size, pooled, as
the bank builder does) against the training time that instance's images feed at the same samples/s. Prediction: one
pose of the embedded model after loading, median of 30,
against one full-quality 256² DRR of the embedded CT in the same run.
Replaces the section between `<!-- model-bench:start -->` and `<!-- model-bench:end -->`.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from machine import cpu_model

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "XWinCore/xwin/configs/cpu_small.yaml"


def train_throughput(bank: Path, steps: int) -> dict:
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["data"]["bank"] = str(bank.resolve())
    cfg["data"]["cxr"] = [str((ROOT / p).resolve()) for p in cfg["data"]["cxr"]]
    cfg["train"].update({"total_steps": steps, "checkpoint_every": steps, "warmup_steps": 1})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cfg.yaml"
        path.write_text(yaml.safe_dump(cfg))
        code = ("import sys; "
                "from xwin.cli import main; rc = main(sys.argv[1:]); "
                "print('VmHWM', [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1], "
                "file=sys.stderr); sys.exit(rc)")
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-c", code, "train", "--config", str(path), "--out", str(Path(tmp) / "run"),
                            "--progress", "jsonl", "--device", "cpu"], capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(r.stderr[-2000:])
    rates = [json.loads(line)["samples_per_s"] for line in r.stdout.splitlines() if '"samples_per_s"' in line]
    peak = int(re.search(r"VmHWM (\d+)", r.stderr).group(1)) / 1024
    return {"samples_per_s": float(np.median(rates[5:])), "steps": steps, "wall_s": wall, "peak_rss_mb": peak,
            "batch": cfg["train"]["batch_size"], "real_per_batch": cfg["data"]["real_per_batch"]}


def precision_step(repeats: int = 5) -> dict:
    """DRR pairs / s of one training step in float32 and under bfloat16 autocast (same model, same batch)."""
    from xwin.config import load_config
    from xwin.models import create_model
    from xwin.train.loop import native_cpu_bf16

    cfg = load_config(CONFIG)
    b, s = cfg.train.batch_size, cfg.model.img_size
    g = torch.Generator().manual_seed(0)
    batch = {"context": torch.rand(b, 1, s, s, generator=g), "target": torch.rand(b, 1, s, s, generator=g),
             "d_lao": torch.randn(b, generator=g) * 45, "d_cran": torch.zeros(b), "group": torch.arange(b) // 6,
             "patient": torch.arange(b) // 12, "pose": torch.zeros(b, 2),
             "real": torch.rand(cfg.data.real_per_batch, 1, s, s, generator=g)}
    torch.manual_seed(0)
    model = create_model(cfg)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    times = {False: [], True: []}
    for i in range(repeats + 1):
        for bf16 in (False, True):
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = model.training_losses(batch, i, 100)
            out["total"].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i:
                times[bf16].append(time.perf_counter() - t)
    return {"fp32": b / float(np.median(times[False])), "bf16": b / float(np.median(times[True])),
            "native_bf16": native_cpu_bf16()}


def render_share(samples_per_s: float) -> dict:
    from xwin.config import load_config
    from xwin.data import bank_spec
    from xwin.data.bank import render_views
    from xwin.drr import Projector
    from xwin.io import read_ct
    from xwin.sample_data import demo_ct_path

    spec = bank_spec(load_config(CONFIG))
    projector = Projector(read_ct(demo_ct_path()), spec.geometry())
    render_views(projector, spec, 0.0, np.zeros(3))
    t = time.perf_counter()
    render_views(projector, spec, 0.0, np.zeros(3))
    seconds = time.perf_counter() - t
    views = len(spec.poses())
    train_seconds = views / samples_per_s  # one pass over the instance's images
    return {"render_s_per_instance": seconds, "views": views,
            "render_share": seconds / (seconds + train_seconds)}


def predict_latency() -> dict:
    from xwin.drr import Projector
    from xwin.io import read_ct, read_radiograph
    from xwin.predict import default_checkpoint, load_predictor
    from xwin.sample_data import demo_ct_path, demo_cxr_path

    predictor = load_predictor()
    image = read_radiograph(demo_cxr_path()).array
    predictor.predict(image, [30.0], [0.0])
    times = []
    for _ in range(30):
        t = time.perf_counter()
        predictor.predict(image, [30.0], [0.0])
        times.append(time.perf_counter() - t)
    projector = Projector(read_ct(demo_ct_path()))
    projector.render(30.0, 0.0)
    drr = []
    for _ in range(10):
        t = time.perf_counter()
        projector.render(30.0, 0.0)
        drr.append(time.perf_counter() - t)
    return {"predict_ms": 1e3 * float(np.median(times)), "drr_ms": 1e3 * float(np.median(drr)),
            "model": default_checkpoint()}


def _shown(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bank", type=Path, default=ROOT / "runs/v2/bank")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks.md")
    ns = ap.parse_args(argv)
    if not (ns.bank / "manifest.json").is_file():
        sys.exit(f"{ns.bank}: no DRR bank (run `xwin train --config {CONFIG.relative_to(ROOT)}` first)")
    tr = train_throughput(ns.bank, ns.steps)
    rs = render_share(tr["samples_per_s"])
    pc = precision_step()
    from xwin.config import load_config
    m = load_config(CONFIG).model
    pr = predict_latency()
    text = "\n".join([
        "## World model: training throughput, memory and prediction latency (`bench/model.py`)", "",
        f"Command: `.venv/bin/python bench/model.py --steps {ns.steps} --bank {_shown(ns.bank)}` (the bank of a "
        f"cpu_small run); {torch.get_num_threads()} CPU threads, config `XWinCore/xwin/configs/cpu_small.yaml` "
        f"({m.embed_dim} wide, {m.depth} blocks, {m.img_size}², {m.grid_size[0]}×{m.grid_size[1]} tokens, batch "
        f"{tr['batch']} DRR pairs + {tr['real_per_batch']} real CXRs). Machine: {cpu_model()}, "
        f"{os.cpu_count()} logical cores, torch {torch.__version__}. Prediction: `{_shown(pr['model'])}`.", "",
        "| measure | value |", "|---|---:|",
        f"| training throughput (DRR pairs / s, median after 5 warm-up steps) | {tr['samples_per_s']:.1f} |",
        f"| training peak RSS | {tr['peak_rss_mb']:.0f} MB |",
        f"| one training step, float32 (DRR pairs / s, synthetic batch, median of 5) | {pc['fp32']:.1f} |",
        f"| the same step under bfloat16 autocast | {pc['bf16']:.1f} ({pc['bf16'] / pc['fp32']:.2f}×; native "
        f"bfloat16 on this CPU: {'yes' if pc['native_bf16'] else 'no, so `train.amp` trains in float32 here'}) |",
        f"| rendering one bank instance ({rs['views']} poses, {2 * m.img_size}² → {m.img_size}²) | "
        f"{rs['render_s_per_instance'] * 1e3:.0f} ms |",
        f"| share of time spent rendering (bank render ÷ (render + training on those images)) | "
        f"{100 * rs['render_share']:.1f} % |",
        f"| prediction, one pose, embedded model, after loading (median of 30) | {pr['predict_ms']:.1f} ms |",
        f"| one full-quality 256² DRR of the embedded CT, same run | {pr['drr_ms']:.1f} ms |",
        f"| prediction ÷ DRR | {pr['predict_ms'] / pr['drr_ms']:.2f}× |",
    ])
    print(text)
    old = ns.out.read_text() if ns.out.is_file() else "# XWin benchmarks\n"
    start, end = "<!-- model-bench:start -->", "<!-- model-bench:end -->"
    block = f"{start}\n{text}\n{end}"
    ns.out.write_text(re.sub(re.escape(start) + ".*?" + re.escape(end), block, old, flags=re.S) if start in old
                      else old.rstrip() + "\n\n" + block + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
