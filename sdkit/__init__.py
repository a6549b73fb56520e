"""sdkit — a course-kit for training Stable Diffusion.

    run = sdkit.train(sdkit.LoRAConfig(model="mini", data="data_samples/glyph", steps=300))
    sdkit.show(run)   # loss curve + sample grid
"""
from .version import __version__
from .config import ConfigError, DreamBoothConfig, FullConfig, LoRAConfig, TrainConfig
from .models import load_pipeline, make_tiny
from .plot import show    # (loss curve, learning rate, samples over steps, checkpoints)
from .run import Run
from .train import Callback, TrainingError, train

__all__ = ["TrainConfig", "LoRAConfig", "FullConfig", "DreamBoothConfig", "ConfigError", "train", "Run", "Callback",
           "TrainingError", "load_pipeline", "make_tiny", "show", "__version__"]
