"""The mini world: a tiny, complete Stable-Diffusion-like world of data and models trained offline on a CPU.

- :mod:`sdkit.mini.world` — colored MNIST digits and shapes with captions; held-out combinations.
- :mod:`sdkit.mini.judge` — an independent judge (CNN on real digits + palette color naming).
- :mod:`sdkit.mini.clip`  — a mini ``CLIPModel`` with the real CLIP tokenizer; its text tower conditions the UNet.
- :mod:`sdkit.mini.vae`   — a mini ``AutoencoderKL``: 32x32x3 <-> 8x8x4 latents, measured scaling factor.

Rebuild every shipped part (about 20 minutes on one CPU thread), or a tiny version for tests::

    from sdkit.mini import build_parts
    build_parts("data_samples")                   # world -> judge -> CLIP -> VAE
    build_parts("/tmp/mini", quick=True)          # seconds; weights are useless but complete
"""
from .parts import build_parts

__all__ = ["build_parts"]
