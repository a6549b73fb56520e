"""The Method base class: everything a training method can differ in, with the defaults most methods want.

The loop (sdkit.train.loop) is the same for every method. A method (one file in sdkit/methods/, one line in
sdkit/registry.py) says:

- what trains: `setup(unet, text_encoder)` freezes what stays frozen, adds adapters, returns optimizer parameter
  groups; `state_dict` / `load_state_dict` give the trainable weights (what a checkpoint holds);
- what the loss adds: `loss(per_sample, batch)` (DreamBooth weighs class images here), and optional
  `prepare(trainer)` / `extend_batch(trainer, batch)` to add samples to a batch;
- how a pipeline carries its weights: `prepare_pipeline(pipe)` (before `setup`, in training and whenever a
  checkpoint is loaded), `convert_captions`, `sample_prompt`, `merge(pipe)` (for a pipeline export), and
  `no_op_state(state)` (its weights made to change nothing: the base model in an evaluation grid);
- how it is exported: `export_formats` (format -> default file name; the first is the default format) and
  `write_export(format, state, out, info)` for the formats that are files of its own (pipeline formats are
  written by sdkit.export from `merge`);
- what the tools around it need: `supports_sdxl`, `supports_strength`, `prior_preservation_default`,
  `supports_prior_preservation`, `hub_tags`, `hub_formats`, `display_name`, `card_rows()`, `recipe` (the settings
  that work on the mini concept), `oom_advice()`, `check_config(config)`, and
  `trainable_parameters(unet, text_encoder)` (preflight runs the method's own `setup` on meta-device models and
  counts what would train).
"""
from __future__ import annotations

import torch

from ..registry import METHODS, method_class, method_names
from .prior import PriorPreservation

__all__ = ["Method", "PeftAdapterMethod", "TEXT_ENCODER_LORA_TARGETS", "PIPELINE_EXPORTS", "ExportInfo",
           "split_prefix", "make_method", "with_prior_preservation", "method_class", "method_names", "METHODS"]

TEXT_ENCODER_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
# formats written by sdkit.export from a merged pipeline (any method whose merge() works)
PIPELINE_EXPORTS = {"pipeline": "pipeline", "single-file": "{name}-sd.safetensors"}


class ExportInfo:
    """What a method's exporter may need to know about the run besides its weights (plain data; no Run object:
    methods sit below the run layer)."""

    def __init__(self, config, name: str, step: int, sdxl: bool, version: str, num_images: int = None):
        self.config, self.name, self.step = config, name, step  # step: of the checkpoint exported
        self.sdxl, self.version, self.num_images = sdxl, version, num_images


class Method:
    """A training method. Subclasses set `name` (the registry key) and override what differs."""
    name = "base"
    display_name = None                 # how the model card names it (default: the registry name)
    supports_sdxl = False               # trains on SDXL pipelines too
    supports_strength = False           # sampling can scale its update (a LoRA's strength: 0 = base, 1 = trained)
    supports_prior_preservation = False  # may be combined with DreamBooth's prior preservation (LoRA DreamBooth)
    prior_preservation_default = False  # prior preservation on unless the config says otherwise
    export_formats = dict(PIPELINE_EXPORTS)  # format -> default file name under RUN/export/; first = default
    hub_formats = ("pipeline",)          # what `sdkit push` uploads by default
    hub_tags = ()                        # Hub model-card tags
    recipe = {}                          # TrainConfig fields that work for it on the mini concept (notebook 07)

    def __init__(self, config):
        self.check_config(config)
        self.config = config

    # ---- 1. what trains -------------------------------------------------------------------------------------
    def setup(self, unet, text_encoder) -> list:
        raise NotImplementedError

    def state_dict(self, unet, text_encoder) -> dict:
        raise NotImplementedError

    def load_state_dict(self, unet, text_encoder, state: dict) -> None:
        raise NotImplementedError

    def trains_text_encoder(self) -> bool:
        return bool(self.config.train_text_encoder)

    def trainable_parameters(self, unet, text_encoder) -> list:
        """The parameters that would train: runs `setup` (on meta-device models in preflight), each once."""
        self.prepare_models_for_count(unet, text_encoder)
        seen, params = set(), []
        for group in self.setup(unet, text_encoder):
            for p in group["params"]:
                if id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
        return params

    def prepare_models_for_count(self, unet, text_encoder) -> None:
        """What `prepare_pipeline` does to the models, without a tokenizer (preflight has none). Default: nothing."""

    # ---- 2. the loss ----------------------------------------------------------------------------------------
    def loss(self, per_sample: torch.Tensor, batch: dict) -> torch.Tensor:
        """per_sample: (batch,) weighted MSE of each sample. Default: their mean."""
        return per_sample.mean()

    # ---- 3. pipelines ---------------------------------------------------------------------------------------
    def prepare_pipeline(self, pipe) -> None:
        """Before `setup`, in training and whenever a checkpoint is loaded: change the tokenizer or the attention
        processors if the method needs to (textual inversion adds its token). Default: nothing."""

    def convert_captions(self, captions: list) -> list:
        """Captions as the text encoder must see them (multi-vector textual inversion expands its token)."""
        return list(captions)

    def sample_prompt(self, prompt: str) -> str:
        """A prompt as a pipeline with this method's weights must get it (textual inversion: its token)."""
        return prompt

    def no_op_state(self, state: dict) -> dict:
        """`state` (as just set up) changed so that it changes nothing: the base model. Default: as it is."""
        return state

    def merge(self, pipe) -> None:
        """Make a pipeline that carries this method's trained weights plain: every peft adapter layer (LoRA, DoRA,
        LoHa, LoKr) merged into its base weight and replaced by it, so save_pretrained writes an ordinary pipeline.
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

    # ---- 4. export ------------------------------------------------------------------------------------------
    def write_export(self, format: str, state: dict, out, info: ExportInfo):
        """Write `state` (a checkpoint's trainable tensors) as `format` to `out`; return the path written.
        Only for this method's own formats (not PIPELINE_EXPORTS)."""
        raise ValueError(f"format: {format!r} is not one of method {self.name!r}'s own formats")

    # ---- 5. what the tools around it need -------------------------------------------------------------------
    @classmethod
    def check_config(cls, config) -> None:
        """Raise ConfigError for settings this method cannot use (called by TrainConfig.validate)."""

    def oom_advice(self) -> str | None:
        """A lighter recipe to suggest when a run of this method runs out of GPU memory (None: none)."""
        return None

    def card_rows(self) -> list:
        """(setting, value) rows this method adds to the model card's settings table."""
        return []

    def tags(self) -> list:
        return list(self.hub_tags) or [self.name]

    def title(self) -> str:
        return self.display_name or self.name

    def _groups(self, unet_params, te_params):
        c = self.config
        groups = [{"params": unet_params, "lr": c.lr}]
        if te_params:
            groups.append({"params": te_params, "lr": c.text_encoder_lr if c.text_encoder_lr is not None else c.lr})
        return groups


def split_prefix(state: dict, prefix: str) -> dict:
    """The entries of `state` under `prefix` (e.g. "unet."), with the prefix taken off."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


class PeftAdapterMethod(Method):
    """A peft adapter (LoRA, DoRA, LoHa, LoKr) on the UNet, optionally the text encoder: what a checkpoint holds is
    peft's own adapter state dict, `unet.` / `text_encoder.` in front."""
    supports_sdxl = True

    def state_dict(self, unet, text_encoder):
        from peft.utils import get_peft_model_state_dict
        state = {f"unet.{k}": v for k, v in get_peft_model_state_dict(unet).items()}
        if self.config.train_text_encoder:
            state.update({f"text_encoder.{k}": v for k, v in get_peft_model_state_dict(text_encoder).items()})
        return state

    def load_state_dict(self, unet, text_encoder, state):
        from peft.utils import set_peft_model_state_dict
        set_peft_model_state_dict(unet, split_prefix(state, "unet."))
        if self.config.train_text_encoder:
            set_peft_model_state_dict(text_encoder, split_prefix(state, "text_encoder."))

    def targets(self) -> list:
        return [t.strip() for t in self.config.lora_targets.split(",") if t.strip()]

    def alpha(self) -> float:
        c = self.config
        return float(c.lora_alpha if c.lora_alpha is not None else c.lora_rank)

    def card_rows(self):
        c = self.config
        return [("rank / alpha", f"{c.lora_rank} / {c.lora_alpha if c.lora_alpha is not None else c.lora_rank}"),
                ("LoRA targets", f"`{c.lora_targets}`" + (" + text encoder" if c.train_text_encoder else ""))]


def make_method(config) -> Method:
    """The method object of `config`: its registered class, with DreamBooth's prior preservation mixed in when the
    config asks for it (an instance prompt or prior preservation) and the method supports it."""
    cls = method_class(config.method)
    wants_prior = config.uses_prior_preservation() or bool(config.instance_prompt)
    if wants_prior and cls.supports_prior_preservation and not issubclass(cls, PriorPreservation):
        cls = with_prior_preservation(cls)
    return cls(config)


_PRIOR_VARIANTS = {}


def with_prior_preservation(cls):
    """`cls` with DreamBooth's instance prompt, class images and prior-preservation loss (e.g. LoRA DreamBooth)."""
    if cls not in _PRIOR_VARIANTS:
        _PRIOR_VARIANTS[cls] = type(f"{cls.__name__}DreamBooth", (PriorPreservation, cls),
                                    {"__doc__": f"{cls.__doc__}\nWith DreamBooth's prior preservation.",
                                     "hub_tags": (*cls.hub_tags, "dreambooth")})
    return _PRIOR_VARIANTS[cls]

