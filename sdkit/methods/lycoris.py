"""LoHa and LoKr (the LyCORIS family) on the one loop, with peft's implementations, and their LyCORIS-format export.

    sdkit.train(TrainConfig(method="loha", lora_rank=4, lora_alpha=4, model="mini", data="data_samples/glyph"))
    python -m sdkit export RUN --format lycoris --out glyph-loha.safetensors   # A1111 (1.5+) / ComfyUI: models/Lora

- LoHa (Hadamard product): delta W = (w1_a @ w1_b) * (w2_a @ w2_b) * alpha/rank — two rank-r factors multiplied
  element-wise, so the update can reach rank r^2 for the parameters of a rank-2r LoRA.
- LoKr (Kronecker product): delta W = kron(w1, w2) * alpha/rank, w2 optionally low-rank (w2_a @ w2_b). Very few
  parameters for a large layer; `lycoris_factor` picks how each weight's shape is split.
- LoCon (LoRA on the ResNet convolutions as well) is plain LoRA with conv targets: `method="locon"` (locon.py),
  exported with `--format kohya`.

The export writes LyCORIS' key names (`lora_unet_<module path with _>.hada_w1_a`, `.lokr_w1`, ..., `.alpha`),
which AUTOMATIC1111's built-in Lora extension and ComfyUI read. peft uses the same parameter names and the same
products; its scale is always alpha/rank, while those loaders use alpha/dim only when a factor is decomposed (and
1 otherwise). So the export folds peft's scale into one factor and writes alpha = dim: every loader then adds
exactly the trained delta. diffusers' `load_lora_weights` reads LoRA only; load a LoHa/LoKr run in diffusers with
`sdkit.Run(path).load_pipeline()`, or merge it (`--format pipeline` / `single-file`).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..config import ConfigError
from ..data.files import write_safetensors
from .base import TEXT_ENCODER_LORA_TARGETS, PIPELINE_EXPORTS, PeftAdapterMethod, split_prefix
from .kohya import kohya_name
from .lora import ATTN_FF, CONVS

__all__ = ["LycorisMethod", "LoHaMethod", "LoKrMethod", "peft_to_lycoris", "lycoris_delta"]


class LycorisMethod(PeftAdapterMethod):
    """A LyCORIS adapter (LoHa or LoKr) from peft, exported in the LyCORIS layout (`--format lycoris`)."""
    kind = None
    supports_sdxl = False   # not tested on SDXL's two text encoders and time ids yet: refused there
    export_formats = {"lycoris": "{name}-lycoris.safetensors", **PIPELINE_EXPORTS}
    hub_formats = ("lycoris",)

    def _peft_config(self, targets):
        c = self.config
        alpha = c.lora_alpha if c.lora_alpha is not None else c.lora_rank
        if self.kind == "loha":
            from peft import LoHaConfig
            return LoHaConfig(r=c.lora_rank, alpha=alpha, target_modules=targets, module_dropout=c.lora_dropout)
        from peft import LoKrConfig
        return LoKrConfig(r=c.lora_rank, alpha=alpha, target_modules=targets, module_dropout=c.lora_dropout,
                          decompose_factor=c.lycoris_factor)

    def setup(self, unet, text_encoder):
        from peft import inject_adapter_in_model
        c = self.config
        unet.requires_grad_(False)
        text_encoder.requires_grad_(False)
        targets = [t.strip() for t in c.lora_targets.split(",") if t.strip()]
        try:
            inject_adapter_in_model(self._peft_config(targets), unet)
        except ValueError as e:
            raise ConfigError(f"lora_targets: {c.lora_targets!r} matched no UNet module ({e}). Fix: use module "
                              f"names such as to_q,to_k,to_v,to_out.0 (attention) or conv1,conv2.") from None
        te_params = []
        if c.train_text_encoder:
            inject_adapter_in_model(self._peft_config(TEXT_ENCODER_LORA_TARGETS), text_encoder)
            te_params = [p for p in text_encoder.parameters() if p.requires_grad]
        unet_params = [p for p in unet.parameters() if p.requires_grad]
        if not unet_params:
            raise ConfigError(f"lora_targets: {c.lora_targets!r} matched no UNet module. Fix: to_q,to_k,to_v,to_out.0")
        return self._groups(unet_params, te_params)


    def write_export(self, format, state, out, info):
        if format != "lycoris":
            return super().write_export(format, state, out, info)
        return export_lycoris(self, split_prefix(state, "unet."), split_prefix(state, "text_encoder."), out, info)


class LoHaMethod(LycorisMethod):
    """LoHa (LyCORIS): a Hadamard product of two low-rank updates, via peft."""
    name = kind = "loha"
    display_name = "LoHa (LyCORIS)"
    hub_tags = ("lycoris", "loha")
    recipe = dict(lora_rank=4, lora_alpha=4, lr=2e-3, lora_targets=f"{ATTN_FF},{CONVS}")


class LoKrMethod(LycorisMethod):
    """LoKr (LyCORIS): a Kronecker product update, via peft."""
    name = kind = "lokr"
    display_name = "LoKr (LyCORIS)"
    hub_tags = ("lycoris", "lokr")
    recipe = dict(lora_rank=8, lora_alpha=8, lr=2e-3, lora_targets=f"{ATTN_FF},{CONVS}")


# ---- export ------------------------------------------------------------------------------------------------------
_PARTS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
          "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")


def _group(sd: dict) -> dict:
    """{module path: {part: tensor}} from peft keys like `down_blocks.0.attentions.0...to_q.hada_w1_a`."""
    modules = {}
    for key, value in sd.items():
        module, part = key.rsplit(".", 1)
        if part not in _PARTS:
            raise ValueError(f"unexpected LyCORIS tensor {key!r} (known parts: {', '.join(_PARTS)})")
        modules.setdefault(module, {})[part] = value
    return modules


def peft_to_lycoris(unet_sd: dict, te_sd: dict, rank: int, alpha: float, dtype=torch.float16) -> dict:
    """LyCORIS/kohya-named tensors with peft's alpha/rank scale folded in and `.alpha` = dim (loader scale 1)."""
    scale = alpha / rank
    out = {}
    for part_name, sd in (("unet", unet_sd), ("text_encoder", te_sd)):
        for module, parts in _group(sd).items():
            name = kohya_name(module, part_name)
            parts = {k: v.float().clone() for k, v in parts.items()}
            if "hada_w1_a" in parts:
                parts["hada_w1_a"] *= scale
                dim = parts["hada_w1_b"].shape[0]
            else:  # LoKr: scale w1 (full or decomposed); dim = the decomposed factor's rank, if any
                if "lokr_w1" in parts:
                    parts["lokr_w1"] *= scale
                else:
                    parts["lokr_w1_a"] *= scale
                dim = (parts["lokr_w1_b"].shape[0] if "lokr_w1_b" in parts else
                       parts["lokr_w2_b"].shape[0] if "lokr_w2_b" in parts else rank)
            for k, v in parts.items():
                out[f"{name}.{k}"] = v.to(dtype).contiguous()
            out[f"{name}.alpha"] = torch.tensor(float(dim), dtype=dtype)
    return out


def lycoris_delta(tensors: dict, name: str, shape) -> torch.Tensor:
    """The weight change a LyCORIS loader (AUTOMATIC1111 / ComfyUI rules) adds for module `name`: used by the tests
    and to check an export. Scale = alpha / dim when a factor is decomposed, else 1."""
    t = {k[len(name) + 1:]: v.float() for k, v in tensors.items() if k.startswith(name + ".")}
    if "hada_w1_a" in t:
        if "hada_t1" in t:
            raise NotImplementedError("effective conv2d (hada_t1) export is not produced by sdkit")
        dim = t["hada_w1_b"].shape[0]
        delta = (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"])
    else:
        w1 = t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_a"] @ t["lokr_w1_b"]
        if "lokr_w2" in t:
            w2 = t["lokr_w2"]
        else:
            w2 = t["lokr_w2_a"] @ t["lokr_w2_b"].flatten(1)
            if len(shape) == 4:
                w2 = w2.reshape(w2.shape[0], -1, *shape[2:])
        if w2.dim() == 4:
            w1 = w1[:, :, None, None]
        dim = t["lokr_w1_b"].shape[0] if "lokr_w1_b" in t else t["lokr_w2_b"].shape[0] if "lokr_w2_b" in t else None
        delta = torch.kron(w1, w2)
    scale = float(t["alpha"]) / dim if (dim is not None and "alpha" in t) else 1.0
    return (delta * scale).reshape(shape)


def export_lycoris(method, unet_sd, te_sd, out, info, dtype=torch.float16) -> Path:
    """One .safetensors in the LyCORIS layout (AUTOMATIC1111's Lora extension, ComfyUI), with ss_* metadata."""
    import json
    rank, alpha, kind = method.config.lora_rank, method.alpha(), method.kind
    out = Path(out)
    if out.suffix != ".safetensors":
        out = out / f"{info.name}-{kind}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = peft_to_lycoris(unet_sd, te_sd, rank, alpha, dtype)
    meta = {"ss_network_module": "lycoris.kohya", "ss_network_dim": str(rank), "ss_network_alpha": str(alpha),
            "ss_network_args": json.dumps({"algo": kind}), "sdkit_version": info.version,
            "sdkit_note": "peft scale alpha/rank folded into w1; alpha = dim"}
    write_safetensors(tensors, str(out), metadata=meta)
    return out
