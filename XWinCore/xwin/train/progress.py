"""Training progress: a bar on a terminal or one JSON object per step, plus metrics.csv and a loss-curve PNG."""
from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

from ..errors import XWinInputError
from ..io import atomic_output

METRICS = "metrics.csv"
LOSS_CURVE = "loss_curve.png"


def trim_metrics(run_dir: Path, last_step: int) -> list[dict]:
    """Keep the rows of metrics.csv up to ``last_step`` (the checkpoint resumed from); drop torn last lines."""
    path = run_dir / METRICS
    if not path.is_file():
        return []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if r.get("step", "").isdigit() and int(r["step"]) <= last_step
                    and None not in r.values()]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise XWinInputError(path, f"is not the run's metrics table ({exc}): move it aside to resume (a new one is "
                                   "started)") from None
    if rows:
        with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    else:
        path.unlink()
    return rows


class ProgressLog:
    """Reports each optimisation step: ``mode`` 'bar' (tqdm), 'jsonl' (stdout) or 'none'; always metrics.csv."""

    def __init__(self, run_dir: Path, total: int, start: int, mode: str = "bar", enabled: bool = True):
        self.run_dir, self.total, self.start, self.mode, self.enabled = run_dir, total, start, mode, enabled
        self.t0 = time.perf_counter()
        self.bar = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True,
                        disable=not (enabled and mode == "bar"), file=sys.stderr)
        self._fields: list[str] | None = None

    def step(self, record: dict) -> None:
        if not self.enabled:
            return
        done = record["step"] - self.start
        elapsed = time.perf_counter() - self.t0
        record["eta_s"] = round(elapsed / max(done, 1) * (self.total - record["step"]), 1)
        path = self.run_dir / METRICS
        if self._fields is None:
            self._fields = list(record)
            new = not path.is_file()
        else:
            new = False
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self._fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(record)
        if self.mode == "jsonl":
            print(json.dumps(record), flush=True)
        elif self.mode == "bar":
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{record['loss_total']:.4f}", lr=f"{record['lr']:.2e}")

    def event(self, kind: str, **info) -> None:
        """Non-step messages (checkpoint written, stopped...): a JSON line in jsonl mode, else stderr."""
        if not self.enabled:
            return
        if self.mode == "jsonl":
            print(json.dumps({"event": kind, **info}), flush=True)
        elif self.mode == "bar":
            self.bar.write(f"{kind}: {info}")

    def close(self) -> None:
        self.bar.close()


def plot_loss_curve(run_dir: Path) -> Path | None:
    """loss_curve.png from metrics.csv (every loss_* column, log scale), written atomically."""
    path = run_dir / METRICS
    if not path.is_file():
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    steps = [int(r["step"]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in (k for k in rows[0] if k.startswith("loss_")):
        values = [float(r[key]) for r in rows]
        if min(values) > 0:
            ax.plot(steps, values, label=key[5:], lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = run_dir / LOSS_CURVE
    with atomic_output(out) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return out
