"""Training: the outer loop, checkpoints and logs."""

from metaloop.train.checkpoint import CheckpointError, load_checkpoint, load_latest, save_checkpoint
from metaloop.train.trainer import FitResult, NonFiniteError, Trainer

__all__ = [
    "CheckpointError",
    "FitResult",
    "NonFiniteError",
    "Trainer",
    "load_checkpoint",
    "load_latest",
    "save_checkpoint",
]
