"""The deterministic validation loss: the denoising loss on held-out pictures at FIXED timesteps with FIXED noise,
so the same weights always give the same number and a curve of it compares checkpoints (the training loss does
not: each step draws new timesteps). The validation split, hyperparameter search and sdkit.evaluate use it."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..data.captions import insert_trigger
from ..models import native_resolution
from .ema import evaluation

__all__ = ["VAL_TIMESTEPS", "validation_loss", "trainer_validation_loss", "to_pixels", "to_uint8"]

VAL_TIMESTEPS = (100, 300, 500, 700, 900)


def to_uint8(images, size: int | None = None) -> np.ndarray:
    """PIL images / uint8 arrays -> uint8 (N, size, size, 3), resized (bicubic) when `size` is given."""
    out = []
    for im in images:
        im = im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im, dtype=np.uint8))
        im = im.convert("RGB")
        if size and im.size != (size, size):
            im = im.resize((size, size), Image.BICUBIC)
        out.append(np.asarray(im, dtype=np.uint8))
    return np.stack(out) if out else np.zeros((0, size or 1, size or 1, 3), np.uint8)


def to_pixels(images, size: int) -> torch.Tensor:
    """PIL images / uint8 arrays -> (N, 3, size, size) in [-1, 1], resized (bicubic) when their size differs."""
    return torch.from_numpy(to_uint8(images, size)).float().permute(0, 3, 1, 2) / 127.5 - 1.0


@torch.no_grad()
def validation_loss(pipe, images, captions, timesteps=VAL_TIMESTEPS, seed: int = 0, prediction_type=None,
                    resolution: int | None = None, batch_size: int = 8, x0_psnr: bool = True) -> dict:
    """Denoising loss on held-out pictures with fixed timesteps and fixed noise: deterministic, so comparable.

    Same noising as the training loop: DDPMScheduler.from_config(pipe.scheduler.config), latents = VAE posterior
    MEAN x scaling_factor (the loop samples the posterior; the mean removes that randomness), epsilon or v target.
    Noise for (image i, timestep k) comes from a generator seeded by (seed, i, k): it does not depend on the
    batch size or on the order of evaluation."""
    from diffusers import DDPMScheduler
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    ptype = prediction_type or sched.config.prediction_type
    vae, unet, te, tok = pipe.vae, pipe.unet, pipe.text_encoder, pipe.tokenizer
    device, dtype = unet.device, unet.dtype
    size = resolution or native_resolution(pipe)
    px = to_pixels(images, size)
    per_t = {int(t): [] for t in timesteps}
    psnrs = []
    for i0 in range(0, len(px), batch_size):
        x = px[i0:i0 + batch_size].to(device, vae.dtype)
        latents = vae.encode(x).latent_dist.mean.float() * vae.config.scaling_factor   # (b, 4, h, w)
        ids = tok(list(captions[i0:i0 + batch_size]), padding="max_length", max_length=tok.model_max_length,
                  truncation=True, return_tensors="pt").input_ids.to(device)
        hidden = te(ids)[0]
        for k, t in enumerate(timesteps):
            noise = torch.stack([torch.randn(latents.shape[1:], generator=torch.Generator("cpu").manual_seed(
                int(np.random.SeedSequence([seed, i0 + j, k]).generate_state(1)[0]))) for j in range(len(latents))])
            tt = torch.full((len(latents),), int(t), dtype=torch.long)
            noisy = sched.add_noise(latents, noise, tt)
            pred = unet(noisy.to(device, dtype), tt.to(device), hidden).sample.float().cpu()
            if ptype == "epsilon":
                target = noise
            elif ptype == "v_prediction":
                target = sched.get_velocity(latents, noise, tt)
            else:
                raise ValueError(f"prediction_type {ptype!r}: expected epsilon or v_prediction")
            per_t[int(t)] += F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3)).tolist()
            if x0_psnr:
                a = sched.alphas_cumprod[tt].view(-1, 1, 1, 1)
                if ptype == "epsilon":
                    x0 = (noisy - (1 - a).sqrt() * pred) / a.sqrt()
                else:
                    x0 = a.sqrt() * noisy - (1 - a).sqrt() * pred
                img = vae.decode((x0 / vae.config.scaling_factor).to(device, vae.dtype)).sample.float().cpu()
                mse = (((img.clamp(-1, 1) - x.float().cpu()) / 2) ** 2).mean(dim=(1, 2, 3))
                psnrs += (10 * torch.log10(1 / mse.clamp_min(1e-10))).tolist()
    out = {"val_loss": float(np.mean([v for vs in per_t.values() for v in vs])),
           "val_loss_per_t": {str(t): float(np.mean(v)) for t, v in per_t.items()}, "val_n": len(px)}
    if x0_psnr:
        out["x0_psnr"] = float(np.mean(psnrs))
    return out


@torch.no_grad()
def trainer_validation_loss(trainer, images=None, captions=None, x0_psnr: bool = False) -> dict:
    """`validation_loss` with the trainer's current weights (the EMA weights when the run keeps them) on `images`
    (default: the validation_split's held-out images). Captions get what training captions get: the instance
    prompt, the trigger word, the method's tokens. Training's random state is left as it was."""
    c, acc = trainer.config, trainer.accelerator
    if images is None:
        images = [Image.open(p).convert("RGB") for p, _ in trainer.val_scan.items]
        captions = [cap for _, cap in trainer.val_scan.items]
    if c.instance_prompt:
        captions = [c.instance_prompt] * len(images)
    elif c.trigger_token:
        captions = [insert_trigger(cap, c.trigger_token) for cap in captions]
    captions = trainer.method.convert_captions(captions)
    with evaluation(trainer), acc.autocast():
        return validation_loss(trainer.pipeline(), images, captions, prediction_type=trainer.prediction_type,
                               resolution=trainer.resolution, x0_psnr=x0_psnr)
