"""The mini pipeline: mini CLIP text tower + mini VAE + a UNet trained from scratch by `sdkit.train`.

    python -m sdkit mini build      # data -> judge -> CLIP -> VAE -> UNet -> data_samples/mini-sd
    python -m sdkit mini eval       # digit / color / joint accuracy with the judge, guidance and steps sweeps

The result is a plain diffusers `StableDiffusionPipeline` folder: `StableDiffusionPipeline.from_pretrained(
"data_samples/mini-sd")` and `sdkit.load_pipeline("mini")` load it.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import find_checkpoint, read_checkpoint
from ..config import TrainConfig
from ..data.captions import TOKENIZER_DIR
from ..data.files import respect_umask
from ..models import load_pipeline
from ..train.loop import train
from .clip import export_text_encoder
from .judge import Judge
from .parts import build_parts
from .world import canonical_prompts, export_folder

__all__ = ["UNET_CONFIG", "RECIPE", "assemble", "train_unet", "export_trained", "evaluate", "build"]

# The UNet: SD's block structure, small. 8x8x4 latents -> 4x4 -> 2x2; cross-attention to the mini CLIP (dim 64).
UNET_CONFIG = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                   block_out_channels=(64, 128, 128),
                   down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                   up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                   cross_attention_dim=64, attention_head_dim=4, norm_num_groups=32)

# The recipe: sdkit.train fields for the from-scratch UNet (method full = every UNet weight trains).
RECIPE = dict(method="full", steps=3000, batch_size=64, lr=1e-3, lr_scheduler="cosine", lr_warmup_steps=100,
              cache_latents=True,
              weight_decay=0.0, max_grad_norm=1.0, ema=True, ema_decay=0.999, snr_gamma=5.0, caption_dropout=0.1,
              center_crop=True, random_flip=False, seed=0, checkpoint_every=250, keep_last=2, sample_every=500,
              sample_prompts=["a red seven on a blue background", "a yellow two on a black background",
                              "a white circle on a green background"], sample_seeds=[0, 1], sample_steps=25,
              guidance_scale=5.0, log_every=10)


def assemble(out_dir, root="data_samples", seed: int = 0) -> Path:
    """A pipeline folder with the trained text encoder + VAE and a *randomly initialized* UNet (to train)."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    out, root = Path(out_dir), Path(root)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    export_text_encoder(root / "mini-clip", out / "text_encoder", dtype=torch.float32)
    tok = out / "tokenizer"
    tok.mkdir()
    for f in (out / "text_encoder").iterdir():  # export_text_encoder writes tokenizer files beside the weights
        if f.name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json",
                      "tokenizer.json"):
            shutil.move(str(f), tok / f.name)
    shutil.copytree(root / "mini-vae", out / "vae", ignore=shutil.ignore_patterns("sdkit_metrics.json"))
    torch.manual_seed(seed)
    UNet2DConditionModel(**UNET_CONFIG).save_pretrained(out / "unet")
    DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                  set_alpha_to_one=False, steps_offset=1).save_pretrained(out / "scheduler")
    (out / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
        "feature_extractor": [None, None], "image_encoder": [None, None], "requires_safety_checker": False,
        "safety_checker": [None, None], "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}, indent=2))
    return out


def train_unet(init_dir, data_dir, run_dir, resume: bool = False, **overrides):
    """Train the UNet from scratch with sdkit's one loop; returns the Run."""
    cfg = TrainConfig(model=str(init_dir), data=str(data_dir), out=str(run_dir),
                      resume="latest" if resume else None, **{**RECIPE, **overrides})
    return train(cfg, progress="print")


def export_trained(run, init_dir, out_dir, use_ema: bool = True, dtype=torch.float16) -> Path:
    """Write the final pipeline: init_dir's parts + the trained UNet (EMA weights by default), fp16 on disk."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file
    pipe = StableDiffusionPipeline.from_pretrained(str(init_dir), safety_checker=None, requires_safety_checker=False)
    ck_path = find_checkpoint(run.path, "latest")
    state = load_file(ck_path / "trainable.safetensors")
    pipe.unet.load_state_dict({k[len("unet."):]: v for k, v in state.items() if k.startswith("unet.")})
    if use_ema:
        ema = read_checkpoint(ck_path).get("ema")
        if ema is None:
            raise FileNotFoundError(f"{ck_path} has no EMA weights (train with ema=True, or use_ema=False)")
        for p, s in zip(pipe.unet.parameters(), ema["shadow_params"]):
            p.data.copy_(s)
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    # UNet and VAE in fp16 on disk (diffusers loads them as fp32 unless asked); the text encoder stays fp32 because
    # transformers keeps the saved dtype, and a half text encoder beside a float UNet breaks a plain from_pretrained.
    pipe.unet.to(dtype), pipe.vae.to(dtype)
    pipe.text_encoder.to(torch.float32)
    pipe.save_pretrained(str(tmp))
    respect_umask(tmp)
    # transformers 5 writes the tokenizer as a 3.6 MB tokenizer.json; vocab.json + merges.txt (the same CLIP BPE,
    # 1.5 MB) keep the folder inside its size budget and load in every transformers version.
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(TOKENIZER_DIR / name, tmp / "tokenizer" / name)
    (tmp / "tokenizer" / "tokenizer.json").unlink(missing_ok=True)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


@torch.no_grad()
def generate_for(pipe, prompts, seeds, steps=25, guidance=5.0, batch=64):
    """Images (uint8 N x 32 x 32 x 3) for every prompt x seed, prompt-major."""
    out = []
    jobs = [(p, s) for p in prompts for s in seeds]
    for i in range(0, len(jobs), batch):
        chunk = jobs[i:i + batch]
        gens = [torch.Generator("cpu").manual_seed(int(s)) for _, s in chunk]
        res = pipe([p for p, _ in chunk], num_inference_steps=steps, guidance_scale=guidance, generator=gens,
                   output_type="np")
        out.append((res.images * 255).round().astype(np.uint8))
    return np.concatenate(out)


def evaluate(model="mini", n_seen: int = 120, seeds=(0, 1, 2, 3), steps: int = 25, guidance: float = 5.0,
             judge_dir=None, seed: int = 0) -> dict:
    """Judge the pipeline on canonical prompts: `n_seen` seen combinations (a fixed random subset) and every
    held-out combination, each drawn once per seed. Returns digit/fg/bg/joint accuracy for both."""
    pipe = load_pipeline(model) if isinstance(model, (str, os.PathLike)) else model
    pipe.to(torch.float32)
    judge = Judge.load(judge_dir)
    seen = list(canonical_prompts(held_out=False))
    rng = np.random.default_rng(seed)
    seen = [seen[i] for i in sorted(rng.choice(len(seen), size=min(n_seen, len(seen)), replace=False))]
    held = list(canonical_prompts(held_out=True))
    report = {"steps": steps, "guidance": guidance, "seeds": list(seeds)}
    for name, pairs in (("seen", seen), ("held_out", held)):
        t0 = time.time()
        images = generate_for(pipe, [p for p, _ in pairs], seeds, steps, guidance)
        labels = [lab for _, lab in pairs for _ in seeds]
        report[name] = {**judge.score(images, labels), "prompts": len(pairs),
                        "seconds": round(time.time() - t0, 1)}
    return report


def build(root="data_samples", work=None, steps=None, quick=False, skip_parts=False) -> dict:
    """Everything from nothing: world -> judge -> CLIP -> VAE (build_parts) -> UNet -> root/mini-sd, timed."""
    root = Path(root)
    work = Path(work or Path(os.environ.get("SDKIT_CACHE", Path.home() / ".cache" / "sdkit")) / "mini-build")
    report = {}
    t_all = time.time()
    if not skip_parts:
        report["parts"] = build_parts(root, quick=quick)
    t0 = time.time()
    print("== mini world: training images ==", flush=True)
    data_dir = work / "train-data"
    n = 2000 if quick else 20000
    if not (data_dir / "labels.jsonl").is_file() or sum(1 for _ in data_dir.glob("*.png")) != n:
        if data_dir.exists():
            shutil.rmtree(data_dir)
        export_folder(data_dir, n=n, seed=0, split="train")
    report["data_seconds"] = round(time.time() - t0, 1)
    t0 = time.time()
    print("== mini world: UNet (sdkit.train, method full) ==", flush=True)
    init_dir = assemble(work / "mini-sd-init", root)
    run_dir = work / "unet-run"
    resume = (run_dir / "checkpoints" / "latest").is_file()
    overrides = {"steps": steps or (20 if quick else RECIPE["steps"])}
    if quick:
        overrides.update(batch_size=16, checkpoint_every=10, sample_every=0, lr_warmup_steps=0)
    run = train_unet(init_dir, data_dir, run_dir, resume=resume, **overrides)
    report["unet_seconds"] = round(time.time() - t0, 1)
    out = export_trained(run, init_dir, root / "mini-sd")
    report["total_seconds"] = round(time.time() - t_all, 1)
    print(f"== mini pipeline written to {out} in {report['total_seconds']:.0f} s ==", flush=True)
    return report
