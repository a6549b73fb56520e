"""sdkit.scratch.train: the loop notebook 01 shows trains, and the sampler notebook 02 writes out is the pipeline's."""
import pytest
import torch

from sdkit.scratch import ScratchUNet, ScratchUNetConfig
from sdkit.scratch import train as st

torch.set_num_threads(1)

SMALL = dict(block_out_channels=(32, 64), norm_num_groups=8, cross_attention_dim=64, attention_head_dim=4)


@pytest.fixture(scope="module")
def data():
    """32 mini-world pictures through the shipped mini VAE and mini CLIP text tower."""
    return st.encode_dataset(n=32, seed=0)


def small_unet(seed=0):
    torch.manual_seed(seed)
    return ScratchUNet(ScratchUNetConfig(**SMALL))


def fixed_loss(unet, data):
    """The epsilon loss on the whole small set with fixed noise and timesteps: comparable before and after."""
    with torch.no_grad():
        ctx = data.text_states[data.caption_index]
        loss, _ = st.diffusion_loss(unet, data.latents, ctx, st.sd_alphas_cumprod(), torch.Generator().manual_seed(7))
    return loss.item()


def test_encode_dataset_gives_unit_scale_latents_and_text_states(data):
    assert data.latents.shape == (32, 4, 8, 8)
    assert data.text_states.shape[1:] == (77, 64) and data.null_state.shape == (1, 77, 64)
    assert data.caption_index.max() < len(data.text_states)
    assert 0.6 < data.latents.std().item() < 1.5        # the VAE's scaling factor makes latents roughly unit-scale
    # the row a latent points to is its own caption's state
    again = st.encode_text([data.captions[5]])
    assert torch.allclose(again[0], data.text_states[data.caption_index[5]], atol=1e-5)


def test_training_lowers_the_loss(data):
    unet = small_unet()
    before = fixed_loss(unet, data)
    result = st.train(unet, data, steps=40, batch_size=16, lr=2e-3, warmup=5, caption_dropout=0.1, seed=0)
    after = fixed_loss(result.raw, data)
    assert len(result.losses) == 40
    assert after < 0.8 * before, (before, after)


def test_ema_is_a_lagging_copy(data):
    unet = small_unet()
    start = [p.detach().clone() for p in unet.parameters()]
    result = st.train(unet, data, steps=5, batch_size=8, ema_decay=0.9, seed=0)
    assert result.model is not result.raw
    for e, r, s in zip(result.model.parameters(), result.raw.parameters(), start):
        assert torch.all((e - s).abs() <= (r - s).abs().max() + 1e-6)  # EMA moved less far than the raw weights
    assert any((e - r).abs().max() > 0 for e, r in zip(result.model.parameters(), result.raw.parameters()))


def test_min_snr_weights_each_sample_by_min_snr_gamma_over_snr(data):
    unet = small_unet()
    ac = st.sd_alphas_cumprod()
    ctx = data.text_states[data.caption_index]
    with torch.no_grad():
        plain, parts = st.diffusion_loss(unet, data.latents, ctx, ac, torch.Generator().manual_seed(3))
        weighted, same = st.diffusion_loss(unet, data.latents, ctx, ac, torch.Generator().manual_seed(3), snr_gamma=5.0)
        huge, _ = st.diffusion_loss(unet, data.latents, ctx, ac, torch.Generator().manual_seed(3), snr_gamma=1e9)
    assert torch.equal(parts["t"], same["t"])
    snr = ac[parts["t"]] / (1 - ac[parts["t"]])
    per = (parts["eps_pred"] - parts["noise"]).pow(2).mean(dim=(1, 2, 3))
    assert torch.allclose(weighted, (per * snr.clamp(max=5.0) / snr).mean(), rtol=1e-5)
    assert torch.allclose(huge, plain, rtol=1e-5)             # gamma above every SNR: the plain mean
    assert weighted < plain                                    # low-noise steps (SNR > 5) count less


def test_ema_warms_up_so_it_does_not_keep_the_random_start(data):
    """With a constant 0.999 the average would still hold 0.999^n of the initial weights after n steps;
    the warm-up (as diffusers' EMAModel) makes the first update copy most of the trained weights."""
    unet = small_unet()
    start = [p.detach().clone() for p in unet.parameters()]
    result = st.train(unet, data, steps=3, batch_size=8, ema_decay=0.999, warmup=1, seed=0)
    moved_ema = sum((e - s).abs().sum() for e, s in zip(result.model.parameters(), start))
    moved_raw = sum((r - s).abs().sum() for r, s in zip(result.raw.parameters(), start))
    assert moved_ema > 0.5 * moved_raw                         # constant 0.999 would give ~0.003 of it


def test_sample_with_cfg_shapes_and_determinism(data):
    unet = small_unet().eval()
    states = data.text_states[:3]
    a = st.sample(unet, states, data.null_state, steps=4, guidance=5.0, seeds=[0, 1, 2])
    b = st.sample(unet, states, data.null_state, steps=4, guidance=5.0, seeds=[0, 1, 2])
    c = st.sample(unet, states, data.null_state, steps=4, guidance=5.0, seeds=[3, 1, 2])
    assert a.shape == (3, 4, 8, 8)
    assert torch.equal(a, b)                                   # same seeds, same pictures
    assert (a[0] - c[0]).abs().max() > 1e-3 and torch.equal(a[1:], c[1:])   # a seed belongs to its own picture
    g1 = st.sample(unet, states, data.null_state, steps=4, guidance=1.0, seeds=[0, 1, 2])
    assert (a - g1).abs().max() > 1e-4                         # guidance changes the result
    with pytest.raises(ValueError, match="one seed per prompt"):
        st.sample(unet, states, data.null_state, steps=4, seeds=[0])


def test_written_out_sampler_equals_the_pipeline(tiny_model):
    """The loop in sample() gives the latents StableDiffusionPipeline + DDIMScheduler give, with CFG."""
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_model), safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    prompts, seeds = ["a red seven on a blue background", "a white circle on a green background"], [0, 5]
    with torch.no_grad():
        expected = pipe(prompts, num_inference_steps=10, guidance_scale=5.0, output_type="latent",
                        generator=[torch.Generator().manual_seed(s) for s in seeds]).images
    states = st.encode_text(prompts, pipe.text_encoder, pipe.tokenizer)
    null = st.encode_text([""], pipe.text_encoder, pipe.tokenizer)
    got = st.sample(pipe.unet, states, null, steps=10, guidance=5.0, seeds=seeds)
    assert got.shape == expected.shape
    assert expected.abs().mean() > 0.1
    assert (got - expected).abs().max().item() < 1e-4
    # and the timesteps are the scheduler's
    pipe.scheduler.set_timesteps(10)
    assert st.pipeline_timesteps(10) == pipe.scheduler.timesteps.tolist()
