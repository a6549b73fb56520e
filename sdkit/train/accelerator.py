"""The machine a run trains on (an accelerate Accelerator) and the flag that stops it cleanly."""
from __future__ import annotations

import os
import signal
import threading

import torch

from ..config import ConfigError, TrainConfig

__all__ = ["make_accelerator", "StopFlag"]


def make_accelerator(config: TrainConfig):
    """An Accelerator for this machine: CUDA when present, else the CPU (gloo when several processes run)."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration
    cpu = not torch.cuda.is_available()
    if config.mixed_precision == "fp16" and cpu:
        raise ConfigError("mixed_precision: fp16 needs a CUDA GPU (CPUs have no fast fp16 training). "
                          "Fix: mixed_precision='bf16' on a CPU, or 'no'.")
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # One process (a notebook, a script, a test): accelerate keeps its state in a singleton, so a second run
        # with another mixed_precision would be refused. Start each run from a clean state.
        from accelerate.state import AcceleratorState, GradientState
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    return Accelerator(mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.grad_accum,
                       cpu=cpu, project_config=ProjectConfiguration(project_dir=config.out or "."))


class StopFlag:
    """Set by Ctrl-C / the notebook's interrupt (first press), the dashboard's Stop button, or code."""

    def __init__(self):
        self.event = threading.Event()
        self.presses = 0
        self._old = None

    def install(self):
        if threading.current_thread() is not threading.main_thread():
            return
        self._old = signal.getsignal(signal.SIGINT)

        def handler(signum, frame):
            self.presses += 1
            if self.presses >= 2:  # second press: stop at once
                raise KeyboardInterrupt
            self.event.set()
            print("\n[sdkit] stopping after this step and saving a checkpoint (press again to stop at once)",
                  flush=True)

        signal.signal(signal.SIGINT, handler)

    def restore(self):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None
