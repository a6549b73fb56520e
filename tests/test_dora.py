"""DoRA (--method dora, peft's use_dora): trains on the loop (SD 1.5 layout and SDXL), is counted by preflight, and
its kohya export is consumed whole by the rule AUTOMATIC1111's and ComfyUI's loaders apply to it (each `.diff` added
to its module's weight), giving exactly the weights sdkit trained; the diffusers export loads in diffusers."""
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import sdkit
from sdkit.export import export, merged_pipeline
from sdkit.models import load_pipeline
from sdkit.sample import generate
from sdkit.train.preflight import trainable_count

from loader_rules import apply_diff_file

TARGETS = "to_q,to_k,to_v,to_out.0,conv1"


def draw(pipe, prompt="a red square on a white background"):
    im = generate(pipe, [prompt], [0], steps=4, guidance_scale=5.0, height=32, width=32)[0]
    return np.asarray(im, dtype=np.float32) / 255.0


@pytest.fixture(scope="module")
def dora_run(tiny_model, data8, tmp_path_factory):
    cfg = sdkit.TrainConfig(model=str(tiny_model), data=str(data8), method="dora", steps=3, lr=1e-2, lora_rank=4,
                            lora_alpha=2, lora_targets=TARGETS, train_text_encoder=True, resolution=32,
                            out=str(tmp_path_factory.mktemp("dora") / "run"), sample_steps=2, tensorboard=False)
    return sdkit.train(cfg, progress=None)


def test_dora_trains_magnitudes_and_preflight_counts_them(dora_run):
    state = load_file(str(dora_run.latest_checkpoint / "trainable.safetensors"))
    magnitudes = [k for k in state if "lora_magnitude_vector" in k]
    assert magnitudes and any(k.startswith("text_encoder.") for k in magnitudes)
    counted = trainable_count(dora_run.config)
    assert counted["trained"] == sum(t.numel() for t in state.values())
    assert counted["trained_base"] == 0


def test_dora_kohya_file_is_applied_whole_and_exactly_by_the_loaders_rule(dora_run, tiny_model, tmp_path):
    tensors = load_file(str(export(dora_run, "kohya", tmp_path / "glyph-dora.safetensors")))
    assert all(k.endswith(".diff") for k in tensors)
    assert any(k.startswith("lora_te_text_model_encoder_layers_") for k in tensors)
    base = load_pipeline(str(tiny_model))
    patched = apply_diff_file(tensors, base.unet, base.text_encoder)     # raises on any key left over
    trained = merged_pipeline(dora_run)                                  # peft's own merge of the trained DoRA
    n_te = sum(1 for k in tensors if k.startswith("lora_te_"))
    assert patched == len(tensors) and n_te > 0
    convs = 0
    for model, ref in ((base.unet, trained.unet), (base.text_encoder, trained.text_encoder)):
        got, want = model.state_dict(), ref.state_dict()
        for k, v in want.items():
            err = (got[k].float() - v.float()).abs().max().item()
            assert err < 2e-3 * max(1.0, v.abs().max().item()), f"{k}: off by {err:.2e} (fp16 diff)"
        convs += sum(1 for k in tensors if "resnets" in k and k.endswith("conv1.diff"))
    assert convs > 0
    # and the pictures agree with the run's own pipeline
    assert np.abs(draw(base) - draw(dora_run.load_pipeline())).max() < 0.02


def test_dora_diffusers_export_loads_in_diffusers(dora_run, tiny_model, tmp_path):
    pipe = load_pipeline(str(tiny_model))
    base = draw(pipe)
    pipe.load_lora_weights(str(export(dora_run, "diffusers", tmp_path / "d")))
    ours = draw(dora_run.load_pipeline())
    assert np.abs(draw(pipe) - ours).max() < 0.02 and np.abs(ours - base).max() > 0.01


def test_dora_trains_on_sdxl(tmp_path, data8):
    from sdkit.models import make_tiny_sdxl
    model = make_tiny_sdxl(tmp_path / "tiny-sdxl")
    run = sdkit.train(sdkit.TrainConfig(model=str(model), data=str(data8), method="dora", steps=2, lr=1e-2,
                                        resolution=32, out=str(tmp_path / "run"), sample_steps=2,
                                        tensorboard=False), progress=None)
    state = load_file(str(run.latest_checkpoint / "trainable.safetensors"))
    assert any("lora_magnitude_vector" in k for k in state)
    assert torch.isfinite(torch.tensor(run.metrics[-1]["loss"]))
