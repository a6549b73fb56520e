"""Models: presets in one place, `load_pipeline`, the offline CLIP tokenizer and tiny pipelines for tests.

The same `from_pretrained` code loads SD 1.5 from the Hub on Colab and the mini / tiny pipelines from local folders.
Which family a pipeline belongs to (SD 1.x or SDXL) is read from its files here (`is_sdxl_model`); what the
family changes in training and sampling is sdkit.families.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch

from .data.captions import TOKENIZER_DIR, clip_tokenizer  # the offline CLIP tokenizer (re-exported here)
from .data.files import respect_umask

__all__ = ["PRESETS", "resolve_model", "load_pipeline", "clip_tokenizer", "make_tiny", "data_samples_dir",
           "native_resolution", "ModelNotFound", "save_pipeline", "is_sdxl_model", "make_tiny_sdxl", "TOKENIZER_DIR"]

PACKAGE_DIR = Path(__file__).resolve().parent


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
    # SDXL (sdkit.families, docs/SDXL.md). "vae": loaded in place of the pipeline's own VAE (SDXL's overflows in fp16);
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
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", name_or_path):
        raise ModelNotFound(f"model {name_or_path!r}: no such folder, and not a preset ({', '.join(PRESETS)}) or a "
                            f"Hub id of the form org/name. Fix: check the path.")
    return name_or_path  # a Hub id: from_pretrained downloads (or reads the cache when HF_HUB_OFFLINE=1)


def is_sdxl_model(target, revision=None) -> bool:
    """Whether `target` (a resolved folder or Hub id) holds an SDXL pipeline, without loading it: a folder's
    model_index.json `_class_name`; for a Hub id the cached model_index.json when there is one, else its name: "xl"
    not followed by a letter (stabilityai/stable-diffusion-xl-base-1.0, stabilityai/sdxl-turbo, RealVisXL_V4.0)."""
    target = os.fspath(target)
    index = Path(target) / "model_index.json"
    if not index.is_file() and not Path(target).exists():
        try:
            from huggingface_hub import try_to_load_from_cache
            cached = try_to_load_from_cache(target, "model_index.json", revision=revision)
            index = Path(cached) if isinstance(cached, str) else index
        except Exception:  # noqa: BLE001 - no cache or an odd id: fall back to the name
            pass
    if index.is_file():
        return "XL" in json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")
    if Path(target).exists():
        return (Path(target) / "text_encoder_2").is_dir()
    return re.search(r"xl(?![a-z])", target.lower()) is not None


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


def make_tiny_sdxl(out_dir, seed: int = 0, sample_size: int = 16, hidden: int = 32, time_dim: int = 8):
    """Write a tiny random SDXL pipeline (same classes and conditioning as SDXL base) with save_pretrained.

    UNet2DConditionModel with `addition_embed_type="text_time"`: context = 2 x `hidden` (both encoders'
    penultimate states concatenated), added embedding = 6 time ids x `time_dim` + the pooled `hidden`-dim
    projection of text_encoder_2 (`projection_class_embeddings_input_dim`). Level 0 without attention and level 1
    with two transformer blocks, as SDXL's levels are. AutoencoderKL with one downsampling (latents = pixels / 2) and
    SDXL's scaling factor; CLIPTextModel + CLIPTextModelWithProjection (2 layers) with the real CLIP tokenizer, the
    second padding with "!" as SDXL's tokenizer_2 does; EulerDiscreteScheduler with SDXL's scaled-linear betas.
    Native resolution = 2 x sample_size. `StableDiffusionXLPipeline.from_pretrained(out_dir)` loads it.
    """
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2),
        cross_attention_dim=2 * hidden, attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=8,
        addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + hidden)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(16, 32), latent_channels=4, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8, sample_size=2 * sample_size, scaling_factor=0.13025, force_upcast=True)
    common = dict(vocab_size=49408, hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                  projection_dim=hidden, hidden_act="gelu")
    text_encoder = CLIPTextModel(CLIPTextConfig(pad_token_id=49407, **common))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(pad_token_id=0, **common))
    tokenizer_2 = clip_tokenizer()
    tokenizer_2.pad_token = "!"  # SDXL's tokenizer_2 (OpenCLIP bigG) pads with "!" (id 0); tokenizer 1 with EOS
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading", interpolation_type="linear",
                                       prediction_type="epsilon", num_train_timesteps=1000)
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=clip_tokenizer(), tokenizer_2=tokenizer_2, unet=unet,
                                     scheduler=scheduler, force_zeros_for_empty_prompt=True, add_watermarker=False)
    return save_pipeline(pipe, out_dir)


def save_pipeline(pipe, out_dir) -> Path:
    """save_pretrained into a temporary folder, then rename: a crash never leaves a half-written pipeline."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    pipe.save_pretrained(tmp)
    respect_umask(tmp)  # safetensors writes 0600 files
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir
