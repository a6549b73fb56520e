"""LoRA (Hu et al. 2021) with peft: small low-rank updates on the UNet's attention projections (and optionally the
text encoder's); the base weights stay frozen.

    run = sdkit.train(sdkit.LoRAConfig(model="mini", data="data_samples/glyph", steps=300))
    python -m sdkit export RUN --format kohya       # one .safetensors for AUTOMATIC1111 / ComfyUI / kohya
    python -m sdkit export RUN --format diffusers   # pipe.load_lora_weights(folder)

| format    | what                                          | who loads it                                        |
|-----------|-----------------------------------------------|-----------------------------------------------------|
| kohya     | one .safetensors, `lora_unet_…`/`lora_te_…`   | AUTOMATIC1111, ComfyUI, kohya, and diffusers        |
| diffusers | folder with pytorch_lora_weights.safetensors  | `pipe.load_lora_weights(folder)` (diffusers, peft)  |
plus `pipeline` and `single-file` (the LoRA merged into the weights; sdkit.export).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..config import ConfigError
from ..data.files import respect_umask, write_safetensors
from .base import PIPELINE_EXPORTS, TEXT_ENCODER_LORA_TARGETS, PeftAdapterMethod, split_prefix
from .kohya import kohya_metadata, peft_modules, peft_to_kohya

__all__ = ["LoRAMethod", "ATTN_FF", "CONVS"]

# module names of the SD UNet (and the mini one): attention projections + feed-forward, and the ResNet convolutions
ATTN_FF = "to_q,to_k,to_v,to_out.0,ff.net.0.proj,ff.net.2"
CONVS = "proj_in,proj_out,conv1,conv2"


class LoRAMethod(PeftAdapterMethod):
    """peft LoRA on the UNet's attention projections (and optionally the text encoder's). Base weights stay frozen."""
    name = "lora"
    display_name = "LoRA"
    supports_prior_preservation = True
    supports_strength = True
    export_formats = {"kohya": "{name}.safetensors", "diffusers": "diffusers", **PIPELINE_EXPORTS}
    hub_formats = ("diffusers", "kohya")
    hub_tags = ("lora",)
    recipe = dict(lora_rank=8, lr=1e-3, lora_targets=f"{ATTN_FF},{CONVS}")
    use_dora = False
    network_module = "networks.lora"   # kohya's ss_network_module

    def lora_config(self, targets, **extra):
        from peft import LoraConfig
        c = self.config
        return LoraConfig(r=c.lora_rank, lora_alpha=self.alpha(), lora_dropout=c.lora_dropout,
                          init_lora_weights="gaussian", target_modules=targets, use_dora=self.use_dora, **extra)

    def setup(self, unet, text_encoder):
        from peft import inject_adapter_in_model
        c = self.config
        unet.requires_grad_(False)
        text_encoder.requires_grad_(False)
        unet.add_adapter(self.lora_config(self.targets()))
        te_params = []
        if c.train_text_encoder:
            # peft's own injection (transformers' add_adapter needs a newer peft than PyPI may have)
            inject_adapter_in_model(self.lora_config(TEXT_ENCODER_LORA_TARGETS), text_encoder)
            te_params = [p for p in text_encoder.parameters() if p.requires_grad]
        unet_params = [p for p in unet.parameters() if p.requires_grad]
        if not unet_params:
            raise ConfigError(f"lora_targets: {c.lora_targets!r} matched no UNet module. Fix: use module names "
                              f"of the UNet such as to_q,to_k,to_v,to_out.0 (attention) or ff.net.0.proj,ff.net.2.")
        return self._groups(unet_params, te_params)

    def no_op_state(self, state):
        """lora_B = 0: the update B @ A is zero, the base model exactly."""
        return {k: (torch.zeros_like(v) if ".lora_B." in k else v) for k, v in state.items()}

    # ---- export ------------------------------------------------------------------------------------------
    def write_export(self, format, state, out, info):
        unet_sd, te_sd = split_prefix(state, "unet."), split_prefix(state, "text_encoder.")
        if format == "kohya":
            return self.write_kohya(unet_sd, te_sd, Path(out), info)
        if format == "diffusers":
            return self.write_diffusers(unet_sd, te_sd, Path(out), info)
        return super().write_export(format, state, out, info)

    def kohya_tensors(self, unet_sd, te_sd, dtype=torch.float16) -> dict:
        return peft_to_kohya(unet_sd, te_sd, self.alpha(), dtype)

    def write_kohya(self, unet_sd, te_sd, out: Path, info, dtype=torch.float16) -> Path:
        """One kohya .safetensors (A1111, ComfyUI, kohya, diffusers `load_lora_weights`). fp16 like kohya's files."""
        c = self.config
        if out.suffix != ".safetensors":
            out = out / f"{info.name}.safetensors"
        out.parent.mkdir(parents=True, exist_ok=True)
        args = {"targets": c.lora_targets, "dropout": c.lora_dropout}
        if self.use_dora:
            args["dora_wd"] = True
        meta = kohya_metadata(info, self.network_module, c.lora_rank, self.alpha(), args, unet_sd, te_sd)
        write_safetensors(self.kohya_tensors(unet_sd, te_sd, dtype), str(out), metadata=meta)
        return out

    def adapter_metadata(self, sd) -> dict:
        """peft LoraConfig fields diffusers rebuilds the adapter from: exact module paths, so nothing else matches."""
        return {"r": self.config.lora_rank, "lora_alpha": self.alpha(), "target_modules": peft_modules(sd),
                "init_lora_weights": "gaussian", "use_dora": self.use_dora, "lora_bias": False}

    def write_diffusers(self, unet_sd, te_sd, out: Path, info) -> Path:
        """A folder with pytorch_lora_weights.safetensors (+ adapter metadata: rank, alpha) for `load_lora_weights`."""
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
        cls = StableDiffusionXLPipeline if info.sdxl else StableDiffusionPipeline
        out.mkdir(parents=True, exist_ok=True)
        # peft keys as they are (`unet.<module>.lora_A.weight`): diffusers loads them natively. Its older
        # `convert_state_dict_to_diffusers` renames attention keys only, so a LoRA that also targets feed-forward or
        # conv layers came out half in one format, half in the other, and the attention half was dropped at load.
        # The metadata (rank, alpha, exact module paths) makes the loaded scale alpha/rank the trained one.
        cls.save_lora_weights(
            out, unet_lora_layers=unet_sd, text_encoder_lora_layers=te_sd or None,
            unet_lora_adapter_metadata=self.adapter_metadata(unet_sd),
            text_encoder_lora_adapter_metadata=self.adapter_metadata(te_sd) if te_sd else None,
            safe_serialization=True)
        return respect_umask(out)
