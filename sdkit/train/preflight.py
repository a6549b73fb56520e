"""Pre-flight: how much GPU memory and RAM a config will need, before it runs; and safe T4 settings.

    report = sdkit.train.preflight.preflight(config, budget_gb=15)   # prints nothing; report.text() explains
    config = config.replace(**sdkit.train.preflight.t4_preset()) # fp16, checkpointing, 8-bit Adam, cached latents

The estimate adds up what a training step keeps on the GPU (sizes from the model's own configs, built on the meta
device, so nothing is downloaded or allocated):

    frozen weights      P_frozen x bytes of the compute dtype (2 for fp16/bf16, 4 for fp32)
    trained weights     P_train x 4               fp32 master copies (mixed precision keeps them in fp32)
                        (P_train: the method's own `setup` run on meta-device models, counted; P_frozen the rest)
    gradients           P_train x 4
    optimizer states    P_train x 8  AdamW (two fp32 moments) + step temporaries, fitted: 0.18 x P_train x 4
                        P_train x 2  AdamW8bit (two 8-bit moments, bitsandbytes)
    activations         A x samples x (resolution / 512)^2 x (UNet width / 320);  A = 0.20 GB per sample with
                        gradient checkpointing, 0.825 GB without (SD 1.5, fp16, memory-efficient attention);
                        x2 in fp32; samples = batch_size, x2 with prior preservation (a class image per instance)
    VAE encoding        0.25 GB x batch x (resolution / 512)^2 when latents are not cached
    CUDA context        0.50 GB (context, cuBLAS workspace, allocator slack)

Calibration (ANCHORS.md, full-UNet DreamBooth, SD 1.5, 512 px, batch 1, fp16, cached latents, xformers, on a T4):
with prior preservation (one class image per instance image, as in the diffusers DreamBooth README's T4 table):
published 9.92 GB with checkpointing + 8-bit Adam -> estimate 9.91 GB (-0.1 %); 11.17 GB without checkpointing
-> 11.16 GB (-0.1 %); 15.79 GB without 8-bit Adam -> 15.69 GB (-0.7 %). The constants A, the AdamW temporaries and
the context were fitted to those three numbers, so they are a fit, not a prediction; on other setups expect about
+-15 % (the caching allocator's fragmentation varies). tests/test_dreambooth.py checks the fit within 10 %.
"""
from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

from ..config import ConfigError
from ..methods import make_method
from ..models import PRESETS, resolve_model

__all__ = ["estimate", "preflight", "t4_preset", "trainable_count", "gpu_warning", "MetaModels", "Estimate", "SD15_UNET", "SD15_TEXT_ENCODER", "SD15_VAE"]

GB = 1e9
# stable-diffusion-v1-5 component configs (the published config.json values that matter for sizes)
SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SD15_TEXT_ENCODER = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                         num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                         projection_dim=768)
SD15_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512)

# fitted constants (see the module docstring)
ACT_CKPT_GB, ACT_FULL_GB, ADAMW_TEMP, CONTEXT_GB, VAE_ENCODE_GB = 0.20, 0.825, 0.18, 0.50, 0.25


@dataclasses.dataclass
class Estimate:
    vram_gb: float
    ram_gb: float
    parts: dict                      # name -> GB
    params: dict                     # unet, text_encoder, vae, trained
    budget_gb: float = None
    ram_budget_gb: float = None
    safer: dict = None               # config changes that fit the budget (when over it)
    safer_vram_gb: float = None

    @property
    def fits(self) -> bool:
        return (self.budget_gb is None or self.vram_gb <= self.budget_gb) and \
            (self.ram_budget_gb is None or self.ram_gb <= self.ram_budget_gb)

    def text(self) -> str:
        lines = [f"pre-flight: about {self.vram_gb:.2f} GB of GPU memory, {self.ram_gb:.1f} GB of RAM "
                 f"(estimate, about +-15 %)"]
        lines += [f"  {k:<18} {v:6.2f} GB" for k, v in self.parts.items()]
        lines.append(f"  parameters: UNet {self.params['unet'] / 1e6:.1f} M, text encoder "
                     f"{self.params['text_encoder'] / 1e6:.1f} M, trained {self.params['trained'] / 1e6:.2f} M")
        if self.budget_gb is not None and self.vram_gb > self.budget_gb:
            lines.append(f"WARNING: over the {self.budget_gb:g} GB GPU budget.")
            if self.safer:
                flags = " ".join(f"--{k.replace('_', '-')} {v}" if not isinstance(v, bool) else
                                 f"--{'' if v else 'no-'}{k.replace('_', '-')}" for k, v in self.safer.items())
                lines.append(f"  safer: {self.safer} -> about {self.safer_vram_gb:.2f} GB   (CLI: {flags})")
            else:
                lines.append("  no combination of the usual savings fits; use a smaller resolution or a larger GPU.")
        if self.ram_budget_gb is not None and self.ram_gb > self.ram_budget_gb:
            lines.append(f"WARNING: over the {self.ram_budget_gb:g} GB RAM budget: load weights in fp16 and export "
                         f"LoRA files rather than whole pipelines.")
        return "\n".join(lines)


class MetaModels:
    """UNet, text encoder and VAE configs of a model; `build()` makes fresh models on the meta device (no weights
    read, nothing downloaded, nothing allocated), so each estimate can run a method's setup on its own copy."""

    def __init__(self, model: str):
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextConfig
        if model == "sdxl" or ("xl" in model.lower() and not Path(model).is_dir() and model not in PRESETS):
            raise ConfigError(f"model: {model!r}: preflight has no SDXL memory model yet (its sizes are SD 1.x's). "
                              f"Fix: see docs/SDXL.md for the T4 settings and their estimated budget.")
        folder = None
        if model in PRESETS and model not in ("sd15", "sd21-base"):
            folder = Path(resolve_model(model))
        elif Path(model).is_dir():
            folder = Path(model)
        if folder is not None:
            self.unet = UNet2DConditionModel.load_config(folder / "unet")
            self.vae = AutoencoderKL.load_config(folder / "vae")
            self.text_encoder = CLIPTextConfig.from_pretrained(folder / "text_encoder")
        else:  # a Hub id: sizes of SD 1.5 (the course's real model; SD 2.x base is within 2 %)
            self.unet, self.vae, self.text_encoder = SD15_UNET, SD15_VAE, CLIPTextConfig(**SD15_TEXT_ENCODER)

    def build(self):
        from accelerate import init_empty_weights
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel
        with init_empty_weights():
            unet = UNet2DConditionModel.from_config(self.unet)
            vae = AutoencoderKL.from_config(self.vae)
            te = CLIPTextModel(self.text_encoder)
        return unet, te, vae


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def trainable_count(config, models: MetaModels = None) -> dict:
    """What `config`'s method trains, counted by running its own setup on meta-device models:
    {"trained": parameters that train, "trained_base": those of them that are base weights (full fine-tune),
    "unet", "text_encoder", "vae": the base models' sizes}."""
    from accelerate import init_empty_weights
    unet, te, vae = (models or MetaModels(config.model)).build()
    base = {id(p) for m in (unet, te, vae) for p in m.parameters()}
    counts = {"unet": _count(unet), "text_encoder": _count(te), "vae": _count(vae)}
    method = make_method(config)
    with init_empty_weights():  # adapters the method adds land on the meta device too
        params = method.trainable_parameters(unet, te)
    counts["trained"] = sum(p.numel() for p in params)
    counts["trained_base"] = sum(p.numel() for p in params if id(p) in base)
    counts["sample_size"] = unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1)
    counts["width"] = unet.config.block_out_channels[0] / 320
    return counts


def estimate(config, budget_gb=None, ram_budget_gb=None, models: MetaModels = None) -> Estimate:
    """GPU memory and RAM of one training step of `config` (see the module docstring for the formula)."""
    c = config
    n = trainable_count(c, models)
    n_unet, n_te, n_vae, trained = n["unet"], n["text_encoder"], n["vae"], n["trained"]
    half = c.mixed_precision in ("fp16", "bf16")
    wbytes = 2 if half else 4
    frozen = n_unet + n_te + n_vae - n["trained_base"]
    resolution = c.resolution or n["sample_size"]
    area = (resolution / 512) ** 2
    width = n["width"]
    batch = c.batch_size * (2 if c.uses_prior_preservation() else 1)
    act = (ACT_CKPT_GB if c.gradient_checkpointing else ACT_FULL_GB) * batch * area * width * (1 if half else 2)
    # (an adapter needs these activations too: it saves the frozen weights' gradients and optimizer states, not these)
    opt = trained * (2 if c.optimizer == "adamw8bit" else 8 * (1 + ADAMW_TEMP / 2))
    parts = {
        "frozen weights": frozen * wbytes / GB,
        "trained weights": trained * 4 / GB,
        "gradients": trained * 4 / GB,
        "optimizer": opt / GB,
        "activations": act,
        "VAE encoding": 0.0 if c.cache_latents else VAE_ENCODE_GB * c.batch_size * area * width,
        "CUDA context": CONTEXT_GB,
    }
    if c.ema:
        parts["EMA copy"] = trained * 4 / GB
    vram = sum(parts.values())
    # RAM: the pipeline is read in fp32 on the CPU before it moves to the GPU, plus Python/torch/notebook overhead
    ram = 1.5 + (n_unet + n_te + n_vae) * 4 / GB + (0.5 if c.cache_latents else 0.0)
    return Estimate(vram_gb=vram, ram_gb=ram, parts=parts,
                    params={"unet": n_unet, "text_encoder": n_te, "vae": n_vae, "trained": trained,
                            "trained_base": n["trained_base"]},
                    budget_gb=budget_gb, ram_budget_gb=ram_budget_gb)


def t4_preset(config=None, bitsandbytes=None, xformers=None) -> dict:
    """Config changes for a 16 GB T4 (no bf16): fp16, gradient checkpointing, 8-bit Adam when bitsandbytes is
    installed, cached latents (center crop, no flip), xformers when installed, else PyTorch SDPA."""
    if bitsandbytes is None:
        bitsandbytes = importlib.util.find_spec("bitsandbytes") is not None
    if xformers is None:
        xformers = importlib.util.find_spec("xformers") is not None
    changes = {"mixed_precision": "fp16", "gradient_checkpointing": True,
               "optimizer": "adamw8bit" if bitsandbytes else "adamw",
               "cache_latents": True, "center_crop": True, "random_flip": False, "color_jitter": 0.0,
               "attention": "xformers" if xformers else "sdpa"}
    if config is not None:
        changes = {k: v for k, v in changes.items() if getattr(config, k) != v}
    return changes


def preflight(config, budget_gb: float = 15.0, ram_budget_gb: float = 12.0, bitsandbytes=None) -> Estimate:
    """Estimate `config`; when over `budget_gb`, find the first of the usual savings (in the order that costs
    least quality and speed) that fits, and put it in `report.safer`."""
    models = MetaModels(config.model)
    est = estimate(config, budget_gb, ram_budget_gb, models=models)
    if est.vram_gb <= budget_gb:
        return est
    if bitsandbytes is None:
        bitsandbytes = importlib.util.find_spec("bitsandbytes") is not None
    steps = [{"mixed_precision": "fp16"}, {"cache_latents": True, "center_crop": True, "random_flip": False,
                                           "color_jitter": 0.0},
             {"gradient_checkpointing": True}]
    if bitsandbytes:
        steps.append({"optimizer": "adamw8bit"})
    if config.batch_size > 1:
        steps.append({"batch_size": 1, "grad_accum": config.grad_accum * config.batch_size})
    if est.params["trained_base"]:  # it trains base weights (full fine-tune, DreamBooth): an adapter is lighter
        steps.append({"method": "lora", "train_text_encoder": False})
    changes = {}
    for step in steps:
        step = {k: v for k, v in step.items() if getattr(config, k) != v}
        if not step:
            continue
        changes.update(step)
        trial = estimate(config.replace(**changes), models=models)
        if trial.vram_gb <= budget_gb:
            est.safer, est.safer_vram_gb = changes, trial.vram_gb
            break
    return est


def gpu_warning(config, budget_gb: float) -> str | None:
    """The warning the training loop prints before it loads a model when `config` is estimated over a GPU of
    `budget_gb` (None when it fits, or when no estimate can be made for this model)."""
    try:
        est = preflight(config, budget_gb=budget_gb, ram_budget_gb=None)
    except (ConfigError, OSError, ValueError):
        return None
    if est.vram_gb <= budget_gb:
        return None
    text = (f"pre-flight: this config needs about {est.vram_gb:.1f} GB of GPU memory (estimate, +-15 %); this GPU "
            f"has {budget_gb:.1f} GB, so it will probably run out of memory.")
    if est.safer:
        text += f" Settings that fit (about {est.safer_vram_gb:.1f} GB): {est.safer}."
    return text
