"""Run configuration: one dataclass, plain data, round-tripped to YAML.

Every field carries its help text and its group in ``metadata``; ``config_fields()`` reads them once into one
table of :class:`FieldSpec` rows (type with ``Optional`` unwrapped, default, help, group, allowed values, range,
widget), and the CLI flags (``sdkit.cli``), the notebook form (``sdkit.ui``), docs/CONFIG.md and the search spec
(``sdkit.search``) are all generated from that table, so nothing is written twice. The `method` field's choices are
the registry's names (``sdkit.registry``), read when used, so a method registered later is accepted everywhere.
``validate()`` raises a :class:`ConfigError` that names the field, says what was expected and how to fix it.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .fieldspec import FieldSpec, fields_of
from .registry import method_class, method_names

__all__ = ["read_yaml_mapping", "TrainConfig", "LoRAConfig", "FullConfig", "DreamBoothConfig", "ConfigError",
           "GROUPS", "RECORDED_KEYS", "FieldSpec", "config_fields"]

# Groups, in the order the form and the docs show them.
GROUPS = ("model", "data", "method", "optimizer", "saving", "sampling")

# Keys a run writes into its config.yaml for the record (not settable; accepted and ignored when read back).
RECORDED_KEYS = {
    "num_processes": "number of processes the run used (accelerate launch --num_processes)",
    "global_batch_size": "images per optimizer step = batch_size x num_processes x grad_accum",
    "sdkit_version": "version of sdkit that wrote the file",
}


class ConfigError(ValueError):
    """A config value is wrong. The message names the field, what was expected and the fix."""


def _f(default, help: str, group: str, choices=None, min=None, max=None, widget=None):
    """A dataclass field with help text, group and (optional) allowed values / range for the form and CLI.
    `choices` may be a function returning them, called each time they are needed (the method names)."""
    meta = {"help": help, "group": group, "choices": choices, "min": min, "max": max, "widget": widget}
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Everything one training run needs. Defaults are safe on a 16 GB T4 and on a CPU with the mini model."""

    # ---- model ---------------------------------------------------------------------------------------------
    model: str = _f("mini", "Base pipeline: a preset name (mini, tiny, sd15), a local diffusers folder, or a Hub id.",
                    "model", widget="path")
    revision: typing.Optional[str] = _f(None, "Hub revision (branch, tag or commit) when `model` is a Hub id.", "model")
    # ---- data ----------------------------------------------------------------------------------------------
    data: str = _f("", "Folder of training images with sidecar captions (e.g. cat_01.png + cat_01.txt).", "data",
                   widget="path")
    caption_ext: str = _f(".txt", "Extension of the sidecar caption files (.txt, .caption, ...).", "data")
    resolution: typing.Optional[int] = _f(None, "Training resolution in pixels (square). Empty: the model's native "
                                          "size (512 for SD 1.5, 32 for mini).", "data", min=8, max=2048)
    center_crop: bool = _f(True, "Center-crop after resizing (off: random crop).", "data")
    random_flip: bool = _f(False, "Flip images horizontally at random (off for text, digits or asymmetric subjects).",
                           "data")
    bucketing: bool = _f(True, "Aspect-ratio buckets: each picture trains whole at the bucket size nearest its shape "
                         "(about resolution^2 pixels, e.g. 448x576 for a 3:4 photo at 512) instead of a square crop; "
                         "every micro-batch holds one bucket. All-square data trains exactly as without.", "data")
    bucket_step: typing.Optional[int] = _f(None, "Bucket side step in pixels (a multiple of 8 that divides the "
                                           "resolution). Empty: resolution/8 within 8-64 (64 at 512, 8 at the mini "
                                           "model's 32).", "data", min=8, max=512)
    min_bucket_side: typing.Optional[int] = _f(None, "Shortest bucket side in pixels. Empty: resolution/2.", "data",
                                               min=8, max=4096)
    max_bucket_side: typing.Optional[int] = _f(None, "Longest bucket side in pixels. Empty: 2 x resolution.", "data",
                                               min=8, max=8192)
    bucket_no_upscale: bool = _f(False, "A picture smaller than its bucket trains at its own size (rounded down to "
                                 "bucket_step) instead of being enlarged (kohya's bucket_no_upscale).", "data")
    caption_dropout: float = _f(0.0, "Probability of training on an empty caption, which teaches classifier-free "
                                "guidance its unconditional branch.", "data", min=0.0, max=1.0)
    cache_latents: bool = _f(False, "Encode each image with the VAE once and keep its latent distribution in memory "
                             "(faster; needs center_crop and no random_flip, since the pixels must not change).",
                             "data")
    data_layout: str = _f("auto", "Folder layout: auto, folder (sidecar captions), metadata (HF metadata.jsonl/csv), "
                          "kohya (<repeats>_<name>/ folders).", "data", choices=["auto", "folder", "metadata", "kohya"])
    trigger_token: str = _f("", "Token put in front of every caption that lacks it (e.g. sks). Empty: none.", "data")
    shuffle_caption: bool = _f(False, "Shuffle comma-separated caption tags per sample.", "data")
    keep_tokens: int = _f(0, "Leading caption tags kept in place when shuffling/dropping (counts tags, not CLIP "
                          "tokens).", "data", min=0, max=75)
    tag_dropout: float = _f(0.0, "Probability of dropping each caption tag (after keep_tokens) per sample.", "data",
                            min=0.0, max=1.0)
    color_jitter: float = _f(0.0, "Max relative brightness/contrast/saturation change (0: off; keep 0 when the "
                             "concept depends on color).", "data", min=0.0, max=1.0)
    num_workers: int = _f(0, "Worker processes that decode and augment the next batches while a step trains (0: "
                          "in the training process; not used with cache_latents). Same batches either way.", "data",
                          min=0, max=32)
    # ---- method --------------------------------------------------------------------------------------------
    method: str = _f("lora", "What trains: a registered training method (sdkit/registry.py; one file each in "
                     "sdkit/methods/). `python -m sdkit train --help` and the notebook form say what each one does.",
                     "method", choices=method_names)
    lora_rank: int = _f(4, "LoRA rank (network dim): size of each low-rank update.", "method", min=1, max=256)
    lora_alpha: typing.Optional[float] = _f(None, "LoRA alpha: the update is scaled by alpha/rank. Empty: alpha = rank "
                                            "(scale 1).", "method", min=0.0, max=1024.0)
    lora_dropout: float = _f(0.0, "Dropout on the LoRA branch during training.", "method", min=0.0, max=0.9)
    lora_targets: str = _f("to_q,to_k,to_v,to_out.0", "Comma-separated module names that get LoRA adapters "
                           "(UNet attention projections by default).", "method")
    token: str = _f("", "Textual inversion: the new token that names the concept (e.g. <sks>); write it in the "
                    "captions or set trigger_token to the same string.", "method")
    init_token: str = _f("", "Textual inversion: an existing word whose embedding starts the new vectors (e.g. "
                         "glyph). Empty: small random vectors.", "method")
    num_vectors: int = _f(1, "Textual inversion: vectors per token (more = more capacity, more of the 75-token "
                          "prompt used).", "method", min=1, max=64)
    lycoris_factor: int = _f(-1, "LoKr: Kronecker factor of each weight's shape (-1: as balanced as possible).",
                             "method", min=-1, max=1024)
    hypernetwork_layers: str = _f("1,2,1", "Hypernetwork: layer widths as multiples of the context size "
                                  "(A1111's layer structure).", "method")
    hypernetwork_activation: str = _f("linear", "Hypernetwork: activation between its layers.", "method",
                                      choices=["linear", "relu", "leakyrelu", "elu", "swish", "tanh", "sigmoid"])
    train_text_encoder: bool = _f(False, "Also train the text encoder (LoRA on its attention for method lora).",
                                  "method")
    text_encoder_lr: typing.Optional[float] = _f(None, "Learning rate of the text encoder. Empty: same as lr.",
                                                 "method", min=0.0, max=1.0)
    prior_preservation: typing.Optional[bool] = _f(None, "DreamBooth prior preservation: every step also trains on "
                                                   "images the base model drew for class_prompt, so the class word "
                                                   "keeps its meaning (against bleeding). Empty: on for method "
                                                   "dreambooth, off otherwise; with method lora it is LoRA DreamBooth.",
                                                   "method")
    instance_prompt: str = _f("", "Caption used for every training image instead of its sidecar caption (e.g. 'a sks "
                              "glyph'). Empty: the sidecar captions.", "method")
    class_prompt: str = _f("", "Prompt of the class images for prior preservation: the class word alone (e.g. 'a "
                           "glyph').", "method")
    class_data: str = _f("", "Folder of class images. Empty: <run>/class_images/, filled by the base model; images "
                         "already there count toward num_class_images and are reused.", "method", widget="path")
    num_class_images: int = _f(100, "Class images for prior preservation; missing ones are generated with the base "
                               "model before training.", "method", min=1, max=100_000)
    prior_loss_weight: float = _f(1.0, "Weight of the class-image loss: loss = instance mean + weight x class mean.",
                                  "method", min=0.0, max=100.0)
    # ---- optimizer -----------------------------------------------------------------------------------------
    steps: int = _f(500, "Optimizer steps to train (one step = one global batch).", "optimizer", min=1, max=1_000_000)
    batch_size: int = _f(1, "Images per process per micro-batch.", "optimizer", min=1, max=1024)
    grad_accum: int = _f(1, "Gradient accumulation: micro-batches summed into one optimizer step.", "optimizer",
                         min=1, max=1024)
    lr: float = _f(1e-4, "Learning rate (peak, after warm-up).", "optimizer", min=0.0, max=1.0)
    lr_scheduler: str = _f("constant", "Learning-rate schedule after warm-up.", "optimizer",
                           choices=["constant", "constant_with_warmup", "linear", "cosine",
                                    "cosine_with_restarts", "polynomial"])
    lr_warmup_steps: int = _f(0, "Steps of linear warm-up from 0 to lr.", "optimizer", min=0, max=1_000_000)
    optimizer: str = _f("adamw", "adamw (torch), adamw_fused (torch's fused kernel: one launch per step for all "
                        "parameters, same math), adamw8bit (bitsandbytes, CUDA only: about 1/4 the optimizer "
                        "memory).", "optimizer", choices=["adamw", "adamw_fused", "adamw8bit"])
    weight_decay: float = _f(1e-2, "AdamW weight decay.", "optimizer", min=0.0, max=1.0)
    adam_beta1: float = _f(0.9, "AdamW beta1.", "optimizer", min=0.0, max=1.0)
    adam_beta2: float = _f(0.999, "AdamW beta2.", "optimizer", min=0.0, max=1.0)
    adam_epsilon: float = _f(1e-8, "AdamW epsilon.", "optimizer", min=0.0, max=1.0)
    max_grad_norm: float = _f(1.0, "Clip the gradient norm to this value (0: no clipping).", "optimizer",
                              min=0.0, max=1e6)
    mixed_precision: str = _f("no", "no (fp32), fp16 (T4 and newer GPUs; fp32 master weights kept), bf16 (A100/H100, "
                              "and CPUs; a T4 has no bf16).", "optimizer", choices=["no", "fp16", "bf16"])
    seed: int = _f(0, "Seed for data order, noise and timesteps: the same seed gives the same run.", "optimizer",
                   min=0, max=2**31 - 1)
    gradient_checkpointing: bool = _f(False, "Recompute activations in the backward pass: less memory, ~20-30% "
                                      "slower.", "optimizer")
    channels_last: bool = _f(False, "Keep the UNet's weights and activations in channels-last memory layout (faster "
                             "convolutions on tensor-core GPUs; same results).", "optimizer")
    compile_unet: bool = _f(False, "torch.compile the UNet (the first steps compile, later ones run faster on GPUs; "
                            "needs a C++ compiler on CPUs).", "optimizer")
    attention: str = _f("sdpa", "Attention kernel: sdpa (PyTorch's fused attention) or xformers (when installed).",
                        "optimizer", choices=["sdpa", "xformers"])
    ema: bool = _f(False, "Keep an exponential moving average of the trained weights (used for samples and export).",
                   "optimizer")
    ema_decay: float = _f(0.999, "EMA decay per step.", "optimizer", min=0.0, max=1.0)
    snr_gamma: typing.Optional[float] = _f(None, "Min-SNR loss weighting gamma (5 is the paper's value). Empty: off.",
                                           "optimizer", min=0.0, max=100.0)
    noise_offset: float = _f(0.0, "Noise offset (e.g. 0.05) lets the model learn very dark/bright images.",
                             "optimizer", min=0.0, max=1.0)
    prediction_type: typing.Optional[str] = _f(None, "epsilon or v_prediction. Empty: from the model's scheduler "
                                               "config.", "optimizer", choices=[None, "epsilon", "v_prediction"])
    # ---- saving --------------------------------------------------------------------------------------------
    out: typing.Optional[str] = _f(None, "Run directory. Empty: runs/<method>-<date>-<time>.", "saving",
                                   widget="path")
    checkpoint_every: int = _f(0, "Write a checkpoint every K steps (0: only at the end).", "saving",
                               min=0, max=1_000_000)
    checkpoint_start: int = _f(0, "Save every K steps only from this step on (\"save every X from step Y\").",
                               "saving", min=0, max=1_000_000)
    checkpoint_every_minutes: float = _f(0.0, "Also write a checkpoint every M minutes of training (EveryDream "
                                         "style; 0: off).", "saving", min=0.0, max=100_000.0)
    validation_split: float = _f(0.0, "Hold out this fraction of the images (at least 1) for a deterministic "
                                 "validation loss, logged as val_loss at each checkpoint (0: off).", "saving",
                                 min=0.0, max=0.5)
    keep_last: int = _f(0, "Keep only the newest N checkpoints (0: keep all).", "saving", min=0, max=10_000)
    resume: typing.Optional[str] = _f(None, "Continue a run: 'latest' (from `out`'s latest checkpoint) or a "
                                      "checkpoint folder.", "saving")
    log_every: int = _f(1, "Log loss and learning rate every N steps.", "saving", min=1, max=100_000)
    tensorboard: bool = _f(True, "Write TensorBoard events to <run>/tb.", "saving")
    # ---- sampling ------------------------------------------------------------------------------------------
    sample_every: int = _f(0, "Draw samples every N steps (0: only at step 0 and at the end).", "sampling",
                           min=0, max=1_000_000)
    sample_prompts: typing.List[str] = _f([], "Prompts for samples. Empty: the first two training captions.",
                                          "sampling")
    sample_seeds: typing.List[int] = _f([0], "Seeds for samples: each prompt is drawn once per seed.", "sampling")
    sample_width: typing.Optional[int] = _f(None, "Width of samples and evaluation grids in pixels (a multiple of "
                                            "8). Empty: the training resolution.", "sampling", min=8, max=4096)
    sample_height: typing.Optional[int] = _f(None, "Height of samples and evaluation grids in pixels (a multiple of "
                                             "8). Empty: the training resolution.", "sampling", min=8, max=4096)
    sample_steps: int = _f(25, "Denoising steps per sample.", "sampling", min=1, max=1000)
    guidance_scale: float = _f(5.0, "Classifier-free guidance scale for samples.", "sampling", min=0.0, max=30.0)
    negative_prompt: str = _f("", "Negative prompt for samples.", "sampling")
    sample_at_start: bool = _f(True, "Draw the step-0 baseline before training starts.", "sampling")

    def __post_init__(self):
        # Paths may be given as pathlib.Path; the config stores plain strings so that YAML stays plain.
        for name in ("model", "data", "out", "resume"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                setattr(self, name, os.fspath(value))

    # ------------------------------------------------------------------------------------------------------
    def validate(self) -> "TrainConfig":
        """Check every field; raise ConfigError naming the field, what was expected and the fix. Returns self."""
        for spec in config_fields(type(self)):
            problem = spec.problem(getattr(self, spec.name))
            if problem:
                raise ConfigError(problem)
        # ---- relations between fields ----
        if not self.data:
            raise ConfigError("data: no training folder given. Fix: set data to a folder of images with "
                              f"{self.caption_ext} captions (e.g. data='data_samples/glyph').")
        if not self.caption_ext.startswith("."):
            raise ConfigError(f"caption_ext: got {self.caption_ext!r}; expected an extension starting with a dot. "
                              f"Fix: caption_ext='.{self.caption_ext}'.")
        if self.resolution is not None and self.resolution % 8:
            raise ConfigError(f"resolution: got {self.resolution}; expected a multiple of 8 (the VAE halves the size "
                              f"three times). Fix: resolution={max(8, self.resolution // 8 * 8)}.")
        for name in ("bucket_step", "min_bucket_side", "max_bucket_side", "sample_width", "sample_height"):
            value = getattr(self, name)
            if value is not None and value % 8:
                raise ConfigError(f"{name}: got {value}; expected a multiple of 8 (the VAE halves each side three "
                                  f"times). Fix: {name}={max(8, value // 8 * 8)}, or leave it empty.")
        if self.min_bucket_side and self.max_bucket_side and self.min_bucket_side > self.max_bucket_side:
            raise ConfigError(f"min_bucket_side: {self.min_bucket_side} is more than max_bucket_side "
                              f"({self.max_bucket_side}). Fix: min_bucket_side <= max_bucket_side.")
        if self.optimizer == "adamw8bit":
            import importlib.util
            if importlib.util.find_spec("bitsandbytes") is None:
                raise ConfigError("optimizer: adamw8bit needs bitsandbytes, which is not installed. "
                                  "Fix: pip install bitsandbytes (CUDA), or optimizer='adamw'.")
        if self.attention == "xformers":
            import importlib.util
            if importlib.util.find_spec("xformers") is None:
                raise ConfigError("attention: xformers is not installed. Fix: attention='sdpa' (as fast on "
                                  "PyTorch >= 2), or pip install xformers.")
        if self.lr_warmup_steps > self.steps:
            raise ConfigError(f"lr_warmup_steps: {self.lr_warmup_steps} is more than steps ({self.steps}); "
                              f"the run would never reach lr. Fix: lr_warmup_steps <= {self.steps}.")
        if self.cache_latents and (self.random_flip or not self.center_crop or self.color_jitter):
            raise ConfigError("cache_latents: cached latents would freeze one random crop/flip per image. Fix: "
                              "cache_latents=False, or center_crop=True, random_flip=False, color_jitter=0.")
        if self.uses_prior_preservation() and not (self.class_prompt or self.class_data):
            raise ConfigError("class_prompt: prior preservation needs class images, drawn from class_prompt (the "
                              "class word alone). Fix: class_prompt='a glyph' (for 'a sks glyph'), or class_data=DIR, "
                              "or prior_preservation=False.")
        if not self.sample_seeds:
            raise ConfigError("sample_seeds: empty; expected at least one seed. Fix: sample_seeds=[0].")
        method_class(self.method).check_config(self)  # what only the method knows (its own fields)
        return self

    def uses_prior_preservation(self) -> bool:
        """prior_preservation, with its default resolved by the method (on for dreambooth, off otherwise)."""
        if self.prior_preservation is not None:
            return self.prior_preservation
        return method_class(self.method).prior_preservation_default

    # ---- conversion ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self, path=None, extra: typing.Optional[dict] = None) -> str:
        """YAML text of this config (plus recorded `extra` keys); written to `path` when given."""
        data = self.to_dict()
        if extra:
            unknown = set(extra) - set(RECORDED_KEYS)
            if unknown:
                raise ValueError(f"not recorded keys: {sorted(unknown)}")
            data.update(extra)
        text = "# sdkit run config: `python -m sdkit train --config THIS_FILE` reproduces the run.\n"
        text += "# global batch = batch_size x num_processes x grad_accum images per optimizer step.\n"
        text += yaml.safe_dump(data, sort_keys=False)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> "TrainConfig":
        """Build from a dict; an unknown key is an error that names it and the closest known keys."""
        import difflib
        names = [f.name for f in dataclasses.fields(cls)]
        kwargs = {}
        for key, value in (data or {}).items():
            if key in RECORDED_KEYS:
                continue
            if key not in names:
                close = difflib.get_close_matches(key, names, n=2)
                hint = f" Did you mean {' or '.join(close)}?" if close else ""
                raise ConfigError(f"{source}: unknown key {key!r}.{hint} Fix: remove it or use one of the fields "
                                  f"listed in docs/CONFIG.md.")
            kwargs[key] = value
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path) -> "TrainConfig":
        data = read_yaml_mapping(path, "config file", "pass the config.yaml of a run (runs/NAME/config.yaml) or a "
                                                      "YAML file you wrote")
        return cls.from_dict(data, source=str(path))

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


def read_yaml_mapping(path, what: str, fix: str, error=ConfigError) -> dict:
    """The mapping in YAML file `path` ({} for an empty file); `error` names the file, what was expected and `fix`
    when it is missing, not YAML or not a mapping (a run's config.yaml, a search spec)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} does not exist. Fix: {fix}.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML ({e}).") from None
    if data is not None and not isinstance(data, dict):
        raise error(f"{path}: expected a mapping of field: value, got {type(data).__name__}.")
    return data or {}


def LoRAConfig(**kwargs) -> TrainConfig:
    """A TrainConfig with method='lora' (the quickstart's spelling: ``sdkit.LoRAConfig(model=..., data=...)``)."""
    return TrainConfig(**{"method": "lora", **kwargs})


def FullConfig(**kwargs) -> TrainConfig:
    """A TrainConfig with method='full' (every UNet weight trains)."""
    return TrainConfig(**{"method": "full", **kwargs})


def DreamBoothConfig(**kwargs) -> TrainConfig:
    """A TrainConfig with method='dreambooth' (full UNet, instance prompt, prior preservation on class images)."""
    return TrainConfig(**{"method": "dreambooth", **kwargs})


def config_fields(cls=TrainConfig) -> tuple:
    """The field table of a config dataclass: one FieldSpec per field (type with Optional unwrapped, default, help,
    group, choices, min, max, widget), in declaration order. The CLI flags, the form, docs/CONFIG.md and the search
    spec read it. Choices given as a function (the method names, from the registry) are read now, so a method
    registered later is included."""
    return fields_of(cls)
