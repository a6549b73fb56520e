"""sdkit.train: the one training loop (on accelerate), methods as strategies, observers as callbacks."""
from .callbacks import Callback
from .loop import Trainer, TrainingError, pipeline_from_checkpoint, train
from .methods import METHODS, FullMethod, LoRAMethod, Method

__all__ = ["train", "Trainer", "TrainingError", "Callback", "Method", "LoRAMethod", "FullMethod", "METHODS",
           "pipeline_from_checkpoint"]
