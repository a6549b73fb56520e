"""The one training loop. Every method, the CLI, the notebooks and the tests run this code.

    run = sdkit.train(sdkit.TrainConfig(model="mini", data="data_samples/glyph", steps=300))

Determinism: every random choice for the sample with global index g (data order, crop/flip, VAE posterior noise,
timestep, noise, caption dropout) comes from a generator seeded by (seed, g). So a resumed run continues exactly
where it stopped, and 4 micro-batches of 1 see the same samples and noise as one batch of 4.
"""
from __future__ import annotations

import contextlib
import datetime
import math
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config import ConfigError, TrainConfig
from ..run import Run
from .. import sdxl  # SDXL (issue #11)
from . import callbacks as cb
from .checkpoint import find_checkpoint, read_checkpoint, step_name, write_checkpoint
from .methods import make_method

__all__ = ["train", "Trainer", "TrainingError", "pipeline_from_checkpoint"]


class TrainingError(RuntimeError):
    """Training stopped on a problem (NaN loss, out of memory); the message says what to change."""


def _sample_seed(seed: int, g: int) -> int:
    return int(np.random.SeedSequence([seed, g]).generate_state(1)[0])


def make_accelerator(config: TrainConfig):
    """An Accelerator for this machine: CUDA when present, else the CPU (gloo when several processes run)."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration
    cpu = not torch.cuda.is_available()
    if config.mixed_precision == "fp16" and cpu:
        raise ConfigError("mixed_precision: fp16 needs a CUDA GPU (CPUs have no fast fp16 training). "
                          "Fix: mixed_precision='bf16' on a CPU, or 'no'.")
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # One process (a notebook, a script, a test): accelerate keeps its state in a singleton, so a second run
        # with another mixed_precision would be refused. Start each run from a clean state.
        from accelerate.state import AcceleratorState, GradientState
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    return Accelerator(mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.grad_accum,
                       cpu=cpu, project_config=ProjectConfiguration(project_dir=config.out or "."))


class _StopFlag:
    """Set by Ctrl-C / the notebook's interrupt (first press), the dashboard's Stop button, or code."""

    def __init__(self):
        self.event = threading.Event()
        self.presses = 0
        self._old = None

    def install(self):
        if threading.current_thread() is not threading.main_thread():
            return
        self._old = signal.getsignal(signal.SIGINT)

        def handler(signum, frame):
            self.presses += 1
            if self.presses >= 2:  # second press: stop at once
                raise KeyboardInterrupt
            self.event.set()
            print("\n[sdkit] stopping after this step and saving a checkpoint (press again to stop at once)",
                  flush=True)

        signal.signal(signal.SIGINT, handler)

    def restore(self):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None


class Trainer:
    """Holds one run's models, data and state; `fit()` runs the loop. Callbacks receive this object."""

    def __init__(self, config: TrainConfig, callbacks=None, accelerator=None, stop_event=None, progress="bar"):
        self.config = config.validate()
        self.accelerator = accelerator or make_accelerator(config)
        self.stop = _StopFlag()
        if stop_event is not None:
            self.stop.event = stop_event
        self.step = 0
        self.sampled_steps = set()
        self.last_checkpoint_step = None
        self.last_grid = None
        self.stopped_early = False
        observers = [cb.MetricsCallback()]
        if config.tensorboard:
            observers.append(cb.TensorBoardCallback())
        if progress == "bar":
            observers.append(cb.ProgressCallback())
        elif progress == "print":
            observers.append(cb.PrintCallback())
        # Observers first (they set up in on_train_start), then the ones that act: samples, checkpoints.
        self.callbacks = observers + list(callbacks or []) + [cb.SampleCallback(), cb.CheckpointCallback()]
        self._setup()

    # ---- events ------------------------------------------------------------------------------------------
    def emit(self, hook, *args):
        """Call `hook` on every callback: observers on the main process only; the callbacks that act
        (samples, checkpoints: `all_processes = True`) on every process, since those steps synchronise them."""
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
        from ..data import ImageCaptionDataset, scan_folder
        from ..models import load_pipeline, native_resolution, resolve_model
        c, acc = self.config, self.accelerator

        # 1a. run directory (resolved on the main process, shared by all)
        if c.out is None:
            c.out = f"runs/{c.method}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"
        self.run_dir = Path(c.out)
        self.resume_from = None
        if c.resume:
            self.resume_from = find_checkpoint(self.run_dir, c.resume)
        elif (self.run_dir / "checkpoints").is_dir() and any((self.run_dir / "checkpoints").glob("step_*")):
            raise ConfigError(f"out: {self.run_dir} already holds checkpoints of another run. Fix: --resume latest "
                              f"to continue it, or choose a new --out.")

        # 1a'. on a GPU: will it fit? (the estimate of `python -m sdkit preflight`, said before minutes of loading)
        if torch.cuda.is_available() and acc.is_main_process:
            from ..preflight import gpu_warning
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
            from ..data import train_val_split
            if len(self.scan.items) < 2:
                raise ConfigError(f"validation_split: {c.data} has {len(self.scan.items)} usable image(s); a "
                                  f"validation split needs at least 2. Fix: validation_split=0, or add images.")
            self.scan, self.val_scan = train_val_split(self.scan, c.validation_split, c.seed)
            self.callbacks.insert(len(self.callbacks) - 2, cb.ValidationCallback())

        # 1c. models; frozen parts in the compute dtype, trainable weights in fp32 (master copies)
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(c.mixed_precision, torch.float32)
        xl = sdxl.is_sdxl_model(resolve_model(c.model), c.revision)
        if xl:  # SDXL: refuse what it can't do before loading; load in the compute dtype (fp32 SDXL = 14 GB of RAM)
            sdxl.check_config(c)
        pipe = load_pipeline(c.model, revision=c.revision,
                             torch_dtype=self.weight_dtype if xl and self.weight_dtype != torch.float32 else None)
        self.base_pipe = pipe
        self.sdxl = sdxl.is_sdxl(pipe)  # SDXL: two text encoders + size/crop conditioning (sdkit.sdxl)
        self.resolution = c.resolution or native_resolution(pipe)
        self.vae, self.text_encoder, self.tokenizer, self.unet = pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.unet
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.prediction_type = c.prediction_type or self.noise_scheduler.config.prediction_type
        self.vae.requires_grad_(False)
        self.vae.eval()
        self.method = make_method(c)
        self.method.prepare_pipeline(pipe)  # e.g. textual inversion adds its token to the tokenizer
        torch.manual_seed(c.seed)  # adapter initialisation (LoRA A matrices) is part of the seeded run
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
        if self.sdxl:  # SDXL: text_encoder_2 frozen on the device; VAE kept fp32 if it overflows in fp16
            sdxl.prepare_trainer(self)
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

        # 1d. optimiser and learning-rate schedule (stepped once per optimiser step, on every process)
        from diffusers.optimization import get_scheduler
        extra = {}
        if c.optimizer == "adamw8bit":
            import bitsandbytes as bnb
            opt_cls = bnb.optim.AdamW8bit
        else:
            opt_cls = torch.optim.AdamW
            if c.optimizer == "adamw_fused":
                extra["fused"] = True
        self.optimizer = opt_cls(param_groups, lr=c.lr, betas=(c.adam_beta1, c.adam_beta2),
                                 weight_decay=c.weight_decay, eps=c.adam_epsilon, **extra)
        self.lr_schedule = get_scheduler(c.lr_scheduler, self.optimizer, num_warmup_steps=c.lr_warmup_steps,
                                         num_training_steps=c.steps)
        self.ema = None
        if c.ema:
            from diffusers.training_utils import EMAModel
            self.ema = EMAModel(self.trainable, decay=c.ema_decay)

        # 1e. accelerate wraps what trains (DDP across processes, autocast for mixed precision)
        if self.method.trains_text_encoder():
            self.unet, self.text_encoder, self.optimizer = acc.prepare(self.unet, self.text_encoder, self.optimizer)
        else:
            self.unet, self.optimizer = acc.prepare(self.unet, self.optimizer)
        from ..captions import CaptionPolicy
        policy = None
        if c.trigger_token or c.shuffle_caption or c.tag_dropout:
            policy = CaptionPolicy(trigger=c.trigger_token, shuffle=c.shuffle_caption, keep_tokens=c.keep_tokens,
                                   tag_dropout=c.tag_dropout)
        self.dataset = ImageCaptionDataset(self.scan, self.resolution, c.center_crop, c.random_flip,
                                           color_jitter=c.color_jitter, caption_transform=policy)
        if self.dataset.colour_warning():
            self.message("warning", self.dataset.colour_warning())
        self.latent_cache = {}  # dataset index -> (posterior mean, std), when cache_latents
        self.global_batch = c.batch_size * acc.num_processes * c.grad_accum

        # 1e'. method hook (DreamBooth: generate/reuse class images with the base weights, before any resume)
        if hasattr(self.method, "prepare"):
            self.method.prepare(self)

        # 1f. resume
        if self.resume_from is not None:
            self._load_checkpoint(self.resume_from)

    # ---- 2. data: global sample index -> dataset index, deterministic ------------------------------------
    def _micro_batch(self, step: int, micro: int):
        """The samples of this process for micro-batch `micro` of optimiser step `step` (0-based); a method may add
        samples of its own (DreamBooth: one class image per instance sample)."""
        batch = self._instance_batch(step, micro)
        return self.method.extend_batch(self, batch) if hasattr(self.method, "extend_batch") else batch

    def _plan(self) -> "_BatchPlan":
        acc = self.accelerator
        return _BatchPlan(self.dataset, self.config.seed, self.config.batch_size, self.global_batch,
                          acc.num_processes, acc.process_index, self.config.grad_accum)

    def _instance_batch(self, step: int, micro: int):
        plan = self._plan()
        gs, indices = plan.samples(step, micro)
        if self.config.cache_latents and all(i in self.latent_cache for i in indices):
            # cached: no image decoding at all; captions come from the scan
            return {"pixels": None, "g": gs, "index": indices,
                    "captions": [self.dataset.caption(i, _sample_seed(self.config.seed, g))
                                 for i, g in zip(indices, gs)]}
        return plan.load(gs, indices)

    def _batches(self):
        """Every micro-batch from the current step on, in order. With num_workers > 0 (and no latent cache, which
        lives in this process) worker processes decode and augment the next batches while this one trains; each
        sample is seeded by its global index, so the batches are the same as without workers."""
        c = self.config
        start = self.step
        if c.num_workers and not c.cache_latents:
            from torch.utils.data import DataLoader
            import multiprocessing as mp
            plan = self._plan()
            plan.start, plan.length = start, (c.steps - start) * c.grad_accum
            ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
            loader = DataLoader(plan, batch_size=None, shuffle=False, num_workers=c.num_workers,
                                pin_memory=torch.cuda.is_available(), multiprocessing_context=ctx)
            for batch in loader:
                yield self.method.extend_batch(self, batch) if hasattr(self.method, "extend_batch") else batch
        else:
            for step in range(start, c.steps):
                for micro in range(c.grad_accum):
                    yield self._micro_batch(step, micro)

    @torch.no_grad()
    def _posterior(self, batch):
        """VAE posterior (mean, std) of the batch's images; with cache_latents each image is encoded once."""
        c, device = self.config, self.accelerator.device
        if not c.cache_latents:
            dist = self.vae.encode(batch["pixels"].to(device, dtype=self.vae.dtype)).latent_dist  # SDXL: may be fp32
            return dist.mean, dist.std
        missing = [k for k, i in enumerate(batch["index"]) if i not in self.latent_cache]
        if missing:
            pixels = batch["pixels"][missing].to(device, dtype=self.vae.dtype)
            dist = self.vae.encode(pixels).latent_dist
            for k, m, sd in zip(missing, dist.mean, dist.std):
                self.latent_cache[batch["index"][k]] = (m.clone(), sd.clone())
        mean = torch.stack([self.latent_cache[i][0] for i in batch["index"]])
        std = torch.stack([self.latent_cache[i][1] for i in batch["index"]])
        return mean, std

    # ---- 3. the loss ---------------------------------------------------------------------------------------
    def encode_text(self, captions):
        captions = self.method.convert_captions(captions)
        if self.sdxl:  # SDXL: (both encoders' penultimate states concatenated, pooled text_embeds)
            return sdxl.encode_prompt(captions, (self.tokenizer, self.tokenizer_2),
                                      (self.text_encoder, self.text_encoder_2), self.accelerator.device)
        ids = self.tokenizer(captions, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(self.accelerator.device)
        return self.text_encoder(ids)[0]

    def compute_loss(self, batch):
        c, device = self.config, self.accelerator.device
        gens = [torch.Generator("cpu").manual_seed(_sample_seed(c.seed, g) + 1) for g in batch["g"]]
        b = len(gens)
        # 3a. latents: VAE posterior sample, scaled (no gradients through the VAE)
        with torch.no_grad():
            mean, std = self._posterior(batch)
            eps = torch.stack([torch.randn(mean.shape[1:], generator=g) for g in gens]).to(device, mean.dtype)
            latents = ((mean + std * eps) * self.vae.config.scaling_factor).float()
        # 3b. timesteps, noise (with optional offset), caption dropout — one generator per sample
        T = self.noise_scheduler.config.num_train_timesteps
        t = torch.tensor([int(torch.randint(0, T, (1,), generator=g)) for g in gens], device=device)
        noise = torch.stack([torch.randn(latents.shape[1:], generator=g) for g in gens]).to(device)
        if c.noise_offset:
            off = torch.stack([torch.randn(latents.shape[1], 1, 1, generator=g) for g in gens]).to(device)
            noise = noise + c.noise_offset * off
        captions = [("" if float(torch.rand(1, generator=g)) < c.caption_dropout else cap)
                    for g, cap in zip(gens, batch["captions"])]
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        # 3c. prediction and target
        ctx = torch.enable_grad() if self.method.trains_text_encoder() else torch.no_grad()
        with ctx:
            hidden = self.encode_text(captions)
        extra = {}
        if self.sdxl:  # SDXL: pooled text embeds + (original size, crop, target size) time ids per sample
            hidden, pooled = hidden
            extra["added_cond_kwargs"] = sdxl.unet_conditioning(self, batch, pooled, self.weight_dtype)
        torch.manual_seed(_sample_seed(c.seed, batch["g"][0]) + 2)  # LoRA / model dropout masks, reproducible
        pred = self.unet(noisy.to(self.weight_dtype) if self.weight_dtype != torch.float32 else noisy, t,
                         hidden, **extra).sample.float()
        if self.prediction_type == "epsilon":
            target = noise
        elif self.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, t)
        else:
            raise ConfigError(f"prediction_type: {self.prediction_type!r} is not supported; expected epsilon or "
                              f"v_prediction.")
        per_sample = F.mse_loss(pred, target.float(), reduction="none").mean(dim=(1, 2, 3))  # (batch,)
        # 3d. min-SNR-gamma weighting (Hang et al. 2023)
        if c.snr_gamma:
            from diffusers.training_utils import compute_snr
            snr = compute_snr(self.noise_scheduler, t)
            w = torch.minimum(snr, torch.full_like(snr, c.snr_gamma))
            w = w / (snr + 1) if self.prediction_type == "v_prediction" else w / snr
            per_sample = per_sample * w
        return self.method.loss(per_sample, batch), b

    # ---- 4. the loop ---------------------------------------------------------------------------------------
    def fit(self) -> Run:
        c, acc = self.config, self.accelerator
        if acc.is_main_process:
            self._write_config()
        acc.wait_for_everyone()
        self.stop.install()
        self.emit("on_train_start")
        start_time, smooth, last_log = time.time(), None, time.time()
        batches = self._batches()
        try:
            while self.step < c.steps:
                if self._should_stop():
                    self.stopped_early = True
                    self.message("info", f"stopped at step {self.step}; checkpoint written.")
                    break
                loss_sum = torch.zeros((), device=acc.device)
                for micro in range(c.grad_accum):
                    batch = next(batches)
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
                logs = {"step": self.step}
                if self.step % c.log_every == 0 or self.step == c.steps:
                    loss_value = acc.gather(loss_sum[None] / c.grad_accum).mean().item()
                    if not math.isfinite(loss_value):
                        raise TrainingError(self._nan_diagnosis(loss_value))
                    smooth = loss_value if smooth is None else 0.9 * smooth + 0.1 * loss_value
                    now = time.time()
                    logs.update({"loss": loss_value, "loss_smooth": smooth, "lr": self.lr_schedule.get_last_lr()[0],
                                 "grad_norm": float(grad_norm) if grad_norm is not None else None,
                                 "epoch": self.step * self.global_batch / len(self.dataset),
                                 "images_per_s": c.log_every * self.global_batch / max(now - last_log, 1e-9),
                                 "time": now - start_time})
                    last_log = now
                    self.emit("on_log", logs)
                self.emit("on_step_end", logs)
                if acc.num_processes > 1:
                    acc.wait_for_everyone()
        except torch.OutOfMemoryError as e:
            raise TrainingError(self._oom_advice(e)) from None
        except KeyboardInterrupt:
            self.stopped_early = True
            self.message("warning", f"interrupted at once at step {self.step}; the last checkpoint is "
                                    f"{self.last_checkpoint_step}.")
            raise
        finally:
            self.stop.restore()
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

    @torch.no_grad()
    def validation_loss(self, images=None, captions=None, x0_psnr: bool = False) -> dict:
        """The deterministic validation loss (fixed timesteps and noise) with the current weights (the EMA weights
        when the run keeps them) on `images` (default: the validation_split's held-out images). Captions get what
        training captions get: the instance prompt, the trigger word, the method's tokens. Training's random
        state is left as it was."""
        from PIL import Image
        from ..captions import insert_trigger
        from ..evaluate.metrics import validation_loss
        c, acc = self.config, self.accelerator
        if images is None:
            images = [Image.open(p).convert("RGB") for p, _ in self.val_scan.items]
            captions = [cap for _, cap in self.val_scan.items]
        if c.instance_prompt:
            captions = [c.instance_prompt] * len(images)
        elif c.trigger_token:
            captions = [insert_trigger(cap, c.trigger_token) for cap in captions]
        captions = self.method.convert_captions(captions)
        unet, te = acc.unwrap_model(self.unet), acc.unwrap_model(self.text_encoder)
        was = unet.training, te.training
        unet.eval(), te.eval()
        rng = torch.get_rng_state()
        ctx = self.ema_weights() if self.ema is not None else contextlib.nullcontext()
        try:
            with ctx, acc.autocast():
                return validation_loss(self.pipeline(), images, captions, prediction_type=self.prediction_type,
                                       resolution=self.resolution, x0_psnr=x0_psnr)
        finally:
            torch.set_rng_state(rng)
            unet.train(was[0]), te.train(was[1])

    def _nan_diagnosis(self, value) -> str:
        c = self.config
        hints = []
        if c.mixed_precision == "fp16":
            hints.append("fp16 overflowed: use mixed_precision='bf16' on GPUs that have it (not a T4), or 'no'; "
                         "the SD VAE in fp16 is a known source of NaN")
        hints.append(f"lr={c.lr:g} may be too high: try {c.lr / 10:g}")
        if not c.max_grad_norm:
            hints.append("turn gradient clipping on (max_grad_norm=1.0)")
        last = f"the last good checkpoint is {step_name(self.last_checkpoint_step)}" if self.last_checkpoint_step \
            else "no checkpoint was written before it"
        return (f"loss became {value} at step {self.step}; training stopped ({last}). Likely causes: "
                + "; ".join(hints) + ".")

    def _oom_advice(self, e) -> str:
        c = self.config
        tips = []
        if c.batch_size > 1:
            tips.append(f"batch_size={max(1, c.batch_size // 2)} with grad_accum={c.grad_accum * 2} (same global "
                        f"batch)")
        if not c.gradient_checkpointing:
            tips.append("gradient_checkpointing=True (about 30-40% less activation memory)")
        if c.optimizer == "adamw":
            tips.append("optimizer='adamw8bit' (bitsandbytes)")
        if c.mixed_precision == "no":
            tips.append("mixed_precision='fp16' (T4) or 'bf16' (A100/H100)")
        if c.attention == "sdpa":
            tips.append("attention='xformers' if SDPA's memory-efficient kernel is not used on this GPU")
        if self.resolution > 512:
            tips.append("resolution=512")
        if c.method == "full":
            tips.append("method='lora' (a fraction of the memory)")
        elif c.method == "dreambooth":
            tips.append("method='lora' with prior_preservation=True (LoRA DreamBooth: same recipe, a fraction of "
                        "the memory)")
        return f"CUDA out of memory at step {self.step} ({str(e).splitlines()[0]}). Try: " + "; ".join(tips) + "."

    # ---- 5. samples, checkpoints, config ------------------------------------------------------------------
    def _write_config(self):
        from .. import __version__
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for sub in ("samples", "checkpoints", "export"):
            (self.run_dir / sub).mkdir(exist_ok=True)
        self.config.to_yaml(self.run_dir / "config.yaml", extra={
            "num_processes": self.accelerator.num_processes, "global_batch_size": self.global_batch,
            "sdkit_version": __version__})

    def sample_prompts(self):
        prompts = self.config.sample_prompts
        if not prompts:  # the first two training captions, with the trigger word as training puts it in
            prompts = list(dict.fromkeys(self.scan.captions))[:2]
            if self.config.trigger_token:
                from ..captions import insert_trigger
                prompts = [insert_trigger(p, self.config.trigger_token, "start") for p in prompts]
        return [self.method.sample_prompt(p) for p in prompts]  # textual inversion: its token goes in

    def pipeline(self):
        """A StableDiffusionPipeline over the models being trained (for samples; shares their weights)."""
        if self.sdxl:  # SDXL: a StableDiffusionXLPipeline over the same models
            return sdxl.sample_pipeline(self)
        from diffusers import StableDiffusionPipeline
        acc = self.accelerator
        pipe = StableDiffusionPipeline(
            vae=self.vae, text_encoder=acc.unwrap_model(self.text_encoder), tokenizer=self.tokenizer,
            unet=acc.unwrap_model(self.unet), scheduler=self.base_pipe.scheduler, safety_checker=None,
            feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def sample(self, step: int):
        """Draw the fixed prompts x seeds at `step` into samples/step_XXXXXX/ (main process; others wait)."""
        from ..sample import generate, make_grid
        acc, c = self.accelerator, self.config
        self.sampled_steps.add(step)
        if acc.is_main_process:
            out = self.run_dir / "samples" / step_name(step)
            out.mkdir(parents=True, exist_ok=True)
            ctx = self.ema_weights() if self.ema is not None else contextlib.nullcontext()
            unet, te = acc.unwrap_model(self.unet), acc.unwrap_model(self.text_encoder)
            was = unet.training, te.training
            unet.eval(), te.eval()
            rng_state = torch.get_rng_state()
            with ctx, torch.no_grad(), acc.autocast():
                prompts = self.sample_prompts()
                images = generate(self.pipeline(), prompts, c.sample_seeds, steps=c.sample_steps,
                                  guidance_scale=c.guidance_scale, negative_prompt=c.negative_prompt,
                                  height=self.resolution, width=self.resolution)
            torch.set_rng_state(rng_state)
            unet.train(was[0]), te.train(was[1])
            paths = []
            for i, im in enumerate(images):
                p, s = divmod(i, len(c.sample_seeds))
                path = out / f"p{p:02d}_s{c.sample_seeds[s]}.png"
                im.save(path)
                paths.append(path)
            self.last_grid = make_grid(images, cols=len(c.sample_seeds))
            self.last_grid.save(out / "grid.png")
            (out / "prompts.txt").write_text("\n".join(prompts) + "\n", encoding="utf-8")
            self.emit("on_sample", step, images, paths)
        acc.wait_for_everyone()

    @contextlib.contextmanager
    def ema_weights(self):
        self.ema.store(self.trainable)
        self.ema.copy_to(self.trainable)
        try:
            yield
        finally:
            self.ema.restore(self.trainable)

    def save_checkpoint(self):
        acc, c = self.accelerator, self.config
        acc.wait_for_everyone()
        if acc.is_main_process:
            unet, te = acc.unwrap_model(self.unet), acc.unwrap_model(self.text_encoder)
            trainable = self.method.state_dict(unet, te)
            state = {"lr_schedule": {k: v for k, v in self.lr_schedule.state_dict().items()
                                     if k in ("last_epoch", "_step_count", "base_lrs", "_last_lr")},
                     "global_batch": self.global_batch, "method": c.method,
                     "resolution": self.resolution, "model": c.model}
            path = write_checkpoint(self.run_dir / "checkpoints", self.step, trainable,
                                    self.optimizer.state_dict(), state,
                                    ema_state=self.ema.state_dict() if self.ema is not None else None,
                                    keep_last=c.keep_last)
            self.last_checkpoint_step = self.step
            self.emit("on_checkpoint", self.step, path)
        else:
            self.last_checkpoint_step = self.step
        acc.wait_for_everyone()

    def _load_checkpoint(self, path):
        ck = read_checkpoint(path)
        st = ck["state"]
        if st.get("global_batch") != self.global_batch:
            raise ConfigError(f"resume: {path} was trained with a global batch of {st.get('global_batch')}, this run "
                              f"has {self.global_batch} (batch_size x processes x grad_accum). Fix: resume with the "
                              f"same batch_size, grad_accum and number of processes.")
        acc = self.accelerator
        self.method.load_state_dict(acc.unwrap_model(self.unet), acc.unwrap_model(self.text_encoder), ck["trainable"])
        for p in self.trainable:
            p.data = p.data.float()
        self.optimizer.load_state_dict(ck["optimizer"])
        sched = self.lr_schedule.state_dict()
        sched.update(st["lr_schedule"])
        self.lr_schedule.load_state_dict(sched)
        if self.ema is not None and "ema" in ck:
            self.ema.load_state_dict(ck["ema"])
        self.step = int(st["step"])
        self.last_checkpoint_step = self.step
        self.message("info", f"resumed from {path} at step {self.step}")


class _BatchPlan(torch.utils.data.Dataset):
    """Which samples each micro-batch holds, and loading them: item k = micro-batch k counted from `start`.
    Picklable (dataset + numbers), so DataLoader workers can build batches."""

    def __init__(self, dataset, seed, batch_size, global_batch, num_processes, process_index, grad_accum):
        self.dataset, self.seed, self.batch_size, self.global_batch = dataset, seed, batch_size, global_batch
        self.num_processes, self.process_index, self.grad_accum = num_processes, process_index, grad_accum
        self.start, self.length = 0, 0

    def dataset_index(self, g: int) -> int:
        n = len(self.dataset)
        epoch, pos = divmod(g, n)
        perm = np.random.default_rng([self.seed, 7, epoch]).permutation(n)
        return int(perm[pos])

    def samples(self, step: int, micro: int):
        """(global sample indices, dataset indices) of this process's share of micro-batch `micro` of `step`."""
        base = (step * self.global_batch + micro * self.batch_size * self.num_processes
                + self.process_index * self.batch_size)
        gs = list(range(base, base + self.batch_size))
        return gs, [self.dataset_index(g) for g in gs]

    def load(self, gs, indices) -> dict:
        items = [self.dataset[(i, _sample_seed(self.seed, g))] for i, g in zip(indices, gs)]
        return {"pixels": torch.stack([it["pixels"] for it in items]),
                "captions": [it["caption"] for it in items], "g": gs, "index": indices}

    def __len__(self):
        return self.length

    def __getitem__(self, k):
        step, micro = divmod(k, self.grad_accum)
        return self.load(*self.samples(self.start + step, micro))


def train(config: TrainConfig = None, callbacks=None, stop_event=None, progress="bar", **overrides) -> Run:
    """Train with `config` (or keyword fields); return the Run (path, metrics, samples, checkpoints)."""
    if config is None:
        config = TrainConfig(**overrides)
    elif overrides:
        config = config.replace(**overrides)
    trainer = Trainer(config, callbacks=callbacks, stop_event=stop_event, progress=progress)
    return trainer.fit()


def pipeline_from_checkpoint(run, checkpoint=None, device="cpu", use_ema=True):
    """Base pipeline + the trained weights of `run` at `checkpoint` (folder, step_XXXXXX, or None: latest).

    A run trained with `ema` gives its EMA weights (what its samples showed) unless use_ema=False."""
    from safetensors.torch import load_file
    from ..models import load_pipeline
    from .methods import make_method
    run = run if isinstance(run, Run) else Run(run)
    config = run.config
    path = find_checkpoint(run.path, checkpoint or "latest")
    pipe = load_pipeline(config.model, revision=config.revision)
    method = make_method(config)
    method.prepare_pipeline(pipe)
    groups = method.setup(pipe.unet, pipe.text_encoder)
    method.load_state_dict(pipe.unet, pipe.text_encoder, load_file(Path(path) / "trainable.safetensors"))
    if use_ema and config.ema and (Path(path) / "ema.safetensors").is_file():
        # EMAModel keeps one shadow tensor per trainable parameter, in the optimiser's parameter order
        shadow = read_checkpoint(path)["ema"]["shadow_params"]
        params = [p for g in groups for p in g["params"]]
        if len(shadow) != len(params):
            raise ValueError(f"{path}: EMA holds {len(shadow)} tensors, the method has {len(params)} parameters.")
        with torch.no_grad():
            for p, s in zip(params, shadow):
                p.copy_(s.to(p.dtype))
    pipe.unet.eval(), pipe.text_encoder.eval()
    return pipe.to(device)
