"""Sampling with fixed seeds, and grids.

`generate(pipe, prompts, seeds)` draws each prompt once per seed with a CPU generator seeded per image, so the
same (prompt, seed) gives the same picture at every checkpoint — the only fair way to compare them.
"""
from __future__ import annotations

import math

import torch
from PIL import Image, ImageDraw

__all__ = ["generate", "make_grid", "label_grid"]


@torch.no_grad()
def generate(pipe, prompts, seeds=(0,), steps: int = 25, guidance_scale: float = 5.0, negative_prompt: str = "",
             height=None, width=None, cross_attention_kwargs=None):
    """Images for every (prompt, seed), prompt-major: [(p0,s0), (p0,s1), ..., (p1,s0), ...]. Returns PIL images."""
    images = []
    for prompt in prompts:
        gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        out = pipe(prompt=[prompt] * len(seeds), negative_prompt=[negative_prompt] * len(seeds) if negative_prompt
                   else None, num_inference_steps=steps, guidance_scale=guidance_scale, generator=gens,
                   height=height, width=width, cross_attention_kwargs=cross_attention_kwargs)
        images.extend(out.images)
    return images


def make_grid(images, cols: int | None = None, pad: int = 2, background=(255, 255, 255)) -> Image.Image:
    """Tile equally sized PIL images into one image, row-major."""
    if not images:
        raise ValueError("make_grid: no images")
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w + (cols + 1) * pad, rows * h + (rows + 1) * pad), background)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        grid.paste(im.convert("RGB"), (pad + c * (w + pad), pad + r * (h + pad)))
    return grid


def label_grid(images, row_labels, col_labels, cell: int | None = None, label_width: int = 160,
               header: int = 18) -> Image.Image:
    """A grid with text labels: rows × cols images (row-major), row labels on the left, column labels on top."""
    rows, cols = len(row_labels), len(col_labels)
    if len(images) != rows * cols:
        raise ValueError(f"label_grid: {len(images)} images for {rows} rows x {cols} columns")
    w, h = images[0].size
    if cell and cell != w:
        images = [im.resize((cell, cell * h // w), Image.NEAREST) for im in images]
        w, h = images[0].size
    grid = Image.new("RGB", (label_width + cols * w, header + rows * h), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for c, text in enumerate(col_labels):
        draw.text((label_width + c * w + 2, 3), str(text)[: max(4, w // 6)], fill=(0, 0, 0))
    for r, text in enumerate(row_labels):
        draw.text((3, header + r * h + h // 2 - 5), str(text)[: label_width // 6], fill=(0, 0, 0))
        for c in range(cols):
            grid.paste(images[r * cols + c].convert("RGB"), (label_width + c * w, header + r * h))
    return grid
