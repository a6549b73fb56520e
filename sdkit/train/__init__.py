"""sdkit.train: the one training loop (on accelerate) and its helpers; observers as callbacks. The methods it
trains with are sdkit.methods."""
from ..methods.base import Method
from ..methods.full import FullMethod
from ..methods.lora import LoRAMethod
from ..registry import METHODS
from .callbacks import Callback
from .loop import Trainer, TrainingError, pipeline_from_checkpoint, train

__all__ = ["train", "Trainer", "TrainingError", "Callback", "Method", "LoRAMethod", "FullMethod", "METHODS",
           "pipeline_from_checkpoint"]
