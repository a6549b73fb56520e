"""From-scratch Stable Diffusion parts for notebooks 01-02, each checked against diffusers.

    from sdkit.scratch import ScratchUNet, ScratchUNetConfig, schedules
    unet = ScratchUNet(ScratchUNetConfig.like_sd("mini", cross_attention_dim=64))
    same = ScratchUNet.from_diffusers(diffusers_unet)          # real weights, same outputs
"""
from . import schedules
from .unet import (
    ScratchUNet,
    ScratchUNetConfig,
    diffusers_key_to_scratch,
    load_diffusers_weights,
    scratch_key_to_diffusers,
    timestep_embedding,
)

__all__ = ["ScratchUNet", "ScratchUNetConfig", "load_diffusers_weights", "diffusers_key_to_scratch",
           "scratch_key_to_diffusers", "timestep_embedding", "schedules"]
