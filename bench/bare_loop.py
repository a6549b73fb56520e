"""The reference: a textbook diffusers-style training loop written plainly (no callbacks, no accelerate, no
checkpoints), for measuring sdkit's loop overhead. Same model, data, optimizer, precision and LoRA as sdkit's.

    python bench/bare_loop.py --model tiny --data DIR --steps 30 --batch-size 8
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def bare_train(model: str, data: str, steps: int, batch_size: int, resolution: int, lr: float = 1e-4,
               rank: int = 4, seed: int = 0) -> dict:
    """Train a LoRA for `steps` steps; return seconds per step measured after 2 warm-up steps."""
    from diffusers import DDPMScheduler
    from peft import LoraConfig

    import sdkit
    from sdkit.data import scan_folder
    torch.manual_seed(seed)
    pipe = sdkit.load_pipeline(model)
    vae, te, tok, unet = pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.unet
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    for m in (vae, te, unet):
        m.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    items = scan_folder(data).items
    rng = np.random.default_rng(seed)

    def load(path):
        im = Image.open(path).convert("RGB").resize((resolution, resolution), Image.BICUBIC)
        return torch.from_numpy(np.asarray(im, np.float32).copy()).permute(2, 0, 1) / 127.5 - 1

    times = []
    for step in range(steps):
        t0 = time.perf_counter()
        idx = rng.integers(0, len(items), batch_size)
        pixels = torch.stack([load(items[i][0]) for i in idx])
        ids = tok([items[i][1] for i in idx], padding="max_length", max_length=tok.model_max_length,
                  truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
            hidden = te(ids)[0]
        noise = torch.randn_like(latents)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch_size,))
        pred = unet(sched.add_noise(latents, noise, t), t, hidden).sample
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return {"seconds_per_step": float(np.median(times[2:])), "steps": steps, "last_loss": float(loss)}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--data", required=True)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--resolution", type=int, default=32)
    a = ap.parse_args()
    print(bare_train(a.model, a.data, a.steps, a.batch_size, a.resolution))
