"""The one training loop. Every method, the CLI, the notebooks and the tests run this code.

    run = sdkit.train(sdkit.TrainConfig(model="mini", data="data_samples/glyph", steps=300))

Read it top to bottom: `Trainer.__init__` sets up (run directory, data, models, method, optimizer), `fit` is the
loop (batch -> loss -> backward -> optimizer step -> log; samples and checkpoints are callbacks). What varies lives
one import away: the method (sdkit.methods: what trains, what the loss adds), the model family (sdkit.families:
SD 1.x or SDXL text encoding and UNet conditioning), batches (batches.py), samples (sampling.py), EMA (ema.py),
validation (validation.py), checkpoints (checkpoint.py), failure advice (advice.py).

Determinism: every random choice for the sample with global index g (data order, crop/flip, VAE posterior noise,
timestep, noise, caption dropout) comes from a generator seeded by (seed, g) on a named stream (sdkit.rng). So a
resumed run continues exactly where it stopped, and 4 micro-batches of 1 see the same samples and noise as one
batch of 4.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from ..config import ConfigError, TrainConfig
from ..data.captions import CaptionPolicy
from ..data.scan import scan_folder
from ..data.split import train_val_split
from ..families import family_for_model
from ..methods.base import make_method
from ..models import load_pipeline, native_resolution, resolve_model
from ..rng import Stream, sample_seed
from ..run import Run, pipeline_from_checkpoint
from .accelerator import StopFlag, make_accelerator
from .advice import TrainingError, nan_diagnosis, oom_advice
from .batches import batches, micro_batch, posterior, training_dataset, write_bucket_table
from .callbacks import (CheckpointCallback, MetricsCallback, PrintCallback, ProgressCallback, SampleCallback,
                        TensorBoardCallback, ValidationCallback)
from .checkpoint import load_checkpoint, open_run_dir, save_checkpoint, starting, training, write_run_config
from .ema import make_ema
from .optim import make_lr_schedule, make_optimizer
from .preflight import gpu_warning
from .sampling import draw_samples, sample_prompts
from .validation import trainer_validation_loss

__all__ = ["train", "Trainer", "TrainingError", "pipeline_from_checkpoint"]


class Trainer:
    """Holds one run's models, data and state; `fit()` runs the loop. Callbacks receive this object."""

    def __init__(self, config: TrainConfig, callbacks=None, accelerator=None, stop_event=None, progress="bar"):
        self.config = config.validate()
        self.accelerator = accelerator or make_accelerator(config)
        self.stop = StopFlag()
        if stop_event is not None:
            self.stop.event = stop_event
        self.step = 0
        self.sampled_steps = set()
        self.last_checkpoint_step = None
        self.last_grid = None
        self.stopped_early = False
        observers = [MetricsCallback()]
        if config.tensorboard:
            observers.append(TensorBoardCallback())
        if progress == "bar":
            observers.append(ProgressCallback())
        elif progress == "print":
            observers.append(PrintCallback())
        # Observers first (they set up in on_train_start), then the ones that act: samples, checkpoints.
        self.callbacks = observers + list(callbacks or []) + [SampleCallback(), CheckpointCallback()]
        with starting(self):  # a failed setup releases the run directory's lock
            self._setup()

    # ---- events ------------------------------------------------------------------------------------------
    def emit(self, hook, *args):
        """Call `hook` on every callback: observers on the main process only; the callbacks that act
        (samples, checkpoints: `all_processes = True`) on every process, since those steps synchronize them."""
        main = self.accelerator.is_main_process
        # Teardown runs in reverse: final samples and checkpoint first, then the observers close their files.
        order = reversed(self.callbacks) if hook == "on_train_end" else self.callbacks
        for c in order:
            if main or getattr(c, "all_processes", False):
                getattr(c, hook)(self, *args)

    def message(self, level, text):
        self.emit("on_message", level, text)

    # ---- 1. setup ----------------------------------------------------------------------------------------
    def _setup(self):
        from diffusers import DDPMScheduler
        c, acc = self.config, self.accelerator

        # 1a. run directory: its lock, the checkpoint to resume from and what changed since (train/checkpoint.py)
        open_run_dir(self)
        # on a GPU: will it fit? (the estimate of `python -m sdkit preflight`, said before minutes of loading)
        if torch.cuda.is_available() and acc.is_main_process:
            warning = gpu_warning(c, torch.cuda.get_device_properties(acc.device).total_memory / 1e9)
            if warning:
                self.message("warning", warning)

        # 1b. data (scanned before the model loads so that a bad folder fails fast)
        self.scan = scan_folder(c.data, c.caption_ext, layout=c.data_layout)
        for p in self.scan.problems:
            if p.severity == "error":
                self.message("warning", p.message)
        skipped = sum(p.severity == "error" for p in self.scan.problems)
        if skipped:
            self.message("warning", f"{skipped} file(s) skipped, training on {len(self.scan.items)} images.")
        self.val_scan = None
        if c.validation_split:  # held-out images for a deterministic validation loss at each checkpoint
            if len(self.scan.items) < 2:
                raise ConfigError(f"validation_split: {c.data} has {len(self.scan.items)} usable image(s); a "
                                  f"validation split needs at least 2. Fix: validation_split=0, or add images.")
            self.scan, self.val_scan = train_val_split(self.scan, c.validation_split, c.seed)
            self.callbacks.insert(len(self.callbacks) - 2, ValidationCallback())

        # 1c. models; frozen parts in the compute dtype, trainable weights in fp32 (master copies)
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(c.mixed_precision, torch.float32)
        self.family = family_for_model(resolve_model(c.model), c.revision)  # SD 1.x or SDXL (sdkit.families)
        self.family.check_config(c)  # refuse what the family can't do before loading
        pipe = load_pipeline(c.model, revision=c.revision, torch_dtype=self.family.load_dtype(self.weight_dtype))
        self.base_pipe = pipe
        self.resolution = c.resolution or native_resolution(pipe)
        self.vae, self.text_encoder, self.tokenizer, self.unet = pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.unet
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.prediction_type = c.prediction_type or self.noise_scheduler.config.prediction_type
        self.vae.requires_grad_(False)
        self.vae.eval()
        self.method = make_method(c)
        self.method.prepare_pipeline(pipe)  # e.g. textual inversion adds its token to the tokenizer
        torch.manual_seed(c.seed)  # adapter initialization (LoRA A matrices) is part of the seeded run
        param_groups = self.method.setup(self.unet, self.text_encoder)
        if c.attention == "xformers":
            self.unet.enable_xformers_memory_efficient_attention()
        if c.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            if self.method.trains_text_encoder():
                self.text_encoder.gradient_checkpointing_enable()
        for model in (self.vae, self.unet, self.text_encoder):
            model.to(acc.device)
            if self.weight_dtype != torch.float32:
                model.to(dtype=self.weight_dtype)
        self.family.prepare_trainer(self)  # SDXL: text_encoder_2 frozen on the device; VAE fp32 if fp16 overflows
        for group in param_groups:
            for p in group["params"]:
                p.data = p.data.float()
        self.trainable = [p for g in param_groups for p in g["params"]]
        self.text_encoder.train(self.method.trains_text_encoder())
        self.unet.train()
        if c.channels_last:  # NHWC: tensor cores' preferred layout for convolutions
            self.unet.to(memory_format=torch.channels_last)
        if c.compile_unet:  # in place: parameter names (checkpoints) stay the same
            self.unet.compile()

        # 1d. optimizer and learning-rate schedule (stepped once per optimizer step, on every process)
        self.optimizer = make_optimizer(c, param_groups)
        self.lr_schedule = make_lr_schedule(c, self.optimizer)
        self.ema = make_ema(self.trainable, c.ema_decay) if c.ema else None

        # 1e. accelerate wraps what trains (DDP across processes, autocast for mixed precision); the dataset
        if self.method.trains_text_encoder():
            self.unet, self.text_encoder, self.optimizer = acc.prepare(self.unet, self.text_encoder, self.optimizer)
        else:
            self.unet, self.optimizer = acc.prepare(self.unet, self.optimizer)
        policy = None
        if c.trigger_token or c.shuffle_caption or c.tag_dropout:
            policy = CaptionPolicy(trigger=c.trigger_token, shuffle=c.shuffle_caption, keep_tokens=c.keep_tokens,
                                   tag_dropout=c.tag_dropout)
        self.dataset = training_dataset(self, policy)  # aspect-ratio buckets when c.bucketing (batches.py)
        if self.dataset.color_warning():
            self.message("warning", self.dataset.color_warning())
        self.latent_cache = {}  # dataset index -> (posterior mean, std), when cache_latents
        self.global_batch = c.batch_size * acc.num_processes * c.grad_accum

        # 1f. method hook (DreamBooth: generate/reuse class images with the base weights, before any resume)
        if hasattr(self.method, "prepare"):
            self.method.prepare(self)

        # 1g. resume
        if self.resume_from is not None:
            load_checkpoint(self, self.resume_from)

    # ---- 2. the loss of one micro-batch --------------------------------------------------------------------
    def encode_text(self, captions):
        """(UNet context (b, 77, d), pooled text (b, p) or None: SDXL's) of `captions`."""
        return self.family.encode_text(self, self.method.convert_captions(captions))

    def compute_loss(self, batch):
        c, device = self.config, self.accelerator.device
        # one generator per sample, seeded by its global index: the same draws in any batch layout
        gens = [torch.Generator("cpu").manual_seed(sample_seed(c.seed, g, Stream.NOISE)) for g in batch["g"]]
        b = len(gens)
        # 2a. latents: VAE posterior sample, scaled (no gradients through the VAE)
        with torch.no_grad():
            mean, std = posterior(self, batch)                                                  # (b, 4, h, w)
            eps = torch.stack([torch.randn(mean.shape[1:], generator=g) for g in gens]).to(device, mean.dtype)
            latents = ((mean + std * eps) * self.vae.config.scaling_factor).float()
        # 2b. timesteps, noise (with optional offset), caption dropout
        T = self.noise_scheduler.config.num_train_timesteps
        t = torch.tensor([int(torch.randint(0, T, (1,), generator=g)) for g in gens], device=device)      # (b,)
        noise = torch.stack([torch.randn(latents.shape[1:], generator=g) for g in gens]).to(device)
        if c.noise_offset:
            off = torch.stack([torch.randn(latents.shape[1], 1, 1, generator=g) for g in gens]).to(device)
            noise = noise + c.noise_offset * off
        captions = [("" if float(torch.rand(1, generator=g)) < c.caption_dropout else cap)
                    for g, cap in zip(gens, batch["captions"])]
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        # 2c. prediction and target
        with torch.enable_grad() if self.method.trains_text_encoder() else torch.no_grad():
            hidden, pooled = self.encode_text(captions)                                         # (b, 77, d)
        extra = self.family.unet_kwargs(self, batch, pooled)  # SDXL: pooled text + size/crop time ids
        torch.manual_seed(sample_seed(c.seed, batch["g"][0], Stream.DROPOUT))  # LoRA / model dropout masks
        pred = self.unet(noisy.to(self.weight_dtype) if self.weight_dtype != torch.float32 else noisy, t,
                         hidden, **extra).sample.float()
        if self.prediction_type == "epsilon":
            target = noise
        elif self.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, t)
        else:
            raise ConfigError(f"prediction_type: {self.prediction_type!r} is not supported; expected epsilon or "
                              f"v_prediction.")
        per_sample = F.mse_loss(pred, target.float(), reduction="none").mean(dim=(1, 2, 3))  # (b,)
        # 2d. min-SNR-gamma weighting (Hang et al. 2023)
        if c.snr_gamma:
            from diffusers.training_utils import compute_snr
            snr = compute_snr(self.noise_scheduler, t)
            w = torch.minimum(snr, torch.full_like(snr, c.snr_gamma))
            w = w / (snr + 1) if self.prediction_type == "v_prediction" else w / snr
            per_sample = per_sample * w
        return self.method.loss(per_sample, batch), b

    # ---- 3. the loop ---------------------------------------------------------------------------------------
    def fit(self) -> Run:
        with training(self):  # this run holds the run directory's lock until the end, whatever happens
            return self._fit()

    def _fit(self) -> Run:
        c, acc = self.config, self.accelerator
        if acc.is_main_process:
            write_run_config(self)
            write_bucket_table(self)  # RUN/buckets.json: size -> pictures
        acc.wait_for_everyone()
        self.stop.install()
        self.emit("on_train_start")  # step 0 samples (SampleCallback)
        start_time, smooth, last_log = time.time(), None, time.time()
        micro_batches = batches(self)
        try:
            while self.step < c.steps:
                if self._should_stop():
                    self.stopped_early = True
                    self.message("info", f"stopped at step {self.step}; checkpoint written.")
                    break
                # 3a. one optimizer step = grad_accum micro-batches: batch -> loss -> backward (-> clip -> step)
                loss_sum = torch.zeros((), device=acc.device)
                for micro in range(c.grad_accum):
                    batch = next(micro_batches)
                    with acc.accumulate(self.unet):
                        loss, _ = self.compute_loss(batch)
                        acc.backward(loss)
                        grad_norm = None
                        if acc.sync_gradients and c.max_grad_norm:
                            grad_norm = acc.clip_grad_norm_(self.trainable, c.max_grad_norm)
                        self.optimizer.step()
                        self.optimizer.zero_grad(set_to_none=True)
                    loss_sum += loss.detach()
                self.lr_schedule.step()
                if self.ema is not None:
                    self.ema.step(self.trainable)
                self.step += 1
                # 3b. log (loss averaged over micro-batches and processes); a NaN stops with a diagnosis
                logs = {"step": self.step}
                if self.step % c.log_every == 0 or self.step == c.steps:
                    loss_value = acc.gather(loss_sum[None] / c.grad_accum).mean().item()
                    if not math.isfinite(loss_value):
                        raise TrainingError(nan_diagnosis(self, loss_value))
                    smooth = loss_value if smooth is None else 0.9 * smooth + 0.1 * loss_value
                    now = time.time()
                    logs.update({"loss": loss_value, "loss_smooth": smooth, "lr": self.lr_schedule.get_last_lr()[0],
                                 "grad_norm": float(grad_norm) if grad_norm is not None else None,
                                 "epoch": self.step * self.global_batch / len(self.dataset),
                                 "images_per_s": c.log_every * self.global_batch / max(now - last_log, 1e-9),
                                 "time": now - start_time})
                    last_log = now
                    self.emit("on_log", logs)
                # 3c. samples and checkpoints when due (SampleCallback, CheckpointCallback, ...)
                self.emit("on_step_end", logs)
                if acc.num_processes > 1:
                    acc.wait_for_everyone()
        except torch.OutOfMemoryError as e:
            raise TrainingError(oom_advice(self, e)) from None
        except KeyboardInterrupt:
            self.stopped_early = True
            self.message("warning", f"interrupted at once at step {self.step}; the last checkpoint is "
                                    f"{self.last_checkpoint_step}.")
            raise
        finally:
            self.stop.restore()
        # 3d. the end: final samples and checkpoint (on_train_end), then the run directory, read back
        run = Run(self.run_dir, stopped_early=self.stopped_early)
        self.emit("on_train_end", run)
        acc.wait_for_everyone()
        return run

    def _should_stop(self) -> bool:
        return self.agree(self.stop.event.is_set())

    def agree(self, flag: bool) -> bool:
        """True on every process when `flag` is true on any (decisions that start collective work, such as a
        checkpoint after M minutes, must be the same everywhere)."""
        if self.accelerator.num_processes == 1:
            return bool(flag)
        t = torch.tensor([1.0 if flag else 0.0], device=self.accelerator.device)
        return bool(self.accelerator.reduce(t, "max").item())

    # ---- 4. what callbacks and methods ask of the trainer (each one import away) ---------------------------
    def _micro_batch(self, step: int, micro: int):
        return micro_batch(self, step, micro)

    def pipeline(self):
        """A sampling pipeline over the models being trained (shares their weights; SD 1.x or SDXL)."""
        return self.family.pipeline(self)

    def sample_prompts(self):
        return sample_prompts(self)

    def sample(self, step: int):
        """Draw the fixed prompts x seeds at `step` into samples/step_XXXXXX/ (main process; others wait)."""
        draw_samples(self, step)

    def save_checkpoint(self):
        save_checkpoint(self)

    def validation_loss(self, images=None, captions=None, x0_psnr: bool = False) -> dict:
        """The deterministic validation loss with the current (EMA) weights; see sdkit.train.validation."""
        return trainer_validation_loss(self, images, captions, x0_psnr)


def train(config: TrainConfig = None, callbacks=None, stop_event=None, progress="bar", **overrides) -> Run:
    """Train with `config` (or keyword fields); return the Run (path, metrics, samples, checkpoints)."""
    if config is None:
        config = TrainConfig(**overrides)
    elif overrides:
        config = config.replace(**overrides)
    trainer = Trainer(config, callbacks=callbacks, stop_event=stop_event, progress=progress)
    return trainer.fit()
