"""SDXL on sdkit's one training loop: two text encoders, pooled text embeds, size/crop conditioning.

    run = sdkit.train(sdkit.TrainConfig(model="tiny-sdxl", data="data_samples/glyph", method="lora", steps=300))

What SDXL adds to the SD 1.x loop (everything else — noise, timesteps, loss, LoRA, checkpoints — is the same):
1. text: two CLIP text encoders. The UNet's context is the *penultimate* hidden states of both, concatenated
   ((b, 77, 768) + (b, 77, 1280) -> (b, 77, 2048) for SDXL base), as diffusers' `encode_prompt` builds it.
2. pooled text: text_encoder_2 (a CLIPTextModelWithProjection) also gives one vector per prompt, `text_embeds`
   (b, 1280), added to the timestep embedding.
3. micro-conditioning: six numbers per sample, `time_ids` = original_size (h, w) + crop_top_left (top, left) +
   target_size (h, w). SDXL was trained with them so that it learns what a crop or an upscaled small image looks
   like; at sampling time the pipeline passes (H, W), (0, 0), (H, W) — "a whole, large picture". Training therefore
   records, for each sample, the size of the file before resizing and where the crop was cut
   (`ImageCaptionDataset.geometry`).

Caption dropout trains on "" encoded by both encoders, as diffusers' SDXL training scripts do. (The SDXL pipeline's
`force_zeros_for_empty_prompt` — zeros instead of the encoded "" — applies only to the *negative* prompt at sampling
time, when no negative prompt is given; training does not use it.)

Not supported yet for SDXL: training the text encoders (`train_text_encoder=True`), the validation loss
(`validation_split`) and the methods outside SUPPORTED_METHODS; `check_config` says so before anything trains.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

__all__ = ["SUPPORTED_METHODS", "make_tiny_sdxl", "is_sdxl", "is_sdxl_model", "check_config", "prepare_trainer",
           "encode_prompt", "add_time_ids", "batch_time_ids", "sample_pipeline"]

# Methods whose trained weights live in the UNet only (the loop's SDXL path conditions the UNet, nothing more).
SUPPORTED_METHODS = ("lora", "locon", "full", "dreambooth")
SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
FP16_FIX_VAE = "madebyollin/sdxl-vae-fp16-fix"


# ---- 1. which pipelines are SDXL --------------------------------------------------------------------------------
def is_sdxl(pipe) -> bool:
    """An SDXL pipeline has a second text encoder (StableDiffusionXLPipeline and its relatives)."""
    return hasattr(pipe, "text_encoder_2")


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


def check_config(config) -> None:
    """Refuse, before training, what the SDXL path does not do yet; the error names the field and the fix."""
    from .config import ConfigError
    if config.train_text_encoder:
        raise ConfigError("train_text_encoder: training the text encoders is not supported yet for SDXL (it has two, "
                          "and both would need adapters). Fix: train_text_encoder=False (the UNet LoRA alone is the "
                          "usual SDXL recipe).")
    if getattr(config, "validation_split", 0):
        raise ConfigError("validation_split: the validation loss (sdkit.evaluate.metrics.validation_loss) reads one "
                          "text encoder and no size/crop conditioning, so it is not supported yet for SDXL. Fix: "
                          "validation_split=0 (judge SDXL runs by their sample grids).")
    if config.method not in SUPPORTED_METHODS:
        raise ConfigError(f"method: {config.method!r} is not supported yet for SDXL; expected one of "
                          f"{', '.join(SUPPORTED_METHODS)}. Fix: method='lora'.")


# ---- 2. set-up in the Trainer -----------------------------------------------------------------------------------
def prepare_trainer(trainer) -> None:
    """After the loop moved its models: text_encoder_2 frozen, on the device in the compute dtype; the VAE back to
    fp32 when it is in fp16 and its config says it overflows there (`force_upcast`: SDXL's own VAE; the fp16-fix VAE
    has force_upcast=False and stays fp16)."""
    pipe, device = trainer.base_pipe, trainer.accelerator.device
    trainer.text_encoder_2, trainer.tokenizer_2 = pipe.text_encoder_2, pipe.tokenizer_2
    trainer.text_encoder_2.requires_grad_(False)
    trainer.text_encoder_2.eval()
    trainer.text_encoder_2.to(device, dtype=trainer.weight_dtype)
    if trainer.weight_dtype == torch.float16 and trainer.vae.config.get("force_upcast", False):
        trainer.vae.to(dtype=torch.float32)
        trainer.message("info", "SDXL VAE kept in fp32: it overflows in fp16 (NaN latents). For less memory use the "
                                f"fp16-fix VAE ({FP16_FIX_VAE}; the 'sdxl' preset does) — see docs/SDXL.md.")


# ---- 3. text: both encoders -------------------------------------------------------------------------------------
def encode_prompt(captions, tokenizers, text_encoders, device):
    """(hidden (b, 77, d1 + d2), pooled (b, p)) for `captions`, exactly as StableDiffusionXLPipeline.encode_prompt:
    each encoder's penultimate hidden states, concatenated; pooled = text_encoder_2's projected `text_embeds`."""
    hidden = []
    pooled = None
    for tokenizer, encoder in zip(tokenizers, text_encoders):
        ids = tokenizer(list(captions), padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids.to(device)
        out = encoder(ids, output_hidden_states=True)
        hidden.append(out.hidden_states[-2])                      # (b, 77, d_i): SDXL skips the last layer
        if hasattr(out, "text_embeds"):
            pooled = out.text_embeds                              # (b, p): only the projection model has it
    return torch.cat(hidden, dim=-1), pooled


# ---- 4. size and crop conditioning ------------------------------------------------------------------------------
def add_time_ids(original_size, crop_top_left, target_size) -> list:
    """The six numbers SDXL's UNet reads per sample: (orig h, orig w, crop top, crop left, target h, target w)."""
    return [*original_size, *crop_top_left, *target_size]


def _class_geometry(path, resolution: int) -> dict:
    """Geometry of a DreamBooth class image as `dreambooth._load_pixels` prepares it (short side to R, centre crop)."""
    from PIL import Image
    with Image.open(path) as im:
        w, h = im.size
    s = resolution / min(w, h)
    rw, rh = max(resolution, round(w * s)), max(resolution, round(h * s))
    return {"original_size": (h, w), "crop_top_left": ((rh - resolution) // 2, (rw - resolution) // 2),
            "target_size": (resolution, resolution)}


def batch_time_ids(trainer, batch) -> torch.Tensor:
    """(b, 6) float32 time ids of a micro-batch: dataset samples from `ImageCaptionDataset.geometry` (the same seeded
    resize/crop/flip the pixels got, also when latents are cached), DreamBooth class samples from their file."""
    from .train.loop import _sample_seed
    c, R = trainer.config, trainer.resolution
    rows = []
    for index, g in zip(batch["index"], batch["g"]):
        if isinstance(index, tuple) and index[0] == "class":
            geo = _class_geometry(trainer.method.class_paths[index[1]], R)
        elif isinstance(index, tuple):  # a sample some other method added: assume a whole picture at R
            geo = {"original_size": (R, R), "crop_top_left": (0, 0), "target_size": (R, R)}
        else:
            geo = trainer.dataset.geometry(index, _sample_seed(c.seed, g))
        rows.append(add_time_ids(geo["original_size"], geo["crop_top_left"], geo["target_size"]))
    return torch.tensor(rows, dtype=torch.float32, device=trainer.accelerator.device)


def unet_conditioning(trainer, batch, pooled, dtype) -> dict:
    """The UNet's `added_cond_kwargs` for a micro-batch: pooled text embeds and size/crop time ids."""
    return {"text_embeds": pooled.to(dtype), "time_ids": batch_time_ids(trainer, batch)}


# ---- 5. samples -----------------------------------------------------------------------------------------------
def sample_pipeline(trainer):
    """A StableDiffusionXLPipeline over the models being trained (shares their weights; no watermark, so samples
    compare pixel for pixel)."""
    from diffusers import StableDiffusionXLPipeline
    acc, base = trainer.accelerator, trainer.base_pipe
    pipe = StableDiffusionXLPipeline(
        vae=trainer.vae, text_encoder=acc.unwrap_model(trainer.text_encoder), text_encoder_2=trainer.text_encoder_2,
        tokenizer=trainer.tokenizer, tokenizer_2=trainer.tokenizer_2, unet=acc.unwrap_model(trainer.unet),
        scheduler=base.scheduler, force_zeros_for_empty_prompt=base.config.get("force_zeros_for_empty_prompt", True),
        add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---- 6. a tiny random SDXL pipeline for tests -------------------------------------------------------------------
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
    from .models import clip_tokenizer, save_pipeline

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
