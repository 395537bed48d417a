"""Training backend: one CPU to many GPUs, atomic pickle-free checkpoints, progress for terminals and Slicer."""
from .data import with_overrides
from .loop import check_resumed_model, load_initial_weights, lr_at, train

__all__ = ["check_resumed_model", "load_initial_weights", "lr_at", "train", "with_overrides"]
