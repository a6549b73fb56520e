"""Exports a user loads elsewhere: every format, loaded back, draws what the trained model draws.

Tolerances (pixels in [0, 1]): diffusers LoRA and pipeline exports hold the trained fp32 tensors, so their images
equal the in-memory model's to within 1/255 (one 8-bit level); the kohya file stores fp16 tensors like kohya's own
files, and the merged pipeline / single file add rounding of W + BA: both within 0.02.
"""
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

import sdkit
from sdkit.export import export, lora_modules
from sdkit.methods.kohya import peft_to_kohya
from loader_rules import kohya_to_modules
from sdkit.models import load_pipeline
from sdkit.sample import generate

PROMPT = "a red square on a white background"


def draw(pipe, prompt=PROMPT):
    """One 32 px image, 4 DDIM steps, seed 0 -> float array in [0, 1]."""
    im = generate(pipe, [prompt], [0], steps=4, guidance_scale=5.0, height=32, width=32)[0]
    return np.asarray(im, dtype=np.float32) / 255.0


def diff(a, b):
    return float(np.abs(a - b).max())


@pytest.fixture(scope="module")
def lora_run(tiny_model, data8, tmp_path_factory):
    """A short LoRA with everything an export must carry: text-encoder LoRA, alpha != rank, feed-forward and conv
    targets (LoCon) beside the attention projections."""
    out = tmp_path_factory.mktemp("export") / "lora"
    config = sdkit.TrainConfig(model=str(tiny_model), data=str(data8), steps=3, resolution=32, out=str(out),
                               sample_steps=2, tensorboard=False, lr=2e-2, train_text_encoder=True, lora_rank=4,
                               lora_alpha=2.0, sample_at_start=False,
                               lora_targets="to_q,to_k,to_v,to_out.0,ff.net.0.proj,ff.net.2,conv1,conv2")
    return sdkit.train(config, progress=None)


@pytest.fixture(scope="module")
def trained_image(lora_run):
    return draw(lora_run.load_pipeline())


def test_sd15_kohya_names_cover_all_176_modules_without_download():
    """SD 1.5's UNet and text encoder built on the meta device from their published configs: the default LoRA
    targets give 128 UNet + 48 text-encoder modules, every one gets a kohya name with the `text_model` level, the
    names map back to exactly those modules, and diffusers' kohya converter leaves no key over."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_lora_to_diffusers
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft import LoraConfig, inject_adapter_in_model
    from transformers import CLIPTextConfig, CLIPTextModel
    from sdkit.methods.base import TEXT_ENCODER_LORA_TARGETS

    with init_empty_weights():
        unet = UNet2DConditionModel(  # stable-diffusion-v1-5/unet/config.json
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
        te = CLIPTextModel(CLIPTextConfig(  # stable-diffusion-v1-5/text_encoder/config.json
            vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
            num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768))
    module_names = {n for n, _ in unet.named_modules()}, {n for n, _ in te.named_modules()}
    inject_adapter_in_model(LoraConfig(r=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]), unet)
    inject_adapter_in_model(LoraConfig(r=4, target_modules=TEXT_ENCODER_LORA_TARGETS), te)
    u_mods, t_mods = lora_modules(unet), lora_modules(te)
    assert (len(u_mods), len(t_mods)) == (128, 48)

    fake = lambda mods: {f"{m}.{ab}.weight": torch.zeros(1, 1) for m in mods for ab in ("lora_A", "lora_B")}
    kohya = peft_to_kohya(fake(u_mods), fake(t_mods), alpha=4.0)
    names = {k.split(".")[0] for k in kohya}
    assert len(names) == 176 and len(kohya) == 176 * 3
    assert "lora_te_text_model_encoder_layers_11_self_attn_out_proj" in names
    assert "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_out_0" in names
    assert not any(n.startswith("lora_te_encoder") for n in names)  # the transformers >= 5 trap

    # back to modules, by name matching as A1111/ComfyUI load a file: all 176, none twice
    found = kohya_to_modules(kohya, unet, te)
    assert sorted(p for part, p in found.values() if part == "unet") == sorted(u_mods)
    assert sorted(p for part, p in found.values() if part == "text_encoder") == sorted(t_mods)

    # diffusers' own kohya converter: nothing left over, every UNet name is a real module
    converted, alphas = _convert_non_diffusers_lora_to_diffusers(dict(kohya))
    assert len(converted) == 176 * 2 and len(alphas) == 176
    unet_peft = convert_unet_state_dict_to_peft({k[5:]: v for k, v in converted.items() if k.startswith("unet.")})
    unet_targets = {k.rsplit(".lora_", 1)[0] for k in unet_peft}
    assert unet_targets <= module_names[0] and len(unet_targets) == 128


@pytest.mark.parametrize("fmt", ["diffusers", "kohya"])
def test_lora_export_loads_whole_and_draws_the_trained_image(fmt, lora_run, trained_image, tiny_model, tmp_path):
    path = export(lora_run, fmt, tmp_path / ("lora" if fmt == "diffusers" else "lora.safetensors"))
    pipe = load_pipeline(str(tiny_model))
    base = draw(pipe)
    pipe.load_lora_weights(str(path))
    trained_modules = len(lora_modules(lora_run.load_pipeline().unet)), 8  # 8 = 2 layers x q,k,v,out
    assert (len(lora_modules(pipe.unet)), len(lora_modules(pipe.text_encoder))) == trained_modules
    image = draw(pipe)
    assert diff(image, trained_image) < (1.5 / 255 if fmt == "diffusers" else 0.02)
    assert diff(image, base) > 0.05, "the LoRA changed nothing: the test would pass on an empty file"


def test_kohya_file_layout_and_metadata(lora_run, tiny_model, tmp_path):
    path = export(lora_run, "kohya", tmp_path / "x.safetensors")
    with safe_open(str(path), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
        alpha = f.get_tensor(next(k for k in keys if k.endswith(".alpha")))
    names = {k.split(".")[0] for k in keys}
    assert all(k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha")) for k in keys)
    assert len(keys) == 3 * len(names)
    assert all(n.startswith(("lora_unet_", "lora_te_text_model_encoder_layers_")) for n in names)
    pipe = load_pipeline(str(tiny_model))
    # every module in the file is a module of the model (A1111 / ComfyUI's "lora key not loaded" never happens)
    assert len(kohya_to_modules(dict.fromkeys(keys), pipe.unet, pipe.text_encoder)) == len(names)
    assert float(alpha) == 2.0
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "2.0"
    assert meta["ss_base_model_version"] == "sd_v1" and "sdkit" in meta["ss_training_comment"]
    assert json.loads(meta["ss_network_args"])["targets"].startswith("to_q")


def test_lora_scale_and_fuse_unfuse(lora_run, trained_image, tiny_model, tmp_path):
    """What a learner does with a loaded LoRA: scale 0 is the base model, fuse gives the same image, unfuse undoes."""
    pipe = load_pipeline(str(tiny_model))
    base = draw(pipe)
    pipe.load_lora_weights(str(export(lora_run, "diffusers", tmp_path / "d")), adapter_name="glyph")
    pipe.set_adapters(["glyph"], adapter_weights=[0.0])
    assert diff(draw(pipe), base) < 1.5 / 255
    pipe.set_adapters(["glyph"], adapter_weights=[1.0])
    scaled = generate(pipe, [PROMPT], [0], steps=4, height=32, width=32, cross_attention_kwargs={"scale": 0.0})
    assert diff(np.asarray(scaled[0], dtype=np.float32) / 255, base) < 1.5 / 255  # per-call strength
    pipe.set_adapters(["glyph"], adapter_weights=[1.0])
    assert diff(draw(pipe), trained_image) < 1.5 / 255
    pipe.fuse_lora(lora_scale=1.0)
    pipe.unload_lora_weights()  # fused weights stay; adapter layers gone
    assert not lora_modules(pipe.unet)
    assert diff(draw(pipe), trained_image) < 0.02


def test_pipeline_export_of_lora_and_full_runs(lora_run, trained_image, base_config, tmp_path):
    from diffusers import StableDiffusionPipeline
    p = StableDiffusionPipeline.from_pretrained(str(export(lora_run, "pipeline", tmp_path / "merged")),
                                                safety_checker=None, requires_safety_checker=False)
    p.set_progress_bar_config(disable=True)
    assert not lora_modules(p.unet) and diff(draw(p), trained_image) < 0.02

    full = sdkit.train(base_config.replace(method="full", steps=2, lr=1e-3, sample_at_start=False), progress=None)
    p = StableDiffusionPipeline.from_pretrained(str(export(full, "pipeline", tmp_path / "full")),
                                                safety_checker=None, requires_safety_checker=False)
    p.set_progress_bar_config(disable=True)
    assert diff(draw(p), draw(full.load_pipeline())) < 1.5 / 255
    with pytest.raises(ValueError, match="pipeline"):
        export(full, "kohya", tmp_path / "no.safetensors")


def test_export_cli(lora_run, tmp_path, capsys):
    from sdkit.cli import main
    out = tmp_path / "cli.safetensors"
    assert main(["export", str(lora_run.path), "--format", "kohya", "--out", str(out), "--checkpoint",
                 "step_000003"]) == 0
    assert out.is_file() and "A1111" in capsys.readouterr().out


def test_single_file_is_the_original_sd_layout_and_loads_back(lora_run, trained_image, tiny_model, tmp_path):
    """diffusers ships only the LDM -> diffusers direction; our inverse mapping, run back through diffusers' own
    converters, puts every tensor back in its place, and from_single_file (offline, config = a local pipeline
    folder) draws the trained picture (fp16 file: within 0.02)."""
    from diffusers import StableDiffusionPipeline
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
    from sdkit.export import to_ldm_state_dict
    pipe = load_pipeline(str(tiny_model))
    ldm = to_ldm_state_dict(pipe)
    assert all(k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer."
                             "text_model.")) for k in ldm)
    for model, back in ((pipe.unet, convert_ldm_unet_checkpoint(dict(ldm), dict(pipe.unet.config))),
                        (pipe.vae, convert_ldm_vae_checkpoint(dict(ldm), dict(pipe.vae.config)))):
        ref = model.state_dict()
        assert back.keys() == ref.keys()
        assert all(torch.equal(back[k].reshape(ref[k].shape), ref[k]) for k in ref)

    path = export(lora_run, "single-file", tmp_path / "model.safetensors")
    loaded = StableDiffusionPipeline.from_single_file(str(path), config=str(tiny_model), safety_checker=None,
                                                      requires_safety_checker=False, local_files_only=True)
    loaded.set_progress_bar_config(disable=True)
    assert diff(draw(loaded), trained_image) < 0.02
