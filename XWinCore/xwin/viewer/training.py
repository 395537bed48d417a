"""Training from a panel: the ``xwin train --progress jsonl`` protocol, without Qt.

The trainer prints one JSON object per optimisation step on stdout (keys step, epoch, lr, samples_per_s, eta_s,
loss_total, loss_* ...) and event lines ``{"event": "start"|"checkpoint"|"finished"|"stopped", ...}``. On SIGTERM it
finishes its step, writes a checkpoint and exits. `ProgressParser` turns the stream into a `TrainingState`;
`TrainingProcess` runs the trainer, feeds the parser from reader threads, and stops it with SIGTERM, then SIGKILL
after a grace period, so no process outlives the panel. A GUI polls `TrainingProcess.poll()` from a timer.
"""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

GRACE_S = 30.0


def train_command(config: str, run_dir: str, resume: bool = False, ct_dir: str = "", cxr_dir: str = "",
                  init: str = "", python: str | None = None) -> list[str]:
    """argv of ``python -m xwin train --config CFG --out DIR [--resume] --progress jsonl`` plus, when given,
    ``--ct-dir`` / ``--cxr-dir`` (train on the CTs and radiographs of these folders instead of the config's) and
    ``--init`` (fine-tune: start from this model file or checkpoint)."""
    if not config:
        raise ValueError("choose a training config (YAML) first")
    if not run_dir:
        raise ValueError("choose a run folder first")
    cmd = [python or sys.executable, "-m", "xwin", "train", "--config", str(config), "--out", str(run_dir)]
    if resume:
        cmd.append("--resume")
    cmd += ["--progress", "jsonl"]
    for flag, value in (("--ct-dir", ct_dir), ("--cxr-dir", cxr_dir), ("--init", init)):
        if value:
            cmd += [flag, str(value)]
    return cmd


@dataclass
class TrainingState:
    """What the panel shows: the latest step record, loss history per name, last checkpoint, status and a log.

    status: 'idle', 'running', 'stopping', 'finished', 'stopped' or 'failed'. fraction: 0–1 progress from the
    start event's ``total`` (steps).
    """

    status: str = "idle"
    total: int | None = None
    last: dict = field(default_factory=dict)
    losses: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    checkpoint: str | None = None
    log: list[str] = field(default_factory=list)

    @property
    def step(self) -> int:
        return int(self.last.get("step", 0))

    @property
    def fraction(self) -> float:
        if self.status == "finished":
            return 1.0
        return min(1.0, self.step / self.total) if self.total else 0.0

    def summary(self) -> str:
        """One line: step, loss, lr, speed, ETA."""
        if not self.last:
            return self.status
        r = self.last
        parts = [f"step {r.get('step')}" + (f"/{self.total}" if self.total else "")]
        if "loss_total" in r:
            parts.append(f"loss {r['loss_total']:.4f}")
        if "lr" in r:
            parts.append(f"lr {r['lr']:.2e}")
        if "samples_per_s" in r:
            parts.append(f"{r['samples_per_s']:.1f} samples/s")
        if "eta_s" in r:
            parts.append(f"ETA {int(r['eta_s']) // 60}:{int(r['eta_s']) % 60:02d}")
        return " · ".join(parts)


class ProgressParser:
    """Feed text as it arrives (any chunking); complete lines update `state` and come back as dicts."""

    def __init__(self, state: TrainingState | None = None):
        self.state = state or TrainingState()
        self._buffer = ""

    def feed(self, text: str) -> list[dict]:
        self._buffer += text
        *lines, self._buffer = self._buffer.split("\n")
        return [r for r in (self.line(line) for line in lines) if r is not None]

    def flush(self) -> list[dict]:
        """Parse a last line that had no newline (the process ended)."""
        rest, self._buffer = self._buffer, ""
        r = self.line(rest)
        return [] if r is None else [r]

    def line(self, line: str) -> dict | None:
        line = line.strip()
        if not line:
            return None
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            self.state.log.append(line)
            return None
        s = self.state
        event = record.get("event")
        if event is None and "step" in record:
            s.last = record
            for key, value in record.items():
                if key.startswith("loss_") and isinstance(value, (int, float)):
                    s.losses.setdefault(key, []).append((int(record["step"]), float(value)))
        elif event == "start":
            s.total = record.get("total") or s.total
            s.log.append(f"started at step {record.get('step', 0)}" + (f" of {s.total}" if s.total else ""))
        elif event == "checkpoint":
            s.checkpoint = record.get("path") or s.checkpoint
            s.log.append(f"checkpoint at step {record.get('step')}: {record.get('path')}")
        elif event in ("finished", "stopped"):
            s.status = event
            s.log.append(f"{event} at step {record.get('step')}")
        else:
            s.log.append(line)
        return record


def _set_parent_death_signal() -> None:  # pragma: no cover - runs in the child
    """Linux: the trainer gets SIGTERM if the panel's process dies (no orphan, checkpoint still written)."""
    if sys.platform.startswith("linux"):
        import ctypes
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass


class TrainingProcess:
    """One trainer process: `start`, `poll` from a GUI timer (never blocks), `stop` (SIGTERM, SIGKILL after
    ``grace_s``), `wait`. stdout feeds `parser`; stderr lines go to the state's log."""

    def __init__(self, grace_s: float = GRACE_S):
        self.grace_s = grace_s
        self.parser = ProgressParser()
        self.proc: subprocess.Popen | None = None
        self._queue: queue.Queue = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._kill_at: float | None = None

    @property
    def state(self) -> TrainingState:
        return self.parser.state

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, cmd: list[str], cwd: str | None = None, env: dict | None = None) -> None:
        if self.running:
            raise RuntimeError("a training process is already running")
        self.parser = ProgressParser(TrainingState(status="running", checkpoint=self.state.checkpoint))
        self._kill_at = None
        self.proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
                                     preexec_fn=_set_parent_death_signal if os.name == "posix" else None)
        self.state.log.append("$ " + " ".join(cmd))
        self._threads = [threading.Thread(target=self._pump, args=(s, k), daemon=True)
                         for s, k in ((self.proc.stdout, "out"), (self.proc.stderr, "err"))]
        for t in self._threads:
            t.start()

    def _pump(self, stream, kind: str) -> None:
        for line in stream:
            self._queue.put((kind, line))
        self._queue.put((kind, None))

    def poll(self) -> list[dict]:
        """New records since the last call; also enforces the stop deadline and notes the exit."""
        records = []
        while True:
            try:
                kind, line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is None:
                continue
            if kind == "out":
                records += self.parser.feed(line)
            elif line.strip():
                self.state.log.append(line.rstrip())
        if self.proc is None:
            return records
        if self._kill_at is not None and self.proc.poll() is None and time.monotonic() >= self._kill_at:
            self.proc.kill()
            self.state.log.append(f"no exit {self.grace_s:g} s after SIGTERM: killed")
        code = self.proc.poll()
        if code is not None and not any(t.is_alive() for t in self._threads) and self._queue.empty():
            records += self.parser.flush()
            if self.state.status in ("running", "stopping"):
                self.state.status = "stopped" if self._kill_at is not None else (
                    "finished" if code == 0 else "failed")
                if code != 0:
                    self.state.log.append(f"trainer exited with status {code}")
        return records

    def stop(self) -> None:
        """SIGTERM now (the trainer checkpoints and exits); `poll` sends SIGKILL after ``grace_s``."""
        if self.running and self._kill_at is None:
            self.proc.send_signal(signal.SIGTERM)
            self._kill_at = time.monotonic() + self.grace_s
            self.state.status = "stopping"

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the process ended and its output is parsed (tests, shutdown); None on timeout."""
        end = None if timeout is None else time.monotonic() + timeout
        while self.proc is not None:
            self.poll()
            if self.proc.poll() is not None and not any(t.is_alive() for t in self._threads):
                self.poll()
                return self.proc.returncode
            if end is not None and time.monotonic() > end:
                return None
            time.sleep(0.02)
        return None

    def terminate(self, timeout: float | None = None) -> None:
        """Stop and wait (at most ``grace_s``, then kill): for closing the panel."""
        self.stop()
        if self.wait(self.grace_s if timeout is None else timeout) is None and self.running:
            self.proc.kill()
            self.wait(5.0)
