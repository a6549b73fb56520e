"""Observers of the training loop. Progress, metrics.jsonl, TensorBoard, samples, checkpoints and the notebook
dashboard are all callbacks: they receive the trainer and what just happened, and hold no training logic.

Hooks (all optional): on_train_start(trainer) · on_step_end(trainer, logs) · on_log(trainer, logs) ·
on_sample(trainer, step, images, paths) · on_checkpoint(trainer, step, path) · on_validation(trainer, step, result) ·
on_message(trainer, level, text) ·
on_train_end(trainer, run).
"""
from __future__ import annotations

import json
import time

__all__ = ["Callback", "write_metrics", "ProgressCallback", "MetricsCallback", "TensorBoardCallback", "SampleCallback",
           "CheckpointCallback", "PrintCallback", "ValidationCallback"]


class Callback:
    all_processes = False  # True: also called on non-main processes (for callbacks that start collective work)

    def on_train_start(self, trainer): ...
    def on_step_end(self, trainer, logs: dict): ...
    def on_log(self, trainer, logs: dict): ...
    def on_sample(self, trainer, step: int, images: list, paths: list): ...
    def on_checkpoint(self, trainer, step: int, path): ...
    def on_validation(self, trainer, step: int, result: dict): ...
    def on_message(self, trainer, level: str, text: str): ...
    def on_train_end(self, trainer, run): ...


class SampleCallback(Callback):
    """Asks the trainer for samples at step 0 (the baseline), every `sample_every` steps and at the end."""
    all_processes = True

    def on_train_start(self, trainer):
        if trainer.config.sample_at_start and trainer.step == 0:
            trainer.sample(0)

    def on_step_end(self, trainer, logs):
        every = trainer.config.sample_every
        if every and trainer.step % every == 0 and trainer.step != trainer.config.steps:
            trainer.sample(trainer.step)

    def on_train_end(self, trainer, run):
        if trainer.step > 0 and trainer.step not in trainer.sampled_steps:
            trainer.sample(trainer.step)


class CheckpointCallback(Callback):
    """Asks for a checkpoint every `checkpoint_every` steps from `checkpoint_start`, and at the end of training."""
    all_processes = True

    def on_train_start(self, trainer):
        self.last_time = time.time()

    def on_step_end(self, trainer, logs):
        c = trainer.config
        due = bool(c.checkpoint_every and trainer.step >= c.checkpoint_start and trainer.step % c.checkpoint_every == 0)
        if c.checkpoint_every_minutes and trainer.step != c.steps:  # EveryDream-style: also every M minutes
            due = trainer.agree(due or time.time() - self.last_time >= 60 * c.checkpoint_every_minutes)
        if due:
            trainer.save_checkpoint()
            self.last_time = time.time()

    def on_train_end(self, trainer, run):
        if trainer.step > 0 and trainer.last_checkpoint_step != trainer.step:
            trainer.save_checkpoint()


class ValidationCallback(Callback):
    """With validation_split: the deterministic validation loss of the held-out images at every checkpoint, written
    to metrics.jsonl as an event `validation` (and to TensorBoard as val/loss). Main process only."""

    def on_train_start(self, trainer):
        names = [str(p) for p, _ in trainer.val_scan.items]
        (trainer.run_dir / "validation_images.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
        trainer.message("info", f"validation split: {len(names)} held-out image(s) (listed in "
                                f"validation_images.txt), {len(trainer.scan.items)} for training.")

    def on_checkpoint(self, trainer, step, path):
        result = trainer.validation_loss()
        trainer.emit("on_validation", step, result)   # metrics.jsonl, TensorBoard, ... record it
        trainer.message("info", f"validation loss at step {step}: {result['val_loss']:.5f} "
                                f"({result['val_n']} held-out images)")


def write_metrics(trainer, obj: dict) -> None:
    """Append one JSON object to the run's metrics.jsonl (the metrics callback's events; search adds its scores)."""
    trainer.run_dir.mkdir(parents=True, exist_ok=True)
    with open(trainer.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(obj) + "\n")


class MetricsCallback(Callback):
    """Appends one JSON object per logged step (and per sample/checkpoint event) to metrics.jsonl."""

    def on_log(self, trainer, logs):
        write_metrics(trainer, logs)

    def on_checkpoint(self, trainer, step, path):
        write_metrics(trainer, {"step": step, "event": "checkpoint", "path": str(path), "time": time.time()})

    def on_sample(self, trainer, step, images, paths):
        write_metrics(trainer, {"step": step, "event": "samples", "paths": [str(p) for p in paths],
                              "time": time.time()})

    def on_validation(self, trainer, step, result):
        write_metrics(trainer, {"step": step, "event": "validation", "val_loss": result["val_loss"],
                              "val_loss_per_t": result["val_loss_per_t"], "val_n": result["val_n"],
                              "time": time.time()})

    def on_message(self, trainer, level, text):
        write_metrics(trainer, {"step": trainer.step, "event": "message", "level": level, "text": text,
                              "time": time.time()})


class TensorBoardCallback(Callback):
    """TensorBoard events in <run>/tb: loss, lr, and the sample grid."""

    def on_train_start(self, trainer):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(log_dir=str(trainer.run_dir / "tb"), purge_step=trainer.step or None)

    def on_log(self, trainer, logs):
        for key in ("loss", "loss_smooth", "lr", "grad_norm", "images_per_s"):
            if key in logs and logs[key] is not None:
                self.writer.add_scalar(f"train/{key}", logs[key], logs["step"])

    def on_validation(self, trainer, step, result):
        self.writer.add_scalar("val/loss", result["val_loss"], step)

    def on_sample(self, trainer, step, images, paths):
        import numpy as np
        grid = trainer.last_grid
        if grid is not None:
            self.writer.add_image("samples", np.asarray(grid), step, dataformats="HWC")

    def on_train_end(self, trainer, run):
        self.writer.close()


class ProgressCallback(Callback):
    """A tqdm progress bar with loss and learning rate (text; works in terminals, nbconvert and notebooks)."""

    def on_train_start(self, trainer):
        from tqdm.auto import tqdm
        self.bar = tqdm(total=trainer.config.steps, initial=trainer.step, desc="train", dynamic_ncols=True)

    def on_step_end(self, trainer, logs):
        self.bar.update(1)

    def on_log(self, trainer, logs):
        self.bar.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs['lr']:.2e}", refresh=False)

    def on_message(self, trainer, level, text):
        from tqdm.auto import tqdm
        tqdm.write(f"[{level}] {text}")  # also before the bar exists (a warning during setup)

    def on_train_end(self, trainer, run):
        self.bar.close()


class PrintCallback(Callback):
    """Plain lines instead of a bar (logs for scripts and CI)."""

    def on_log(self, trainer, logs):
        print(f"step {logs['step']:>6}  loss {logs['loss']:.4f}  lr {logs['lr']:.2e}", flush=True)

    def on_message(self, trainer, level, text):
        print(f"[{level}] {text}", flush=True)
