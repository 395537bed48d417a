"""`xwin train`: the world model's training loop, from one CPU to many GPUs (torchrun + DDP).

AdamW, cosine learning rate with linear warm-up, gradient accumulation, gradient clipping, AMP (bfloat16, GPU or CPU),
EMA target update after each step, atomic checkpoints, clean stop on SIGTERM/SIGINT or when a stop file appears
(``--stop-file``; a checkpoint is written first).
"""
from __future__ import annotations

import math
import os
import platform
import shutil
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from ..config import XWinConfig
from ..errors import STOP_SIGNALS, XWinInputError
from ..io.writers import check_target
from ..models import create_model
from ..models import model_file as ckpt
from ..models.world_model import LOSS_KEYS, XWinWorldModel
from .data import prepare_sampler
from .distributed import Dist, setup, teardown
from .progress import LOSS_CURVE, METRICS, ProgressLog, plot_loss_curve, trim_metrics


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware. oneDNN calls bfloat16 supported on any AVX-512 CPU, where it
    is emulated (2.7× slower than float32 on a ViT-Tiny step, measured on an AVX-512F Xeon without BF16), so an x86
    CPU needs AVX-512 BF16 or AMX; elsewhere (Arm) oneDNN's check is the hardware's."""
    if platform.machine().lower() in {"x86_64", "amd64"}:
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's; an older torch lacks them
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def use_bf16(amp: bool, device: torch.device) -> bool:
    """Whether ``train.amp`` autocasts to bfloat16 here: on CUDA, and on CPUs with native bfloat16 (1.4–1.7× faster
    on a ViT); elsewhere float32. Losses compute in float32 either way."""
    return amp and (device.type == "cuda" or (device.type == "cpu" and native_cpu_bf16()))


def lr_at(step: int, base: float, warmup: int, total: int, floor: float = 0.01) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``floor``·base at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


class _Losses(torch.nn.Module):
    """Makes `training_losses` the forward of a module so DDP can wrap it."""

    def __init__(self, model: XWinWorldModel):
        super().__init__()
        self.model = model

    def forward(self, batch: dict, step: int, total: int) -> dict:
        return self.model.training_losses(batch, step, total)


class _StopFlag:
    """Stop requests: SIGINT or one of `xwin.errors.STOP_SIGNALS` (SIGTERM, SIGHUP, ...), or ``stop_file`` appearing
    (``xwin train --stop-file``: how a panel stops a trainer that runs under a launcher forwarding no signal, e.g.
    Slicer's PythonSlicer, and on Windows).

    `check` runs once per step, after the step and before the checkpoint decision, and latches `stop`; the loop tests
    only the latched value, so a request arriving at any moment ends the run after a step that writes a checkpoint.
    Under DDP the ranks agree (any rank's request stops all of them at the same step).
    """

    def __init__(self, stop_file: str | Path | None = None, dist: Dist | None = None):
        self.stop = False
        self._requested = False
        self.stop_file = Path(stop_file) if stop_file else None
        self._dist = dist
        self._old = {}
        for sig in (signal.SIGINT, *STOP_SIGNALS):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass

    def _handle(self, signum, frame):
        self._requested = True

    def check(self) -> bool:
        """Take in a signal or the stop file (latched); True once the run must stop."""
        if not self.stop:
            requested = self._requested or (self.stop_file is not None and self.stop_file.exists())
            if self._dist is not None and self._dist.world > 1:
                flag = torch.tensor([1.0 if requested else 0.0], device=self._dist.device)
                torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
                requested = bool(flag.item() > 0)
            self.stop = requested
        return self.stop

    def restore(self):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def load_initial_weights(model: torch.nn.Module, path: str | Path) -> list[str]:
    """Fine-tuning: copy the weights of a model file or checkpoint/run folder into ``model``.

    Every weight of the source must exist in ``model`` with the same shape, and the context encoder must be complete;
    modules the source lacks (the mask predictor and domain classifier of an exported file, or a newly enabled
    ``model.decoder_refine``) keep their fresh initialisation. Returns their names (``mask_predictor``,
    ``decoder.refine``...).
    """
    tensors, _ = ckpt.read_weights(path)
    weights = {k: v.float() for k, v in tensors.items() if not k.startswith("mean_projection.")}
    own = model.state_dict()
    for name, value in weights.items():
        if name not in own:
            raise XWinInputError(path, f"train.init: weight {name} has no place in this model (other architecture)")
        if own[name].shape != value.shape:
            raise XWinInputError(path, f"train.init: weight {name} is {tuple(value.shape)}, this model's is "
                                       f"{tuple(own[name].shape)} (other model sizes)")
    missing = model.load_state_dict(weights, strict=False).missing_keys
    if any(k.startswith("context_encoder.") for k in missing):
        raise XWinInputError(path, f"train.init: the source lacks encoder weights such as "
                                   f"{next(k for k in missing if k.startswith('context_encoder.'))}")
    partly_loaded = {k.split(".")[0] for k in weights}
    return sorted({".".join(k.split(".")[:2]) if k.split(".")[0] in partly_loaded else k.split(".")[0]
                   for k in missing})


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def replica_spread(model: torch.nn.Module, d: Dist) -> float:
    """Largest difference between this replica's weights (EMA target included) and rank 0's (0.0 when alone)."""
    flat = torch.cat([p.detach().double().flatten().cpu() for p in model.state_dict().values()
                      if p.is_floating_point()])
    if d.world == 1:
        return 0.0
    reference = flat.to(d.device).clone()
    torch.distributed.broadcast(reference, src=0)
    spread = (flat.to(d.device) - reference).abs().max()
    torch.distributed.all_reduce(spread, op=torch.distributed.ReduceOp.MAX)
    return float(spread)


def check_stop_file(path: Path) -> None:
    """Refuse a stop file that would stop the run at once (it exists) or could never appear (no folder for it)."""
    if path.exists() or path.is_symlink():
        kind = "a folder" if path.is_dir() else "present"
        raise XWinInputError(path, f"--stop-file is {kind} already: training would stop after its first step "
                                   "(give a path that does not exist yet)")
    if not path.parent.is_dir():
        raise XWinInputError(path, f"--stop-file could never appear: its folder {path.parent} does not exist")


def check_resumed_model(cfg: XWinConfig, run_dir: Path, config_file: str | Path) -> None:
    """A resumed run keeps the model it was trained with: a config (``config_file``) whose ``model`` section differs
    from the checkpoint's is refused, naming the first differing key (nothing to check without a checkpoint)."""
    last = ckpt.latest_checkpoint(run_dir, strict=True)
    if last is None:
        return
    theirs = ckpt.read_state(last)["config"]["model"]
    for key, mine in cfg.to_dict()["model"].items():
        if theirs.get(key) != mine:
            raise XWinInputError(config_file, f"model.{key} is {mine!r} here but {theirs.get(key)!r} in the run being "
                                              f"resumed ({last}): --resume continues that model (restore the "
                                              "setting, or train into a new folder)")


RUN_LOCK = ".xwin-train.lock"


def lock_run(run_dir: Path):
    """Hold ``run_dir`` for this process (an advisory lock on ``.xwin-train.lock`` inside it, released when the file
    closes or the process dies, however it dies) or refuse: two `xwin train` writing one run folder would interleave
    their checkpoints and metrics. Returns the open lock file; keep it open while training."""
    path = run_dir / RUN_LOCK
    try:
        handle = open(path, "a+")
    except OSError as exc:
        raise XWinInputError(path, f"cannot be opened to lock the run folder ({exc.strerror})") from None
    try:
        if sys.platform == "win32":
            import msvcrt
            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)  # its first byte
        else:
            import fcntl
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        try:
            handle.seek(0)
            owner = handle.read().strip()
        except OSError:  # Windows: the holder's byte cannot be read
            owner = ""
        handle.close()
        raise XWinInputError(run_dir, f"is in use by another `xwin train`{f' (pid {owner})' if owner.isdigit() else ''}"
                                      ": wait for it to finish or stop it, or choose another folder") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def train(cfg: XWinConfig, run_dir: str | Path, *, resume: bool = False, progress: str = "bar",
          device: str = "auto", stop_file: str | Path | None = None) -> Path | None:
    """Train (or resume) a world model into ``run_dir``; returns the last checkpoint folder.

    stop_file: when this file appears (checked after every step), finish the step, write a checkpoint, log a
    "stopped" event and return (as on SIGTERM/SIGINT)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():  # campaign 12: worded as "run/.xwin-train.lock: Not a directory"
        raise XWinInputError(run_dir, "is a file; the run's --out is a folder (new, empty, or a run to --resume)")
    if stop_file is not None:
        check_stop_file(Path(stop_file))
    d: Dist = setup(device)
    t = cfg.train
    created, lock, lock_existed = False, None, True
    made = [p for p in run_dir.parents if not p.exists()][::-1] if d.main else []  # removed again on a failed start
    try:
        if d.main:
            lock_existed = (run_dir / RUN_LOCK).exists()
            try:
                run_dir.mkdir(parents=True)
                created = True
            except FileExistsError:  # a run folder already (or a file: mkdir says so)
                run_dir.mkdir(parents=True, exist_ok=True)
            lock = lock_run(run_dir)
        d.barrier()
        last = ckpt.latest_checkpoint(run_dir, strict=True)
        if last is not None and not resume:
            raise XWinInputError(run_dir, "already holds a training run: pass --resume to continue it, "
                                          "or choose an empty folder")
        if last is None and resume:
            steps = sorted((run_dir / "checkpoints").glob("step_*/state.json"))
            if steps:  # the folders are there, the pointer is not
                newest = steps[-1].parent.name
                raise XWinInputError(run_dir / "checkpoints" / ckpt.LATEST, "is missing: it names the checkpoint "
                                     f"--resume continues (the newest folder is {newest}; write "
                                     f'{{"step": {int(newest[5:])}, "path": "{newest}"}} into it to resume there)')
            raise XWinInputError(run_dir, "holds no checkpoint to resume from (a run stopped before its first "
                                          "checkpoint starts again without --resume)")
        for name in (METRICS, LOSS_CURVE):  # a folder in their place would stop the run after its first checkpoint
            check_target(run_dir / name)
        torch.manual_seed(t.seed + d.rank)
        model = create_model(cfg).to(d.device)
        for name in t.freeze:  # held at their initial weights: no gradient (and the target: no EMA step)
            getattr(model, name).requires_grad_(False)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay, betas=(0.9, 0.95))
        step, sampler_state, fresh, state_file = 0, None, None, run_dir
        if resume and last is not None:
            state_file = last / "state.json"
            weights, opt_tensors, state = ckpt.load_checkpoint(last)
            try:
                model.load_state_dict(weights)
            except RuntimeError as exc:  # tensors of another model (an exported file copied over it...)
                problem = " ".join(str(exc).split())
                raise XWinInputError(last / "model.safetensors", "does not hold this run's training weights "
                                     f"({problem[:200]}{'...' if len(problem) > 200 else ''})") from None
            if "optimizer" not in state:
                raise XWinInputError(last / "state.json", "holds no optimizer state: not a training checkpoint")
            if opt_tensors is None:
                raise XWinInputError(last / "optimizer.safetensors", "missing (or not a file): the optimizer state "
                                     "of this checkpoint is needed to resume")
            ckpt.restore_optimizer(opt, opt_tensors, state["optimizer"], last)
            ckpt.restore_rng(state.get("rng"), last)
            step, sampler_state = state["step"], state.get("sampler")
        elif t.init is not None:
            fresh = load_initial_weights(model, t.init)
        sampler = prepare_sampler(cfg, run_dir, d, quiet=progress == "none")
        if sampler_state is not None:
            try:
                sampler.restore(sampler_state)
            except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:  # a damaged state.json
                raise XWinInputError(state_file, f"its sampler state cannot be restored "
                                     f"({type(exc).__name__}: {ckpt.one_line(exc)})") from None
        if d.main and step:  # the run's metrics are cut back to the checkpoint only once everything else loaded
            trim_metrics(run_dir, step)
        net: _Losses | DistributedDataParallel = _Losses(model)
        if d.world > 1:
            net = DistributedDataParallel(net, find_unused_parameters=True)
        amp = torch.autocast(d.device.type, dtype=torch.bfloat16) if use_bf16(t.amp, d.device) else nullcontext()
        log = ProgressLog(run_dir, t.total_steps, step, progress, enabled=d.main)
        flag = _StopFlag(stop_file, d)
        per_step = t.batch_size * t.grad_accum * d.world
        log.event("start", step=step, total=t.total_steps, world=d.world, device=str(d.device),
                  bf16=use_bf16(t.amp, d.device),
                  parameters=sum(p.numel() for p in params),
                  **({} if fresh is None else {"init": str(t.init), "fresh_modules": fresh}))
        saved = last
        while step < t.total_steps and not flag.stop:
            tick = time.perf_counter()
            lr = lr_at(step, t.lr, t.warmup_steps, t.total_steps)
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=True)
            sums: dict[str, float] = {}
            for micro in range(t.grad_accum):
                batch = _to(sampler.sample(t.batch_size, cfg.data.real_per_batch), d.device)
                sync = (net.no_sync()  # type: ignore[operator]  # DDP's, with world > 1
                        if (d.world > 1 and micro < t.grad_accum - 1) else nullcontext())
                with sync, amp:
                    out = net(batch, step, t.total_steps)
                    (out["total"] / t.grad_accum).backward()
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) / t.grad_accum
            torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
            opt.step()
            if "target_encoder" not in t.freeze:
                model.update_target(step, t.total_steps)
            step += 1
            seconds = time.perf_counter() - tick
            record = {"step": step, "epoch": round(step * per_step / sampler.epoch_size, 3), "lr": lr,
                      "samples_per_s": round(per_step / seconds, 2)}
            record.update({(f"loss_{k}" if k in LOSS_KEYS + ("total",) else f"metric_{k}"): round(v, 6)
                           for k, v in sums.items()})
            log.step(record)
            stopping = flag.check()  # every step (a collective under DDP), before the checkpoint decision
            if step % t.checkpoint_every == 0 or step == t.total_steps or stopping:
                if d.world > 1:
                    log.event("replicas", step=step, world=d.world, max_abs_diff=replica_spread(model, d))
                if d.main:
                    saved = ckpt.save_checkpoint(run_dir, step, model, opt, {
                        "config": cfg.to_dict(), "sampler": sampler.state(), "metrics": record})
                    plot_loss_curve(run_dir)
                    log.event("checkpoint", step=step, path=str(saved))
                d.barrier()
        log.event("stopped" if flag.stop else "finished", step=step)
        log.close()
        flag.restore()
        return saved
    except BaseException:
        if d.main and ckpt.latest_checkpoint(run_dir) is None:  # a failed start leaves nothing of its own behind:
            if lock is not None:  # the run folder and the parents it made, or in a folder that was there, the lock
                lock.close()
                lock = None
            if created:
                shutil.rmtree(run_dir, ignore_errors=True)
            elif not lock_existed:
                (run_dir / RUN_LOCK).unlink(missing_ok=True)
            for parent in reversed(made):
                try:
                    parent.rmdir()
                except OSError:  # no longer empty (something else wrote there meanwhile) or already gone
                    break
        raise
    finally:
        if lock is not None:
            lock.close()
        teardown()

