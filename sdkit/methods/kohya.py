"""The kohya file layout, shared by every adapter method that exports one (LoRA, LoCon, DoRA, LoHa, LoKr).

Kohya names (the only LoRA layout that AUTOMATIC1111 and ComfyUI both load whole): the diffusers module path with
dots replaced by underscores, `lora_unet_` in front for the UNet and `lora_te_text_model_` for the text encoder —
even with transformers >= 5, whose `CLIPTextModel` has no `text_model.` level in `named_modules()` any more. A LoRA
module has `.lora_down.weight` (peft's lora_A), `.lora_up.weight` (lora_B) and `.alpha` (the update is scaled by
alpha / rank, in kohya as in peft), and the file carries kohya's `ss_*` metadata.
"""
from __future__ import annotations

import json

import torch

__all__ = ["kohya_name", "peft_modules", "peft_to_kohya", "kohya_metadata", "LORA_SUFFIXES"]

LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight")


def kohya_name(module_path: str, part: str) -> str:
    """`down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`, "unet" -> `lora_unet_down_blocks_0_…_attn1_to_q`.

    For the text encoder the name always has the `text_model` level that transformers < 5 had:
    `encoder.layers.3.self_attn.q_proj` -> `lora_te_text_model_encoder_layers_3_self_attn_q_proj`."""
    if part == "unet":
        return "lora_unet_" + module_path.replace(".", "_")
    if part == "text_encoder":
        if not module_path.startswith("text_model."):
            module_path = "text_model." + module_path  # transformers >= 5 dropped this level; the files keep it
        return "lora_te_" + module_path.replace(".", "_")
    raise ValueError(f"part: {part!r}; expected 'unet' or 'text_encoder'")


def peft_modules(sd: dict) -> list:
    """Module paths of a peft LoRA state dict, in order."""
    out = []
    for k in sd:
        for s in LORA_SUFFIXES:
            if k.endswith(s) and k[: -len(s)] not in out:
                out.append(k[: -len(s)])
    return out


def peft_to_kohya(unet_sd: dict, te_sd: dict, alpha: float, dtype=torch.float16) -> dict:
    """peft LoRA state dicts -> kohya tensors {name.lora_down.weight, name.lora_up.weight, name.alpha}."""
    out = {}
    for part, sd in (("unet", unet_sd), ("text_encoder", te_sd)):
        for m in peft_modules(sd):
            name = kohya_name(m, part)
            out[f"{name}.lora_down.weight"] = sd[f"{m}.lora_A.weight"].to(dtype).contiguous()
            out[f"{name}.lora_up.weight"] = sd[f"{m}.lora_B.weight"].to(dtype).contiguous()
            out[f"{name}.alpha"] = torch.tensor(float(alpha), dtype=dtype)
    return out


def kohya_metadata(info, network_module: str, rank, alpha, network_args: dict, unet_sd: dict, te_sd: dict) -> dict:
    """kohya's ss_* header fields (all strings), so A1111's and ComfyUI's info panels show the training."""
    c = info.config
    base = str(c.model)
    return {
        "ss_network_module": network_module, "ss_network_dim": str(rank), "ss_network_alpha": str(alpha),
        "ss_base_model_version": "sdxl_base_v1-0" if info.sdxl else "sd_v1", "ss_sd_model_name": base,
        "ss_v2": "False", "ss_resolution": str(c.resolution or ""), "ss_learning_rate": str(c.lr),
        "ss_text_encoder_lr": str(c.text_encoder_lr if c.text_encoder_lr is not None else c.lr),
        "ss_unet_lr": str(c.lr), "ss_max_train_steps": str(c.steps), "ss_steps": str(info.step),
        "ss_seed": str(c.seed), "ss_mixed_precision": c.mixed_precision, "ss_optimizer": c.optimizer,
        "ss_network_args": json.dumps(network_args),
        "ss_training_comment": f"trained with sdkit {info.version} ({c.method}) on {c.data}",
        "ss_num_train_images": "" if info.num_images is None else str(info.num_images),
        "ss_output_name": info.name, "sshs_model_hash": "",
        "modelspec.architecture": ("stable-diffusion-xl-v1-base" if info.sdxl else "stable-diffusion-v1") + "/lora",
        "sdkit_unet_modules": str(len(peft_modules(unet_sd))),
        "sdkit_text_encoder_modules": str(len(peft_modules(te_sd))),
    }
