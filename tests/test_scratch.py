"""sdkit.scratch is proven right the way minGPT proves its GPT: load the reference model's weights and
assert the outputs equal it. Here the reference is diffusers (UNet2DConditionModel, its blocks, its schedulers)."""
from dataclasses import asdict

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock as DBasicTransformerBlock
from diffusers.models.attention_processor import Attention as DAttention
from diffusers.models.embeddings import TimestepEmbedding as DTimestepEmbedding
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.models.resnet import ResnetBlock2D as DResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel as DTransformer2DModel

from sdkit.scratch import ScratchUNet, ScratchUNetConfig, load_diffusers_weights, schedules
from sdkit.scratch import unet as su

torch.set_num_threads(1)
TOL = 1e-4

TINY = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
            cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
# the parts of runwayml/stable-diffusion-v1-5's unet/config.json that set the architecture
SD15 = dict(sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
            cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
SD15_PARAMS = 859_520_964  # parameter count of the SD 1.5 UNet


def jitter(module, seed=0, scale=0.05):
    """Perturb every parameter, so that norm weights (init 1) and biases (init 0) are not at their defaults:
    a key mapped to the wrong place then changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return module.eval()


def max_diff(a, b):
    return (a - b).abs().max().item()


def unet_inputs(cfg, batch=2, tokens=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    size = cfg["sample_size"]
    return (torch.randn(batch, cfg["in_channels"], size, size, generator=g), torch.tensor([3, 871])[:batch],
            torch.randn(batch, tokens, cfg["cross_attention_dim"], generator=g))


@pytest.fixture(scope="module")
def tiny_pair():
    torch.manual_seed(0)
    ref = jitter(UNet2DConditionModel(**TINY))
    return ref, ScratchUNet.from_diffusers(ref).eval()


# ----------------------------------------------------------------------------------------------
# Whole UNet


def test_whole_unet_matches_diffusers(tiny_pair):
    ref, mine = tiny_pair
    x, t, ctx = unet_inputs(TINY)
    with torch.no_grad():
        expected, got = ref(x, t, ctx).sample, mine(x, t, ctx)
    assert got.shape == expected.shape == x.shape
    assert expected.abs().mean() > 0.05            # a real signal, not zeros matching zeros
    assert max_diff(got, expected) < TOL


def test_one_perturbed_weight_breaks_the_match(tiny_pair):
    """The check above can fail: nudge one cross-attention weight and the outputs no longer agree."""
    ref, mine = tiny_pair
    broken = ScratchUNet.from_diffusers(ref).eval()
    with torch.no_grad():
        broken.mid_block.attentions[0].transformer_blocks[0].attn2.to_k.weight[0, 0] += 0.5
    x, t, ctx = unet_inputs(TINY)
    with torch.no_grad():
        assert max_diff(broken(x, t, ctx), ref(x, t, ctx).sample) > 10 * TOL
        assert max_diff(mine(x, t, ctx), ref(x, t, ctx).sample) < TOL   # the untouched copy still matches


def test_text_changes_the_output(tiny_pair):
    """Cross-attention is wired in: a different prompt embedding gives a different prediction."""
    _, mine = tiny_pair
    x, t, ctx = unet_inputs(TINY)
    with torch.no_grad():
        assert max_diff(mine(x, t, ctx), mine(x, t, ctx + 1.0)) > 10 * TOL


def test_deeper_config_matches_diffusers():
    """Three levels, two layers per block, per-block head counts: exercises the skip-channel bookkeeping."""
    cfg = dict(TINY, block_out_channels=(16, 32, 32), layers_per_block=2, attention_head_dim=(2, 4, 4),
               down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
               up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
    torch.manual_seed(0)
    ref = jitter(UNet2DConditionModel(**cfg), seed=3)
    mine = ScratchUNet.from_diffusers(ref).eval()
    x, t, ctx = unet_inputs(cfg)
    with torch.no_grad():
        assert max_diff(mine(x, t, ctx), ref(x, t, ctx).sample) < TOL


def test_round_trip_to_diffusers(tiny_pair):
    """A scratch model (e.g. trained in notebook 01) becomes a diffusers UNet with identical outputs."""
    _, mine = tiny_pair
    back = mine.to_diffusers().eval()
    x, t, ctx = unet_inputs(TINY)
    with torch.no_grad():
        assert max_diff(back(x, t, ctx).sample, mine(x, t, ctx)) < TOL


def test_mini_preset_is_a_valid_diffusers_config():
    cfg = ScratchUNet.config_like_sd("mini", cross_attention_dim=48)   # the model notebook 01 trains
    assert cfg.cross_attention_dim == 48
    torch.manual_seed(0)
    mine = ScratchUNet(cfg).eval()
    ref = mine.to_diffusers().eval()
    x, t, ctx = unet_inputs(asdict(cfg), batch=1)
    with torch.no_grad():
        assert max_diff(mine(x, t, ctx), ref(x, t, ctx).sample) < TOL


# ----------------------------------------------------------------------------------------------
# SD 1.5 shape: every parameter mapped, no allocation (meta device)


def test_sd15_key_mapping_covers_every_parameter():
    assert asdict(ScratchUNetConfig.like_sd("sd15")) == dict(SD15, norm_eps=1e-5)
    with torch.device("meta"):
        ref = UNet2DConditionModel(**SD15)
        mine = ScratchUNet(ScratchUNetConfig.from_diffusers(dict(ref.config)))
    ref_shapes = {su.diffusers_key_to_scratch(k): tuple(v.shape) for k, v in ref.state_dict().items()}
    my_shapes = {k: tuple(v.shape) for k, v in mine.state_dict().items()}
    assert len(ref_shapes) == len(ref.state_dict())          # the renaming never merges two keys
    assert sorted(ref_shapes.keys() - my_shapes.keys()) == []  # nothing of diffusers left over
    assert sorted(my_shapes.keys() - ref_shapes.keys()) == []  # nothing of ours without a source
    assert ref_shapes == my_shapes
    assert sum(p.numel() for p in mine.parameters()) == SD15_PARAMS
    assert all(su.scratch_key_to_diffusers(k) in ref.state_dict() for k in my_shapes)


# ----------------------------------------------------------------------------------------------
# Block by block


def test_timestep_embedding_matches_diffusers():
    t = torch.tensor([0, 1, 17, 500, 999])
    expected = get_timestep_embedding(t, 32, flip_sin_to_cos=True, downscale_freq_shift=0)
    assert max_diff(su.timestep_embedding(t, 32), expected) < 1e-6
    torch.manual_seed(0)
    ref = jitter(DTimestepEmbedding(32, 128))
    mine = load_diffusers_weights(su.TimestepEmbedding(32, 128), ref)
    with torch.no_grad():
        assert max_diff(mine(expected), ref(expected)) < 1e-6


@pytest.mark.parametrize("in_ch,out_ch", [(32, 32), (32, 64)])   # without and with the 1x1 skip conv
def test_resnet_block_matches_diffusers(in_ch, out_ch):
    torch.manual_seed(0)
    ref = jitter(DResnetBlock2D(in_channels=in_ch, out_channels=out_ch, temb_channels=128, groups=8, eps=1e-5))
    mine = load_diffusers_weights(su.ResnetBlock2D(in_ch, out_ch, 128, groups=8, eps=1e-5), ref)
    assert (mine.conv_shortcut is None) == (in_ch == out_ch)
    x, temb = torch.randn(2, in_ch, 8, 8), torch.randn(2, 128)
    with torch.no_grad():
        assert max_diff(mine(x, temb), ref(x, temb)) < TOL


@pytest.mark.parametrize("context_dim", [None, 48])   # self-attention, cross-attention
def test_attention_matches_diffusers(context_dim):
    torch.manual_seed(0)
    ref = jitter(DAttention(query_dim=32, cross_attention_dim=context_dim, heads=4, dim_head=8, bias=False, out_bias=True))
    mine = load_diffusers_weights(su.Attention(32, heads=4, context_dim=context_dim), ref)
    x = torch.randn(2, 16, 32)
    ctx = None if context_dim is None else torch.randn(2, 7, context_dim)
    with torch.no_grad():
        assert max_diff(mine(x, ctx), ref(x, encoder_hidden_states=ctx)) < TOL


def test_transformer_block_matches_diffusers():
    torch.manual_seed(0)
    ref = jitter(DBasicTransformerBlock(32, num_attention_heads=4, attention_head_dim=8, cross_attention_dim=48,
                                        activation_fn="geglu"))
    mine = load_diffusers_weights(su.BasicTransformerBlock(32, heads=4, context_dim=48), ref)
    x, ctx = torch.randn(2, 16, 32), torch.randn(2, 7, 48)
    with torch.no_grad():
        assert max_diff(mine(x, ctx), ref(x, encoder_hidden_states=ctx)) < TOL


@pytest.mark.filterwarnings("ignore::FutureWarning")   # diffusers' own deprecation notice about its output class
def test_spatial_transformer_matches_diffusers():
    torch.manual_seed(0)
    ref = jitter(DTransformer2DModel(num_attention_heads=4, attention_head_dim=8, in_channels=32,
                                     cross_attention_dim=48, norm_num_groups=8))
    mine = load_diffusers_weights(su.Transformer2DModel(32, heads=4, context_dim=48, groups=8), ref)
    ctx = torch.randn(2, 7, 48)
    for scale in (1.0, 0.003):   # small activations make GroupNorm's eps (1e-6 here, not 1e-5) matter
        x = torch.randn(2, 32, 4, 4) * scale
        with torch.no_grad():
            assert max_diff(mine(x, ctx), ref(x, encoder_hidden_states=ctx).sample) < TOL


# ----------------------------------------------------------------------------------------------
# Errors that teach


def test_unsupported_block_type_names_it_and_the_alternatives():
    with pytest.raises(ValueError, match=r"AttnDownBlock2D.*CrossAttnDownBlock2D.*DownBlock2D"):
        ScratchUNetConfig(down_block_types=("AttnDownBlock2D", "DownBlock2D"))


def test_unsupported_diffusers_setting_is_refused():
    with pytest.raises(ValueError, match="use_linear_projection=True"):   # SD 2's projection, not implemented here
        ScratchUNetConfig.from_diffusers(dict(TINY, use_linear_projection=True))


def test_mismatched_models_refuse_to_load(tiny_pair):
    ref, _ = tiny_pair
    other = ScratchUNet(ScratchUNetConfig(**dict(TINY, block_out_channels=(32, 96))))
    with pytest.raises(ValueError, match=r"(?s)shape mismatch \(\d+\).*from_diffusers"):
        load_diffusers_weights(other, ref)


def test_wrong_text_width_and_odd_size_explain_the_fix(tiny_pair):
    _, mine = tiny_pair
    x, t, ctx = unet_inputs(TINY)
    with pytest.raises(ValueError, match="cross_attention_dim=32"):
        mine(x, t, torch.randn(2, 7, 64))
    with pytest.raises(ValueError, match="multiples of 2"):
        mine(torch.randn(1, 4, 7, 7), t[:1], ctx[:1])


# ----------------------------------------------------------------------------------------------
# Schedules


@pytest.mark.parametrize("name", ["linear", "scaled_linear", "sigmoid"])
def test_alphas_cumprod_equal_diffusers(name):
    ref = DDPMScheduler(beta_schedule=name, beta_start=0.00085 if name == "scaled_linear" else 1e-4,
                        beta_end=0.012 if name == "scaled_linear" else 0.02)
    betas = schedules.make_betas(name)
    assert torch.allclose(betas, ref.betas, rtol=0, atol=1e-8)
    assert torch.allclose(schedules.alphas_cumprod(betas), ref.alphas_cumprod, rtol=0, atol=1e-7)


def test_cosine_matches_squaredcos_cap_v2():
    ref = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    ac = schedules.alphas_cumprod(schedules.cosine_betas())
    assert torch.allclose(ac, ref.alphas_cumprod, atol=1e-6)
    assert ac[0] > 0.9999 and ac[-1] < 1e-4      # starts clean, ends (almost) pure noise


def test_snr_is_monotone_and_sd_ends_noisy():
    ac = schedules.alphas_cumprod(schedules.scaled_linear_betas())
    s = schedules.snr(ac)
    assert (s[1:] < s[:-1]).all()
    assert abs(ac[-1].item() - 0.00466) < 1e-4   # SD 1.5's last step still keeps ~7% of the signal amplitude


def test_q_sample_and_v_target_equal_diffusers():
    ref = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    x0, noise, t = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8), torch.tensor([0, 10, 500, 999])
    ac = ref.alphas_cumprod
    assert max_diff(schedules.q_sample(x0, t, noise, ac), ref.add_noise(x0, noise, t)) < 1e-6
    assert max_diff(schedules.v_target(x0, noise, t, ac), ref.get_velocity(x0, noise, t)) < 1e-6


def test_prediction_conversions_round_trip():
    ac = schedules.alphas_cumprod(schedules.scaled_linear_betas())
    x0, noise, t = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8), torch.tensor([0, 10, 500, 999])
    xt = schedules.q_sample(x0, t, noise, ac)
    v = schedules.v_target(x0, noise, t, ac)
    assert max_diff(schedules.eps_to_x0(xt, noise, t, ac), x0) < 1e-4
    assert max_diff(schedules.x0_to_eps(xt, x0, t, ac), noise) < 1e-4
    assert max_diff(schedules.v_to_x0(xt, v, t, ac), x0) < 1e-4
    assert max_diff(schedules.v_to_eps(xt, v, t, ac), noise) < 1e-4


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("clip", [False, True])
def test_ddpm_step_equals_diffusers(prediction_type, clip):
    ref = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                        prediction_type=prediction_type, clip_sample=clip)
    xt, out = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    for t in [999, 500, 1, 0]:
        expected = ref.step(out, t, xt, generator=torch.Generator().manual_seed(t)).prev_sample
        noise = torch.randn(xt.shape, generator=torch.Generator().manual_seed(t))  # the same draw diffusers makes
        got = schedules.ddpm_step(out, t, xt, ref.alphas_cumprod, noise=noise, prediction_type=prediction_type,
                                  clip_sample=1.0 if clip else None)
        assert max_diff(got, expected) < 1e-5, t


def test_ddpm_step_with_fewer_steps_equals_diffusers():
    ref = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False)
    ref.set_timesteps(50)
    xt, out = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = int(ref.timesteps[10])
    expected = ref.step(out, t, xt, generator=torch.Generator().manual_seed(0)).prev_sample
    noise = torch.randn(xt.shape, generator=torch.Generator().manual_seed(0))
    got = schedules.ddpm_step(out, t, xt, ref.alphas_cumprod, noise=noise, prev_t=t - 20)
    assert max_diff(got, expected) < 1e-5


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_step_equals_diffusers(eta, prediction_type):
    ref = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                        prediction_type=prediction_type)
    ref.set_timesteps(50)
    assert ref.timesteps.tolist() == schedules.ddim_timesteps(50)
    xt, out, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    for t in [980, 500, 0]:
        expected = ref.step(out, t, xt, eta=eta, variance_noise=noise).prev_sample
        got = schedules.ddim_step(out, t, t - 20, xt, ref.alphas_cumprod, eta=eta, noise=noise, prediction_type=prediction_type)
        assert max_diff(got, expected) < 1e-5, t


def test_written_out_ddim_loop_with_scratch_unet_equals_diffusers(tiny_pair):
    """The loop notebook 02 writes out: the scratch UNet + ddim_step gives diffusers' UNet + DDIMScheduler's result."""
    ref_unet, mine = tiny_pair
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False)
    sched.set_timesteps(5)
    x_ref, _, ctx = unet_inputs(TINY, batch=1)
    x = x_ref.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            x_ref = sched.step(ref_unet(x_ref, t, ctx).sample, t, x_ref).prev_sample
        ts = schedules.ddim_timesteps(5)
        for t, prev_t in zip(ts, ts[1:] + [-1]):
            x = schedules.ddim_step(mine(x, t, ctx), t, prev_t, x, sched.alphas_cumprod)
    assert max_diff(x, x_ref) < TOL
