"""sdkit — a course-kit for training Stable Diffusion.

    run = sdkit.train(sdkit.LoRAConfig(model="mini", data="data_samples/glyph", steps=300))
    sdkit.show(run)   # loss curve + sample grid
"""
from .version import __version__  # noqa: E402
from .config import ConfigError, DreamBoothConfig, FullConfig, LoRAConfig, TrainConfig  # noqa: E402
from .models import load_pipeline, make_tiny  # noqa: E402
from .run import Run  # noqa: E402
from .train import Callback, TrainingError, train  # noqa: E402


def show(run_or_path, **kwargs):
    """Draw a run (loss curve, learning rate, samples over steps, checkpoints) — see sdkit.plot.show."""
    from .plot import show as _show
    return _show(run_or_path, **kwargs)


__all__ = ["TrainConfig", "LoRAConfig", "FullConfig", "DreamBoothConfig", "ConfigError", "train", "Run", "Callback", "TrainingError",
           "load_pipeline", "make_tiny", "show", "__version__"]
