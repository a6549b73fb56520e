"""EMA weights (an exponential moving average of the trainable weights, when `ema` is on) and the evaluation
context that samples and the validation loss run in: eval mode, the EMA weights, training's RNG left untouched."""
from __future__ import annotations

import contextlib

import torch

__all__ = ["make_ema", "ema_weights", "evaluation"]


def make_ema(params, decay: float):
    """diffusers' EMAModel over `params` (one shadow tensor each, in the optimizer's parameter order)."""
    from diffusers.training_utils import EMAModel
    return EMAModel(params, decay=decay)


@contextlib.contextmanager
def ema_weights(ema, params):
    """Inside: `params` hold the EMA weights; after: the trained weights again."""
    ema.store(params)
    ema.copy_to(params)
    try:
        yield
    finally:
        ema.restore(params)


@contextlib.contextmanager
def evaluation(trainer):
    """UNet and text encoder in eval mode, with the EMA weights when the run keeps them; afterwards the train modes
    and torch's RNG state are as they were (drawing samples must not change what training draws next)."""
    acc = trainer.accelerator
    unet, te = acc.unwrap_model(trainer.unet), acc.unwrap_model(trainer.text_encoder)
    was = unet.training, te.training
    unet.eval(), te.eval()
    rng = torch.get_rng_state()
    ctx = ema_weights(trainer.ema, trainer.trainable) if trainer.ema is not None else contextlib.nullcontext()
    try:
        with ctx:
            yield
    finally:
        torch.set_rng_state(rng)
        unet.train(was[0]), te.train(was[1])
