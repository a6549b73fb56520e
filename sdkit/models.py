"""Models: presets in one place, `load_pipeline`, the offline CLIP tokenizer and tiny pipelines for tests.

The same `from_pretrained` code loads SD 1.5 from the Hub on Colab and the mini / tiny pipelines from local folders.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["PRESETS", "resolve_model", "load_pipeline", "clip_tokenizer", "make_tiny", "data_samples_dir",
           "native_resolution", "ModelNotFound", "save_pipeline"]

PACKAGE_DIR = Path(__file__).resolve().parent
TOKENIZER_DIR = PACKAGE_DIR / "assets" / "clip_tokenizer"


def data_samples_dir() -> Path:
    """The data_samples/ folder: $SDKIT_DATA_SAMPLES, else the one beside the package (a source checkout)."""
    env = os.environ.get("SDKIT_DATA_SAMPLES")
    return Path(env) if env else PACKAGE_DIR.parent / "data_samples"


def _tiny_dir() -> Path:
    return Path(os.environ.get("SDKIT_CACHE", Path.home() / ".cache" / "sdkit")) / "tiny-sd"


def _tiny_sdxl_dir() -> Path:  # SDXL (issue #11): made on first use, like "tiny"
    return Path(os.environ.get("SDKIT_CACHE", Path.home() / ".cache" / "sdkit")) / "tiny-sdxl"


# Model ids in one place (hosted models disappear: runwayml/stable-diffusion-v1-5 was deleted; this is the mirror).
PRESETS = {
    "mini": {"path": lambda: data_samples_dir() / "mini-sd", "resolution": 32,
             "about": "the mini world's pipeline, shipped in data_samples/mini-sd (offline, CPU-friendly)"},
    "tiny": {"path": _tiny_dir, "resolution": 32,
             "about": "a tiny random pipeline (make-tiny), for tests and smoke runs; draws noise"},
    "sd15": {"path": "stable-diffusion-v1-5/stable-diffusion-v1-5", "resolution": 512,
             "about": "Stable Diffusion 1.5 (community mirror of runwayml/stable-diffusion-v1-5)"},
    "sd21-base": {"path": "stabilityai/stable-diffusion-2-1-base", "resolution": 512,
                  "about": "Stable Diffusion 2.1 base (512 px)"},
    # SDXL (sdkit.sdxl, docs/SDXL.md). "vae": loaded in place of the pipeline's own VAE (SDXL's overflows in fp16);
    # "variant": the weight files read when loading in fp16/bf16 (half the download).
    "tiny-sdxl": {"path": _tiny_sdxl_dir, "resolution": 32,
                  "about": "a tiny random SDXL pipeline (two text encoders, size/crop conditioning), for tests"},
    "sdxl": {"path": "stabilityai/stable-diffusion-xl-base-1.0", "resolution": 1024,
             "vae": "madebyollin/sdxl-vae-fp16-fix", "variant": "fp16",
             "about": "Stable Diffusion XL base 1.0 (1024 px), with the fp16-fix VAE (madebyollin/sdxl-vae-fp16-fix)"},
}


class ModelNotFound(FileNotFoundError):
    """The model name is neither a preset, an existing folder, nor a reachable Hub id."""


def resolve_model(name_or_path: str) -> str:
    """Turn a preset name, folder or Hub id into what `from_pretrained` takes; check local paths exist."""
    name_or_path = os.fspath(name_or_path)
    if name_or_path in PRESETS:
        target = PRESETS[name_or_path]["path"]
        target = target() if callable(target) else target
        if name_or_path == "tiny" and not Path(target, "model_index.json").is_file():
            make_tiny(target)
        if name_or_path == "tiny-sdxl" and not Path(target, "model_index.json").is_file():
            from .sdxl import make_tiny_sdxl
            make_tiny_sdxl(target)
        if name_or_path == "mini" and not Path(target, "model_index.json").is_file():
            raise ModelNotFound(f"model 'mini': {target} has no model_index.json. The mini pipeline ships in "
                                f"data_samples/mini-sd of the sdkit repository; set SDKIT_DATA_SAMPLES to that "
                                f"data_samples folder, or rebuild it with `python -m sdkit mini build`.")
        return os.fspath(target)
    p = Path(name_or_path).expanduser()
    if p.exists():
        if not (p / "model_index.json").is_file() and not (p / "unet").is_dir():
            raise ModelNotFound(f"model {p}: the folder exists but is not a diffusers pipeline (no model_index.json). "
                                f"Fix: point to a folder written by save_pretrained (unet/, vae/, text_encoder/, "
                                f"tokenizer/, scheduler/), or a single .safetensors via `python -m sdkit convert`.")
        return os.fspath(p)
    import re
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", name_or_path):
        raise ModelNotFound(f"model {name_or_path!r}: no such folder, and not a preset ({', '.join(PRESETS)}) or a "
                            f"Hub id of the form org/name. Fix: check the path.")
    return name_or_path  # a Hub id: from_pretrained downloads (or reads the cache when HF_HUB_OFFLINE=1)


def native_resolution(pipe) -> int:
    """The image size a pipeline was trained at: UNet sample size x VAE downsampling factor."""
    factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    return int(pipe.unet.config.sample_size) * factor


def load_pipeline(name_or_path: str = "mini", torch_dtype=None, revision=None, device=None):
    """Load a StableDiffusionPipeline — or a StableDiffusionXLPipeline for SDXL folders and ids — from a preset,
    folder or Hub id (safety checker off, progress bars quiet)."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog
    from .sdxl import is_sdxl_model
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    target = resolve_model(name_or_path)
    sdxl = is_sdxl_model(target, revision)  # SDXL (issue #11): model_index.json's _class_name, or an "xl" Hub id
    if sdxl:
        from diffusers import StableDiffusionXLPipeline as cls
        kwargs = dict(add_watermarker=False)  # no invisible watermark: samples compare pixel for pixel
    else:
        cls = StableDiffusionPipeline
        kwargs = dict(safety_checker=None, requires_safety_checker=False)
    if torch_dtype is not None:
        kwargs["torch_dtype"] = torch_dtype
    if revision:
        kwargs["revision"] = revision
    try:
        preset = PRESETS.get(os.fspath(name_or_path), {})
        if preset.get("variant") and torch_dtype in (torch.float16, torch.bfloat16):
            kwargs["variant"] = preset["variant"]
        preset_vae = preset.get("vae")
        if preset_vae:  # e.g. the sdxl preset's fp16-fix VAE
            from diffusers import AutoencoderKL
            kwargs["vae"] = AutoencoderKL.from_pretrained(preset_vae, torch_dtype=torch_dtype)
        pipe = cls.from_pretrained(target, **kwargs)
    except OSError as e:
        if Path(target).exists():
            raise
        raise ModelNotFound(f"model {target!r} could not be loaded from the Hugging Face Hub ({e.__class__.__name__}: "
                            f"{str(e).splitlines()[0]}). Offline? Use a local folder or the 'mini' preset; on Colab "
                            f"check the id (SD 1.5 lives at {PRESETS['sd15']['path']}, SDXL at "
                            f"{PRESETS['sdxl']['path']}).") from None
    pipe.set_progress_bar_config(disable=True)
    if torch_dtype is None:
        # Weights saved in fp16 (the mini pipeline) load in fp16 in transformers 5 but fp32 in diffusers:
        # without a requested dtype, make every part fp32 so that training and sampling agree.
        for part in (pipe.unet, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
            if part is not None and part.dtype != torch.float32:
                part.to(torch.float32)
    if device is not None:
        pipe.to(device)
    return pipe


def clip_tokenizer():
    """The real CLIP BPE tokenizer (49,408 tokens, 77-token context), built offline from sdkit/assets."""
    from transformers import CLIPTokenizer
    return CLIPTokenizer.from_pretrained(os.fspath(TOKENIZER_DIR))


def make_tiny(out_dir, seed: int = 0, sample_size: int = 16, cross_attention_dim: int = 32):
    """Write a tiny random Stable Diffusion pipeline (same classes as SD 1.5) with save_pretrained; return the path.

    UNet2DConditionModel (2 blocks, cross-attention), AutoencoderKL (one downsampling: latents = pixels/2),
    CLIPTextModel (2 layers, real CLIP tokenizer), DDIM scheduler with SD's scaled-linear betas.
    Native resolution = 2 x sample_size. `StableDiffusionPipeline.from_pretrained(out_dir)` loads it.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=cross_attention_dim,
        attention_head_dim=4, norm_num_groups=8)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(16, 32), latent_channels=4, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8, sample_size=2 * sample_size)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=cross_attention_dim, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
        pad_token_id=49407, projection_dim=cross_attention_dim))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    return save_pipeline(pipe, out_dir)


def save_pipeline(pipe, out_dir) -> Path:
    """save_pretrained into a temporary folder, then rename: a crash never leaves a half-written pipeline."""
    import shutil
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    pipe.save_pretrained(tmp)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir
