"""DoRA (Liu et al. 2024, weight-decomposed low-rank adaptation) with peft's `use_dora`: each adapted weight is
split into a magnitude (one number per output row, trained) and a direction (W + s B A, normalized row by row):

    W' = m * (W + s B A) / ||W + s B A||_row        s = alpha / rank

    sdkit.train(sdkit.TrainConfig(method="dora", model="mini", data="data_samples/glyph", lr=1e-3))
    python -m sdkit export RUN --format kohya       # AUTOMATIC1111 / ComfyUI: models/Lora
    python -m sdkit export RUN --format diffusers   # pipe.load_lora_weights(folder)

The kohya file holds, per adapted layer, the weight change itself (`lora_unet_<module>.diff` = W' - W: the
LyCORIS "full" layout that AUTOMATIC1111 and ComfyUI both apply as W + strength x diff), not lora_down/lora_up with a
`dora_scale`: the loaders' DoRA code normalizes W + BA per *input column* (AUTOMATIC1111 always; ComfyUI unless
dora_scale has one row per output, where it then divides by the norm of W alone), while peft — and so the trained
model — normalizes per *output row*. No compact dora_scale makes both apply the change sdkit trained; the diff does,
exactly, at the price of a file as large as the adapted weights. docs/EXPORT.md has the loaders' code we checked.

This file is the whole method (with its line in sdkit/registry.py): the loop, preflight, the CLI flag, the form,
export, the Hub card and the evaluation grid all ask the class.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..data.files import write_safetensors
from ..models import load_pipeline
from .kohya import kohya_metadata, kohya_name
from .lora import LoRAMethod

__all__ = ["DoRAMethod"]


class DoRAMethod(LoRAMethod):
    """LoRA with weight decomposition (DoRA): a trained magnitude per output row beside the low-rank direction."""
    name = "dora"
    display_name = "DoRA (weight-decomposed LoRA)"
    use_dora = True
    hub_tags = ("lora", "dora")

    def weight_changes(self, unet_sd: dict, te_sd: dict) -> dict:
        """{kohya module name: W' - W} for every adapted layer: the trained adapter put on the base model and merged
        by peft itself (so the change is exactly what the trained model computes)."""
        from peft.tuners.tuners_utils import BaseTunerLayer
        c = self.config
        pipe = load_pipeline(c.model, revision=c.revision)  # the base weights the change is taken against
        self.prepare_pipeline(pipe)
        self.setup(pipe.unet, pipe.text_encoder)
        state = {**{f"unet.{k}": v for k, v in unet_sd.items()}, **{f"text_encoder.{k}": v for k, v in te_sd.items()}}
        self.load_state_dict(pipe.unet, pipe.text_encoder, state)
        changes = {}
        for part, model in (("unet", pipe.unet), ("text_encoder", pipe.text_encoder)):
            for name, module in model.named_modules():
                if isinstance(module, BaseTunerLayer):
                    weight = module.get_base_layer().weight
                    before = weight.detach().clone()
                    with torch.no_grad():
                        module.merge()
                    changes[kohya_name(name, part)] = weight.detach() - before
        return changes

    def write_kohya(self, unet_sd, te_sd, out: Path, info, dtype=torch.float16) -> Path:
        c = self.config
        if out.suffix != ".safetensors":
            out = out / f"{info.name}.safetensors"
        out.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"{name}.diff": d.to(dtype).contiguous() for name, d in self.weight_changes(unet_sd, te_sd).items()}
        meta = kohya_metadata(info, "lycoris.kohya", c.lora_rank, self.alpha(),
                              {"algo": "full", "trained_as": "dora", "targets": c.lora_targets}, unet_sd, te_sd)
        write_safetensors(tensors, str(out), metadata=meta)
        return out
