"""The README's main job: a real, short LoRA training offline, with samples and a loss plot written to runs/.

Uses the mini pipeline and the glyph set from data_samples/ when they are there; otherwise a tiny random
pipeline (make-tiny) and a small generated folder of colored shapes, so that it runs on any fresh machine.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from .config import TrainConfig
from .mini.world import canonical_prompts
from .methods.prior import ensure_class_images
from .models import PRESETS, data_samples_dir, load_pipeline
from .plot import save_loss_plot
from .train.loop import train

__all__ = ["quickstart", "write_shapes_folder", "write_regularization_set"]

SHAPE_COLORS = {"red": (220, 40, 40), "blue": (40, 80, 220), "green": (40, 170, 60), "yellow": (235, 210, 40)}


def write_shapes_folder(folder, n: int = 16, size: int = 32, prefix: str = "shape") -> Path:
    """A folder of n PNGs (a colored square or disc on white) with .txt captions: a dataset made on the spot."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        name = list(SHAPE_COLORS)[i % len(SHAPE_COLORS)]
        shape = ("square", "disc")[(i // len(SHAPE_COLORS)) % 2]
        img = np.full((size, size, 3), 240, np.uint8)
        if shape == "square":
            img[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = SHAPE_COLORS[name]
        else:
            img[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 4) ** 2] = SHAPE_COLORS[name]
        Image.fromarray(img).save(folder / f"{prefix}_{i:02d}.png")
        (folder / f"{prefix}_{i:02d}.txt").write_text(f"a {name} {shape} on a white background\n")
    return folder


def write_regularization_set(model, folder, n: int = 48, steps: int = 25, seed: int = 0, report=print) -> Path:
    """Pictures the *base* model draws for n mini-world prompts (digits and shapes, each picture's prompt as its
    caption): kohya's "regularization images", DreamBooth's class images with many prompts. Trained beside the new
    concept (prior preservation), they pull every other prompt back to what the base model drew. Reused when present."""
    pairs = list(canonical_prompts(shapes=True))
    prompts = [pairs[i][0] for i in np.random.default_rng(seed).choice(len(pairs), n, replace=False)]
    pipe = load_pipeline(model)
    pipe.set_progress_bar_config(disable=True)
    ensure_class_images(pipe, folder, prompts, n, resolution=pipe.unet.config.sample_size * pipe.vae_scale_factor,
                        steps=steps, report=report)
    return Path(folder)


def quickstart(out="runs/quickstart", steps=None, quick=None):
    """Train a LoRA for a few minutes on CPU (seconds with SDKIT_QUICK=1); print where everything is."""
    quick = os.environ.get("SDKIT_QUICK") == "1" if quick is None else quick
    mini = PRESETS["mini"]["path"]()
    glyphs = data_samples_dir() / "glyph"
    if (Path(mini) / "model_index.json").is_file() and glyphs.is_dir():
        model, data = "mini", glyphs
        prompts = ["a red sks glyph on a white background", "a blue sks glyph on a yellow background",
                   "a green seven on a black background", "a white circle on a purple background"]
    else:
        model, data = "tiny", write_shapes_folder(Path(out).with_name(Path(out).name + "-data"))
        prompts = ["a red square on a white background", "a blue disc on a white background"]
    steps = steps or (10 if quick else 200)
    extra = {}
    if model == "mini":
        # LoRA on attention, feed-forward and the transformer projections (a new outline needs more than attention),
        # with prior preservation on a regularization set: 24 stars alone teach the LoRA to draw stars for every
        # prompt (unrelated digit prompts 1.00 -> 0.62 joint), because the mini text encoder gives an unseen word like
        # `sks` almost no meaning of its own (docs/BENCHMARKS.md, "Does the quickstart keep color control?"); the base model's own pictures
        # of digits and shapes, trained beside the stars (weight 3), keep those prompts as they were.
        reg = write_regularization_set(model, Path(out).with_name(Path(out).name + "-regularization"),
                                       n=8 if quick else 48, steps=5 if quick else 25)
        extra = dict(prior_preservation=True, class_data=str(reg), num_class_images=8 if quick else 48,
                     prior_loss_weight=3.0)
    targets = "to_q,to_k,to_v,to_out.0,ff.net.0.proj,ff.net.2,proj_in,proj_out"
    config = TrainConfig(model=model, data=str(data), method="lora", steps=steps, lr=1e-3, lora_rank=8,
                         lora_targets=targets, cache_latents=True, batch_size=8,
                         sample_every=max(steps // 4, 1), checkpoint_every=max(steps // 4, 1),
                         sample_prompts=prompts, sample_seeds=[0, 1], out=out, **extra)
    out_path = Path(out)
    if (out_path / "checkpoints").is_dir():
        out_path = out_path.with_name(f"{out_path.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        config = config.replace(out=str(out_path))
    print(f"sdkit quickstart: LoRA on model {model!r}, data {data}, {steps} steps -> {config.out}", flush=True)
    run = train(config, progress="print")
    plot = save_loss_plot(run)
    print(f"\ndone in {run.metrics[-1]['time']:.0f} s of training. Run directory: {run.path}")
    print(f"  loss plot:     {plot}")
    print(f"  samples:       {run.path / 'samples'}  (step 0 baseline and every {config.sample_every} steps)")
    print(f"  final grid:    {run.grid()}")
    print(f"  checkpoints:   {', '.join(p.name for p in run.checkpoints)}")
    print(f"  look at it:    python -m sdkit show {run.path}   (or sdkit.show('{run.path}') in a notebook)")
    return run
