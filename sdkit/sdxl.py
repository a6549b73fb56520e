"""Moved: what SDXL changes in training and sampling is `sdkit.families` (SDXLFamily, encode_prompt, add_time_ids,
batch_time_ids); `make_tiny_sdxl` and `is_sdxl_model` are in `sdkit.models`. These names stay importable from here
for notebooks and scripts written before the move."""
from .families import FP16_FIX_VAE, SDXL_BASE, add_time_ids, batch_time_ids, encode_prompt, is_sdxl
from .models import is_sdxl_model, make_tiny_sdxl

__all__ = ["make_tiny_sdxl", "is_sdxl", "is_sdxl_model", "encode_prompt", "add_time_ids", "batch_time_ids",
           "SDXL_BASE", "FP16_FIX_VAE"]
