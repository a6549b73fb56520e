"""Full fine-tune: every UNet weight trains (and every text-encoder weight with train_text_encoder).

    sdkit.train(sdkit.TrainConfig(method="full", model="mini", data="data_samples/glyph", lr=1e-4))
    python -m sdkit export RUN --format pipeline        # a diffusers folder; or --format single-file (A1111)
"""
from __future__ import annotations

from .base import Method, split_prefix

__all__ = ["FullMethod"]


class FullMethod(Method):
    """Every UNet weight trains (and every text-encoder weight with train_text_encoder)."""
    name = "full"
    display_name = "full fine-tune"
    supports_sdxl = True
    supports_prior_preservation = True
    hub_tags = ("full-finetune",)
    recipe = dict(lr=1e-4)

    def setup(self, unet, text_encoder):
        unet.requires_grad_(True)
        text_encoder.requires_grad_(bool(self.config.train_text_encoder))
        te_params = list(text_encoder.parameters()) if self.config.train_text_encoder else []
        return self._groups(list(unet.parameters()), te_params)

    def state_dict(self, unet, text_encoder):
        state = {f"unet.{k}": v for k, v in unet.state_dict().items()}
        if self.config.train_text_encoder:
            state.update({f"text_encoder.{k}": v for k, v in text_encoder.state_dict().items()})
        return state

    def load_state_dict(self, unet, text_encoder, state):
        unet.load_state_dict(split_prefix(state, "unet."))
        if self.config.train_text_encoder:
            text_encoder.load_state_dict(split_prefix(state, "text_encoder."))

    def oom_advice(self):
        return "method='lora' (a fraction of the memory)"
