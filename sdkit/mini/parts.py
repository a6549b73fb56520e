"""Build the mini world's parts in order: world -> judge -> mini CLIP -> mini VAE (the UNet is `sdkit.mini.pipeline`)."""
from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from .clip import train_clip
from .judge import train_judge
from .vae import train_vae
from .world import build_world

__all__ = ["build_parts"]


def _stage(name: str, root: Path, quick: bool, seed: int, threads: int | None = None):
    """Run one stage (in this process or a worker); -> (result, seconds)."""
    if threads:
        torch.set_num_threads(threads)
    t0 = time.time()
    print(f"== mini world: {name} ==", flush=True)
    if name == "world":
        result = str(build_world(root / "mini-world", seed=seed))
    elif name == "judge":
        result = train_judge(root / "judge", seed=seed, **({"steps": 30, "log_every": 10} if quick else {}))
    elif name == "clip":
        result = train_clip(root / "mini-clip", seed=seed,
                            **({"steps": 10, "n_train": 600, "log_every": 5} if quick else {}))
    else:
        result = train_vae(root / "mini-vae", seed=seed, judge_dir=root / "judge",
                           **({"steps": 10, "n_train": 300, "log_every": 5} if quick else {}))
    seconds = round(time.time() - t0, 1)
    print(f"== {name} done in {seconds:.0f} s ==", flush=True)
    return result, seconds


def build_parts(root="data_samples", quick: bool = False, seed: int = 0, workers: int | None = None) -> dict:
    """Build world -> judge -> mini CLIP -> mini VAE under ``root``; print progress; return metrics and times.

    Outputs: root/mini-world/ (MNIST cache, held-out combos, preview), root/judge/, root/mini-clip/, root/mini-vae/.
    quick=True runs a few steps of each stage (for tests and CI); the artifacts load but are not accurate.
    workers: 2 (the default on a machine with 2+ cores, full mode) trains the stages side by side, one thread each:
    the judge beside the CLIP, then the VAE (its metrics need the judge) beside the rest of the CLIP. 1 runs them
    one after another in this process with torch's own thread count. The results are the same either way.
    """
    root = Path(root)
    if workers is None:
        workers = 1 if quick or (os.cpu_count() or 1) < 2 else 2
    report: dict = {"quick": quick, "workers": workers,
                    "torch_threads": 1 if workers > 1 else torch.get_num_threads()}
    t0 = time.time()
    report["world"], report["world_seconds"] = _stage("world", root, quick, seed)
    if workers <= 1:
        for name in ("judge", "clip", "vae"):
            report[name], report[f"{name}_seconds"] = _stage(name, root, quick, seed)
    else:
        with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
            clip = pool.submit(_stage, "clip", root, quick, seed, 1)
            report["judge"], report["judge_seconds"] = pool.submit(_stage, "judge", root, quick, seed, 1).result()
            vae = pool.submit(_stage, "vae", root, quick, seed, 1)
            report["clip"], report["clip_seconds"] = clip.result()
            report["vae"], report["vae_seconds"] = vae.result()
    report["parts_seconds"] = round(time.time() - t0, 1)
    return report
