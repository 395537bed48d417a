"""EMA target encoder (BYOL / I-JEPA): a frozen copy of the context encoder that trails it."""
from __future__ import annotations

import copy
import math

import torch
from torch import nn


def momentum_at(step: int, total_steps: int, start: float = 0.996, end: float = 1.0,
                schedule: str = "cosine") -> float:
    """EMA momentum m(k) rising from ``start`` at step 0 to ``end`` at ``total_steps`` (clamped outside).

    cosine: m = end − (end − start)·(1 + cos(π k/K))/2;  linear: m = start + (end − start)·k/K.
    """
    t = min(max(step / max(total_steps, 1), 0.0), 1.0)
    if schedule == "cosine":
        return end - (end - start) * (1.0 + math.cos(math.pi * t)) / 2.0
    if schedule == "linear":
        return start + (end - start) * t
    raise ValueError(f"unknown EMA schedule {schedule!r}")


def make_target(encoder: nn.Module) -> nn.Module:
    """Deep copy of ``encoder`` with gradients off and in eval mode (no drop-path)."""
    target = copy.deepcopy(encoder).requires_grad_(False)
    return target.eval()


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """θ_target ← m·θ_target + (1 − m)·θ_online for every parameter; buffers are copied."""
    for t, o in zip(target.parameters(), online.parameters()):
        t.mul_(momentum).add_(o.detach(), alpha=1.0 - momentum)
    for tb, ob in zip(target.buffers(), online.buffers()):
        tb.copy_(ob)
