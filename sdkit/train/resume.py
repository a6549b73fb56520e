"""Honest resume: a run resumed with other settings than it was trained with either applies each change and records
it in RUN/resume.jsonl (step, field, old -> new), or refuses with a message naming the field and the fix.
config.yaml (the settings now) plus resume.jsonl (what changed at which step) reproduce the weights.

The decision per field is the table below (docs/RUN_DIRECTORY.md shows it). A field in no table is refused: a new
field is safe to resume only once someone has said so here.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from ..config import ConfigError, TrainConfig

__all__ = ["FIXED", "CHANGEABLE", "IGNORED", "OPTIMIZER_FIELDS", "resume_changes", "record_changes",
           "apply_optimizer_settings"]

# Refused on resume, with the reason the message gives.
_SHAPE = "the checkpoint's weights were trained for it"
FIXED = {
    "model": "the checkpoint's weights belong to that base model",
    "revision": "the checkpoint's weights belong to that base model",
    "method": "the checkpoint holds that method's weights and optimizer state",
    "lora_rank": _SHAPE, "lora_alpha": _SHAPE, "lora_targets": _SHAPE, "token": _SHAPE, "init_token": _SHAPE,
    "num_vectors": _SHAPE, "lycoris_factor": _SHAPE, "hypernetwork_layers": _SHAPE,
    "hypernetwork_activation": _SHAPE, "train_text_encoder": _SHAPE,
    "prior_preservation": "it changes what every batch holds (instance + class images)",
    "resolution": "the run's data, noise and samples are drawn at that size",
    "seed": "data order, noise and timesteps of every step are derived from it",
    "optimizer": "the optimizer state in the checkpoint is that optimizer's",
    "ema": "the EMA weights start with the run (on: none saved yet; off: they would be lost)",
    "prediction_type": "the model learned that objective",
    # aspect-ratio buckets (issue 18): they decide the batches' shapes and order
    "bucketing": "it decides the shape and order of every batch", "bucket_step": "it decides the batches' shapes",
    "min_bucket_side": "it decides the batches' shapes", "max_bucket_side": "it decides the batches' shapes",
    "bucket_no_upscale": "it decides the batches' shapes",
}
# Applied from the resumed step on, and recorded. (A changed global batch, batch_size x processes x grad_accum, is
# still refused when the checkpoint loads: the data order per step depends on it.)
CHANGEABLE = (
    "data", "caption_ext", "center_crop", "random_flip", "caption_dropout", "cache_latents", "data_layout",
    "trigger_token", "shuffle_caption", "keep_tokens", "tag_dropout", "color_jitter", "num_workers", "lora_dropout",
    "text_encoder_lr", "instance_prompt", "class_prompt", "class_data", "num_class_images", "prior_loss_weight",
    "steps", "batch_size", "grad_accum", "lr", "lr_scheduler", "lr_warmup_steps", "weight_decay", "adam_beta1",
    "adam_beta2", "adam_epsilon", "max_grad_norm", "mixed_precision", "gradient_checkpointing", "channels_last",
    "compile_unet", "attention", "ema_decay", "snr_gamma", "noise_offset", "checkpoint_every", "checkpoint_start",
    "checkpoint_every_minutes", "validation_split", "keep_last", "log_every", "tensorboard", "sample_every",
    "sample_prompts", "sample_seeds", "sample_steps", "guidance_scale", "negative_prompt", "sample_at_start",
    "sample_width", "sample_height",
)
_UNKNOWN = "not declared safe to change in sdkit/train/resume.py"
IGNORED = ("out", "resume")  # where the run is and that it resumes: not settings of the training
# Settings the optimizer or its schedule hold: the checkpoint's values would win unless re-applied after loading.
OPTIMIZER_FIELDS = ("lr", "text_encoder_lr", "lr_scheduler", "lr_warmup_steps", "steps", "weight_decay",
                    "adam_beta1", "adam_beta2", "adam_epsilon")


def resume_changes(config: TrainConfig, checkpoint: Path, run_dir: Path) -> list:
    """[(field, old, new), ...] between the config that wrote `checkpoint` (its run's config.yaml) and `config`;
    raises ConfigError naming every field that cannot change."""
    source = Path(checkpoint).parent.parent / "config.yaml"
    if not source.is_file():
        source = Path(run_dir) / "config.yaml"
    if not source.is_file():
        return []
    old = TrainConfig.from_yaml(source).to_dict()
    new = config.to_dict()
    changes = [(k, old.get(k), new[k]) for k in new if k not in IGNORED and k in old and old[k] != new[k]]
    refused = [(k, o, n) for k, o, n in changes if k not in CHANGEABLE]
    if refused:
        lines = "; ".join(f"{k} was {o!r}, now {n!r}: {k} cannot change on resume ({FIXED.get(k, _UNKNOWN)})"
                          for k, o, n in refused)
        first = ", ".join(f"{k}={o!r}" for k, o, _ in refused)
        raise ConfigError(f"resume: {lines}. Fix: resume with {first} (e.g. --config {source} --resume latest), "
                          f"or start a new run with another --out.")
    return changes


def record_changes(run_dir: Path, step: int, checkpoint: Path, changes: list) -> None:
    """Append one line per change to RUN/resume.jsonl: {step, field, old, new, checkpoint, time}."""
    if not changes:
        return
    with open(Path(run_dir) / "resume.jsonl", "a", encoding="utf-8") as f:
        for field, old, new in changes:
            f.write(json.dumps({"step": step, "field": field, "old": old, "new": new,
                                "checkpoint": Path(checkpoint).name, "time": time.time()}) + "\n")


def apply_optimizer_settings(optimizer, lr_schedule, fresh_groups: list) -> None:
    """After the checkpoint's optimizer state is loaded: put back this run's settings (lr, betas, eps, weight decay,
    the schedule's base lr) from `fresh_groups` (the param groups as built before loading), and the learning rate
    of the current step from this run's schedule."""
    for group, fresh in zip(optimizer.param_groups, fresh_groups):
        group.update(fresh)
    lr_schedule.base_lrs = [g["initial_lr"] for g in fresh_groups]
    lrs = [base * f(lr_schedule.last_epoch) for base, f in zip(lr_schedule.base_lrs, lr_schedule.lr_lambdas)]
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr
    lr_schedule._last_lr = lrs
