"""Training backend: one CPU to many GPUs, atomic pickle-free checkpoints, progress for terminals and Slicer."""
from .data import with_overrides
from .loop import load_initial_weights, lr_at, train

__all__ = ["load_initial_weights", "lr_at", "train", "with_overrides"]
