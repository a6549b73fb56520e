"""LoCon (LyCORIS' name): LoRA on the attention projections *and* the ResNet convolutions (peft LoRA handles
Conv2d). Exported in the kohya layout, which AUTOMATIC1111 and ComfyUI load with conv weights.

    sdkit.train(sdkit.TrainConfig(method="locon", model="mini", data="data_samples/glyph", lr=1e-3))
"""
from __future__ import annotations

from .lora import ATTN_FF, LoRAMethod

__all__ = ["LoConMethod"]


class LoConMethod(LoRAMethod):
    """LoRA on attention and the ResNet convolutions (LyCORIS' LoCon), exported in the kohya layout."""
    name = "locon"
    display_name = "LoCon (LoRA on attention and convolutions)"
    supports_prior_preservation = False
    hub_tags = ("lora", "locon", "lycoris")
    recipe = dict(lora_rank=8, lr=1e-3, lora_targets=ATTN_FF)  # locon adds the convs itself
    CONV_TARGETS = "conv1,conv2,conv_shortcut,proj_in,proj_out"

    def targets(self):
        targets = super().targets()
        return targets + [t for t in self.CONV_TARGETS.split(",") if t not in targets]
