"""Hypernetworks (A1111's): only the MLPs train, checkpoints resume, the .pt file is A1111's layout and reads with
weights_only=True, and a file loaded onto a fresh UNet draws what the trained run draws."""
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import sdkit
from sdkit.methods.hypernetwork import (MODULE_NAME, HypernetworkAttnProcessor, HypernetworkMethod, Hypernetwork,
                                      a1111_state, build_mlp, hypernetwork_from_a1111, install_hypernetwork,
                                      load_hypernetwork_file, set_hypernetwork_strength)
from sdkit.train.loop import Trainer, pipeline_from_checkpoint

PROMPT = "a red square on a white background"


def trained(run, step):
    return load_file(Path(run.path) / "checkpoints" / f"step_{step:06d}" / "trainable.safetensors")


def draw(pipe, seed=0):
    """(1, 32, 32, 3) floats in [0, 1], 2 DDIM steps."""
    return pipe(PROMPT, num_inference_steps=2, guidance_scale=5.0, generator=torch.Generator().manual_seed(seed),
                height=32, width=32, output_type="np").images


def n_hyper(unet):
    return sum(isinstance(p, HypernetworkAttnProcessor) for p in unet.attn_processors.values())


@pytest.fixture(scope="module")
def hn_config(tiny_model, data8, tmp_path_factory):
    """base_config's fast run (32 px, 2 sampling steps) with method hypernetwork, a checkpoint every 2 steps."""
    return sdkit.TrainConfig(model=str(tiny_model), data=str(data8), steps=4, resolution=32, sample_steps=2,
                             tensorboard=False, lr=1e-3, method="hypernetwork", checkpoint_every=2,
                             out=str(tmp_path_factory.mktemp("hn") / "run"))


@pytest.fixture(scope="module")
def hn_trained(hn_config):
    trainer = Trainer(hn_config, progress=None)
    return trainer, trainer.fit()


def test_mlps_follow_a1111_sequential_numbering_and_normal_init():
    # with "linear" there are no activation modules; otherwise one after every layer but the last
    assert [k for k in build_mlp(8, [1, 2, 1], "linear").state_dict()] == \
        ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert [k for k in build_mlp(8, [1, 2, 1], "relu").state_dict()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    mlp = build_mlp(64, [1, 1.5, 1.5, 1], "swish")
    assert [type(m).__name__ for m in mlp] == ["Linear", "Hardswish", "Linear", "Hardswish", "Linear"]  # A1111
    assert [tuple(mlp[i].weight.shape) for i in (0, 2, 4)] == [(96, 64), (96, 96), (64, 96)]
    # A1111's "Normal" init: weights N(0, 0.01), biases exactly 0
    torch.manual_seed(0)
    big = build_mlp(256, [1, 2, 1])
    assert all(float(m.bias.detach().abs().max()) == 0 for m in big)
    assert abs(float(big[0].weight.detach().std()) - 0.01) < 5e-4
    with pytest.raises(sdkit.ConfigError, match="start and end with 1"):
        HypernetworkMethod(sdkit.TrainConfig(data="x", method="hypernetwork", hypernetwork_layers="2,1"))


def test_training_changes_the_mlps_and_no_base_weight(hn_trained, hn_config):
    trainer, run = hn_trained
    unet = trainer.accelerator.unwrap_model(trainer.unet)
    fresh = sdkit.load_pipeline(hn_config.model)
    base = {k: v for k, v in unet.state_dict().items() if not k.startswith(MODULE_NAME)}
    assert base.keys() == fresh.unet.state_dict().keys()
    for k, v in fresh.unet.state_dict().items():
        assert torch.equal(base[k], v), k
    assert not any(p.requires_grad for n, p in unet.named_parameters() if not n.startswith(MODULE_NAME))
    assert not any(p.requires_grad for p in trainer.text_encoder.parameters())
    # the checkpoint holds the two MLPs only; every tensor moved from its (seeded) initial value
    state = trained(run, 4)
    assert sorted(state) == sorted(f"hypernetwork.32.{kv}.{i}.{p}" for kv in "kv" for i in (0, 1)
                                   for p in ("weight", "bias"))
    torch.manual_seed(hn_config.seed)  # the loop seeds the initialization the same way
    method = HypernetworkMethod(hn_config)
    method.setup(fresh.unet, fresh.text_encoder)
    init = method.state_dict(fresh.unet, fresh.text_encoder)
    moved = {k: (state[k] - init[k]).abs().max().item() for k in state}
    assert all(moved[k] > 1e-3 for k in state if ".v." in k or k.endswith("weight")), moved  # ~4 Adam steps of lr
    # not the key MLP's biases: with no activation they add the same vector to every key, and softmax(q.k_j + q.c)
    # over tokens j ignores it, so their gradient is ~0 (a fact of attention, true in A1111 as well)
    assert all(moved[k] < 1e-3 for k in state if ".k." in k and k.endswith("bias")), moved
    # the cross-attention layers (attn2) carry the hypernetwork, self-attention keeps diffusers' processor
    procs = unet.attn_processors
    assert {n for n, p in procs.items() if isinstance(p, HypernetworkAttnProcessor)} == \
        {n for n in procs if ".attn2." in n}


def test_step0_is_near_identity_and_strength_0_is_the_base_model(tiny_model):
    pipe = sdkit.load_pipeline(str(tiny_model))
    base = draw(pipe)
    torch.manual_seed(0)
    net = Hypernetwork([32], [1, 2, 1], "linear")
    assert install_hypernetwork(pipe.unet, net) == 4
    # A1111's init is N(0, 0.01) on every layer, so the branch is ~sqrt(2)*d*1e-4 = 0.45% of the context at d=32:
    # near the base image, not equal to it (measured 3e-4 of the pixel range; tolerance 5e-3)
    at_init = draw(pipe)
    assert 0 < np.abs(at_init - base).max() < 5e-3
    set_hypernetwork_strength(pipe.unet, 0.0)  # context + 0 * mlp(context): exactly the base model
    assert np.array_equal(draw(pipe), base)
    set_hypernetwork_strength(pipe.unet, 1.0)
    with torch.no_grad():
        for kv in "kv":  # last layer zero: the residual branch is exactly 0
            net["32"][kv][-1].weight.zero_()
    assert np.array_equal(draw(pipe), base)


def test_checkpoint_then_resume_latest_equals_uninterrupted(hn_trained, hn_config, tmp_path):
    _, straight = hn_trained
    cfg = hn_config.replace(out=str(tmp_path / "part"))
    stop = threading.Event()

    class StopAt2(sdkit.Callback):
        def on_step_end(self, trainer, logs):
            if trainer.step == 2:
                stop.set()
    part = sdkit.train(cfg, callbacks=[StopAt2()], stop_event=stop, progress=None)
    assert part.stopped_early and part.final_step == 2
    resumed = sdkit.train(cfg.replace(resume="latest"), progress=None)
    assert resumed.final_step == 4
    a, b = trained(straight, 4), trained(resumed, 4)
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5


def test_export_is_a1111s_pt_and_loads_back_to_the_same_images(hn_trained, hn_config, tmp_path):
    from sdkit.export import export
    _, run = hn_trained
    out = export(run, "hypernetwork")
    assert out == run.path / "export" / f"{run.path.name}.pt"
    data = torch.load(out, map_location="cpu", weights_only=True)  # no code unpickled
    # A1111's layout: integer width -> (k state, v state) with its Sequential names, plus the metadata it reads
    assert [k for k in data if isinstance(k, int)] == [32]
    k_sd, v_sd = data[32]
    assert list(k_sd) == list(v_sd) == ["linear.0.weight", "linear.0.bias", "linear.1.weight", "linear.1.bias"]
    assert [tuple(t.shape) for t in k_sd.values()] == [(64, 32), (64,), (32, 64), (32,)]
    assert k_sd["linear.1.weight"].dtype == torch.float32
    ck = trained(run, 4)
    assert torch.equal(k_sd["linear.1.weight"], ck["hypernetwork.32.k.1.weight"])
    assert torch.equal(v_sd["linear.0.bias"], ck["hypernetwork.32.v.0.bias"])
    assert data["layer_structure"] == [1.0, 2.0, 1.0] and data["activation_func"] == "linear"
    assert (data["is_layer_norm"], data["use_dropout"], data["activate_output"], data["last_layer_dropout"]) == \
        (False, False, False, False)
    assert data["weight_initialization"] == "Normal" and data["step"] == 4 and data["name"] == run.path.name
    assert data["dropout_structure"] == [0.0, 0.0, 0.0] and data["sd_checkpoint_name"] == hn_config.model
    # the run's own pipeline draws with the hypernetwork ...
    trained_pipe = pipeline_from_checkpoint(run)
    assert n_hyper(trained_pipe.unet) == 4
    expected = draw(trained_pipe)
    set_hypernetwork_strength(trained_pipe.unet, 0.0)
    base = draw(sdkit.load_pipeline(hn_config.model))
    assert np.array_equal(draw(trained_pipe), base) and not np.array_equal(expected, base)
    # ... and the .pt on a fresh base pipeline draws the same image
    pipe = sdkit.load_pipeline(hn_config.model)
    load_hypernetwork_file(out, pipe.unet)
    assert np.abs(draw(pipe) - expected).max() < 1e-6
    set_hypernetwork_strength(pipe.unet, 0.0)
    assert np.array_equal(draw(pipe), base)
    # the final sample the loop drew is the reloaded pipeline's picture (PNG rounding aside)
    from sdkit.sample import generate
    sample = run.samples[4][0]
    again = generate(run.load_pipeline(), [run.path.joinpath("samples", "step_000004", "prompts.txt").read_text()
                                           .splitlines()[0]], hn_config.sample_seeds, steps=2,
                     guidance_scale=hn_config.guidance_scale, height=32, width=32)[0]
    from PIL import Image
    diff = np.abs(np.asarray(Image.open(sample), dtype=int) - np.asarray(again, dtype=int)).max()
    assert diff <= 1


def test_relu_file_round_trip_and_a1111_width_rule(tiny_model, tmp_path):
    torch.manual_seed(1)
    net = Hypernetwork([32, 64], [1, 1.5, 1], "relu")
    path = tmp_path / "two.pt"
    torch.save(a1111_state(net, "two", step=7), path)
    data = torch.load(path, weights_only=True)
    assert list(data[64][1]) == ["linear.0.weight", "linear.0.bias", "linear.2.weight", "linear.2.bias"]
    back = hypernetwork_from_a1111(data)
    x = torch.randn(2, 5, 64)
    for a, b in zip(net.pair(64), back.pair(64)):
        assert torch.equal(a.eval()(x), b(x))
    # A1111 applies a width-d module wherever K/V read a d-wide input. Tiny UNet: cross-attention reads 32 (4
    # layers); self-attention is 32 wide in 3 layers, 64 in 1. sdkit keeps the context-width module on
    # cross-attention (where it trains); exact_a1111 puts it on the 32-wide self-attention too.
    pipe = sdkit.load_pipeline(str(tiny_model))
    load_hypernetwork_file(path, pipe.unet)
    assert n_hyper(pipe.unet) == 5
    assert draw(pipe).shape == (1, 32, 32, 3)  # the self-attention path runs
    load_hypernetwork_file(path, pipe.unet, exact_a1111=True)
    assert n_hyper(pipe.unet) == 8
    with pytest.raises(ValueError, match="768: SD 1.x"):
        install_hypernetwork(pipe.unet, Hypernetwork([768]))


def test_errors_name_the_field_and_the_fix(hn_config, tiny_model):
    pipe = sdkit.load_pipeline(str(tiny_model))
    with pytest.raises(sdkit.ConfigError, match="attention='sdpa'"):
        HypernetworkMethod(hn_config.replace(attention="xformers")).setup(pipe.unet, pipe.text_encoder)
    with pytest.raises(sdkit.ConfigError, match="train_text_encoder=False"):
        HypernetworkMethod(hn_config.replace(train_text_encoder=True))
    with pytest.raises(ValueError, match="no hypernetwork"):
        set_hypernetwork_strength(sdkit.load_pipeline(str(tiny_model)).unet, 0.5)
