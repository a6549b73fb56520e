"""The README's main job: a real, short LoRA training offline, with samples and a loss plot written to runs/.

Uses the mini pipeline and the glyph set from data_samples/ when they are there, in two stages: textual inversion
gives the new word `sks` a vector of its own (write_word_pipeline), then a LoRA (GLYPH_LORA) learns the star beside a
regularization set (write_regularization_set). Otherwise a tiny random pipeline (make-tiny) and a small generated
folder of colored shapes, so that it runs on any fresh machine.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .checkpoint import read_checkpoint
from .config import TrainConfig
from .mini.world import DIGIT_WORDS, SHAPES, canonical_prompts, color_pairs
from .methods.prior import ensure_class_images
from .models import PRESETS, data_samples_dir, load_pipeline
from .plot import save_loss_plot
from .train.loop import train

__all__ = ["GLYPH_LORA", "GLYPH_STEPS", "REGULARIZATION_IMAGES", "WORD_STEPS", "quickstart", "write_word_pipeline",
           "write_shapes_folder", "regularization_prompts", "write_regularization_set"]

SHAPE_COLORS = {"red": (220, 40, 40), "blue": (40, 80, 220), "green": (40, 170, 60), "yellow": (235, 210, 40)}


#: The LoRA recipe the quickstart and notebook 04 share, for the sks glyph on the mini pipeline: rank 8 on attention,
#: feed-forward and the transformer projections (no ResNet convs: they moved unrelated prompts more), trained beside
#: a regularization set (prior preservation, weight 3). Measured in docs/BENCHMARKS.md, "Does the quickstart keep
#: color control?".
GLYPH_LORA = dict(lora_rank=8, lora_alpha=8, lr=1e-3, batch_size=8, prior_loss_weight=3.0,
                  lora_targets="to_q,to_k,to_v,to_out.0,ff.net.0.proj,ff.net.2,proj_in,proj_out")
GLYPH_STEPS = 400                 # full training steps
REGULARIZATION_IMAGES = 112       # base-model pictures: every color pair twice, every glyph kind 5-11 times
WORD_STEPS = 400                  # textual-inversion steps that give `sks` its meaning before the LoRA


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


def regularization_prompts(n: int, seed: int = 0) -> list:
    """n canonical mini-world prompts that cover the world evenly: the glyph kinds (10 digits, 4 shapes) in turn,
    and every (fg, bg) color pair once in each run of 56 pictures, paired at random (seeded). A plain random draw
    of 48 out of 728 prompts leaves kinds and color pairs out, and those are the prompts the LoRA then moves."""
    rng = np.random.default_rng(seed)
    known = {p for p, _ in canonical_prompts(shapes=True)}       # no held-out digit combination
    kinds = [DIGIT_WORDS[d] for d in range(10)] + list(SHAPES)
    pairs = color_pairs()
    prompts, i = [], 0
    while len(prompts) < n:
        for j in rng.permutation(len(pairs)):
            fg, bg = pairs[j]
            for shift in range(len(kinds)):                          # the next kind this pair is not held out for
                prompt = f"a {fg} {kinds[(i + shift) % len(kinds)]} on a {bg} background"
                if prompt in known and prompt not in prompts:
                    break
            else:
                continue                                             # every kind used with this pair: skip it
            prompts.append(prompt)
            i += 1
            if len(prompts) == n:
                break
    return prompts


def write_regularization_set(model, folder, n: int = 48, steps: int = 25, seed: int = 0, prompts=None,
                             report=print) -> Path:
    """Pictures the *base* model draws for n mini-world prompts (digits and shapes, each picture's prompt as its
    caption): kohya's "regularization images", DreamBooth's class images with many prompts. Trained beside the new
    concept (prior preservation), they pull every other prompt back to what the base model drew. Reused when present.
    prompts: the list to draw (one per picture, cycling); default regularization_prompts(n, seed)."""
    prompts = regularization_prompts(n, seed) if prompts is None else prompts
    pipe = load_pipeline(model)
    pipe.set_progress_bar_config(disable=True)
    ensure_class_images(pipe, folder, prompts, n, resolution=pipe.unet.config.sample_size * pipe.vae_scale_factor,
                        steps=steps, report=report)
    return Path(folder)


def write_word_pipeline(model, data, folder, word: str = "sks", init: str = "glyph", steps: int = 400,
                        report=print) -> Path:
    """Stage 1 of the quickstart: give `word` a meaning of its own before the LoRA trains. A textual-inversion run
    (only one token vector trains; UNet and text encoder frozen) learns a vector for the word from the concept's
    pictures; the base pipeline is saved to `folder` with that vector in the word's row of the embedding table.
    Without it the mini text encoder reads `a red sks glyph ...` almost as `a red five ...` (it never saw `sks`),
    and a LoRA on the stars moves the digit prompts too (docs/BENCHMARKS.md). Reused when present."""
    folder = Path(folder)
    made = {"word": word, "init": init, "steps": steps, "model": str(model)}
    marker = folder / "sdkit_word.json"
    if (folder / "model_index.json").is_file() and marker.is_file() and json.loads(marker.read_text()) == made:
        report(f"word: reusing {folder} (`{word}` already learned, {steps} steps)")
        return folder
    if folder.exists() and any(folder.iterdir()) and not marker.is_file():
        raise FileExistsError(f"{folder}: exists and was not made by write_word_pipeline (no {marker.name}); "
                              f"nothing was changed. Fix: pass another folder, or delete this one.")
    shutil.rmtree(folder, ignore_errors=True)           # ours, made with other settings (e.g. quick mode): redo
    word_run = folder.with_name(folder.name + "-run")
    shutil.rmtree(word_run, ignore_errors=True)
    config = TrainConfig(model=model, data=str(data), method="textual-inversion", token=f"<{word}>", init_token=init,
                         num_vectors=1, trigger_token=word, lr=5e-3, steps=steps, batch_size=8, cache_latents=True,
                         sample_every=0, sample_at_start=False, checkpoint_every=steps, out=str(word_run))
    pipe = load_pipeline(model)
    ids = pipe.tokenizer(word, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise ValueError(f"word: {word!r} is {len(ids)} tokens for this tokenizer; expected one. Fix: a short rare "
                         f"word that is a single token (e.g. sks).")
    report(f"word: textual inversion of `{word}` on {data}, {steps} steps -> {word_run}")
    run = train(config, progress=None)
    vector = read_checkpoint(run.checkpoints[-1])["trainable"]["token_vectors"][0]
    emb = pipe.text_encoder.get_input_embeddings()
    with torch.no_grad():
        emb.weight[ids[0]] = vector.to(emb.weight.dtype)
    pipe.save_pretrained(str(folder))
    marker.write_text(json.dumps(made) + "\n")
    report(f"word: `{word}` learned (vector norm {float(vector.norm()):.2f}); base pipeline with it: {folder}")
    return folder


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
    steps = steps or (10 if quick else GLYPH_STEPS)
    if model == "mini":
        # 24 stars alone teach a LoRA to draw stars for digit prompts too (1.00 -> 0.62 joint), because the mini text
        # encoder gives an unseen word like `sks` almost no meaning of its own (docs/BENCHMARKS.md, "Does the
        # quickstart keep color control?"). Stage 1 learns a vector for the word; stage 2, the LoRA, trains beside
        # the base model's own pictures of digits and shapes, which keep those prompts as they were (0.97).
        model = str(write_word_pipeline(model, data, Path(out).with_name(Path(out).name + "-base"),
                                        steps=10 if quick else WORD_STEPS))
        n = 8 if quick else REGULARIZATION_IMAGES
        reg = write_regularization_set(model, Path(out).with_name(Path(out).name + "-regularization"),
                                       n=n, steps=5 if quick else 25)
        extra = dict(prior_preservation=True, class_data=str(reg), num_class_images=n)
    else:
        extra = {}
    config = TrainConfig(model=model, data=str(data), method="lora", steps=steps, cache_latents=True,
                         sample_every=max(steps // 4, 1), checkpoint_every=max(steps // 4, 1),
                         sample_prompts=prompts, sample_seeds=[0, 1], out=out, **GLYPH_LORA, **extra)
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
