"""One process or many (`torchrun`): NCCL on GPUs, gloo on CPUs, with the same training code."""
from __future__ import annotations

import datetime
import os
import re
import socket
import threading
import time
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import XWinInputError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


RENDEZVOUS_S = 300.0  # how long a process waits for the others (and each collective may take) before giving up
WAIT_NOTICE_S = 5.0  # a process still waiting for the others after this long says so, once (campaign 12: 300 s silent)
MAX_PROCESSES = 65536  # WORLD_SIZE, RANK, LOCAL_RANK beyond it: no real job (and past 2^31 torch's store raises)


def _whole(name: str, default: int, low: int) -> int:
    """The environment variable ``name`` as an ASCII whole number from ``low`` to `MAX_PROCESSES` (``default`` when
    unset), or refused (``str.isdigit`` also takes '²', which ``int`` refuses)."""
    text = os.environ.get(name)
    if text is None:
        return default
    if not (re.fullmatch(r"\s*[0-9]{1,9}\s*", text) and low <= int(text) <= MAX_PROCESSES):
        raise XWinInputError(None, f"{name} must be a whole number from {low} to {MAX_PROCESSES}, got {text[:40]!r} "
                                   "(torchrun sets it; unset it to train in one process)")
    return int(text)


def _wait_for_rank0(address: str, port: int, seconds: float = RENDEZVOUS_S) -> None:
    """Wait (interruptibly: SIGTERM or Ctrl-C ends it) until rank 0's rendezvous port accepts a connection."""
    start = time.monotonic()
    deadline = start + seconds
    notice = _Notice(f"waiting for the rank-0 process at {address}:{port} (gives up after {seconds:g} s)")
    while True:
        try:
            socket.create_connection((address, port), timeout=1.0).close()
            return
        except OSError:
            notice.after(start)
            if time.monotonic() > deadline:
                raise XWinInputError(None, f"MASTER_ADDR/MASTER_PORT: no rank-0 process answers at {address}:{port} "
                                           f"after {seconds:g} s (start every process with torchrun)") from None
            time.sleep(0.5)


class _Notice:
    """One line (a `RuntimeWarning`: the CLI prints ``xwin train: warning: ...``) once a wait has lasted
    `WAIT_NOTICE_S`, so that a process waiting for the others does not look hung."""

    def __init__(self, text: str):
        self.text, self.said = text, False

    def after(self, start: float) -> None:
        if not self.said and time.monotonic() - start >= WAIT_NOTICE_S:
            self.said = True
            warnings.warn(self.text, RuntimeWarning, stacklevel=2)


def _init_group(backend: str, world: int) -> None:
    """`dist.init_process_group` in a helper thread, waited for from Python in short slices: its rendezvous waits in
    C++ and never returns to the interpreter, so a SIGTERM or Ctrl-C could not end rank 0's wait for the others
    (campaign 12: 300 s deaf). Its error, if any, is raised here."""
    failure: list[BaseException] = []

    def rendezvous() -> None:
        try:
            dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=RENDEZVOUS_S))
        except BaseException as exc:  # noqa: BLE001 — handed to the main thread, which raises it
            failure.append(exc)

    helper = threading.Thread(target=rendezvous, name="xwin-rendezvous", daemon=True)  # a stopped run leaves it
    helper.start()
    start = time.monotonic()
    notice = _Notice(f"waiting for the other {world - 1} of {world} training processes at "
                     f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} (gives up after "
                     f"{RENDEZVOUS_S:g} s)")
    while helper.is_alive():
        helper.join(0.5)  # the main thread stays in Python: signal handlers run
        notice.after(start)
    if failure:
        raise failure[0]


def setup(device: str = "auto") -> Dist:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), each checked, and start
    the process group if there is one. A process of rank > 0 first waits for rank 0's port in Python (a SIGTERM can
    end the wait; inside torch's own rendezvous it could not, for 30 minutes)."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    world = _whole("WORLD_SIZE", 1, 1)
    rank, local = _whole("RANK", 0, 0), _whole("LOCAL_RANK", 0, 0)
    if rank >= world:
        raise XWinInputError(None, f"RANK {rank} must be below WORLD_SIZE {world}")
    if local >= world:  # the processes of one machine are some of the job's
        raise XWinInputError(None, f"LOCAL_RANK {local} must be below WORLD_SIZE {world}")
    if world > 1 and not dist.is_initialized():
        address, port = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
        if not address.strip() or not (re.fullmatch(r"[0-9]{1,5}", port) and 0 < int(port) < 65536):
            raise XWinInputError(None, f"WORLD_SIZE {world} needs MASTER_ADDR and MASTER_PORT (got {address[:40]!r}, "
                                       f"{port[:40]!r}): start the processes with torchrun --nproc_per_node N -m xwin "
                                       "train")
        try:  # what the address lookup needs (a 64-character label was a UnicodeError traceback, campaign 11)
            ok = len(address) <= 253 and bool(address.encode("idna"))
            ok = ok and not re.search(r"[\[\]/\s@,;]", address)  # a URL's or a list's characters: no host (IPv6 bare)
        except UnicodeError:
            ok = False
        if not ok:
            raise XWinInputError(None, f"MASTER_ADDR {address[:40]!r}{'...' if len(address) > 40 else ''} is not a "
                                       "host name or address (labels of at most 63 characters, 253 in all; an "
                                       "IPv6 address without brackets)")
        try:  # campaign 12: '[::1' could never resolve and was waited on for 300 s
            socket.getaddrinfo(address, int(port))
        except socket.gaierror as exc:
            if exc.errno == socket.EAI_NONAME:  # no such host (a temporary failure is waited out as before)
                raise XWinInputError(None, f"MASTER_ADDR {address[:40]!r} names no host ({exc.strerror}): give rank "
                                           "0's host name or address") from None
        if rank > 0 and "TORCHELASTIC_RUN_ID" not in os.environ:  # torchrun's agent holds the store already
            _wait_for_rank0(address, int(port))
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        try:
            _init_group("nccl" if use_cuda else "gloo", world)
        except (RuntimeError, ValueError) as exc:  # torch's DistStoreError / DistNetworkError are RuntimeErrors
            raise XWinInputError(None, f"the {world} training processes could not meet "
                                       f"({' '.join(str(exc).split())[:200]})") from None
    return Dist(rank, world, local, dev)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
