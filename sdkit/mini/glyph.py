"""A new concept for the mini world: the "sks glyph", a five-pointed star the base model has never seen.

LoRA, DreamBooth and evaluation teach it to the mini pipeline. Its class (for prior preservation) is "glyph":
the mini world's shapes (circle, square, triangle, cross) are glyphs the base model already draws.

    python -c "from sdkit.mini.glyph import write_glyph_set; write_glyph_set('data_samples/glyph')"
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .world import COLORS, GLYPH_SIZE, render

__all__ = ["star_alpha", "glyph_images", "write_glyph_set", "write_mixed_glyph_set", "MIXED_SHAPES", "TOKEN",
           "CLASS_WORD"]

TOKEN, CLASS_WORD = "sks", "glyph"


def star_alpha(rng: np.random.Generator | None = None) -> np.ndarray:
    """A 28x28 alpha map of a filled five-pointed star (4x4 supersampled), with small size/rotation jitter."""
    scale, angle, dx, dy = 0.95, 0.0, 0.0, 0.0
    if rng is not None:
        scale, angle = rng.uniform(0.85, 1.0), np.deg2rad(rng.uniform(-10, 10))
        dx, dy = rng.uniform(-1, 1, size=2)
    ss = 4
    t = (np.arange(GLYPH_SIZE * ss) + 0.5) / ss - GLYPH_SIZE / 2
    yy, xx = np.meshgrid(t - dy, t - dx, indexing="ij")
    r = np.hypot(xx, yy) / (12.0 * scale)
    theta = np.arctan2(yy, xx) - angle + np.pi / 2            # a point straight up
    # radius of the star's outline at angle theta: alternates between outer (1) and inner (0.42) vertices
    k = np.mod(theta, 2 * np.pi / 5) / (2 * np.pi / 5)        # position within one point, 0..1
    edge = 0.42 + (1 - 0.42) * np.abs(1 - 2 * k) ** 1.6
    m = r <= edge
    return m.reshape(GLYPH_SIZE, ss, GLYPH_SIZE, ss).mean(axis=(1, 3)).astype(np.float32)


def glyph_images(n: int = 24, seed: int = 0):
    """n star pictures in varied (fg, bg) color pairs -> (uint8 N x 32 x 32 x 3, captions, labels)."""
    rng = np.random.default_rng([seed, 4242])
    pairs = [(f, b) for f in COLORS for b in COLORS if f != b]
    order = rng.permutation(len(pairs))[:n]
    images, captions, labels = [], [], []
    for i in order:
        fg, bg = pairs[i]
        images.append(render(star_alpha(rng), fg, bg))
        captions.append(f"a {fg} {TOKEN} {CLASS_WORD} on a {bg} background")
        labels.append({"glyph": "star", "fg": fg, "bg": bg})
    return np.stack(images), captions, labels


def write_glyph_set(out_dir, n: int = 24, seed: int = 0) -> Path:
    """Write the glyph set as PNG + .txt captions (the folder format sdkit trains on)."""
    from PIL import Image
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images, captions, _ = glyph_images(n, seed)
    for i, (im, cap) in enumerate(zip(images, captions)):
        Image.fromarray(im).save(out / f"star_{i:02d}.png")
        (out / f"star_{i:02d}.txt").write_text(cap + "\n")
    return out


# (columns, rows) of glyph tiles: square, portrait 1:2, landscape 2:1, panorama 3:1 — the shapes of phone photos,
# screenshots and panoramas in the mini world (each tile 32 px, so a 1:2 picture is 32x64).
MIXED_SHAPES = ((1, 1), (1, 2), (2, 1), (3, 1))
NUMBER_WORDS = {1: "a", 2: "two", 3: "three"}


def write_mixed_glyph_set(out_dir, n: int = 8, seed: int = 0, shapes=MIXED_SHAPES) -> Path:
    """A folder of n captioned glyph pictures of mixed shapes (picture i: `shapes[i % len(shapes)]` tiles, one star
    per tile, so cropping a non-square picture to a square cuts stars), for aspect-ratio buckets (notebook 03)."""
    from PIL import Image
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 4343])
    pairs = [(f, b) for f in COLORS for b in COLORS if f != b]
    for i in range(n):
        fg, bg = pairs[int(rng.integers(len(pairs)))]
        cols, rows = shapes[i % len(shapes)]
        tiles = [[render(star_alpha(rng), fg, bg) for _ in range(cols)] for _ in range(rows)]
        picture = np.concatenate([np.concatenate(row, axis=1) for row in tiles], axis=0)  # (32 rows, 32 cols, 3)
        count = cols * rows
        word = f"{NUMBER_WORDS.get(count, count)} {fg} {TOKEN} {CLASS_WORD}{'s' if count > 1 else ''}"
        Image.fromarray(picture).save(out / f"mixed_{i:02d}.png")
        (out / f"mixed_{i:02d}.txt").write_text(f"{word} on a {bg} background\n")
    return out
