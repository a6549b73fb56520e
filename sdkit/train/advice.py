"""What to change when training fails: the likely causes of a NaN loss, and settings that need less memory after
CUDA ran out of it. The method adds its own lighter recipe (`Method.oom_advice`, e.g. LoRA instead of a full
fine-tune); the generic settings are here."""
from __future__ import annotations

from ..checkpoint import step_name

__all__ = ["TrainingError", "nan_diagnosis", "oom_advice"]


class TrainingError(RuntimeError):
    """Training stopped on a problem (NaN loss, out of memory); the message says what to change."""


def nan_diagnosis(trainer, value) -> str:
    c = trainer.config
    hints = []
    if c.mixed_precision == "fp16":
        hints.append("fp16 overflowed: use mixed_precision='bf16' on GPUs that have it (not a T4), or 'no'; "
                     "the SD VAE in fp16 is a known source of NaN")
    hints.append(f"lr={c.lr:g} may be too high: try {c.lr / 10:g}")
    if not c.max_grad_norm:
        hints.append("turn gradient clipping on (max_grad_norm=1.0)")
    last = f"the last good checkpoint is {step_name(trainer.last_checkpoint_step)}" if trainer.last_checkpoint_step \
        else "no checkpoint was written before it"
    return (f"loss became {value} at step {trainer.step}; training stopped ({last}). Likely causes: "
            + "; ".join(hints) + ".")


def oom_advice(trainer, error) -> str:
    c = trainer.config
    tips = []
    if c.batch_size > 1:
        tips.append(f"batch_size={max(1, c.batch_size // 2)} with grad_accum={c.grad_accum * 2} (same global batch)")
    if not c.gradient_checkpointing:
        tips.append("gradient_checkpointing=True (about 30-40% less activation memory)")
    if c.optimizer == "adamw":
        tips.append("optimizer='adamw8bit' (bitsandbytes)")
    if c.mixed_precision == "no":
        tips.append("mixed_precision='fp16' (T4) or 'bf16' (A100/H100)")
    if c.attention == "sdpa":
        tips.append("attention='xformers' if SDPA's memory-efficient kernel is not used on this GPU")
    if trainer.resolution > 512:
        tips.append("resolution=512")
    lighter = trainer.method.oom_advice()  # e.g. a full fine-tune: method='lora'
    if lighter:
        tips.append(lighter)
    return f"CUDA out of memory at step {trainer.step} ({str(error).splitlines()[0]}). Try: " + "; ".join(tips) + "."
