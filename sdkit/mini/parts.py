"""Build the mini world's parts in order: world -> judge -> mini CLIP -> mini VAE (the UNet is `sdkit.mini.pipeline`)."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from .clip import train_clip
from .judge import train_judge
from .vae import train_vae
from .world import build_world

__all__ = ["build_parts"]


def build_parts(root="data_samples", quick: bool = False, seed: int = 0) -> dict:
    """Build world -> judge -> mini CLIP -> mini VAE under ``root``; print progress; return metrics and times.

    Outputs: root/mini-world/ (MNIST cache, held-out combos, preview), root/judge/, root/mini-clip/, root/mini-vae/.
    quick=True runs a few steps of each stage (for tests and CI); the artifacts load but are not accurate.
    """
    root = Path(root)
    report: dict = {"quick": quick, "torch_threads": torch.get_num_threads()}
    stages = [
        ("world", lambda: str(build_world(root / "mini-world", seed=seed))),
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
