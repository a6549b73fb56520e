"""Export a trained run to the files other tools load. Which formats a run has is its method's business
(`Method.export_formats`, first = default): a LoRA as kohya or diffusers files, textual inversion as an embedding,
LoHa/LoKr as LyCORIS, a hypernetwork as A1111's .pt — each written by its method (sdkit/methods/) — and, for every
method that can merge its weights, a whole pipeline:

    python -m sdkit export runs/x --format kohya --out runs/x/export/glyph.safetensors
    sdkit.export.export(run, "diffusers", "runs/x/export/diffusers")

| format      | what                                          | who loads it                                        |
|-------------|-----------------------------------------------|-----------------------------------------------------|
| pipeline    | a full diffusers folder (adapters merged in)  | `StableDiffusionPipeline.from_pretrained(folder)`    |
| single-file | one .safetensors in the original SD layout    | A1111/ComfyUI checkpoints, `from_single_file`       |
(the method formats: docs/EXPORT.md)
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .data.files import respect_umask, write_safetensors
from .methods import PIPELINE_EXPORTS, ExportInfo, make_method
from .models import is_sdxl_model, resolve_model
from .run import Run
from .train.checkpoint import find_checkpoint
from .version import __version__

__all__ = ["export", "formats_of", "trainable_state", "merged_pipeline", "export_pipeline", "export_single_file",
           "lora_modules", "to_ldm_state_dict", "save_single_file", "ExportError"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


class ExportError(ValueError):
    """A run cannot be exported as asked; the message says which formats it has."""


def _open(run) -> Run:
    return run if isinstance(run, Run) else Run(run)


def formats_of(run) -> dict:
    """{format: default file name} a run's method can be exported as; the first is its default."""
    return dict(make_method(_open(run).config).export_formats)


# ---- 1. reading a run's trained weights --------------------------------------------------------------------------
def trainable_state(run, checkpoint=None):
    """(tensors, checkpoint folder) of `run`'s trained weights at `checkpoint` (default: latest)."""
    from safetensors.torch import load_file
    path = Path(find_checkpoint(_open(run).path, checkpoint or "latest"))
    return load_file(str(path / "trainable.safetensors")), path


def export_info(run, checkpoint_dir: Path) -> ExportInfo:
    c = run.config
    data = Path(c.data)
    n = len([p for p in data.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES]) if data.is_dir() else None
    step = json.loads((checkpoint_dir / "state.json").read_text())["step"]
    return ExportInfo(c, run.path.name, step, is_sdxl_model(resolve_model(c.model), c.revision), __version__, n)


# ---- 2. whole pipelines (any method that merges) ---------------------------------------------------------------
def export_pipeline(run, out, checkpoint=None) -> Path:
    """A complete diffusers pipeline folder: DreamBooth/full weights as trained, adapters merged into the weights."""
    pipe = merged_pipeline(run, checkpoint)
    out = Path(out)
    pipe.save_pretrained(out, safe_serialization=True)
    return respect_umask(out)


def merged_pipeline(run, checkpoint=None):
    """The run's pipeline with every trained weight in place and no adapter layers or hooks left (the run's
    method merges: LoRA/LoHa/LoKr into the weights, textual-inversion vectors into the embedding table)."""
    run = _open(run)
    method = make_method(run.config)
    pipe = run.load_pipeline(checkpoint)
    method.merge(pipe)
    return pipe


def export_single_file(run, out, checkpoint=None, dtype=torch.float16) -> Path:
    """One .safetensors in the original Stable Diffusion (LDM) layout (A1111 / ComfyUI checkpoints)."""
    run = _open(run)
    out = Path(out)
    if out.suffix != ".safetensors":
        out = out / f"{run.path.name}.safetensors"
    pipe = merged_pipeline(run, checkpoint)
    if hasattr(pipe, "text_encoder_2"):
        raise ExportError(f"{run.path}: --format single-file writes the SD 1.x layout; this run is SDXL. Fix: "
                          f"--format pipeline (a diffusers folder), or --format diffusers / kohya for a LoRA.")
    return save_single_file(pipe, out, dtype=dtype)


_PIPELINE_WRITERS = {"pipeline": export_pipeline, "single-file": export_single_file}


# ---- 4. diffusers -> original SD (LDM) single file -------------------------------------------------------------
# diffusers 0.42 reads LDM files (diffusers.loaders.single_file_utils.convert_ldm_*), but ships no converter back:
# the mapping below is the inverse of those, written out for any SD-1.x-style UNet (levels and layers per block
# are read from the config). tests/test_export.py runs diffusers' own LDM -> diffusers converters on the result
# and checks every tensor comes back to its place.
_RESNET = [("in_layers.0.", "norm1."), ("in_layers.2.", "conv1."), ("out_layers.0.", "norm2."),
           ("out_layers.3.", "conv2."), ("emb_layers.1.", "time_emb_proj."), ("skip_connection.", "conv_shortcut.")]
_VAE_RESNET = [("nin_shortcut.", "conv_shortcut.")]
_VAE_ATTN = [("norm.", "group_norm."), ("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."), ("proj_out.", "to_out.0.")]


def _unet_prefixes(cfg) -> list:
    """(diffusers prefix, LDM prefix) pairs for one UNet config: input_blocks/middle_block/output_blocks numbering."""
    L, n = cfg["layers_per_block"], len(cfg["block_out_channels"])
    pairs = [("time_embedding.linear_1.", "time_embed.0."), ("time_embedding.linear_2.", "time_embed.2."),
             ("conv_in.", "input_blocks.0.0."), ("conv_norm_out.", "out.0."), ("conv_out.", "out.2."),
             ("mid_block.attentions.0.", "middle_block.1.")]
    pairs += [(f"mid_block.resnets.{j}.", f"middle_block.{2 * j}.") for j in range(2)]
    for i in range(n):
        for j in range(L):  # down level i, layer j -> input_blocks[1 + i (L + 1) + j]
            pairs.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{1 + i * (L + 1) + j}.0."))
            pairs.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{1 + i * (L + 1) + j}.1."))
        if i < n - 1:
            pairs.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(i + 1) * (L + 1)}.0.op."))
        has_attn = "CrossAttn" in cfg["up_block_types"][i]
        for j in range(L + 1):  # up level i, layer j -> output_blocks[i (L + 1) + j]
            pairs.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{i * (L + 1) + j}.0."))
            pairs.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{i * (L + 1) + j}.1."))
        if i < n - 1:
            pairs.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{i * (L + 1) + L}.{2 if has_attn else 1}."))
    return pairs


def _vae_prefixes(cfg) -> list:
    L, n = cfg["layers_per_block"], len(cfg["block_out_channels"])
    pairs = []
    for part in ("encoder", "decoder"):
        pairs += [(f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1."),
                  (f"{part}.conv_norm_out.", f"{part}.norm_out.")]
        pairs += [(f"{part}.mid_block.resnets.{i}.", f"{part}.mid.block_{i + 1}.") for i in range(2)]
    for i in range(n):
        pairs += [(f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.") for j in range(L)]
        pairs += [(f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{n - 1 - i}.block.{j}.") for j in range(L + 1)]
        if i < n - 1:
            pairs.append((f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."))
            pairs.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{n - 1 - i}.upsample."))
    return pairs


def _rename(key: str, prefixes) -> str:
    for hf, sd in sorted(prefixes, key=lambda p: -len(p[0])):  # longest prefix first
        if key.startswith(hf):
            return sd + key[len(hf):]
    return key


def _inner(key: str, marker: str, table) -> str:
    """Rename the part after `marker` + index (e.g. '.resnets.0.') with (ldm, diffusers) pairs."""
    if marker not in key:
        return key
    head, tail = key.split(marker, 1)
    idx, rest = tail.split(".", 1)
    for sd, hf in table:
        if rest.startswith(hf):
            rest = sd + rest[len(hf):]
            break
    return f"{head}{marker}{idx}.{rest}"


def to_ldm_state_dict(pipe) -> dict:
    """The pipeline's UNet, VAE and text encoder as one state dict with the original SD 1.x key names."""
    out = {}
    unet_pairs = _unet_prefixes(pipe.unet.config)
    for k, v in pipe.unet.state_dict().items():  # resnet insides renamed first, then the block numbering
        out["model.diffusion_model." + _rename(_inner(k, ".resnets.", _RESNET), unet_pairs)] = v
    vae_pairs = _vae_prefixes(pipe.vae.config)
    for k, v in pipe.vae.state_dict().items():
        key = _rename(_inner(k, ".resnets.", _VAE_RESNET), vae_pairs)
        if ".attn_1." in key:
            head, rest = key.split(".attn_1.", 1)
            for sd, hf in _VAE_ATTN:
                if rest.startswith(hf):
                    rest = sd + rest[len(hf):]
                    break
            key = f"{head}.attn_1.{rest}"
            if v.ndim == 2:  # LDM's VAE attention uses 1x1 convolutions
                v = v[:, :, None, None]
        out["first_stage_model." + key] = v
    for k, v in pipe.text_encoder.state_dict().items():
        if not k.startswith("text_model."):
            k = "text_model." + k  # transformers >= 5 has no text_model level; the LDM file does
        out["cond_stage_model.transformer." + k] = v
    return out


def save_single_file(pipe, out, dtype=torch.float16) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(dtype).contiguous() for k, v in to_ldm_state_dict(pipe).items()}
    write_safetensors(state, out, metadata={"format": "pt", "modelspec.architecture": "stable-diffusion-v1"})
    return out


def export(run, format: str = None, out=None, checkpoint=None) -> Path:
    """Export `run` (a Run or its folder) at `checkpoint` (default: latest) as `format` (default: its method's
    first format); returns the written path."""
    run = _open(run)
    method = make_method(run.config)
    formats = method.export_formats
    format = format or next(iter(formats))
    if format not in formats:
        raise ExportError(f"format: a {run.config.method} run ({run.path}) exports as {', '.join(formats)}; got "
                          f"{format!r}. Fix: --format {next(iter(formats))}.")
    if out is None:
        out = run.path / "export" / formats[format].format(name=run.path.name)
    checkpoint = _checkpoint_to_export(run, checkpoint)
    if format in PIPELINE_EXPORTS:
        return _PIPELINE_WRITERS[format](run, out, checkpoint)
    state, path = trainable_state(run, checkpoint)
    return method.write_export(format, state, out, export_info(run, path))


def _checkpoint_to_export(run, checkpoint):
    """The checkpoint folder `checkpoint` names (None: the latest), or ExportError saying what there is to export."""
    have = run.checkpoints
    if not have and checkpoint is None:
        raise ExportError(f"{run.path}: no checkpoint yet, so there is nothing to export. A run writes one every "
                          f"checkpoint_every steps and at its end. Fix: train it first (python -m sdkit train --config "
                          f"{run.path / 'config.yaml'}), or wait for its first checkpoint.")
    try:
        return find_checkpoint(run.path, checkpoint or "latest")
    except FileNotFoundError:
        fix = f"--checkpoint {have[-1].name}, or leave it out for the latest" if have else "train the run first"
        raise ExportError(f"--checkpoint {checkpoint}: not a checkpoint of {run.path} (it has "
                          f"{', '.join(p.name for p in have) or 'none yet'}). Fix: {fix}.") from None


def lora_modules(model) -> list:
    """Names of the modules of `model` that carry a LoRA (peft BaseTunerLayer) — to check a load took every key."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    return [n for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
