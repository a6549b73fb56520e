"""The optimizer (AdamW: plain, fused, or bitsandbytes' 8-bit) and its learning-rate schedule."""
from __future__ import annotations

import torch

__all__ = ["make_optimizer", "make_lr_schedule"]


def make_optimizer(config, param_groups):
    extra = {}
    if config.optimizer == "adamw8bit":
        import bitsandbytes as bnb
        opt_cls = bnb.optim.AdamW8bit
    else:
        opt_cls = torch.optim.AdamW
        if config.optimizer == "adamw_fused":
            extra["fused"] = True
    return opt_cls(param_groups, lr=config.lr, betas=(config.adam_beta1, config.adam_beta2),
                   weight_decay=config.weight_decay, eps=config.adam_epsilon, **extra)


def make_lr_schedule(config, optimizer):
    """diffusers' schedule `config.lr_scheduler`, stepped once per optimizer step (on every process)."""
    from diffusers.optimization import get_scheduler
    return get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=config.lr_warmup_steps,
                         num_training_steps=config.steps)
