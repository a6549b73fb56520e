"""A1111-style hypernetworks on a diffusers UNet: the MLPs, the attention processor that applies them to the
cross-attention context, installing them and setting their strength. The training method and A1111's .pt file are
in sdkit/methods/hypernetwork.py."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError

__all__ = ["Hypernetwork", "HypernetworkAttnProcessor", "build_mlp", "parse_layer_structure", "dropout_structure",
           "check_activation", "install_hypernetwork", "hypernetwork_of", "set_hypernetwork_strength", "ACTIVATIONS",
           "MODULE_NAME"]

MODULE_NAME = "sdkit_hypernetwork"  # the attribute of the UNet that holds the MLPs

# A1111's activation names (its `HypernetworkModule.activation_dict`). Note "swish" is torch's *Hardswish* there.
ACTIVATIONS = {"linear": nn.Identity, "relu": nn.ReLU, "leakyrelu": nn.LeakyReLU, "elu": nn.ELU,
               "swish": nn.Hardswish, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


# ---- 1. the MLPs -------------------------------------------------------------------------------------------------
def parse_layer_structure(text) -> list:
    """"1,2,1" -> [1.0, 2.0, 1.0] (A1111 keeps floats). Must start and end with 1: the MLP maps d back to d."""
    try:
        values = [float(x) for x in (text.split(",") if isinstance(text, str) else text) if str(x).strip()]
    except ValueError:
        values = []
    if len(values) < 2 or values[0] != 1 or values[-1] != 1 or any(v <= 0 for v in values):
        raise ConfigError(f"hypernetwork_layers: {text!r} is not a layer structure. Expected comma-separated "
                          f"positive multiples of the context width that start and end with 1 (A1111's "
                          f"convention), e.g. 1,2,1 (d -> 2d -> d) or 1,1.5,1.5,1.")
    return values


def check_activation(name):
    """A1111's lookup: its table, then any torch.nn activation class by lower-case name (as A1111 also accepts)."""
    if name is None or name == "linear":
        return None
    if name in ACTIVATIONS:
        return ACTIVATIONS[name]
    import inspect
    extra = {n.lower(): c for n, c in inspect.getmembers(torch.nn.modules.activation, inspect.isclass)
             if c.__module__ == "torch.nn.modules.activation"}
    if name in extra:
        return extra[name]
    raise ValueError(f"hypernetwork activation {name!r} is unknown; expected one of {', '.join(ACTIVATIONS)} "
                     f"(or a torch.nn activation name, as A1111 accepts).")


def dropout_structure(layer_structure, use_dropout=False, last_layer_dropout=False) -> list:
    """A1111's `parse_dropout_structure`: a dropout probability after each layer (0: none)."""
    if not use_dropout:
        return [0.0] * len(layer_structure)
    return [0.0] + [0.3] * (len(layer_structure) - 3) + [0.3 if last_layer_dropout else 0.0] + [0.0]


def build_mlp(dim: int, layer_structure, activation="linear", layer_norm=False, activate_output=False,
              dropout=None) -> nn.Sequential:
    """The `linear` Sequential of A1111's HypernetworkModule, module for module, so indices match its files:
    for each layer i: Linear(d*s[i], d*s[i+1]), then the activation (not after the last layer unless
    activate_output), then LayerNorm if layer_norm, then Dropout where dropout[i+1] > 0 (identity at eval)."""
    act = check_activation(activation)
    n = len(layer_structure)
    mods = []
    for i in range(n - 1):
        mods.append(nn.Linear(int(dim * layer_structure[i]), int(dim * layer_structure[i + 1])))
        if act is not None and (i < n - 2 or activate_output):
            mods.append(act())
        if layer_norm:
            mods.append(nn.LayerNorm(int(dim * layer_structure[i + 1])))
        if dropout is not None and dropout[i + 1] > 0:
            mods.append(nn.Dropout(p=float(dropout[i + 1])))
    mlp = nn.Sequential(*mods)
    for m in mlp:  # A1111's "Normal" initialization (LayerNorms too, as A1111 does)
        if isinstance(m, (nn.Linear, nn.LayerNorm)):
            nn.init.normal_(m.weight, mean=0.0, std=0.01)
            nn.init.zeros_(m.bias)
    return mlp


class Hypernetwork(nn.ModuleDict):
    """{"<width>": {"k": mlp_k, "v": mlp_v}} — one MLP pair per context width; state keys `<width>.<k|v>.<i>.*`."""

    def __init__(self, dims, layer_structure=(1.0, 2.0, 1.0), activation="linear", layer_norm=False,
                 activate_output=False, dropout=None):
        super().__init__()
        self.layer_structure = [float(x) for x in layer_structure]
        self.activation = activation or "linear"
        self.layer_norm = bool(layer_norm)
        self.activate_output = bool(activate_output)
        self.dropout = list(dropout) if dropout is not None else dropout_structure(self.layer_structure)
        for d in dims:
            self[str(int(d))] = nn.ModuleDict({
                part: build_mlp(int(d), self.layer_structure, self.activation, self.layer_norm,
                                self.activate_output, self.dropout) for part in ("k", "v")})

    @property
    def dims(self) -> list:
        return [int(d) for d in self.keys()]

    def pair(self, width: int):
        """(mlp_k, mlp_v) for a context of this width, or None."""
        return (self[str(width)]["k"], self[str(width)]["v"]) if str(width) in self else None


# ---- 2. the attention processor ---------------------------------------------------------------------------------
class HypernetworkAttnProcessor:
    """diffusers' AttnProcessor2_0 (scaled-dot-product attention) with the key and value context run through the
    hypernetwork pair first: context_k = context + scale * mlp_k(context), likewise v. `scale` is A1111's
    hypernetwork strength (its `multiplier`): 0 gives the base model exactly. Not an nn.Module on purpose: the MLPs
    belong to `unet.sdkit_hypernetwork`, so the UNet's state dict holds them once."""

    def __init__(self, mlp_k: nn.Module, mlp_v: nn.Module, scale: float = 1.0):
        self.mlp_k, self.mlp_v, self.scale = mlp_k, mlp_v, float(scale)

    def _apply(self, mlp, context):
        # the MLP runs in its own dtype (fp32 master weights while training), the result goes back to the UNet's
        w = next(mlp.parameters())
        x = context.to(w.dtype)
        return (x + self.scale * mlp(x)).to(context.dtype)  # (batch, tokens, d), A1111's `x + linear(x) * m`

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:  # (batch, channels, h, w) -> (batch, h*w, channels)
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (hidden_states.shape if encoder_hidden_states is None
                                          else encoder_hidden_states.shape)
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:  # self-attention (only for A1111 files with UNet-width modules)
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        # the hypernetwork: separate contexts for the keys and the values
        key = attn.to_k(self._apply(self.mlp_k, encoder_hidden_states))
        value = attn.to_v(self._apply(self.mlp_v, encoder_hidden_states))
        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # (batch, heads, n, head_dim)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0,
                                                       is_causal=False)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)  # linear projection
        hidden_states = attn.to_out[1](hidden_states)  # dropout
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


# ---- 3. installing it on a UNet --------------------------------------------------------------------------------
def install_hypernetwork(unet, net: Hypernetwork, strength: float = 1.0, exact_a1111: bool = False) -> int:
    """Register `net` as `unet.sdkit_hypernetwork` and put a HypernetworkAttnProcessor on the attention layers it
    applies to; returns how many.

    A1111's rule: a module of width d transforms the key/value input of every attention layer whose input is d wide.
    In SD 1.x/2.x no UNet layer is 768/1024 wide, so the context-width module reaches cross-attention only, and the
    320/640/1280 modules some A1111 files have (NovelAI's did) reach self-attention. The course models' context width
    (32, 64) is also a UNet width; sdkit keeps the context-width module on cross-attention, where it was trained
    (this changes nothing for SD files). `exact_a1111=True` applies A1111's rule as it is."""
    from diffusers.models.attention_processor import AttnProcessor2_0
    cross_dim = unet.config.cross_attention_dim
    unet.add_module(MODULE_NAME, net)  # replaces an earlier one
    processors, used = {}, 0
    for name, proc in unet.attn_processors.items():
        attn = unet.get_submodule(name[: -len(".processor")])
        width = attn.to_k.in_features  # the width of what to_k / to_v read: the text context or the image tokens
        pair = net.pair(width)
        if pair is not None and not (attn.is_cross_attention or exact_a1111 or width != cross_dim):
            pair = None  # self-attention with the context width: not where this module was trained
        if pair is not None:
            processors[name] = HypernetworkAttnProcessor(*pair, scale=strength)
            used += 1
        else:
            processors[name] = AttnProcessor2_0() if isinstance(proc, HypernetworkAttnProcessor) else proc
    unet.set_attn_processor(processors)
    if not used:
        raise ValueError(f"hypernetwork: no attention layer of this UNet reads a context of width "
                         f"{', '.join(map(str, net.dims))} (its cross-attention reads {cross_dim}). The file was "
                         f"made for another model (768: SD 1.x, 1024: SD 2.x).")
    return used


def hypernetwork_of(unet) -> Hypernetwork:
    net = getattr(unet, MODULE_NAME, None)
    if net is None:
        raise ValueError("this UNet carries no hypernetwork. Fix: load one with load_hypernetwork_file(path, unet), "
                         "or load the run with Run(path).load_pipeline().")
    return net


def set_hypernetwork_strength(unet, strength: float) -> int:
    """A1111's hypernetwork strength: context + strength * mlp(context) (1: as trained, 0: the base model)."""
    n = 0
    for proc in unet.attn_processors.values():
        if isinstance(proc, HypernetworkAttnProcessor):
            proc.scale = float(strength)
            n += 1
    if not n:
        hypernetwork_of(unet)  # raises the error that says how to load one
    return n
