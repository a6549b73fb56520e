"""A Stable Diffusion UNet written from scratch, in one file you can read top to bottom.

It is the same network as diffusers' `UNet2DConditionModel` for SD-1.5-shaped configs, with
(almost) the same module names, so `ScratchUNet.from_diffusers(unet)` copies real weights across
and gives the same output: that is how tests/test_scratch.py proves this file right.

    unet = ScratchUNet(ScratchUNetConfig.like_sd("mini", cross_attention_dim=64))
    eps = unet(latents, timesteps, text_embeddings)   # (B, 4, 8, 8), (B,), (B, 77, 64) -> (B, 4, 8, 8)
"""
import math
import re
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

DOWN_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")


@dataclass
class ScratchUNetConfig:
    """The settings of the UNet; the names are diffusers' so configs copy across unchanged."""
    sample_size: int = 8                      # latent height/width the model is trained on
    in_channels: int = 4                      # latent channels in
    out_channels: int = 4                     # predicted noise channels out
    down_block_types: tuple = ("CrossAttnDownBlock2D", "DownBlock2D")
    up_block_types: tuple = ("UpBlock2D", "CrossAttnUpBlock2D")
    block_out_channels: tuple = (32, 64)      # channels at each resolution
    layers_per_block: int = 1                 # ResNet blocks per down block (up blocks get one more)
    cross_attention_dim: int = 32             # width of the text embeddings (768 for SD 1.5's CLIP)
    attention_head_dim: object = 8            # NUMBER OF HEADS (diffusers' historic misnomer), int or per-block tuple
    norm_num_groups: int = 32                 # GroupNorm groups; must divide every channel count
    norm_eps: float = 1e-5

    def __post_init__(self):
        for kind, types, ok in (("down", self.down_block_types, DOWN_TYPES), ("up", self.up_block_types, UP_TYPES)):
            for t in types:
                if t not in ok:
                    raise ValueError(f"{kind}_block_types contains {t!r}; the scratch UNet supports {ok}. "
                                     f"Use one of those, or use diffusers' UNet2DConditionModel for other blocks.")
        if len(self.down_block_types) != len(self.block_out_channels) or len(self.up_block_types) != len(self.block_out_channels):
            raise ValueError(f"block_out_channels has {len(self.block_out_channels)} entries but there are "
                             f"{len(self.down_block_types)} down and {len(self.up_block_types)} up blocks: give one channel count per block.")
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(f"norm_num_groups={self.norm_num_groups} does not divide block_out_channels entry {c}; "
                                 f"pick a group count that divides every entry (e.g. 8 or 32).")

    def heads(self):
        """Number of attention heads for each down block (diffusers calls this `attention_head_dim`)."""
        h = self.attention_head_dim
        return tuple(h) if isinstance(h, (tuple, list)) else (h,) * len(self.block_out_channels)

    @classmethod
    def like_sd(cls, scale="mini", cross_attention_dim=None):
        """SD-1.5-shaped presets. "tiny": for tests; "mini": the course's 8x8x4-latent model; "sd15": the real size."""
        presets = {
            "tiny": dict(block_out_channels=(32, 64), norm_num_groups=8, cross_attention_dim=32),
            "mini": dict(block_out_channels=(64, 128, 128), norm_num_groups=32, cross_attention_dim=64, attention_head_dim=4,
                         down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")),
            "sd15": dict(sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
                         down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                         up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3),
        }
        if scale not in presets:
            raise ValueError(f"scale={scale!r} is not a preset; choose one of {list(presets)}.")
        cfg = dict(presets[scale])
        if cross_attention_dim is not None:   # match the width of *your* text encoder's hidden states
            cfg["cross_attention_dim"] = cross_attention_dim
        return cls(**cfg)

    @classmethod
    def from_diffusers(cls, dcfg):
        """Build from a diffusers UNet config, refusing (with the reason) any setting this file does not implement."""
        expected = dict(mid_block_type="UNetMidBlock2DCrossAttn", flip_sin_to_cos=True, freq_shift=0, act_fn="silu",
                        use_linear_projection=False, transformer_layers_per_block=1, only_cross_attention=False,
                        class_embed_type=None, addition_embed_type=None, time_embedding_type="positional",
                        resnet_time_scale_shift="default", center_input_sample=False, num_attention_heads=None,
                        encoder_hid_dim=None, time_cond_proj_dim=None, conv_in_kernel=3, conv_out_kernel=3,
                        mid_block_scale_factor=1, resnet_out_scale_factor=1.0, downsample_padding=1, dual_cross_attention=False)
        for key, want in expected.items():
            got = dcfg.get(key, want)
            if isinstance(got, (list, tuple)) and key == "transformer_layers_per_block" and set(got) == {1}:
                continue
            if got != want:
                raise ValueError(f"diffusers config has {key}={got!r}; the scratch UNet only implements {key}={want!r} "
                                 f"(the SD 1.5 architecture). Use diffusers' UNet2DConditionModel for this model.")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in dcfg.items() if k in cls.__dataclass_fields__})


# ----------------------------------------------------------------------------------------------
# Building blocks

def timestep_embedding(timesteps, dim, max_period=10000):
    """Sinusoidal embedding of integer timesteps, as in the Transformer paper: (batch,) -> (batch, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    angles = timesteps.float()[:, None] * freqs[None, :]          # (batch, half)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)  # cos first: diffusers' flip_sin_to_cos=True


class TimestepEmbedding(nn.Module):
    """MLP that turns the sinusoidal embedding into the vector every ResNet block receives."""
    def __init__(self, in_dim, time_dim):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, time_dim)
        self.linear_2 = nn.Linear(time_dim, time_dim)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))  # (batch, time_dim)


class ResnetBlock2D(nn.Module):
    """GroupNorm -> SiLU -> conv, add the time embedding, GroupNorm -> SiLU -> conv, plus a skip connection."""
    def __init__(self, in_ch, out_ch, time_dim, groups, eps):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch, eps=eps)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time_emb_proj = nn.Linear(time_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch, eps=eps)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        # a 1x1 conv makes the skip path's channels match when they change
        self.conv_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x, temb):                               # x: (batch, in_ch, H, W), temb: (batch, time_dim)
        h = self.conv1(F.silu(self.norm1(x)))                 # (batch, out_ch, H, W)
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]  # one shift per channel, broadcast over H, W
        h = self.conv2(F.silu(self.norm2(h)))                 # (dropout would go here; SD trains with 0)
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return skip + h


class Attention(nn.Module):
    """Multi-head attention. Self-attention when `context` is None, cross-attention to `context` otherwise."""
    def __init__(self, dim, heads, context_dim=None):
        super().__init__()
        self.heads = heads
        context_dim = context_dim or dim
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)  # keys and values come from the text in cross-attention
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)                     # diffusers: to_out.0 (to_out.1 is a dropout)

    def forward(self, x, context=None):                       # x: (batch, tokens, dim)
        context = x if context is None else context           # (batch, ctx_tokens, context_dim)
        B, T, C = x.shape
        split = lambda t: t.view(B, -1, self.heads, C // self.heads).transpose(1, 2)  # (batch, heads, tokens, head_dim)
        q, k, v = split(self.to_q(x)), split(self.to_k(context)), split(self.to_v(context))
        scores = q @ k.transpose(-1, -2) / math.sqrt(C // self.heads)  # (batch, heads, T, ctx_tokens)
        out = scores.softmax(dim=-1) @ v                      # (batch, heads, T, head_dim)
        return self.to_out(out.transpose(1, 2).reshape(B, T, C))


class FeedForward(nn.Module):
    """GEGLU feed-forward as in SD: project to 2x4*dim, gate one half with GELU of the other, project back."""
    def __init__(self, dim, mult=4):
        super().__init__()
        self.proj_in = nn.Linear(dim, dim * mult * 2)         # diffusers: ff.net.0.proj
        self.proj_out = nn.Linear(dim * mult, dim)            # diffusers: ff.net.2

    def forward(self, x):
        value, gate = self.proj_in(x).chunk(2, dim=-1)        # each (batch, tokens, 4*dim)
        return self.proj_out(value * F.gelu(gate))


class BasicTransformerBlock(nn.Module):
    """norm -> self-attention, norm -> cross-attention to the text, norm -> feed-forward; each with a residual."""
    def __init__(self, dim, heads, context_dim):
        super().__init__()
        self.norm1, self.attn1 = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2, self.attn2 = nn.LayerNorm(dim), Attention(dim, heads, context_dim)
        self.norm3, self.ff = nn.LayerNorm(dim), FeedForward(dim)

    def forward(self, x, context):                            # x: (batch, H*W, dim), context: (batch, tokens, context_dim)
        x = x + self.attn1(self.norm1(x))                     # pixels look at each other
        x = x + self.attn2(self.norm2(x), context)            # pixels look at the prompt
        return x + self.ff(self.norm3(x))


class Transformer2DModel(nn.Module):
    """Spatial transformer: treat each pixel as a token, run transformer blocks, add back to the input."""
    def __init__(self, channels, heads, context_dim, groups):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(channels, heads, context_dim)])
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x, context):                            # x: (batch, channels, height, width)
        B, C, H, W = x.shape
        h = self.proj_in(self.norm(x))
        h = h.permute(0, 2, 3, 1).reshape(B, H * W, C)        # (batch, tokens=H*W, channels)
        for block in self.transformer_blocks:
            h = block(h, context)
        h = h.reshape(B, H, W, C).permute(0, 3, 1, 2)         # back to (batch, channels, height, width)
        return self.proj_out(h) + x


class Downsample2D(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)  # halves height and width

    def forward(self, x):
        return self.conv(x)


class Upsample2D(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # doubles height and width


class UNetBlock(nn.Module):
    """One resolution level: ResNet blocks (each optionally followed by a spatial transformer), then a resampler.

    Used for all four diffusers down/up block types; the up blocks concatenate a skip before each ResNet."""
    def __init__(self, resnet_channels, out_ch, time_dim, cfg, heads, cross_attn, resample=None):
        super().__init__()
        g, e = cfg.norm_num_groups, cfg.norm_eps
        self.resnets = nn.ModuleList([ResnetBlock2D(c, out_ch, time_dim, g, e) for c in resnet_channels])
        if cross_attn:
            self.attentions = nn.ModuleList([Transformer2DModel(out_ch, heads, cfg.cross_attention_dim, g) for _ in resnet_channels])
        if resample == "down":
            self.downsamplers = nn.ModuleList([Downsample2D(out_ch)])
        if resample == "up":
            self.upsamplers = nn.ModuleList([Upsample2D(out_ch)])

    def forward(self, h, temb, context, skips=None):
        outputs = []                                          # down blocks return every layer's output as a skip
        for i, resnet in enumerate(self.resnets):
            if skips is not None:                             # up block: glue on the matching down-path output
                h = torch.cat([h, skips.pop()], dim=1)        # (batch, ch + skip_ch, H, W)
            h = resnet(h, temb)
            if hasattr(self, "attentions"):
                h = self.attentions[i](h, context)
            outputs.append(h)
        for sampler in [*getattr(self, "downsamplers", []), *getattr(self, "upsamplers", [])]:
            h = sampler(h)
            outputs.append(h)
        return h, outputs


class UNetMidBlock2DCrossAttn(nn.Module):
    """At the lowest resolution: ResNet -> spatial transformer -> ResNet."""
    def __init__(self, ch, time_dim, cfg, heads):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(ch, ch, time_dim, cfg.norm_num_groups, cfg.norm_eps) for _ in range(2)])
        self.attentions = nn.ModuleList([Transformer2DModel(ch, heads, cfg.cross_attention_dim, cfg.norm_num_groups)])

    def forward(self, h, temb, context):
        h = self.resnets[0](h, temb)
        h = self.attentions[0](h, context)
        return self.resnets[1](h, temb)


# ----------------------------------------------------------------------------------------------
# The UNet

class ScratchUNet(nn.Module):
    def __init__(self, config: ScratchUNetConfig):
        super().__init__()
        self.config = cfg = config
        chs, heads, n = cfg.block_out_channels, cfg.heads(), cfg.layers_per_block
        time_dim = chs[0] * 4
        self.conv_in = nn.Conv2d(cfg.in_channels, chs[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(chs[0], time_dim)

        self.down_blocks = nn.ModuleList()
        for i, kind in enumerate(cfg.down_block_types):
            in_ch = chs[max(i - 1, 0)]
            last = i == len(chs) - 1
            self.down_blocks.append(UNetBlock([in_ch] + [chs[i]] * (n - 1), chs[i], time_dim, cfg, heads[i],
                                              cross_attn=kind.startswith("CrossAttn"), resample=None if last else "down"))
        self.mid_block = UNetMidBlock2DCrossAttn(chs[-1], time_dim, cfg, heads[-1])

        # Up blocks mirror the down blocks. Each has n+1 ResNets; ResNet j takes the previous output plus one
        # skip: the skips are popped in reverse order of how the down path pushed them.
        rchs, rheads = chs[::-1], heads[::-1]
        self.up_blocks = nn.ModuleList()
        for i, kind in enumerate(cfg.up_block_types):
            prev_ch, out_ch, skip_in_ch = rchs[max(i - 1, 0)], rchs[i], rchs[min(i + 1, len(chs) - 1)]
            skip_chs = [out_ch] * n + [skip_in_ch]            # the last skip comes from the level above
            resnet_in = [(prev_ch if j == 0 else out_ch) + skip_chs[j] for j in range(n + 1)]
            last = i == len(chs) - 1
            self.up_blocks.append(UNetBlock(resnet_in, out_ch, time_dim, cfg, rheads[i],
                                            cross_attn=kind.startswith("CrossAttn"), resample=None if last else "up"))

        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, chs[0], eps=cfg.norm_eps)
        self.conv_out = nn.Conv2d(chs[0], cfg.out_channels, 3, padding=1)

    @staticmethod
    def config_like_sd(scale="mini", cross_attention_dim=None):
        """Shortcut for ScratchUNetConfig.like_sd: "tiny", "mini" (the course's 8x8x4-latent model) or "sd15"."""
        return ScratchUNetConfig.like_sd(scale, cross_attention_dim)

    def forward(self, sample, timestep, encoder_hidden_states):
        """sample: (batch, in_ch, H, W) noisy latents; timestep: int or (batch,); encoder_hidden_states: (batch, tokens, dim)."""
        B, _, H, W = sample.shape
        factor = 2 ** (len(self.down_blocks) - 1)
        if H % factor or W % factor:
            raise ValueError(f"sample is {H}x{W} but this UNet halves the size {len(self.down_blocks) - 1} times: "
                             f"height and width must be multiples of {factor}. Resize or crop the latents.")
        if encoder_hidden_states.shape[-1] != self.config.cross_attention_dim:
            raise ValueError(f"encoder_hidden_states has width {encoder_hidden_states.shape[-1]} but the UNet was built with "
                             f"cross_attention_dim={self.config.cross_attention_dim}: build it with your text encoder's hidden size.")

        # 1. time embedding: (batch,) integers -> (batch, 4*ch0)
        t = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(B)
        temb = self.time_embedding(timestep_embedding(t, self.config.block_out_channels[0]).to(sample.dtype))

        # 2. pre-process: (batch, in_ch, H, W) -> (batch, ch0, H, W)
        h = self.conv_in(sample)

        # 3. down: keep every intermediate output for the up path's skip connections
        skips = [h]
        for block in self.down_blocks:
            h, outputs = block(h, temb, encoder_hidden_states)
            skips += outputs

        # 4. mid: (batch, ch_last, H/factor, W/factor)
        h = self.mid_block(h, temb, encoder_hidden_states)

        # 5. up: each block consumes (layers_per_block + 1) skips, most recent first
        for block in self.up_blocks:
            h, _ = block(h, temb, encoder_hidden_states, skips=skips)

        # 6. post-process: (batch, ch0, H, W) -> (batch, out_ch, H, W)
        return self.conv_out(F.silu(self.conv_norm_out(h)))

    # ------------------------------------------------------------------------------------------
    # Weights from and to diffusers

    @classmethod
    def from_diffusers(cls, diffusers_unet):
        """A ScratchUNet with the config and weights of a diffusers UNet2DConditionModel."""
        model = cls(ScratchUNetConfig.from_diffusers(dict(diffusers_unet.config)))
        load_diffusers_weights(model, diffusers_unet)
        return model

    def to_diffusers(self):
        """A diffusers UNet2DConditionModel with this model's weights (e.g. to use it in a pipeline)."""
        from diffusers import UNet2DConditionModel
        unet = UNet2DConditionModel(**asdict(self.config))
        unet.load_state_dict({scratch_key_to_diffusers(k): v for k, v in self.state_dict().items()}, strict=True)
        return unet


# The whole key mapping: module names equal diffusers', except where diffusers wraps a layer in a list
# next to a parameter-free Dropout. Keys are renamed at module boundaries (start of key or after a ".").
KEY_RENAMES = {                        # diffusers name -> scratch name
    "to_out.0.": "to_out.",            # attention output Linear (to_out.1 is a Dropout)
    "ff.net.0.proj.": "ff.proj_in.",   # GEGLU's projection to value and gate
    "ff.net.2.": "ff.proj_out.",       # feed-forward output Linear (net.1 is a Dropout)
}


def _rename(key, table):
    for old, new in table.items():
        key = re.sub(r"(^|\.)" + re.escape(old), r"\g<1>" + new, key)
    return key


def diffusers_key_to_scratch(key):
    """'down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.weight' -> '...attn1.to_out.weight'."""
    return _rename(key, KEY_RENAMES)


def scratch_key_to_diffusers(key):
    return _rename(key, {new: old for old, new in KEY_RENAMES.items()})


def load_diffusers_weights(scratch_unet, diffusers_unet):
    """Copy every diffusers parameter into the scratch UNet; fail loudly on any missing, extra or misshapen key.

    Works for any pair of matching modules too, e.g. a scratch ResnetBlock2D and a diffusers ResnetBlock2D."""
    source = {diffusers_key_to_scratch(k): v for k, v in diffusers_unet.state_dict().items()}
    target = scratch_unet.state_dict()
    missing, extra = sorted(target.keys() - source.keys()), sorted(source.keys() - target.keys())
    bad = [f"{k}: diffusers {tuple(source[k].shape)} vs scratch {tuple(target[k].shape)}"
           for k in target.keys() & source.keys() if source[k].shape != target[k].shape]
    if missing or extra or bad:
        problems = [f"  {name} ({len(keys)}): {sorted(keys)[:3]}" for name, keys in
                    (("missing in diffusers", missing), ("not in scratch", extra), ("shape mismatch", bad)) if keys]
        raise ValueError("the diffusers and scratch models do not line up:\n" + "\n".join(problems) + "\n"
                         "Build the scratch model from the same config: ScratchUNet.from_diffusers(unet) does that.")
    scratch_unet.load_state_dict(source, strict=True)
    return scratch_unet
