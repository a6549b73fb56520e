"""The trainer's side of the run directory: taking it (lock, leftovers, the checkpoint to resume from and what
changed), config.yaml at the start, a checkpoint when the callbacks ask, and resuming from one. The folder format
itself (atomic writes, safetensors + json, manifest, `latest`) is sdkit.checkpoint, whose functions are re-exported
here.

A checkpoint holds the trainable weights, the optimizer and EMA state, the learning-rate schedule and the step.
No RNG state: data order, augmentation and noise are re-derived from (seed, global sample index) (sdkit.rng), so
a resumed run draws exactly what an uninterrupted one would.
"""
from __future__ import annotations

import contextlib
import datetime
from pathlib import Path

from ..checkpoint import (RunDirError, clean_orphans, disk_error, find_checkpoint, find_intact_checkpoint, flatten_state,
                          list_checkpoints, read_checkpoint, step_name, unflatten_state, write_checkpoint)
from ..config import ConfigError
from ..version import __version__
from .lock import NoLock, RunLock
from .resume import OPTIMIZER_FIELDS, apply_optimizer_settings, record_changes, resume_changes

__all__ = ["open_run_dir", "starting", "training", "write_run_config", "save_checkpoint", "load_checkpoint",
           "step_name", "write_checkpoint", "read_checkpoint", "find_checkpoint", "list_checkpoints", "flatten_state",
           "unflatten_state"]

LR_SCHEDULE_KEYS = ("last_epoch", "_step_count", "base_lrs", "_last_lr")  # what a resume needs of the schedule


def open_run_dir(trainer) -> None:
    """Setup 1a: the run directory (default runs/<method>-<time>) and its lock (main process; refused at once when
    another run holds it), leftovers of an interrupted checkpoint write cleaned, the checkpoint to resume from (the
    newest intact one) and the settings that changed since (refused, or applied and recorded)."""
    c, acc = trainer.config, trainer.accelerator
    if c.out is None:
        c.out = f"runs/{c.method}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    trainer.run_dir = Path(c.out)
    error = None
    if acc.is_main_process:
        try:
            trainer.run_lock = RunLock.acquire(trainer.run_dir)
        except RunDirError as e:
            error = e
    if trainer.agree(error is not None):
        raise error or RunDirError(f"out: the main process could not take {trainer.run_dir} (its message says why).")
    if acc.is_main_process:
        for line in clean_orphans(trainer.run_dir / "checkpoints"):
            trainer.message("info", f"checkpoints: {line}")
    acc.wait_for_everyone()
    trainer.resume_from, trainer.resume_changes = None, []
    if c.resume:
        trainer.resume_from, damaged = find_intact_checkpoint(trainer.run_dir, c.resume)
        for path, why in damaged:
            trainer.message("warning", f"checkpoint {path} is damaged ({why}); resuming from "
                                       f"{trainer.resume_from.name}, the newest intact checkpoint.")
        trainer.resume_changes = resume_changes(c, trainer.resume_from, trainer.run_dir)
    elif (trainer.run_dir / "checkpoints").is_dir() and any((trainer.run_dir / "checkpoints").glob("step_*")):
        raise ConfigError(f"out: {trainer.run_dir} already holds checkpoints of another run. Fix: --resume latest "
                          f"to continue it, or choose a new --out.")


@contextlib.contextmanager
def starting(trainer):
    """Around the setup: on an error, the lock is released (and a folder this run created and left empty is
    removed), so a run that failed to start leaves the directory as it found it."""
    trainer.run_lock = NoLock()
    try:
        yield
    except BaseException:
        trainer.run_lock.release()
        raise
    trainer.run_lock.busy = False


@contextlib.contextmanager
def training(trainer):
    """Around `fit`: the lock is held (taken back if another run of this process took it over meanwhile) and
    released at the end, whatever happens."""
    trainer.run_lock = trainer.run_lock.held()
    trainer.run_lock.busy = True
    try:
        yield
    finally:
        trainer.run_lock.release()


def write_run_config(trainer) -> None:
    """The run directory's folders and config.yaml (the resolved config, plus what the machine decided); a
    resumed run's changed settings appended to resume.jsonl."""
    try:
        for sub in ("samples", "checkpoints", "export"):
            (trainer.run_dir / sub).mkdir(exist_ok=True)
        record_changes(trainer.run_dir, trainer.step, trainer.resume_from, trainer.resume_changes)
        trainer.config.to_yaml(trainer.run_dir / "config.yaml", extra={
            "num_processes": trainer.accelerator.num_processes, "global_batch_size": trainer.global_batch,
            "sdkit_version": __version__})
    except OSError as e:
        raise disk_error(trainer.run_dir, e) from None
    for field, old, new in trainer.resume_changes:
        trainer.message("info", f"resume: {field} {old!r} -> {new!r} from step {trainer.step} (recorded in "
                                f"resume.jsonl)")


def save_checkpoint(trainer) -> None:
    """checkpoints/step_XXXXXX of the current step (main process; every process waits), then `on_checkpoint`."""
    acc, c = trainer.accelerator, trainer.config
    acc.wait_for_everyone()
    if acc.is_main_process:
        trainer.run_lock.check()  # the run directory is still ours (not vanished with a lost Drive mount)
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
    if st.get("method", trainer.config.method) != trainer.config.method:
        raise ConfigError(f"resume: {path} holds a {st['method']} run's weights, this run's method is "
                          f"{trainer.config.method}. Fix: resume with method={st['method']}, or start a new run.")
    if st.get("global_batch") != trainer.global_batch:
        raise ConfigError(f"resume: {path} was trained with a global batch of {st.get('global_batch')}, this run "
                          f"has {trainer.global_batch} (batch_size x processes x grad_accum). Fix: resume with the "
                          f"same batch_size, grad_accum and number of processes.")
    acc = trainer.accelerator
    trainer.method.load_state_dict(acc.unwrap_model(trainer.unet), acc.unwrap_model(trainer.text_encoder),
                                   ck["trainable"])
    for p in trainer.trainable:
        p.data = p.data.float()
    fresh = [{k: v for k, v in g.items() if k != "params"} for g in trainer.optimizer.param_groups]
    trainer.optimizer.load_state_dict(ck["optimizer"])
    sched = trainer.lr_schedule.state_dict()
    sched.update(st["lr_schedule"])
    trainer.lr_schedule.load_state_dict(sched)
    if any(field in OPTIMIZER_FIELDS for field, _, _ in trainer.resume_changes):
        apply_optimizer_settings(trainer.optimizer, trainer.lr_schedule, fresh)  # this run's lr, not the checkpoint's
    if trainer.ema is not None and "ema" in ck:
        trainer.ema.load_state_dict(ck["ema"])
    trainer.step = int(st["step"])
    trainer.last_checkpoint_step = trainer.step
    trainer.message("info", f"resumed from {path} at step {trainer.step}")
