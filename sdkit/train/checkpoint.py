"""The trainer's side of the run directory: config.yaml at the start, a checkpoint when the callbacks ask, and
resuming from one. The folder format itself (atomic writes, safetensors + json, `latest`) is sdkit.checkpoint,
whose functions are re-exported here.

A checkpoint holds the trainable weights, the optimizer and EMA state, the learning-rate schedule and the step.
No RNG state: data order, augmentation and noise are re-derived from (seed, global sample index) (sdkit.rng), so
a resumed run draws exactly what an uninterrupted one would.
"""
from __future__ import annotations

from ..checkpoint import (find_checkpoint, flatten_state, list_checkpoints, read_checkpoint, step_name,
                          unflatten_state, write_checkpoint)
from ..config import ConfigError
from ..version import __version__

__all__ = ["write_run_config", "save_checkpoint", "load_checkpoint", "step_name", "write_checkpoint",
           "read_checkpoint", "find_checkpoint", "list_checkpoints", "flatten_state", "unflatten_state"]

LR_SCHEDULE_KEYS = ("last_epoch", "_step_count", "base_lrs", "_last_lr")  # what a resume needs of the schedule


def write_run_config(trainer) -> None:
    """The run directory's folders and config.yaml (the resolved config, plus what the machine decided)."""
    trainer.run_dir.mkdir(parents=True, exist_ok=True)
    for sub in ("samples", "checkpoints", "export"):
        (trainer.run_dir / sub).mkdir(exist_ok=True)
    trainer.config.to_yaml(trainer.run_dir / "config.yaml", extra={
        "num_processes": trainer.accelerator.num_processes, "global_batch_size": trainer.global_batch,
        "sdkit_version": __version__})


def save_checkpoint(trainer) -> None:
    """checkpoints/step_XXXXXX of the current step (main process; every process waits), then `on_checkpoint`."""
    acc, c = trainer.accelerator, trainer.config
    acc.wait_for_everyone()
    if acc.is_main_process:
        unet, te = acc.unwrap_model(trainer.unet), acc.unwrap_model(trainer.text_encoder)
        trainable = trainer.method.state_dict(unet, te)
        state = {"lr_schedule": {k: v for k, v in trainer.lr_schedule.state_dict().items() if k in LR_SCHEDULE_KEYS},
                 "global_batch": trainer.global_batch, "method": c.method,
                 "resolution": trainer.resolution, "model": c.model}
        ema = trainer.ema.state_dict() if trainer.ema is not None else None
        path = write_checkpoint(trainer.run_dir / "checkpoints", trainer.step, trainable,
                                trainer.optimizer.state_dict(), state, ema_state=ema, keep_last=c.keep_last)
        trainer.last_checkpoint_step = trainer.step
        trainer.emit("on_checkpoint", trainer.step, path)
    else:
        trainer.last_checkpoint_step = trainer.step
    acc.wait_for_everyone()


def load_checkpoint(trainer, path) -> None:
    """Resume: weights, optimizer, schedule, EMA and step from the checkpoint folder `path`."""
    ck = read_checkpoint(path)
    st = ck["state"]
    if st.get("global_batch") != trainer.global_batch:
        raise ConfigError(f"resume: {path} was trained with a global batch of {st.get('global_batch')}, this run "
                          f"has {trainer.global_batch} (batch_size x processes x grad_accum). Fix: resume with the "
                          f"same batch_size, grad_accum and number of processes.")
    acc = trainer.accelerator
    trainer.method.load_state_dict(acc.unwrap_model(trainer.unet), acc.unwrap_model(trainer.text_encoder),
                                   ck["trainable"])
    for p in trainer.trainable:
        p.data = p.data.float()
    trainer.optimizer.load_state_dict(ck["optimizer"])
    sched = trainer.lr_schedule.state_dict()
    sched.update(st["lr_schedule"])
    trainer.lr_schedule.load_state_dict(sched)
    if trainer.ema is not None and "ema" in ck:
        trainer.ema.load_state_dict(ck["ema"])
    trainer.step = int(st["step"])
    trainer.last_checkpoint_step = trainer.step
    trainer.message("info", f"resumed from {path} at step {trainer.step}")
