"""A throwaway method written as one file outside sdkit, as a contributor would start one (BitFit: only the UNet's
biases train). tests/test_method_plugin.py registers it and runs it through everything sdkit offers a method."""
from pathlib import Path

import torch
from safetensors.torch import save_file

from sdkit.methods import PIPELINE_EXPORTS, Method, split_prefix


class BitFitMethod(Method):
    """BitFit: only the UNet's bias vectors train (Ben Zaken et al. 2021)."""
    name = "bitfit"
    export_formats = {"biases": "{name}-biases.safetensors", **PIPELINE_EXPORTS}
    hub_tags = ("bitfit",)
    recipe = dict(lr=1e-3)

    def setup(self, unet, text_encoder):
        unet.requires_grad_(False)
        text_encoder.requires_grad_(False)
        biases = [p for n, p in unet.named_parameters() if n.endswith(".bias")]
        for p in biases:
            p.requires_grad_(True)
        return self._groups(biases, [])

    def state_dict(self, unet, text_encoder):
        return {f"unet.{n}": p for n, p in unet.named_parameters() if n.endswith(".bias")}

    def load_state_dict(self, unet, text_encoder, state):
        unet.load_state_dict(split_prefix(state, "unet."), strict=False)

    def merge(self, pipe):
        """The biases are the model's own: nothing to merge."""

    def write_export(self, format, state, out, info):
        if format != "biases":
            return super().write_export(format, state, out, info)
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.to(torch.float32).contiguous() for k, v in state.items()}, str(out),
                  metadata={"method": "bitfit", "step": str(info.step)})
        return out
