"""sdkit.train: the one training loop (on accelerate), methods as strategies, observers as callbacks."""
from .callbacks import Callback
from .loop import Trainer, TrainingError, pipeline_from_checkpoint, train
from ..methods import Method

__all__ = ["train", "Trainer", "TrainingError", "Callback", "Method",
           "pipeline_from_checkpoint"]
