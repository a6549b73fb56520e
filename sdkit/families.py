"""Model families: what differs between SD 1.x and SDXL in training and sampling, behind one object.

    family = family_for_model(resolve_model(config.model))     # before loading: SD1Family() or SDXLFamily()
    hidden, pooled = family.encode_text(trainer, captions)     # the UNet's context (+ SDXL's pooled text)
    extra = family.unet_kwargs(trainer, batch, pooled)         # {} for SD 1.x; SDXL: added_cond_kwargs

The training loop asks its family and never tests which one it has. Noise, timesteps, loss, methods and
checkpoints are the same for both.

What SDXL adds to the SD 1.x loop:
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
(`validation_split`) and the methods whose class says `supports_sdxl = False`; `check_config` says so before
anything trains.
"""
from __future__ import annotations

import torch
from PIL import Image

from .config import ConfigError
from .models import is_sdxl_model
from .registry import method_class, method_names
from .rng import sample_seed

__all__ = ["ModelFamily", "SD1Family", "SDXLFamily", "family_for_model", "is_sdxl", "is_sdxl_model", "encode_prompt",
           "add_time_ids", "class_geometry", "batch_time_ids", "SDXL_BASE", "FP16_FIX_VAE"]

SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
FP16_FIX_VAE = "madebyollin/sdxl-vae-fp16-fix"


def is_sdxl(pipe) -> bool:
    """An SDXL pipeline has a second text encoder (StableDiffusionXLPipeline and its relatives)."""
    return hasattr(pipe, "text_encoder_2")


def family_for_model(target, revision=None) -> "ModelFamily":
    """The family of the pipeline at `target` (a resolved folder or Hub id), read from its files, not loaded."""
    return SDXLFamily() if is_sdxl_model(target, revision) else SD1Family()


class ModelFamily:
    """What a model family decides in training and sampling. The loop calls these; subclasses fill them in."""
    name = "base"

    def check_config(self, config) -> None:
        """Refuse, before loading, what this family cannot train; the error names the field and the fix."""

    def load_dtype(self, weight_dtype):
        """The dtype to load the pipeline in (None: as saved, made fp32)."""
        return None

    def prepare_trainer(self, trainer) -> None:
        """After the trainer moved its models to the device: whatever else the family needs there."""

    def encode_text(self, trainer, captions) -> tuple:
        """(UNet context (b, 77, d), pooled text (b, p) or None) for `captions`."""
        raise NotImplementedError

    def unet_kwargs(self, trainer, batch, pooled) -> dict:
        """Extra keyword arguments of the UNet's forward pass for a micro-batch."""
        return {}

    def pipeline(self, trainer):
        """A sampling pipeline over the models being trained (it shares their weights)."""
        raise NotImplementedError


class SD1Family(ModelFamily):
    """SD 1.x / 2.x: one CLIP text encoder, its last hidden states as the context; a StableDiffusionPipeline."""
    name = "sd1"

    def encode_text(self, trainer, captions):
        tok = trainer.tokenizer
        ids = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(trainer.accelerator.device)   # (b, 77)
        return trainer.text_encoder(ids)[0], None                                  # (b, 77, d)

    def pipeline(self, trainer):
        from diffusers import StableDiffusionPipeline
        acc = trainer.accelerator
        pipe = StableDiffusionPipeline(
            vae=trainer.vae, text_encoder=acc.unwrap_model(trainer.text_encoder), tokenizer=trainer.tokenizer,
            unet=acc.unwrap_model(trainer.unet), scheduler=trainer.base_pipe.scheduler, safety_checker=None,
            feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe


class SDXLFamily(ModelFamily):
    """SDXL: two text encoders (the second frozen), pooled text embeds and size/crop time ids for the UNet."""
    name = "sdxl"

    def check_config(self, config):
        if config.train_text_encoder:
            raise ConfigError("train_text_encoder: training the text encoders is not supported yet for SDXL (it has "
                              "two, and both would need adapters). Fix: train_text_encoder=False (the UNet LoRA "
                              "alone is the usual SDXL recipe).")
        if getattr(config, "validation_split", 0):
            raise ConfigError("validation_split: the validation loss (sdkit.train.validation.validation_loss) reads "
                              "one text encoder and no size/crop conditioning, so it is not supported yet for SDXL. "
                              "Fix: validation_split=0 (judge SDXL runs by their sample grids).")
        if not method_class(config.method).supports_sdxl:
            supported = [m for m in method_names() if method_class(m).supports_sdxl]
            raise ConfigError(f"method: {config.method!r} is not supported yet for SDXL; expected one of "
                              f"{', '.join(supported)}. Fix: method='lora'.")

    def load_dtype(self, weight_dtype):
        # in the compute dtype: SDXL in fp32 is 14 GB of RAM
        return weight_dtype if weight_dtype != torch.float32 else None

    def prepare_trainer(self, trainer):
        """text_encoder_2 frozen, on the device in the compute dtype; the VAE back to fp32 when it is in fp16 and its
        config says it overflows there (`force_upcast`: SDXL's own VAE; the fp16-fix VAE has force_upcast=False and
        stays fp16)."""
        pipe = trainer.base_pipe
        self.text_encoder_2, self.tokenizer_2 = pipe.text_encoder_2, pipe.tokenizer_2
        self.text_encoder_2.requires_grad_(False)
        self.text_encoder_2.eval()
        self.text_encoder_2.to(trainer.accelerator.device, dtype=trainer.weight_dtype)
        if trainer.weight_dtype == torch.float16 and trainer.vae.config.get("force_upcast", False):
            trainer.vae.to(dtype=torch.float32)
            trainer.message("info", "SDXL VAE kept in fp32: it overflows in fp16 (NaN latents). For less memory use "
                                    f"the fp16-fix VAE ({FP16_FIX_VAE}; the 'sdxl' preset does) — see docs/SDXL.md.")

    def encode_text(self, trainer, captions):
        return encode_prompt(captions, (trainer.tokenizer, self.tokenizer_2),
                             (trainer.text_encoder, self.text_encoder_2), trainer.accelerator.device)

    def unet_kwargs(self, trainer, batch, pooled):
        """Pooled text embeds and (original size, crop, target size) time ids per sample."""
        return {"added_cond_kwargs": {"text_embeds": pooled.to(trainer.weight_dtype),
                                      "time_ids": batch_time_ids(trainer, batch)}}

    def pipeline(self, trainer):
        """A StableDiffusionXLPipeline (no watermark, so samples compare pixel for pixel)."""
        from diffusers import StableDiffusionXLPipeline
        acc, base = trainer.accelerator, trainer.base_pipe
        pipe = StableDiffusionXLPipeline(
            vae=trainer.vae, text_encoder=acc.unwrap_model(trainer.text_encoder), text_encoder_2=self.text_encoder_2,
            tokenizer=trainer.tokenizer, tokenizer_2=self.tokenizer_2, unet=acc.unwrap_model(trainer.unet),
            scheduler=base.scheduler,
            force_zeros_for_empty_prompt=base.config.get("force_zeros_for_empty_prompt", True), add_watermarker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe


# ---- SDXL text: both encoders ------------------------------------------------------------------------------------
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


# ---- SDXL size and crop conditioning -----------------------------------------------------------------------------
def add_time_ids(original_size, crop_top_left, target_size) -> list:
    """The six numbers SDXL's UNet reads per sample: (orig h, orig w, crop top, crop left, target h, target w)."""
    return [*original_size, *crop_top_left, *target_size]


def class_geometry(path, size) -> dict:
    """Geometry of a DreamBooth class image as sdkit.methods.prior loads it for `size` = R (a square) or (w, h) (its
    micro-batch's aspect-ratio bucket): resized to cover the size, center crop."""
    tw, th = (size, size) if isinstance(size, int) else size
    with Image.open(path) as im:
        w, h = im.size
    s = max(tw / w, th / h)
    rw, rh = max(tw, round(w * s)), max(th, round(h * s))
    return {"original_size": (h, w), "crop_top_left": ((rh - th) // 2, (rw - tw) // 2), "target_size": (th, tw)}


def batch_time_ids(trainer, batch) -> torch.Tensor:
    """(b, 6) float32 time ids of a micro-batch: dataset samples from `ImageCaptionDataset.geometry` (the same seeded
    resize/crop/flip the pixels got, also when latents are cached: with aspect-ratio buckets, the picture's original
    size, the crop its bucket made and the bucket as target size), DreamBooth class samples from their file (at the
    micro-batch's bucket: key ("class", j, (w, h)))."""
    c, R = trainer.config, trainer.resolution
    rows = []
    for index, g in zip(batch["index"], batch["g"]):
        if isinstance(index, tuple) and index[0] == "class":
            geo = class_geometry(trainer.method.class_paths[index[1]], index[2] if len(index) > 2 else R)
        elif isinstance(index, tuple):  # a sample some other method added: assume a whole picture at R
            geo = {"original_size": (R, R), "crop_top_left": (0, 0), "target_size": (R, R)}
        else:
            geo = trainer.dataset.geometry(index, sample_seed(c.seed, g))
        rows.append(add_time_ids(geo["original_size"], geo["crop_top_left"], geo["target_size"]))
    return torch.tensor(rows, dtype=torch.float32, device=trainer.accelerator.device)
