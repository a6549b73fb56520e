"""The no-widget fallback: text progress and PNGs on disk, for scripts, nbconvert, papermill and missing ipywidgets.

Same surface as the widget panel: `panel.config`, `panel.run()`; the loss plot is rewritten to RUN/loss.png every
few seconds, and at the end the run is shown with `sdkit.show` (images in a notebook, paths in a terminal).
"""
from __future__ import annotations

import time

from ..config import TrainConfig
from ..plot import save_loss_plot, show
from ..train.callbacks import Callback
from ..train.loop import train

__all__ = ["TextPanel", "LossPngCallback"]


class LossPngCallback(Callback):
    """Rewrites RUN/loss.png at most every `every_s` seconds and at the end of training."""

    def __init__(self, every_s: float = 10.0):
        self.every_s = every_s

    def on_train_start(self, trainer):
        self._last = time.time()

    def on_log(self, trainer, logs):
        if time.time() - self._last >= self.every_s:
            self._write(trainer)

    def on_train_end(self, trainer, run):
        self._write(trainer)

    def _write(self, trainer):
        save_loss_plot(trainer.run_dir)
        self._last = time.time()


class TextPanel:
    """train_panel's fallback when there are no widgets: `run()` prints progress lines and saves PNGs."""

    def __init__(self, config=None, reason: str = ""):
        self._config = config or TrainConfig()
        self.reason = reason
        self.last_run = None
        if reason:
            print(f"[sdkit] text mode ({reason}): progress as lines, loss plot in RUN/loss.png; "
                  f"press Ctrl-C / the interrupt to stop with a checkpoint.", flush=True)

    @property
    def config(self):
        return self._config.validate()

    @config.setter
    def config(self, cfg):
        self._config = cfg

    def run(self, config=None):
        if config is not None:
            self._config = config
        self.last_run = train(self.config, callbacks=[LossPngCallback()], progress="print")
        show(self.last_run)
        return self.last_run
