"""Mini VAE: a diffusers ``AutoencoderKL`` that maps 32x32x3 pictures to 8x8x4 latents, like SD's 512 -> 64x64x4.

Two downsamplings (three blocks of 32, 64, 64 channels, one ResNet layer each, an attention mid-block at 8x8).
Trained on mini-world pictures with ink-weighted L1 + MSE, an edge (image-gradient) term and a small KL term.
Its ``scaling_factor`` is measured the way SD's 0.18215 was: 1 / std of the latents of training pictures,
so that scaled latents have unit variance for the diffusion model.

    >>> from sdkit.mini.vae import load_vae, encode, decode
    >>> vae = load_vae()                           # data_samples/mini-vae/, float32
    >>> z = encode(vae, images)                    # (N, 4, 8, 8), already multiplied by scaling_factor
    >>> decode(vae, z)                             # uint8 N x 32 x 32 x 3
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from ..data.files import respect_umask
from .judge import Judge
from .world import DATA_SAMPLES, IMAGE_SIZE, build_dataset, warmup_cosine

VAE_DIR = DATA_SAMPLES / "mini-vae"


def mini_vae(block_out_channels=(32, 64, 64)):
    """A fresh (random) mini ``AutoencoderKL``: (N, 3, 32, 32) <-> (N, 4, 8, 8)."""
    from diffusers import AutoencoderKL

    n = len(block_out_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(block_out_channels), layers_per_block=1, norm_num_groups=32,
        sample_size=IMAGE_SIZE,
    )


def load_vae(path=None, dtype=torch.float32):
    """Load the mini VAE (default data_samples/mini-vae/) in ``dtype``, eval mode."""
    from diffusers import AutoencoderKL

    path = Path(path) if path is not None else VAE_DIR
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no mini VAE in {path}: build it with sdkit.mini.vae.train_vae(out_dir)")
    return AutoencoderKL.from_pretrained(str(path), torch_dtype=dtype).eval()


def to_tensor(images) -> torch.Tensor:
    """uint8 Nx32x32x3 -> float (N, 3, 32, 32) in [-1, 1]."""
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"images of shape {arr.shape} and dtype {arr.dtype}: expected uint8 N x H x W x 3")
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (N, 3, H, W) in [-1, 1] -> uint8 N x H x W x 3."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def encode(vae, images, sample: bool = False, batch_size: int = 256) -> torch.Tensor:
    """uint8 pictures -> scaled latents (N, 4, 8, 8) = scaling_factor * (posterior mean, or a sample)."""
    dtype = next(vae.parameters()).dtype
    x = to_tensor(images)
    out = []
    for i in range(0, len(x), batch_size):
        post = vae.encode(x[i : i + batch_size].to(dtype)).latent_dist
        out.append((post.sample() if sample else post.mode()).float())
    return torch.cat(out) * vae.config.scaling_factor


@torch.no_grad()
def decode(vae, latents: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Scaled latents (N, 4, 8, 8) -> uint8 N x 32 x 32 x 3."""
    dtype = next(vae.parameters()).dtype
    z = latents / vae.config.scaling_factor
    return np.concatenate([to_uint8(vae.decode(z[i : i + batch_size].to(dtype)).sample)
                           for i in range(0, len(z), batch_size)])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean per-image PSNR (dB) between two uint8 picture batches."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    return float(np.mean(10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))))


@torch.no_grad()
def measure_scaling_factor(vae, images, batch_size: int = 256) -> float:
    """1 / std of posterior *samples* of ``images`` (as SD chose 0.18215), unscaled."""
    x = to_tensor(images)
    z = torch.cat([vae.encode(x[i : i + batch_size]).latent_dist.sample() for i in range(0, len(x), batch_size)])
    return float(1.0 / z.float().std())


def _ink_mask(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, 1, H, W) float mask of pixels that differ from the median border color."""
    border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], dim=-1)   # (B, 3, 4W)
    bg = border.median(dim=-1).values[..., None, None]                                      # (B, 3, 1, 1)
    return ((x - bg).abs().sum(1, keepdim=True) > 0.1).float()


def _edges(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]


def train_vae(out_dir=VAE_DIR, steps: int = 1600, seed: int = 0, batch_size: int = 16, n_train: int = 20000,
              lr: float = 2e-3, kl_weight: float = 1e-6, edge_weight: float = 0.5, ink_weight: float = 4.0,
              log_every: int = 100,
              judge_dir=None, save_dtype=torch.float16) -> dict:
    """Train the mini VAE on mini-world pictures; measure and store its scaling factor; save; return metrics.

    Metrics: PSNR on held-out-digit pictures, scaling factor, and the judge's joint accuracy on originals vs
    reconstructions (skipped if no judge is found in ``judge_dir`` / data_samples/judge).
    """
    t0 = time.time()
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    # 1. data
    images, _, _ = build_dataset(seed=seed, n=n_train, split="train")
    x_all = to_tensor(images)                                                        # (N, 3, 32, 32) in [-1, 1]
    vae = mini_vae()
    n_params = sum(p.numel() for p in vae.parameters())
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.99))
    sched = warmup_cosine(opt, steps, 0.05)
    print(f"[vae] {n_train} pictures; {n_params:,} params; {steps} steps x {batch_size}", flush=True)
    vae.train()
    hist = {"l1": 0.0, "mse": 0.0, "kl": 0.0}
    for step in range(1, steps + 1):
        x = x_all[torch.randint(n_train, (batch_size,), generator=g)]
        # 2. encode -> sample -> decode
        post = vae.encode(x).latent_dist                                             # mean/logvar (B, 4, 8, 8)
        rec = vae.decode(post.sample(generator=None)).sample                         # (B, 3, 32, 32)
        # 3. loss: ink-weighted L1 + MSE, edge L1, small KL (per-image sum, like SD). Ink pixels (those that
        #    differ from the picture's border color) are a small share of the picture but carry its meaning:
        #    weight them x(1 + ink_weight), or the glyph's color is the last thing the VAE learns.
        w = 1.0 + ink_weight * _ink_mask(x)                                          # (B, 1, 32, 32)
        w = w / w.mean()
        l1 = ((rec - x).abs() * w).mean()
        mse = ((rec - x) ** 2 * w).mean()
        (gy, gx), (ry, rx) = _edges(x), _edges(rec)
        edge = (gy - ry).abs().mean() + (gx - rx).abs().mean()
        kl = post.kl().mean()
        loss = l1 + mse + edge_weight * edge + kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        hist["l1"] += l1.item()
        hist["mse"] += mse.item()
        hist["kl"] += kl.item()
        if step % log_every == 0 or step == steps:
            k = log_every if step % log_every == 0 else step % log_every
            train_psnr = 10 * math.log10(4.0 / max(hist["mse"] / k, 1e-10))            # pixels in [-1, 1]
            print(f"[vae] step {step}/{steps} L1 {hist['l1'] / k:.4f} train PSNR {train_psnr:.1f} dB "
                  f"KL {hist['kl'] / k:.1f} ({time.time() - t0:.0f} s)", flush=True)
            hist = {k_: 0.0 for k_ in hist}
    train_seconds = time.time() - t0
    # 4. scaling factor from 2,000 training pictures; evaluation on held-out-digit pictures
    vae.eval()
    sf = measure_scaling_factor(vae, images[:2000])
    vae.register_to_config(scaling_factor=sf)
    vx, _, vl = build_dataset(seed=seed + 1, n=1000, split="val")
    recon = decode(vae, encode(vae, vx))
    metrics = {"psnr_val": psnr(vx, recon), "scaling_factor": sf, "params": n_params,
               "train_seconds": round(train_seconds, 1), "steps": steps, "batch_size": batch_size, "seed": seed,
               "torch_threads": torch.get_num_threads()}
    try:
        judge = Judge.load(judge_dir)
        metrics["judge_joint_originals"] = judge.score(vx, vl)["joint_acc"]
        metrics["judge_joint_reconstructions"] = judge.score(recon, vl)["joint_acc"]
    except FileNotFoundError as e:
        print(f"[vae] judge check skipped: {e}")
    # 5. save (fp16 by default: ~2 MB) + metrics
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vae.to(save_dtype).save_pretrained(str(out))
    respect_umask(out)
    (out / "sdkit_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"[vae] PSNR {metrics['psnr_val']:.2f} dB on held-out-digit pictures; scaling_factor {sf:.4f}; "
          f"judge joint originals {metrics.get('judge_joint_originals')} reconstructions "
          f"{metrics.get('judge_joint_reconstructions')}; done in {time.time() - t0:.0f} s -> {out}", flush=True)
    return metrics
