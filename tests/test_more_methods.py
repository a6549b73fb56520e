"""Textual inversion, LoHa/LoKr/LoCon and the EveryDream-style full fine-tune on the one loop, and their exports."""
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import sdkit
from sdkit.config import ConfigError
from sdkit.export import export, merged_pipeline
from sdkit.models import load_pipeline
from sdkit.sample import generate

from conftest import PYTHON, ROOT


def _img(pipe, prompt, seed=0):
    return np.asarray(generate(pipe, [prompt], [seed], steps=2, height=32, width=32)[0], dtype=np.float32)


# ---- textual inversion ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ti_run(tiny_model, data8, tmp_path_factory):
    out = tmp_path_factory.mktemp("ti") / "run"
    cfg = sdkit.TrainConfig(model=str(tiny_model), data=str(data8), method="textual-inversion", token="<sks>",
                            init_token="red", num_vectors=2, steps=4, lr=5e-2, resolution=32, out=str(out),
                            sample_steps=2, tensorboard=False, sample_prompts=["a <sks> square"])
    return sdkit.train(cfg, progress=None)


def test_textual_inversion_trains_only_the_new_vectors(ti_run, tiny_model):
    base = load_pipeline(str(tiny_model))
    pipe = ti_run.load_pipeline()
    for name, w in base.unet.state_dict().items():
        assert torch.equal(w, pipe.unet.state_dict()[name]), f"UNet weight {name} changed"
    old = base.text_encoder.get_input_embeddings().weight
    new = pipe.text_encoder.get_input_embeddings().weight
    assert new.shape[0] == old.shape[0] + 2  # <sks> and <sks>_1
    assert torch.equal(old, new[:old.shape[0]]), "a row of the original vocabulary changed"
    vectors = load_file(str(ti_run.latest_checkpoint / "trainable.safetensors"))["token_vectors"]
    red = old[base.tokenizer.encode("red", add_special_tokens=False)[0]]
    assert vectors.shape == (2, old.shape[1])
    assert not torch.allclose(vectors, red.expand_as(vectors)), "the vectors did not move from their init word"


def test_embedding_export_loads_in_diffusers_and_changes_the_image(ti_run, tiny_model, tmp_path):
    path = export(ti_run, "embedding", out=tmp_path / "sks.safetensors")
    state = load_file(str(path))
    assert list(state) == ["emb_params"] and state["emb_params"].shape[0] == 2  # AUTOMATIC1111's layout
    pipe = load_pipeline(str(tiny_model))
    before = _img(pipe, "a <sks> square")
    pipe.load_textual_inversion(str(path), token="<sks>")
    after = _img(pipe, "a <sks> square")
    trained = _img(ti_run.load_pipeline(), "a <sks> square")
    assert np.abs(after - before).mean() > 1.0, "loading the embedding did not change the image"
    np.testing.assert_allclose(after, trained, atol=1.0)  # diffusers draws what sdkit trained


def test_textual_inversion_captions_and_errors(tiny_model, data8, tmp_path):
    from sdkit.methods.textual_inversion import TextualInversionMethod
    m = TextualInversionMethod(sdkit.TrainConfig(method="textual-inversion", token="<sks>", num_vectors=3,
                                                 trigger_token="sks"))
    assert m.convert_captions(["a white sks glyph"]) == ["a white <sks> <sks>_1 <sks>_2 glyph"]
    assert m.convert_captions(["a glyph"]) == ["<sks> <sks>_1 <sks>_2 a glyph"]
    assert m.sample_prompt("a white sks glyph") == "a white <sks> glyph"  # the pipeline expands it itself
    base = dict(model=str(tiny_model), data=str(data8), method="textual-inversion", steps=1, resolution=32,
                out=str(tmp_path / "r"), tensorboard=False)
    with pytest.raises(ConfigError, match="token: textual inversion needs"):
        sdkit.train(sdkit.TrainConfig(**base), progress=None)
    with pytest.raises(ConfigError, match="already in the tokenizer"):
        sdkit.train(sdkit.TrainConfig(**base, token="red"), progress=None)


def test_textual_inversion_cli_and_export_cli(tiny_model, data8, tmp_path):
    out = tmp_path / "cli"
    r = subprocess.run([PYTHON, "-m", "sdkit", "train", "--model", str(tiny_model), "--data", str(data8),
                        "--method", "textual-inversion", "--token", "<glyph>", "--init-token", "red", "--steps", "2",
                        "--resolution", "32", "--sample-steps", "2", "--no-tensorboard", "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([PYTHON, "-m", "sdkit", "export", str(out), "--format", "embedding"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "load_textual_inversion" in r.stdout
    assert (out / "export" / "cli-embedding.safetensors").is_file()


# ---- LoHa / LoKr / LoCon ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["loha", "lokr"])
def test_lycoris_export_adds_exactly_the_trained_delta(method, tiny_model, data8, tmp_path):
    """The exported file, read by the rules AUTOMATIC1111's and ComfyUI's loaders use, gives the weights that
    peft's own merge gives, for attention (Linear) and ResNet (Conv2d 3x3) layers alike."""
    from sdkit.methods.lycoris import lycoris_delta
    run = sdkit.train(sdkit.TrainConfig(model=str(tiny_model), data=str(data8), method=method, steps=3, lr=1e-2,
                                        lora_rank=4, lora_alpha=2, lora_targets="to_q,to_k,to_v,to_out.0,conv1,conv2",
                                        resolution=32, out=str(tmp_path / method), sample_steps=2,
                                        tensorboard=False), progress=None)
    tensors = load_file(str(export(run, "lycoris")))
    part = "hada_w1_a" if method == "loha" else "lokr_w1"
    assert any(k.endswith(part) for k in tensors) and all(k.startswith("lora_unet_") for k in tensors)
    base = load_pipeline(str(tiny_model)).unet.state_dict()
    merged = merged_pipeline(run).unet.state_dict()
    names = sorted({k.rsplit(".", 1)[0] for k in tensors})
    assert len(names) == 48
    convs = 0
    for name in names:
        key = next(k for k in base if k.endswith(".weight") and "lora_unet_" + k[:-7].replace(".", "_") == name)
        trained = merged[key] - base[key]
        assert trained.abs().max() > 0, f"{key} did not train"
        delta = lycoris_delta(tensors, name, base[key].shape)
        err = (delta - trained).abs().max() / trained.abs().max()
        assert err < 2e-3, f"{name}: the exported delta differs from the trained one by {err:.2e} (fp16 export)"
        convs += base[key].dim() == 4
    assert convs > 0


def test_locon_puts_lora_on_the_resnet_convs_and_exports_kohya(tiny_model, data8, tmp_path):
    run = sdkit.train(sdkit.TrainConfig(model=str(tiny_model), data=str(data8), method="locon", steps=2,
                                        resolution=32, out=str(tmp_path / "locon"), sample_steps=2,
                                        tensorboard=False), progress=None)
    tensors = load_file(str(export(run, "kohya")))
    conv_down = [k for k in tensors if "resnets" in k and k.endswith("conv1.lora_down.weight")]
    assert conv_down and tensors[conv_down[0]].dim() == 4
    assert any("attn1_to_q.lora_down" in k for k in tensors)


# ---- full fine-tune, EveryDream style ----------------------------------------------------------------------------
def test_everydream_full_finetune(tiny_model, data8, tmp_path):
    """Text encoder too, EMA, a validation split with its loss at every checkpoint, checkpoints by the clock;
    exported as a pipeline (from_pretrained loads it; it differs from the base) and as one file."""
    from diffusers import StableDiffusionPipeline
    from sdkit.train.loop import pipeline_from_checkpoint
    run = sdkit.train(sdkit.TrainConfig(
        model=str(tiny_model), data=str(data8), method="full", train_text_encoder=True, ema=True, ema_decay=0.5,
        validation_split=0.25, checkpoint_every_minutes=1e-6, steps=3, lr=1e-3, resolution=32,
        out=str(tmp_path / "ed"), sample_steps=2, tensorboard=False), progress=None)
    assert [p.name for p in run.checkpoints] == ["step_000001", "step_000002", "step_000003"]  # by the clock
    assert [v["step"] for v in run.validation] == [1, 2, 3]
    assert all(np.isfinite(v["val_loss"]) and v["val_n"] == 2 for v in run.validation)
    held_out = (run.path / "validation_images.txt").read_text().split()
    assert len(held_out) == 2
    ema = pipeline_from_checkpoint(run)
    raw = pipeline_from_checkpoint(run, use_ema=False)
    assert any(not torch.equal(a, b) for a, b in zip(ema.unet.parameters(), raw.unet.parameters()))
    folder = export(run, "pipeline", out=tmp_path / "pipe")
    loaded = StableDiffusionPipeline.from_pretrained(folder)
    base = load_pipeline(str(tiny_model))
    changed_unet = max((loaded.unet.state_dict()[k] - w).abs().max() for k, w in base.unet.state_dict().items())
    changed_te = max((loaded.text_encoder.state_dict()[k] - w).abs().max()
                     for k, w in base.text_encoder.state_dict().items())
    assert changed_unet > 0 and changed_te > 0
    single = export(run, "single-file", out=tmp_path / "ed.safetensors")
    assert Path(single).stat().st_size > 0


def test_textual_inversion_pipeline_export_keeps_the_token(ti_run, tmp_path):
    """--format pipeline bakes the vectors into the embedding table: a plain from_pretrained draws the concept."""
    from diffusers import StableDiffusionPipeline
    folder = export(ti_run, "pipeline", out=tmp_path / "pipe")
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    assert "<sks>_1" in pipe.tokenizer.get_vocab()
    np.testing.assert_allclose(_img(pipe, "a <sks> square"), _img(ti_run.load_pipeline(), "a <sks> square"), atol=1.0)
