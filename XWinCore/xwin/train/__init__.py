"""Training backend: one CPU to many GPUs, atomic pickle-free checkpoints, progress for terminals and Slicer."""
from .loop import lr_at, train

__all__ = ["lr_at", "train"]
