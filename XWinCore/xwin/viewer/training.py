"""Training from a panel: the ``xwin train --progress jsonl`` protocol, without Qt.

The trainer prints one JSON object per optimisation step on stdout (keys step, epoch, lr, samples_per_s, eta_s,
loss_total, loss_* ...) and event lines ``{"event": "start"|"checkpoint"|"finished"|"stopped", ...}``. When its stop
file appears (``--stop-file``, checked after every step) or on SIGTERM it finishes its step, writes a checkpoint and
exits. `ProgressParser` turns the stream into a `TrainingState`; `TrainingProcess` runs the trainer, feeds the parser
from reader threads, and stops it by creating the stop file, then, as a last resort after a grace period, kills the
whole process tree, so no process outlives the panel. A GUI polls `TrainingProcess.poll()` from a timer.

Why a file and not a signal: in 3D Slicer the trainer runs under ``PythonSlicer``, a CTKAppLauncher that starts the
real Python as a child and forwards no signal (a SIGTERM stops the launcher and leaves the trainer running), and on
Windows SIGTERM is TerminateProcess (no checkpoint). A file works through any launcher, on every platform.
"""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

GRACE_S = 30.0
#: Windows: start the trainer (and the launcher) without a console window.
CREATE_NO_WINDOW = getattr(subprocess, "CREATE_NO_WINDOW", 0x08000000)


def new_stop_file() -> str:
    """A fresh path (in a new private temporary folder, not yet created) for ``xwin train --stop-file``."""
    return str(Path(tempfile.mkdtemp(prefix="xwin-stop-")) / "stop")


def train_command(config: str, run_dir: str, resume: bool = False, ct_dir: str = "", cxr_dir: str = "",
                  init: str = "", python: str | None = None, stop_file: str = "", device: str = "") -> list[str]:
    """argv of ``python -m xwin train --config CFG --out DIR [--resume] --progress jsonl`` plus, when given,
    ``--ct-dir`` / ``--cxr-dir`` (train on the CTs and radiographs of these folders instead of the config's),
    ``--init`` (fine-tune: start from this model file or checkpoint) and ``--stop-file`` (the trainer checkpoints and
    stops when this file appears: how `TrainingProcess.stop` stops it; `new_stop_file` gives a fresh path) and
    ``--device`` (auto, cpu or cuda)."""
    if not config:
        raise ValueError("choose a training config (YAML) first")
    if not run_dir:
        raise ValueError("choose a run folder first")
    cmd = [python or sys.executable, "-m", "xwin", "train", "--config", str(config), "--out", str(run_dir)]
    if resume:
        cmd.append("--resume")
    cmd += ["--progress", "jsonl"]
    for flag, value in (("--ct-dir", ct_dir), ("--cxr-dir", cxr_dir), ("--init", init),
                        ("--stop-file", stop_file), ("--device", device)):
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


def kill_process_tree(proc: subprocess.Popen) -> None:
    """Kill ``proc`` and every process it started (the launcher *and* the Python it runs).

    ``proc.kill()`` alone would only stop a launcher such as PythonSlicer (CTKAppLauncher) and leave its child running;
    SlicerMONAIAuto3DSeg kills the launcher's children for the same reason (lassoan/SlicerMONAIAuto3DSeg,
    MONAIAuto3DSeg/MONAIAuto3DSegLib/process.py, ``BackgroundProcess._killProcess``: "proc.kill() does not work, that
    would only stop the launcher"; it uses psutil ``children(recursive=True)``). Here: POSIX kills the process group
    (`TrainingProcess.start` gives the trainer its own session, so the group also holds grandchildren whose parent
    already died); Windows uses psutil when Slicer has it, else ``taskkill /T /F`` (no console window)."""
    if os.name == "nt":  # pragma: no cover - Windows
        try:
            import psutil
            try:
                parent = psutil.Process(proc.pid)
                for child in parent.children(recursive=True):
                    child.kill()
                parent.kill()
            except psutil.NoSuchProcess:
                pass
        except ImportError:
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(proc.pid)], capture_output=True,
                           creationflags=CREATE_NO_WINDOW)
        if proc.poll() is None:
            proc.kill()
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the trainer's session: the group id is the launcher's pid
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.kill()


class TrainingProcess:
    """One trainer process: `start`, `poll` from a GUI timer (never blocks), `stop`, `wait`, `terminate` (closing the
    panel: never blocks). stdout feeds `parser`; stderr lines go to the state's log.

    Stop: when the command names a ``--stop-file`` (`train_command`), `stop` creates that file and the trainer, through
    any launcher, finishes its step, writes a checkpoint, prints a "stopped" event and exits; without one (other
    trainers) it sends SIGTERM on POSIX. Either way, a process tree still alive ``grace_s`` later is killed
    (`kill_process_tree`)."""

    def __init__(self, grace_s: float = GRACE_S):
        self.grace_s = grace_s
        self.parser = ProgressParser()
        self.proc: subprocess.Popen | None = None
        self.stop_file: str | None = None
        self._queue: queue.Queue = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._kill_at: float | None = None
        self._killed = False

    @property
    def state(self) -> TrainingState:
        return self.parser.state

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def active(self) -> bool:
        """The process runs or its output is still arriving (a trainer outliving a dead launcher keeps the pipes)."""
        return self.running or any(t.is_alive() for t in self._threads)

    def start(self, cmd: list[str], cwd: str | None = None, env: dict | None = None) -> None:
        if self.active:
            raise RuntimeError("a training process is already running")
        self.parser = ProgressParser(TrainingState(status="running", checkpoint=self.state.checkpoint))
        self._kill_at = None
        self._killed = False
        self.stop_file = cmd[cmd.index("--stop-file") + 1] if "--stop-file" in cmd[:-1] else None
        if self.stop_file:
            Path(self.stop_file).unlink(missing_ok=True)  # a stale request must not stop the new run
        options: dict = {}
        if os.name == "nt":  # pragma: no cover - Windows: no console window, own process group
            options["creationflags"] = (CREATE_NO_WINDOW  # typeshed has the next constant on win32 only
                                        | subprocess.CREATE_NEW_PROCESS_GROUP)  # type: ignore[attr-defined]
        else:  # own session: `kill_process_tree` reaches the launcher's children too
            options.update(start_new_session=True, preexec_fn=_set_parent_death_signal)
        self.proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, bufsize=1, **options)
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
        if self._kill_at is not None and not self._killed and self.active and time.monotonic() >= self._kill_at:
            self.kill()
            self.state.log.append(f"no exit {self.grace_s:g} s after Stop: process tree killed")
        code = self.proc.poll()
        if code is not None and not any(t.is_alive() for t in self._threads) and self._queue.empty():
            records += self.parser.flush()
            if self.state.status in ("running", "stopping"):
                self.state.status = "stopped" if self._kill_at is not None else (
                    "finished" if code == 0 else "failed")
                if code != 0:
                    self.state.log.append(f"trainer exited with status {code}")
            self._remove_stop_file()
        return records

    def stop(self) -> None:
        """Ask the trainer to checkpoint and exit (stop file, else SIGTERM on POSIX); returns at once. `poll` kills the
        process tree if it is still alive ``grace_s`` later."""
        if self.active and self._kill_at is None:
            if self.stop_file:
                Path(self.stop_file).parent.mkdir(parents=True, exist_ok=True)
                Path(self.stop_file).write_text("stop\n")
            elif os.name != "nt" and self.running:
                assert self.proc is not None  # running: a process was started
                self.proc.send_signal(signal.SIGTERM)
            self._kill_at = time.monotonic() + self.grace_s
            self.state.status = "stopping"

    def kill(self) -> None:
        """Last resort: kill the trainer's whole process tree now (no checkpoint)."""
        if self.proc is not None:
            self._killed = True
            kill_process_tree(self.proc)

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

    def terminate(self) -> None:
        """Closing the panel, without blocking it: `stop` (the trainer checkpoints and exits on its own, even if the
        panel is gone by then), and a watchdog thread kills the process tree if it is still alive ``grace_s`` later."""
        if not self.active:
            return
        self.stop()
        watchdog = threading.Thread(target=self._watchdog, name="xwin-training-watchdog", daemon=True)
        watchdog.start()

    def _watchdog(self) -> None:
        end = time.monotonic() + self.grace_s
        while self.active and time.monotonic() < end:
            time.sleep(0.1)
        if self.active:
            self.kill()

    def _remove_stop_file(self) -> None:
        if self.stop_file:
            path = Path(self.stop_file)
            path.unlink(missing_ok=True)
            if path.parent.name.startswith("xwin-stop-"):
                try:
                    path.parent.rmdir()
                except OSError:
                    pass
