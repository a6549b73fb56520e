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
initialization: every weight N(0, 0.01), every bias 0. So training starts *near* the identity, not at it: the branch
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

from pathlib import Path

import torch

from ..config import ConfigError
from .base import Method, split_prefix
from .hypernetwork_net import (ACTIVATIONS, MODULE_NAME, Hypernetwork, HypernetworkAttnProcessor, build_mlp,
                               check_activation, dropout_structure, hypernetwork_of, install_hypernetwork,
                               parse_layer_structure, set_hypernetwork_strength)

__all__ = ["HypernetworkMethod", "Hypernetwork", "HypernetworkAttnProcessor", "build_mlp", "parse_layer_structure",
           "install_hypernetwork", "hypernetwork_of", "set_hypernetwork_strength", "a1111_state",
           "hypernetwork_from_a1111", "write_a1111_file", "load_hypernetwork_file", "ACTIVATIONS", "MODULE_NAME"]


# ---- 1. the training method ------------------------------------------------------------------------------------
class HypernetworkMethod(Method):
    """Train one hypernetwork MLP pair at the UNet's context width; the UNet and the text encoder stay frozen.
    Checkpoint keys: `hypernetwork.<width>.<k|v>.<i>.weight/bias` (i: A1111's Sequential index)."""
    name = "hypernetwork"
    display_name = "hypernetwork"
    export_formats = {"hypernetwork": "{name}.pt"}   # it cannot be merged into the weights
    hub_formats = ("hypernetwork",)
    hub_tags = ("hypernetwork",)
    recipe = dict(lr=1e-3)

    @classmethod
    def check_config(cls, config):
        parse_layer_structure(config.hypernetwork_layers)
        check_activation(config.hypernetwork_activation)
        if config.attention == "xformers":  # enabling xformers would replace the processors that carry the MLPs
            raise ConfigError("attention: xformers replaces the attention processors that apply the hypernetwork. "
                              "Fix: attention='sdpa' (PyTorch's fused attention, what the processor uses).")
        if config.train_text_encoder:
            raise ConfigError("train_text_encoder: a hypernetwork trains only its MLPs on the cross-attention "
                              "context; the text encoder stays frozen. Fix: train_text_encoder=False.")

    def __init__(self, config):
        super().__init__(config)
        self.layer_structure = parse_layer_structure(config.hypernetwork_layers)

    def trains_text_encoder(self) -> bool:
        return False

    def merge(self, pipe) -> None:
        raise ValueError("a hypernetwork cannot be merged into the weights (it transforms the text context at every "
                         "cross-attention). Fix: --format hypernetwork (A1111's .pt).")

    def setup(self, unet, text_encoder):
        c = self.config
        unet.requires_grad_(False)
        text_encoder.requires_grad_(False)
        dims = unet.config.cross_attention_dim
        dims = sorted(set(dims)) if isinstance(dims, (list, tuple)) else [dims]
        net = Hypernetwork(dims, self.layer_structure, c.hypernetwork_activation)
        net.to(unet.device)
        install_hypernetwork(unet, net)
        return self._groups(list(net.parameters()), [])

    def write_export(self, format, state, out, info):
        """A1111's .pt (its models/hypernetworks/ folder); see sdkit.methods.hypernetwork_file."""
        if format != "hypernetwork":
            return super().write_export(format, state, out, info)
        return write_a1111_file(self, state, out, info)

    def state_dict(self, unet, text_encoder):
        return {f"hypernetwork.{k}": v for k, v in hypernetwork_of(unet).state_dict().items()}

    def load_state_dict(self, unet, text_encoder, state):
        net = hypernetwork_of(unet)
        own = split_prefix(state, "hypernetwork.")
        missing = sorted(set(net.state_dict()) - set(own))
        extra = sorted(set(own) - set(net.state_dict()))
        if missing or extra:
            raise ConfigError(f"hypernetwork: the checkpoint does not fit hypernetwork_layers="
                              f"{self.config.hypernetwork_layers!r}, activation={self.config.hypernetwork_activation!r}"
                              f" (missing {missing[:4]}, unexpected {extra[:4]}). Fix: load it with the config it "
                              f"was trained with (the run's config.yaml).")
        net.load_state_dict(own)


# ---- 2. A1111's .pt file ---------------------------------------------------------------------------------------
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


def write_a1111_file(method, state: dict, out, info) -> Path:
    """A hypernetwork checkpoint's `state` as A1111's .pt (its models/hypernetworks/ folder)."""
    c = method.config
    own = split_prefix(state, "hypernetwork.")
    dims = sorted({int(k.split(".")[0]) for k in own})
    net = Hypernetwork(dims, method.layer_structure, c.hypernetwork_activation)
    net.load_state_dict(own)
    out = Path(out)
    if out.suffix != ".pt":
        out = out / f"{info.name}.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(a1111_state(net, out.stem, step=info.step, sd_checkpoint_name=str(c.model),
                           info=f"trained with sdkit {info.version} on {c.data}, lr {c.lr:g}"), out)
    return out
