"""The mini world: a tiny, complete Stable-Diffusion-like world of data and models trained offline on a CPU.

- :mod:`sdkit.mini.world` — coloured MNIST digits and shapes with captions; held-out combinations.
- :mod:`sdkit.mini.judge` — an independent judge (CNN on real digits + palette colour naming).
- :mod:`sdkit.mini.clip`  — a mini ``CLIPModel`` with the real CLIP tokenizer; its text tower conditions the UNet.
- :mod:`sdkit.mini.vae`   — a mini ``AutoencoderKL``: 32x32x3 <-> 8x8x4 latents, measured scaling factor.

Rebuild every shipped part (about 20 minutes on one CPU thread), or a tiny version for tests::

    from sdkit.mini import build_parts
    build_parts("data_samples")                   # world -> judge -> CLIP -> VAE
    build_parts("/tmp/mini", quick=True)          # seconds; weights are useless but complete
"""
from __future__ import annotations

import time
from pathlib import Path

from . import world  # noqa: F401  (the light module; the model modules import torch/transformers lazily)


def build_parts(root="data_samples", quick: bool = False, seed: int = 0) -> dict:
    """Build world -> judge -> mini CLIP -> mini VAE under ``root``; print progress; return metrics and times.

    Outputs: root/mini-world/ (MNIST cache, held-out combos, preview), root/judge/, root/mini-clip/, root/mini-vae/.
    quick=True runs a few steps of each stage (for tests and CI); the artefacts load but are not accurate.
    """
    import torch

    from .clip import train_clip
    from .judge import train_judge
    from .vae import train_vae

    root = Path(root)
    report: dict = {"quick": quick, "torch_threads": torch.get_num_threads()}
    stages = [
        ("world", lambda: str(world.build_world(root / "mini-world", seed=seed))),
        ("judge", lambda: train_judge(root / "judge", seed=seed, **({"steps": 30, "log_every": 10} if quick else {}))),
        ("clip", lambda: train_clip(root / "mini-clip", seed=seed,
                                    **({"steps": 10, "n_train": 600, "log_every": 5} if quick else {}))),
        ("vae", lambda: train_vae(root / "mini-vae", seed=seed, judge_dir=root / "judge",
                                  **({"steps": 10, "n_train": 300, "log_every": 5} if quick else {}))),
    ]
    for name, run in stages:
        t0 = time.time()
        print(f"== mini world: {name} ==", flush=True)
        report[name] = run()
        report[f"{name}_seconds"] = round(time.time() - t0, 1)
        print(f"== {name} done in {report[f'{name}_seconds']:.0f} s ==", flush=True)
    return report
