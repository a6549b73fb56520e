"""DreamBooth as in the paper: the whole UNet (and optionally the text encoder) with prior preservation.

    run = sdkit.train(sdkit.TrainConfig(method="dreambooth", model="mini", data="data_samples/glyph",
                      instance_prompt="a sks glyph", class_prompt="a glyph", num_class_images=50, steps=200))

The mechanism (instance prompt, class images, the prior-preservation loss) is `sdkit.methods.prior`; LoRA
DreamBooth is `method="lora", prior_preservation=True`, the same mechanism on LoRA.
"""
from __future__ import annotations

from .full import FullMethod
from .prior import PriorPreservation

__all__ = ["DreamBoothMethod"]


class DreamBoothMethod(PriorPreservation, FullMethod):
    """DreamBooth as in the paper: the whole UNet (and optionally the text encoder) with prior preservation."""
    name = "dreambooth"
    display_name = "DreamBooth (full UNet, prior preservation)"
    prior_preservation_default = True
    hub_tags = ("dreambooth",)

    def oom_advice(self):
        return ("method='lora' with prior_preservation=True (LoRA DreamBooth: same recipe, a fraction of the "
                "memory)")
