"""Train the scratch UNet on the mini world, and sample from it with classifier-free guidance.

Written plainly so notebook 01 can show the loop: every line of `train` is one idea of Stable Diffusion training.

    data = encode_dataset(n=4000)                          # latents (N,4,8,8) via the mini VAE, text via mini CLIP
    unet = ScratchUNet(ScratchUNetConfig.like_sd("mini", cross_attention_dim=64))
    result = train(unet, data, steps=600, batch_size=32)  # epsilon loss, caption dropout, AdamW, optional EMA
    latents = sample(result.model, text_states, data.null_state, steps=25, guidance=5.0, seeds=[0, 1])
    scores = judge_unet(result.model, n_prompts=40)      # digit / color / joint accuracy with the judge

What is trained, and on which loss (there is no discriminator, no "validator" network):

    x_t = sqrt(a_bar_t) * x0 + sqrt(1 - a_bar_t) * noise          (x0 = VAE latents, t uniform in 0..999)
    loss = mean( (unet(x_t, t, text) - noise)^2 )                  (only the UNet's weights get gradients)
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..mini.clip import load_clip, load_tokenizer
from ..mini.judge import Judge
from ..mini.vae import decode as vae_decode
from ..mini.vae import encode as vae_encode
from ..mini.vae import load_vae
from ..mini.world import build_dataset, canonical_prompts
from .schedules import alphas_cumprod as alphas_cumprod_of  # alphas_cumprod_of(betas); `alphas_cumprod` names tensors
from .schedules import ddim_step, ddim_timesteps, eps_to_x0, q_sample, scaled_linear_betas

__all__ = ["MiniData", "TrainResult", "encode_text", "encode_dataset", "train", "diffusion_loss", "sample",
           "pipeline_timesteps", "decode", "judge_unet", "judge_seen_and_held_out", "sd_alphas_cumprod"]


def sd_alphas_cumprod(num_steps: int = 1000) -> torch.Tensor:
    """Stable Diffusion's noise schedule (scaled-linear betas 0.00085 -> 0.012), as the mini pipeline uses."""
    return alphas_cumprod_of(scaled_linear_betas(num_steps))


# ----------------------------------------------------------------------------------------------
# Data: everything the UNet sees is pre-computed once (the VAE and the text encoder are frozen)


@dataclass
class MiniData:
    latents: torch.Tensor        # (N, 4, 8, 8) VAE latents, already x scaling_factor (std ~1)
    text_states: torch.Tensor    # (U, 77, 64) hidden states of the U distinct captions
    caption_index: torch.Tensor  # (N,) which row of text_states belongs to each latent
    null_state: torch.Tensor     # (1, 77, 64) the empty prompt "": the unconditional input CFG needs
    captions: list = field(default_factory=list)
    labels: list = field(default_factory=list)

    def __len__(self):
        return len(self.latents)


def _text_parts(text_encoder=None, tokenizer=None):
    """The mini CLIP's text tower and the real CLIP tokenizer (what the mini pipeline's text_encoder holds)."""
    if tokenizer is None:
        tokenizer = load_tokenizer()
    if text_encoder is None:
        text_encoder = load_clip().text_model
    return text_encoder, tokenizer


@torch.no_grad()
def encode_text(prompts, text_encoder=None, tokenizer=None, batch_size: int = 256) -> torch.Tensor:
    """Prompts -> (N, 77, hidden) last hidden states, padded to 77 tokens exactly as StableDiffusionPipeline does."""
    text_encoder, tokenizer = _text_parts(text_encoder, tokenizer)
    out = []
    for i in range(0, len(prompts), batch_size):
        ids = tokenizer(list(prompts[i:i + batch_size]), padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        ids = ids.to(next(text_encoder.parameters()).device)
        out.append(text_encoder(ids)[0].float().cpu())          # [0] = last_hidden_state: (batch, 77, hidden)
    return torch.cat(out)


@torch.no_grad()
def encode_dataset(n: int = 4000, seed: int = 0, split: str = "train", vae=None, text_encoder=None,
                   tokenizer=None) -> MiniData:
    """Mini-world pictures -> latents (mini VAE) and caption states (mini CLIP text tower), once, up front."""
    images, captions, labels = build_dataset(seed=seed, n=n, split=split)
    vae = vae if vae is not None else load_vae()
    latents = vae_encode(vae, images)                     # (N, 4, 8, 8), x scaling_factor
    distinct = sorted(set(captions))                           # ~2k distinct captions: encode each once
    row = {c: i for i, c in enumerate(distinct)}
    states = encode_text(distinct, text_encoder, tokenizer)    # (U, 77, 64)
    null = encode_text([""], text_encoder, tokenizer)          # (1, 77, 64)
    return MiniData(latents, states, torch.tensor([row[c] for c in captions]), null, captions, labels)


# ----------------------------------------------------------------------------------------------
# Training


def diffusion_loss(unet, x0, context, alphas_cumprod, generator=None, snr_gamma: float | None = None):
    """The whole objective of Stable Diffusion: predict the noise that was added. Returns (loss, parts).

    snr_gamma: min-SNR weighting (Hang et al. 2023): each sample's squared error is weighted by
    min(SNR_t, gamma) / SNR_t, so the nearly clean steps (huge SNR, easy, many) stop dominating the gradient.
    None is the plain mean, as SD 1.5 was trained."""
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)                # epsilon ~ N(0, I)
    t = torch.randint(0, len(alphas_cumprod), (len(x0),), generator=generator).to(x0.device)  # a step per sample
    x_t = q_sample(x0, t, noise, alphas_cumprod)                          # noised latents
    eps_pred = _predict(unet, x_t, t, context)                                      # (batch, 4, 8, 8)
    if snr_gamma is None:
        loss = F.mse_loss(eps_pred, noise)
    else:
        a = alphas_cumprod.to(x0.device)[t]
        snr = a / (1 - a)                                                           # signal-to-noise ratio of step t
        per_sample = (eps_pred - noise).pow(2).mean(dim=(1, 2, 3))
        loss = (per_sample * torch.clamp(snr, max=snr_gamma) / snr).mean()
    return loss, {"x_t": x_t, "t": t, "noise": noise, "eps_pred": eps_pred}


@dataclass
class TrainResult:
    model: torch.nn.Module       # the weights to sample with (the EMA copy when ema_decay is set)
    raw: torch.nn.Module         # the weights the optimizer updated
    losses: list                 # one float per step
    seconds: float
    steps: int


def train(unet, data: MiniData, steps: int = 600, batch_size: int = 32, lr: float = 1e-3, caption_dropout: float = 0.1,
          ema_decay: float | None = None, warmup: int = 50, max_grad_norm: float = 1.0, seed: int = 0,
          snr_gamma: float | None = None, min_lr_ratio: float = 0.1, log_every: int = 0,
          callback=None) -> TrainResult:
    """Train `unet` in place on `data` with the epsilon loss. callback(step, loss, unet) is called every step.

    ema_decay: keep an exponential moving average of the weights (what `result.model` samples with). Its decay
    warms up as diffusers' EMAModel does, min(ema_decay, (1 + n) / (10 + n)) at update n, so the average forgets
    the random initial weights within the first steps instead of carrying them (0.999^2000 = 13 % of them).
    snr_gamma: min-SNR loss weighting (see `diffusion_loss`). min_lr_ratio: where the cosine decay ends.

    Runs where the UNet is (`unet.to("cuda")` first on a GPU); the random draws come from one CPU generator, so a
    seed gives the same batches, noise and timesteps on any device."""
    if len(data) == 0:
        raise ValueError("data has no latents: build it with encode_dataset(n=...) with n > 0")
    ac = sd_alphas_cumprod()
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    # linear warm-up, then cosine decay to min_lr_ratio * lr
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / max(1, warmup)) * (
        min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps))))
    ema = copy.deepcopy(unet).eval().requires_grad_(False) if ema_decay else None
    device = next(unet.parameters()).device
    unet.train()
    losses, t0 = [], time.time()
    for step in range(steps):
        # 1. a random batch: latents and the hidden states of their captions
        idx = torch.randint(0, len(data), (batch_size,), generator=g)
        x0 = data.latents[idx].to(device)                                        # (batch, 4, 8, 8)
        context = data.text_states[data.caption_index[idx]]                      # (batch, 77, 64)
        # 2. caption dropout: ~10 % of captions become "" so one model also learns the unconditional prediction
        drop = torch.rand(batch_size, generator=g) < caption_dropout
        context = torch.where(drop[:, None, None], data.null_state, context).to(device)
        # 3. noise, predict the noise, mean squared error
        loss, _ = diffusion_loss(unet, x0, context, ac, generator=g, snr_gamma=snr_gamma)
        # 4. AdamW step (gradients clipped), learning-rate schedule, EMA of the weights
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), max_grad_norm)
        opt.step()
        sched.step()
        if ema is not None:
            decay = min(ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for pe, p in zip(ema.parameters(), unet.parameters()):
                    pe.lerp_(p, 1 - decay)
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            recent = np.mean(losses[-log_every:])
            print(f"step {step + 1:5d}/{steps}  loss {recent:.4f}  {time.time() - t0:6.0f} s", flush=True)
        if callback is not None:
            callback(step, loss.item(), unet)
    unet.eval()
    return TrainResult(model=ema if ema is not None else unet, raw=unet, losses=losses,
                       seconds=time.time() - t0, steps=steps)


# ----------------------------------------------------------------------------------------------
# Sampling: DDIM with classifier-free guidance, written out


def _predict(unet, x, t, context):
    """Call a scratch UNet or a diffusers UNet2DConditionModel the same way."""
    out = unet(x, t, encoder_hidden_states=context)
    return out.sample if hasattr(out, "sample") else out


def pipeline_timesteps(steps: int, num_train_steps: int = 1000, steps_offset: int = 1) -> list:
    """The timesteps diffusers' DDIMScheduler visits ("leading" spacing + steps_offset): 961, 921, ..., 1 for 25."""
    return [t + steps_offset for t in ddim_timesteps(steps, num_train_steps)]


@torch.no_grad()
def sample(unet, text_states, null_state, steps: int = 25, guidance: float = 5.0, seeds=None, latents=None,
           alphas_cumprod=None, steps_offset: int = 1, set_alpha_to_one: bool = False, callback=None) -> torch.Tensor:
    """DDIM (eta=0) with classifier-free guidance -> clean latents (N, 4, 8, 8).

    text_states: (N, 77, hidden), one prompt per picture; null_state: (1, 77, hidden) for "" (or a negative prompt,
    (N, 77, hidden)). seeds: one int per picture -> its starting noise, drawn as StableDiffusionPipeline draws it
    with one torch.Generator per picture. The defaults (steps_offset=1, set_alpha_to_one=False) are the mini
    pipeline's DDIMScheduler settings, so this loop gives the pipeline's latents. callback(i, t, x, x0_pred).
    """
    n = len(text_states)
    ac = sd_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod
    size = unet.config.sample_size
    channels = unet.config.in_channels
    if latents is None:
        seeds = list(range(n)) if seeds is None else list(seeds)
        if len(seeds) != n:
            raise ValueError(f"{len(seeds)} seeds for {n} prompts: give one seed per prompt")
        latents = torch.cat([torch.randn((1, channels, size, size), generator=torch.Generator().manual_seed(int(s)))
                             for s in seeds])
    device = next(unet.parameters()).device
    x = latents.clone().to(device)                                         # x_T ~ N(0, I): (N, 4, 8, 8)
    uncond = null_state.expand(n, -1, -1) if len(null_state) == 1 else null_state
    context = torch.cat([uncond, text_states]).to(device)                  # (2N, 77, hidden): one batched UNet call
    ts = pipeline_timesteps(steps, len(ac), steps_offset)
    ratio = len(ac) // steps
    for i, t in enumerate(ts):
        # 1. predict the noise with and without the prompt
        eps_uncond, eps_text = _predict(unet, torch.cat([x, x]), torch.full((2 * n,), t, device=device), context).chunk(2)
        # 2. classifier-free guidance: move further in the direction the prompt pushes
        eps = eps_uncond + guidance * (eps_text - eps_uncond)
        # 3. one DDIM step from t to the previous visited timestep (before step 0: a_bar = 1, or a_bar[0])
        prev_t = t - ratio
        if prev_t < 0:
            prev_t = -1 if set_alpha_to_one else 0
        if callback is not None:
            callback(i, t, x, eps_to_x0(x, eps, t, ac))
        x = ddim_step(eps, t, prev_t, x, ac)
    return x


def decode(latents, vae=None) -> np.ndarray:
    """Latents -> uint8 pictures N x 32 x 32 x 3 with the mini VAE."""
    return vae_decode(vae if vae is not None else load_vae(), latents.float().cpu())


def judge_unet(unet, n_prompts: int = 40, seeds=(0,), steps: int = 25, guidance: float = 5.0, held_out: bool = False,
               vae=None, text_encoder=None, tokenizer=None, judge=None, seed: int = 0) -> dict:
    """Sample canonical prompts (a fixed random subset of `n_prompts`), decode, and score with the judge.

    Returns digit/fg/bg/joint accuracy plus the images and prompts, so a notebook can show what was scored."""
    pairs = list(canonical_prompts(held_out=held_out))
    rng = np.random.default_rng(seed)
    pairs = [pairs[i] for i in sorted(rng.choice(len(pairs), size=min(n_prompts, len(pairs)), replace=False))]
    prompts = [p for p, _ in pairs for _ in seeds]
    labels = [lab for _, lab in pairs for _ in seeds]
    states = encode_text(prompts, text_encoder, tokenizer)
    null = encode_text([""], text_encoder, tokenizer)
    lat = sample(unet, states, null, steps=steps, guidance=guidance, seeds=[s for _ in pairs for s in seeds])
    images = decode(lat, vae)
    judge = judge if judge is not None else Judge.load()
    return {**judge.score(images, labels), "images": images, "prompts": prompts}


def judge_seen_and_held_out(unet, n_seen: int = 80, seeds=(0, 1), steps: int = 25, guidance: float = 5.0,
                            **parts) -> dict:
    """Judge `unet` on `n_seen` seen combinations and all 56 held-out ones, each drawn once per seed.

    -> {"seen": scores, "held_out": scores, "all": accuracies over every picture} (scores as `judge_unet`'s)."""
    out = {"seen": judge_unet(unet, n_prompts=n_seen, seeds=seeds, steps=steps, guidance=guidance, **parts),
           "held_out": judge_unet(unet, n_prompts=56, seeds=seeds, steps=steps, guidance=guidance, held_out=True,
                                  **parts)}
    n = out["seen"]["n"] + out["held_out"]["n"]
    out["all"] = {k: (out["seen"][k] * out["seen"]["n"] + out["held_out"][k] * out["held_out"]["n"]) / n
                  for k in ("digit_acc", "fg_acc", "bg_acc", "joint_acc")}
    out["all"]["n"] = n
    return out
