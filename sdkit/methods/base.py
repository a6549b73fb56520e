"""Training methods as small strategy objects: which parameters train, how they are saved, what the loss adds.

The loop (sdkit.train.loop) is the same for every method. A method:
- `setup(unet, text_encoder)` freezes what stays frozen, adds adapters, returns optimiser parameter groups;
- `state_dict(unet, text_encoder)` / `load_state_dict(...)` give the trainable weights (what a checkpoint holds);
- `loss(per_sample, batch)` reduces per-sample losses (DreamBooth weighs class images here);
- `prepare_pipeline(pipe)` (before `setup`, in training and when a checkpoint is loaded for sampling or export),
  `convert_captions(captions)`, `sample_prompt(prompt)` and `merge(pipe)`: no-ops (peft merge for `merge`) that
  textual inversion and hypernetworks override;
- optional `prepare(trainer)` (after the models load) and `extend_batch(trainer, batch)` (per micro-batch) let a
  method add samples to the batch: DreamBooth's class images (sdkit.train.dreambooth).
"""
from __future__ import annotations

import torch

__all__ = ["Method", "PeftAdapterMethod", "LoRAMethod", "FullMethod", "LoConMethod", "METHODS", "method_class", "make_method"]

TEXT_ENCODER_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


class Method:
    name = "base"

    def __init__(self, config):
        self.config = config

    def setup(self, unet, text_encoder) -> list:
        raise NotImplementedError

    def state_dict(self, unet, text_encoder) -> dict:
        raise NotImplementedError

    def load_state_dict(self, unet, text_encoder, state: dict) -> None:
        raise NotImplementedError

    def trains_text_encoder(self) -> bool:
        return bool(self.config.train_text_encoder)

    def prepare_pipeline(self, pipe) -> None:
        """Before `setup`, in training and whenever a checkpoint is loaded: change the tokenizer or the attention
        processors if the method needs to (textual inversion adds its token). Default: nothing."""

    def convert_captions(self, captions: list) -> list:
        """Captions as the text encoder must see them (multi-vector textual inversion expands its token)."""
        return list(captions)

    def sample_prompt(self, prompt: str) -> str:
        """A prompt as a pipeline with this method's weights must get it (textual inversion: its token)."""
        return prompt

    def loss(self, per_sample: torch.Tensor, batch: dict) -> torch.Tensor:
        """per_sample: (batch,) weighted MSE of each sample. Default: their mean."""
        return per_sample.mean()

    def merge(self, pipe) -> None:
        """Make a pipeline that carries this method's trained weights plain: every peft adapter layer (LoRA, LoHa,
        LoKr) merged into its base weight and replaced by it, so save_pretrained writes an ordinary pipeline.
        Methods with other machinery override this (textual inversion bakes its vectors; a hypernetwork refuses)."""
        from peft.tuners.tuners_utils import BaseTunerLayer
        for model in (pipe.unet, pipe.text_encoder):
            for name, module in list(model.named_modules()):
                if isinstance(module, BaseTunerLayer):
                    module.merge()
                    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
                    setattr(parent, name.rsplit(".", 1)[-1], module.get_base_layer())
            if hasattr(model, "peft_config"):
                del model.peft_config
            if hasattr(model, "_hf_peft_config_loaded"):
                model._hf_peft_config_loaded = False

    def _groups(self, unet_params, te_params):
        c = self.config
        groups = [{"params": unet_params, "lr": c.lr}]
        if te_params:
            groups.append({"params": te_params, "lr": c.text_encoder_lr if c.text_encoder_lr is not None else c.lr})
        return groups


def _split(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


class PeftAdapterMethod(Method):
    """A peft adapter (LoRA, LoHa, LoKr) on the UNet, optionally the text encoder: what a checkpoint holds is
    peft's own adapter state dict, `unet.` / `text_encoder.` in front."""

    def state_dict(self, unet, text_encoder):
        from peft.utils import get_peft_model_state_dict
        state = {f"unet.{k}": v for k, v in get_peft_model_state_dict(unet).items()}
        if self.config.train_text_encoder:
            state.update({f"text_encoder.{k}": v for k, v in get_peft_model_state_dict(text_encoder).items()})
        return state

    def load_state_dict(self, unet, text_encoder, state):
        from peft.utils import set_peft_model_state_dict
        set_peft_model_state_dict(unet, _split(state, "unet."))
        if self.config.train_text_encoder:
            set_peft_model_state_dict(text_encoder, _split(state, "text_encoder."))


class LoRAMethod(PeftAdapterMethod):
    """peft LoRA on the UNet's attention projections (and optionally the text encoder's). Base weights stay frozen."""
    name = "lora"

    def setup(self, unet, text_encoder):
        from peft import LoraConfig
        c = self.config
        unet.requires_grad_(False)
        text_encoder.requires_grad_(False)
        alpha = c.lora_alpha if c.lora_alpha is not None else c.lora_rank
        targets = [t.strip() for t in c.lora_targets.split(",") if t.strip()]
        unet.add_adapter(LoraConfig(r=c.lora_rank, lora_alpha=alpha, lora_dropout=c.lora_dropout,
                                    init_lora_weights="gaussian", target_modules=targets))
        te_params = []
        if c.train_text_encoder:
            # peft's own injection (transformers' add_adapter needs a newer peft than PyPI may have)
            from peft import inject_adapter_in_model
            inject_adapter_in_model(LoraConfig(r=c.lora_rank, lora_alpha=alpha, lora_dropout=c.lora_dropout,
                                                init_lora_weights="gaussian",
                                                target_modules=TEXT_ENCODER_LORA_TARGETS), text_encoder)
            te_params = [p for p in text_encoder.parameters() if p.requires_grad]
        unet_params = [p for p in unet.parameters() if p.requires_grad]
        if not unet_params:
            from ..config import ConfigError
            raise ConfigError(f"lora_targets: {c.lora_targets!r} matched no UNet module. Fix: use module names "
                              f"of the UNet such as to_q,to_k,to_v,to_out.0 (attention) or ff.net.0.proj,ff.net.2.")
        return self._groups(unet_params, te_params)


class FullMethod(Method):
    """Every UNet weight trains (and every text-encoder weight with train_text_encoder)."""
    name = "full"

    def setup(self, unet, text_encoder):
        unet.requires_grad_(True)
        text_encoder.requires_grad_(bool(self.config.train_text_encoder))
        te_params = list(text_encoder.parameters()) if self.config.train_text_encoder else []
        return self._groups(list(unet.parameters()), te_params)

    def state_dict(self, unet, text_encoder):
        state = {f"unet.{k}": v for k, v in unet.state_dict().items()}
        if self.config.train_text_encoder:
            state.update({f"text_encoder.{k}": v for k, v in text_encoder.state_dict().items()})
        return state

    def load_state_dict(self, unet, text_encoder, state):
        unet.load_state_dict(_split(state, "unet."))
        if self.config.train_text_encoder:
            text_encoder.load_state_dict(_split(state, "text_encoder."))


class LoConMethod(LoRAMethod):
    """LoCon (LyCORIS' name): LoRA on the attention projections *and* the ResNet convolutions (peft LoRA handles
    Conv2d). Exported in the kohya layout, which AUTOMATIC1111 and ComfyUI load with conv weights."""
    name = "locon"
    CONV_TARGETS = "conv1,conv2,conv_shortcut,proj_in,proj_out"

    def setup(self, unet, text_encoder):
        c = self.config
        targets = [t.strip() for t in c.lora_targets.split(",") if t.strip()]
        extra = [t for t in self.CONV_TARGETS.split(",") if t not in targets]
        self.config = c.replace(lora_targets=",".join(targets + extra))
        try:
            return super().setup(unet, text_encoder)
        finally:
            self.config = c


# A method is a class here or "module:Class" imported when first used (each lives in its own file).
METHODS = {"lora": LoRAMethod, "full": FullMethod, "locon": LoConMethod,
           "textual-inversion": "sdkit.train.textual_inversion:TextualInversionMethod",
           "loha": "sdkit.train.lycoris:LoHaMethod", "lokr": "sdkit.train.lycoris:LoKrMethod",
           "hypernetwork": "sdkit.train.hypernetwork:HypernetworkMethod"}


def method_class(name: str):
    cls = METHODS[name]
    if isinstance(cls, str):
        import importlib
        module, attr = cls.split(":")
        cls = getattr(importlib.import_module(module), attr)
    return cls


def make_method(config) -> Method:
    if config.method == "dreambooth" or (config.method in ("lora", "full") and (config.uses_prior_preservation()
                                                                                or config.instance_prompt)):
        from .dreambooth import make_dreambooth_method  # instance prompt, class images, prior-preservation loss
        return make_dreambooth_method(config)
    return method_class(config.method)(config)
