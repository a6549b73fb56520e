"""Export a trained run to the files other tools load: diffusers LoRA, kohya LoRA, a pipeline folder, one file.

    python -m sdkit export runs/x --format kohya --out runs/x/export/glyph.safetensors
    sdkit.export.export(run, "diffusers", "runs/x/export/diffusers")

| format      | what                                          | who loads it                                        |
|-------------|-----------------------------------------------|-----------------------------------------------------|
| diffusers   | folder with pytorch_lora_weights.safetensors  | `pipe.load_lora_weights(folder)` (diffusers, peft)  |
| kohya       | one .safetensors, `lora_unet_…`/`lora_te_…`   | AUTOMATIC1111, ComfyUI, kohya, and diffusers        |
| pipeline    | a full diffusers folder (LoRA merged in)      | `StableDiffusionPipeline.from_pretrained(folder)`    |
| single-file | one .safetensors in the original SD layout    | A1111/ComfyUI checkpoints, `from_single_file`       |

Kohya names (the only LoRA layout that A1111 and ComfyUI both load whole): the diffusers module path with dots
replaced by underscores, `lora_unet_` in front for the UNet and `lora_te_text_model_` for the text encoder — even
with transformers >= 5, whose `CLIPTextModel` has no `text_model.` level in `named_modules()` any more. Each module
has `.lora_down.weight` (peft's lora_A), `.lora_up.weight` (lora_B) and `.alpha` (the update is scaled by
alpha / rank, in kohya as in peft), and the file carries `ss_*` metadata.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

__all__ = ["FORMATS", "export", "lora_state", "kohya_name", "peft_to_kohya", "kohya_to_modules",
           "export_diffusers", "export_kohya", "export_pipeline", "export_single_file", "lora_modules",
           "to_ldm_state_dict", "save_single_file"]

# format -> (writer: a function here or "module:function", default file name under RUN/export/)
_WRITERS = {
    "diffusers": ("export_diffusers", "diffusers"),
    "kohya": ("export_kohya", "{name}.safetensors"),
    "pipeline": ("export_pipeline", "pipeline"),
    "single-file": ("export_single_file", "{name}-sd.safetensors"),
    "embedding": ("sdkit.train.textual_inversion:export_embedding", "{name}-embedding.safetensors"),
    "lycoris": ("sdkit.train.lycoris:export_lycoris", "{name}-lycoris.safetensors"),
    "hypernetwork": ("sdkit.train.hypernetwork:export_hypernetwork", "{name}.pt"),
}
FORMATS = tuple(_WRITERS)
_LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight")


# ---- 1. reading a run's trained LoRA ---------------------------------------------------------------------------
def _open(run):
    from .run import Run
    return run if isinstance(run, Run) else Run(run)


def lora_state(run, checkpoint=None):
    """The LoRA of `run` at `checkpoint` as peft state dicts: (unet_sd, text_encoder_sd, rank, alpha).

    Keys are module paths + `.lora_A.weight` / `.lora_B.weight` (peft's names, no adapter name)."""
    from safetensors.torch import load_file
    from .train.checkpoint import find_checkpoint
    run = _open(run)
    c = run.config
    if c.method not in ("lora", "locon"):  # LoRA DreamBooth is method lora with prior_preservation
        raise ValueError(f"{run.path}: method {c.method!r} trains whole weights, not a LoRA. Fix: export it with "
                         f"--format pipeline or --format single-file.")
    path = find_checkpoint(run.path, checkpoint or "latest")
    state = load_file(Path(path) / "trainable.safetensors")
    unet = {k[len("unet."):]: v for k, v in state.items() if k.startswith("unet.")}
    te = {k[len("text_encoder."):]: v for k, v in state.items() if k.startswith("text_encoder.")}
    rank = c.lora_rank
    alpha = c.lora_alpha if c.lora_alpha is not None else float(rank)
    return unet, te, rank, float(alpha)


# ---- 2. kohya names ----------------------------------------------------------------------------------------------
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


def _modules(sd: dict) -> list:
    """Module paths of a peft LoRA state dict, in order."""
    out = []
    for k in sd:
        for s in _LORA_SUFFIXES:
            if k.endswith(s) and k[: -len(s)] not in out:
                out.append(k[: -len(s)])
    return out


def peft_to_kohya(unet_sd: dict, te_sd: dict, alpha: float, dtype=torch.float16) -> dict:
    """peft LoRA state dicts -> kohya tensors {name.lora_down.weight, name.lora_up.weight, name.alpha}."""
    out = {}
    for part, sd in (("unet", unet_sd), ("text_encoder", te_sd)):
        for m in _modules(sd):
            name = kohya_name(m, part)
            out[f"{name}.lora_down.weight"] = sd[f"{m}.lora_A.weight"].to(dtype).contiguous()
            out[f"{name}.lora_up.weight"] = sd[f"{m}.lora_B.weight"].to(dtype).contiguous()
            out[f"{name}.alpha"] = torch.tensor(float(alpha), dtype=dtype)
    return out


def kohya_to_modules(kohya: dict, unet, text_encoder) -> dict:
    """{kohya module name: (part, module path)} found by matching names against the models' modules, the way
    A1111 and ComfyUI load a file. Raises KeyError naming every kohya module that matches no model module."""
    table = {kohya_name(n, "unet"): ("unet", n) for n, _ in unet.named_modules() if n}
    table.update({kohya_name(n, "text_encoder"): ("text_encoder", n) for n, _ in text_encoder.named_modules() if n})
    names = sorted({k.split(".")[0] for k in kohya})
    missing = [n for n in names if n not in table]
    if missing:
        raise KeyError(f"{len(missing)} kohya module(s) match no module of the model: {missing[:5]}")
    return {n: table[n] for n in names}


# ---- 3. the exporters ------------------------------------------------------------------------------------------
def _metadata(run, rank, alpha, unet_sd, te_sd) -> dict:
    """kohya's ss_* header fields (all strings), so A1111's and ComfyUI's info panels show the training."""
    from . import __version__
    c = run.config
    base = str(c.model)
    version = "sd_v1" if "xl" not in base.lower() else "sdxl_base_v1-0"
    meta = {
        "ss_network_module": "networks.lora", "ss_network_dim": str(rank), "ss_network_alpha": str(alpha),
        "ss_base_model_version": version, "ss_sd_model_name": base, "ss_v2": "False",
        "ss_resolution": str(c.resolution or ""), "ss_learning_rate": str(c.lr),
        "ss_text_encoder_lr": str(c.text_encoder_lr if c.text_encoder_lr is not None else c.lr),
        "ss_unet_lr": str(c.lr), "ss_max_train_steps": str(c.steps), "ss_steps": str(run.final_step),
        "ss_seed": str(c.seed), "ss_mixed_precision": c.mixed_precision, "ss_optimizer": c.optimizer,
        "ss_network_args": json.dumps({"targets": c.lora_targets, "dropout": c.lora_dropout}),
        "ss_training_comment": f"trained with sdkit {__version__} ({c.method}) on {c.data}",
        "ss_num_train_images": str(len([p for p in Path(c.data).glob('*') if p.suffix.lower() in
                                        ('.png', '.jpg', '.jpeg', '.webp')])) if Path(c.data).is_dir() else "",
        "ss_output_name": run.path.name, "sshs_model_hash": "", "modelspec.architecture": "stable-diffusion-v1/lora",
        "sdkit_unet_modules": str(len(_modules(unet_sd))), "sdkit_text_encoder_modules": str(len(_modules(te_sd))),
    }
    return meta


def export_kohya(run, out, checkpoint=None, dtype=torch.float16) -> Path:
    """One kohya .safetensors (A1111, ComfyUI, kohya, diffusers `load_lora_weights`). fp16 like kohya's files."""
    from safetensors.torch import save_file
    run = _open(run)
    unet_sd, te_sd, rank, alpha = lora_state(run, checkpoint)
    out = Path(out)
    if out.suffix != ".safetensors":
        out = out / f"{run.path.name}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(peft_to_kohya(unet_sd, te_sd, alpha, dtype), str(out),
              metadata=_metadata(run, rank, alpha, unet_sd, te_sd))
    return out


def _adapter_metadata(sd, rank, alpha):
    """peft LoraConfig fields diffusers rebuilds the adapter from: exact module paths, so nothing else matches."""
    return {"r": rank, "lora_alpha": alpha, "target_modules": _modules(sd), "init_lora_weights": "gaussian",
            "use_dora": False, "lora_bias": False}


def export_diffusers(run, out, checkpoint=None) -> Path:
    """A folder with pytorch_lora_weights.safetensors (+ adapter metadata: rank, alpha) for `load_lora_weights`."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from .models import resolve_model
    from .sdxl import is_sdxl_model
    run = _open(run)
    # SDXL runs: the SDXL loader's writer (same unet.* keys; an SDXL pipeline's load_lora_weights reads them)
    sdxl = is_sdxl_model(resolve_model(run.config.model), run.config.revision)
    cls = StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline
    unet_sd, te_sd, rank, alpha = lora_state(run, checkpoint)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # peft keys as they are (`unet.<module>.lora_A.weight`): diffusers loads them natively. Its older
    # `convert_state_dict_to_diffusers` renames attention keys only, so a LoRA that also targets feed-forward or
    # conv layers came out half in one format, half in the other, and the attention half was dropped at load.
    # The metadata (rank, alpha, exact module paths) makes the loaded scale alpha/rank the trained one.
    cls.save_lora_weights(
        out, unet_lora_layers=unet_sd, text_encoder_lora_layers=te_sd or None,
        unet_lora_adapter_metadata=_adapter_metadata(unet_sd, rank, alpha),
        text_encoder_lora_adapter_metadata=_adapter_metadata(te_sd, rank, alpha) if te_sd else None,
        safe_serialization=True)
    return out


def export_pipeline(run, out, checkpoint=None) -> Path:
    """A complete diffusers pipeline folder: DreamBooth/full weights as trained, a LoRA merged into the weights."""
    run = _open(run)
    pipe = merged_pipeline(run, checkpoint)
    out = Path(out)
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def merged_pipeline(run, checkpoint=None):
    """The run's pipeline with every trained weight in place and no adapter layers or hooks left (the run's
    method merges: LoRA/LoHa/LoKr into the weights, textual-inversion vectors into the embedding table)."""
    from .train.methods import make_method
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
        raise ValueError(f"{run.path}: --format single-file writes the SD 1.x layout; this run is SDXL. Fix: "
                         f"--format pipeline (a diffusers folder), or --format diffusers / kohya for a LoRA.")
    return save_single_file(pipe, out, dtype=dtype)


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
    from safetensors.torch import save_file
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(dtype).contiguous() for k, v in to_ldm_state_dict(pipe).items()}
    save_file(state, str(out), metadata={"format": "pt", "modelspec.architecture": "stable-diffusion-v1"})
    return out


def export(run, format: str, out=None, checkpoint=None) -> Path:
    """Export `run` (a Run or its folder) at `checkpoint` (default: latest) as `format`; returns the written path."""
    run = _open(run)
    if format not in FORMATS:
        raise ValueError(f"format: {format!r}; expected one of {', '.join(FORMATS)}.")
    writer, default_name = _WRITERS[format]
    if out is None:
        out = run.path / "export" / default_name.format(name=run.path.name)
    if ":" in writer:
        import importlib
        module, attr = writer.split(":")
        fn = getattr(importlib.import_module(module), attr)
    else:
        fn = globals()[writer]
    return fn(run, out, checkpoint)


def lora_modules(model) -> list:
    """Names of the modules of `model` that carry a LoRA (peft BaseTunerLayer) — to check a load took every key."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    return [n for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
