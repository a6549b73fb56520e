"""Hypernetworks as AUTOMATIC1111 trains them: small MLPs that rewrite the text context before cross-attention.

    run = sdkit.train(sdkit.TrainConfig(method="hypernetwork", model="mini", data="data_samples/glyph", lr=1e-4))
    python -m sdkit export RUN --format hypernetwork      # RUN/export/NAME.pt -> A1111's models/hypernetworks/
    load_hypernetwork_file("NAME.pt", pipe.unet); set_hypernetwork_strength(pipe.unet, 0.7)

History. NovelAI used "hypernetworks" in its anime model of 2022 and described them in a blog post; when that model
and its hypernetwork files leaked in October 2022, AUTOMATIC1111's web UI learned to load them within days and soon
to train them, and for a few months they were the community's way to teach a style. The name comes from Ha et al.'s
HyperNetworks (2016, a network that generates another's weights), but these generate no weights: they transform
the context. LoRA for Stable Diffusion (cloneofsimo, then kohya's sd-scripts, December 2022 – early 2023) replaced
them: a LoRA adapts the weights of every projection it targets, layer by layer (and the text encoder's), can be
merged into the weights (no cost at sampling), and several LoRAs add up with a weight each; a hypernetwork only
rewrites what K and V see, shares one pair of MLPs across all layers of a width, and is tied to the context width
it was trained for (768 for SD 1.x, 1024 for SD 2.x). See docs/METHODS_HYPERNETWORK.md.

Mechanism (A1111's `HypernetworkModule`, reproduced here). For a context width d (768 in SD 1.5; the UNet's
`cross_attention_dim`: 32 for the tiny test model, 64 for the mini one) a PAIR of MLPs, one for the keys, one for
the values, and in every cross-attention layer (diffusers' `attn2`)

    context_k = context + strength * mlp_k(context)        # (batch, 77, d), then to_k
    context_v = context + strength * mlp_v(context)        # then to_v; the queries are untouched

Each MLP is an `nn.Sequential` of Linear layers whose widths are `hypernetwork_layers` ("1,2,1": d -> 2d -> d) times
d, with the activation between them but not after the last one (A1111's `activate_output=False`). A1111's "Normal"
initialisation: every weight N(0, 0.01), every bias 0. So training starts *near* the identity, not at it: the branch
is about sqrt(2) d 1e-4 the size of the context for "1,2,1" (0.45% at d=32, 0.9% at 64, 11% at 768).

In diffusers the MLPs live in one module registered on the UNet (`unet.sdkit_hypernetwork`, so `.to()` moves them
and checkpoints find them) and are applied by an attention processor (`HypernetworkAttnProcessor`, diffusers' SDPA
processor with the two context lines above) installed on the cross-attention layers; self-attention keeps its own.

The .pt file (A1111's `Hypernetwork.save` / `load`): a dict with one integer key per width, each a tuple
(state of mlp_k, state of mlp_v) with A1111's `nn.Sequential` names, `linear.<i>.weight/bias` (i counts the
activation modules too: linear.0 / linear.1 with "linear", linear.0 / linear.2 with "relu"), plus the metadata keys
its loader reads. Plain dicts, tuples, lists, tensors, str, int, float, bool and None only: `torch.load(path,
weights_only=True)` reads it, no code is unpickled.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError
from .methods import Method

__all__ = ["HypernetworkMethod", "Hypernetwork", "HypernetworkAttnProcessor", "build_mlp", "parse_layer_structure",
           "install_hypernetwork", "remove_hypernetwork", "hypernetwork_of", "set_hypernetwork_strength",
           "a1111_state", "hypernetwork_from_a1111", "export_hypernetwork", "load_hypernetwork_file",
           "ACTIVATIONS", "MODULE_NAME"]

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


def _activation(name):
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
    act = _activation(activation)
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
    for m in mlp:  # A1111's "Normal" initialisation (LayerNorms too, as A1111 does)
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


def remove_hypernetwork(unet) -> None:
    """Back to the base model: default SDPA processors where the hypernetwork was, and the MLPs dropped."""
    from diffusers.models.attention_processor import AttnProcessor2_0
    unet.set_attn_processor({n: AttnProcessor2_0() if isinstance(p, HypernetworkAttnProcessor) else p
                             for n, p in unet.attn_processors.items()})
    if hasattr(unet, MODULE_NAME):
        delattr(unet, MODULE_NAME)


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


# ---- 4. the training method ------------------------------------------------------------------------------------
class HypernetworkMethod(Method):
    """Train one hypernetwork MLP pair at the UNet's context width; the UNet and the text encoder stay frozen.
    Checkpoint keys: `hypernetwork.<width>.<k|v>.<i>.weight/bias` (i: A1111's Sequential index)."""
    name = "hypernetwork"

    def __init__(self, config):
        super().__init__(config)
        self.layer_structure = parse_layer_structure(config.hypernetwork_layers)
        _activation(config.hypernetwork_activation)
        if config.train_text_encoder:
            raise ConfigError("train_text_encoder: a hypernetwork trains only its MLPs on the cross-attention "
                              "context; the text encoder stays frozen. Fix: train_text_encoder=False.")

    def trains_text_encoder(self) -> bool:
        return False

    def merge(self, pipe) -> None:
        raise ValueError("a hypernetwork cannot be merged into the weights (it transforms the text context at every "
                         "cross-attention). Fix: --format hypernetwork (A1111's .pt).")

    def setup(self, unet, text_encoder):
        c = self.config
        if c.attention == "xformers":  # enabling xformers would replace the processors that carry the MLPs
            raise ConfigError("attention: xformers replaces the attention processors that apply the hypernetwork. "
                              "Fix: attention='sdpa' (PyTorch's fused attention, what the processor uses).")
        unet.requires_grad_(False)
        text_encoder.requires_grad_(False)
        dims = unet.config.cross_attention_dim
        dims = sorted(set(dims)) if isinstance(dims, (list, tuple)) else [dims]
        net = Hypernetwork(dims, self.layer_structure, c.hypernetwork_activation)
        net.to(unet.device)
        install_hypernetwork(unet, net)
        return self._groups(list(net.parameters()), [])

    def state_dict(self, unet, text_encoder):
        return {f"hypernetwork.{k}": v for k, v in hypernetwork_of(unet).state_dict().items()}

    def load_state_dict(self, unet, text_encoder, state):
        net = hypernetwork_of(unet)
        own = {k[len("hypernetwork."):]: v for k, v in state.items() if k.startswith("hypernetwork.")}
        missing = sorted(set(net.state_dict()) - set(own))
        extra = sorted(set(own) - set(net.state_dict()))
        if missing or extra:
            raise ConfigError(f"hypernetwork: the checkpoint does not fit hypernetwork_layers="
                              f"{self.config.hypernetwork_layers!r}, activation={self.config.hypernetwork_activation!r}"
                              f" (missing {missing[:4]}, unexpected {extra[:4]}). Fix: load it with the config it "
                              f"was trained with (the run's config.yaml).")
        net.load_state_dict(own)


# ---- 5. A1111's .pt file ---------------------------------------------------------------------------------------
def a1111_state(net: Hypernetwork, name: str, step: int = 0, sd_checkpoint_name=None, info=None) -> dict:
    """The dict A1111's `Hypernetwork.save` writes (and `load` reads), for `torch.save`."""
    out = {}
    for d in net.dims:
        k, v = net.pair(d)
        out[d] = tuple({f"linear.{key}": t.detach().float().cpu().clone() for key, t in mlp.state_dict().items()}
                       for mlp in (k, v))
    out.update({
        "step": int(step), "name": str(name),
        "layer_structure": list(net.layer_structure),
        "activation_func": net.activation,
        "is_layer_norm": net.layer_norm,
        "weight_initialization": "Normal",
        "use_dropout": any(p > 0 for p in net.dropout),
        "dropout_structure": list(net.dropout),
        "last_layer_dropout": len(net.dropout) > 1 and net.dropout[-2] > 0,
        "activate_output": net.activate_output,  # A1111's loader defaults a missing key to True: always written
        "sd_checkpoint": None,  # A1111: the short hash of its checkpoint file; a diffusers folder has none
        "sd_checkpoint_name": sd_checkpoint_name,
        "optimizer_name": "AdamW",  # A1111 keeps this in NAME.pt.optim; harmless here, its loader skips it
        "optional_info": info,
    })
    return out


def hypernetwork_from_a1111(data: dict) -> Hypernetwork:
    """A Hypernetwork with the weights of an A1111 file's dict (the reverse of `a1111_state`), as A1111 reads it."""
    layers = [float(x) for x in data.get("layer_structure", [1, 2, 1])]
    use_dropout = bool(data.get("use_dropout", False))
    dropout = data.get("dropout_structure")
    if dropout is None:
        dropout = dropout_structure(layers, use_dropout, bool(data.get("last_layer_dropout", False)))
    net = Hypernetwork([k for k in data if isinstance(k, int)], layers, data.get("activation_func") or "linear",
                       layer_norm=bool(data.get("is_layer_norm", False)),
                       activate_output=bool(data.get("activate_output", True)), dropout=dropout)
    for d in net.dims:
        for mlp, sd in zip(net.pair(d), data[d]):
            sd = dict(sd)
            for old, new in (("linear1", "linear.0"), ("linear2", "linear.1")):  # A1111's fix_old_state_dict
                for p in ("weight", "bias"):
                    if f"{old}.{p}" in sd:
                        sd[f"{new}.{p}"] = sd.pop(f"{old}.{p}")
            mlp.load_state_dict({k[len("linear."):]: v for k, v in sd.items()})
    return net.eval()


def load_hypernetwork_file(path, unet, strength: float = 1.0, exact_a1111: bool = False) -> Hypernetwork:
    """Put an A1111 hypernetwork .pt on a diffusers UNet (read with weights_only=True: no code is unpickled).
    The MLPs take the UNet's device and dtype; see `install_hypernetwork` for which layers it reaches."""
    data = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or not any(isinstance(k, int) for k in data):
        raise ValueError(f"{path}: not an A1111 hypernetwork file (no integer context-width keys).")
    net = hypernetwork_from_a1111(data).to(unet.device, unet.dtype)
    install_hypernetwork(unet, net, strength=strength, exact_a1111=exact_a1111)
    return net


def export_hypernetwork(run, out, checkpoint=None) -> Path:
    """RUN's hypernetwork at `checkpoint` (default latest) as A1111's .pt (its models/hypernetworks/ folder)."""
    from safetensors.torch import load_file
    from ..run import Run
    from .checkpoint import find_checkpoint
    run = run if isinstance(run, Run) else Run(run)
    c = run.config
    if c.method != "hypernetwork":
        raise ValueError(f"{run.path}: method {c.method!r} is not a hypernetwork. Fix: choose the format that fits "
                         f"it (kohya for a LoRA, pipeline or single-file for full weights).")
    path = Path(find_checkpoint(run.path, checkpoint or "latest"))
    method = HypernetworkMethod(c)
    state = {k[len("hypernetwork."):]: v for k, v in load_file(path / "trainable.safetensors").items()
             if k.startswith("hypernetwork.")}
    dims = sorted({int(k.split(".")[0]) for k in state})
    net = Hypernetwork(dims, method.layer_structure, c.hypernetwork_activation)
    net.load_state_dict(state)
    out = Path(out)
    if out.suffix != ".pt":
        out = out / f"{run.path.name}.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    from .. import __version__
    step = json.loads((path / "state.json").read_text())["step"]
    torch.save(a1111_state(net, out.stem, step=step, sd_checkpoint_name=str(c.model),
                           info=f"trained with sdkit {__version__} on {c.data}, lr {c.lr:g}"), out)
    return out
