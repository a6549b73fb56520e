"""Build the two small sample datasets in data_samples/, procedurally (no downloads, CC0):

- subject/: 10 pictures of one made-up object, the "sks" toy — a teal five-pointed star with an orange center —
  in different places, sizes, rotations and on different backgrounds; multi-token captions ("sks star, ...").
- style/:   12 pictures of different things (house, tree, fish, ...) in one made-up drawing style, "zqx style":
  thick dark-purple outlines, flat pastel fills, diagonal hatching on a cream paper; sentence captions.

    python -m sdkit data samples            # rewrites data_samples/subject and data_samples/style
The output is deterministic (fixed seeds): rebuilding gives the same pixels.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .models import data_samples_dir

__all__ = ["build_subject", "build_style", "build_all"]

SIZE = 64
STAR_FILL, STAR_DOT = (20, 150, 150), (245, 140, 20)


def _star(cx, cy, r, rot):
    pts = []
    for k in range(10):
        rad = r if k % 2 == 0 else r * 0.45
        a = rot + k * math.pi / 5 - math.pi / 2
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def _background(kind: str, rng) -> Image.Image:
    s = SIZE * 4  # draw at 4x, downsample: smooth edges
    c1 = tuple(int(v) for v in rng.integers(150, 250, 3))
    c2 = tuple(int(v) for v in rng.integers(60, 200, 3))
    im = Image.new("RGB", (s, s), c1)
    d = ImageDraw.Draw(im)
    if kind == "stripes":
        for x in range(-s, s, 32):
            d.polygon([(x, 0), (x + 16, 0), (x + 16 + s, s), (x + s, s)], fill=c2)
    elif kind == "checkerboard":
        for i in range(0, s, 48):
            for j in range(0, s, 48):
                if (i // 48 + j // 48) % 2:
                    d.rectangle((i, j, i + 47, j + 47), fill=c2)
    elif kind == "gradient":
        a = np.linspace(0, 1, s)[:, None, None]
        arr = np.array(c1)[None, None] * (1 - a) + np.array(c2)[None, None] * a
        im = Image.fromarray(np.repeat(arr, s, axis=1).astype(np.uint8))
    elif kind == "dots":
        for _ in range(40):
            x, y, r = rng.integers(0, s, 2).tolist() + [int(rng.integers(6, 18))]
            d.ellipse((x - r, y - r, x + r, y + r), fill=c2)
    elif kind == "grass":  # sky above, ground below
        d.rectangle((0, s * 0.6, s, s), fill=(70, 140, 60))
        im.paste((150, 200, 240), (0, 0, s, int(s * 0.6)))
    return im


SUBJECT_SCENES = [  # (background, where, center x, center y, radius, rotation)
    ("plain", "centred", .5, .5, .32, 0.0), ("stripes", "top left", .32, .32, .22, 0.3),
    ("checkerboard", "bottom right", .66, .66, .24, 0.6), ("gradient", "centred, large", .5, .5, .44, 0.15),
    ("dots", "left", .3, .55, .2, 0.9), ("grass", "on the grass", .55, .68, .2, 0.0),
    ("plain", "top right, small", .72, .28, .15, 1.1), ("stripes", "bottom left", .3, .7, .25, 0.45),
    ("gradient", "right", .7, .5, .23, 0.75), ("checkerboard", "centred, tilted", .5, .5, .3, 0.35),
]


def build_subject(out) -> Path:
    """10 PNGs of the sks star with multi-token captions."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    s = SIZE * 4
    for k, (bg, where, cx, cy, r, rot) in enumerate(SUBJECT_SCENES):
        im = _background(bg, rng)
        d = ImageDraw.Draw(im)
        d.polygon(_star(cx * s, cy * s, r * s, rot), fill=STAR_FILL, outline=(10, 60, 60), width=6)
        dr = r * s * 0.18
        d.ellipse((cx * s - dr, cy * s - dr, cx * s + dr, cy * s + dr), fill=STAR_DOT)
        im = im.resize((SIZE, SIZE), Image.LANCZOS)
        name = f"sks_{k + 1:02d}"
        im.save(out / f"{name}.png", optimize=True)
        background = "plain background" if bg == "plain" else ("grass and sky" if bg == "grass" else f"{bg} background")
        (out / f"{name}.txt").write_text(f"sks star, {where}, {background}\n", encoding="utf-8")
    return out


PAPER, INK = (250, 240, 215), (70, 30, 90)
PASTELS = [(250, 180, 190), (170, 220, 200), (190, 200, 250), (250, 220, 150), (210, 180, 240), (180, 230, 160)]


def _hatch(im, box, color):
    d = ImageDraw.Draw(im)
    x0, y0, x1, y1 = box
    for x in range(int(x0) - int(y1 - y0), int(x1), 14):
        d.line((x, y1, x + (y1 - y0), y0), fill=color, width=3)


def _draw_thing(name, d, im, fill):
    s = SIZE * 4
    w = 10  # the style's thick outline
    if name == "house":
        d.rectangle((60, 120, 196, 220), fill=fill, outline=INK, width=w)
        d.polygon([(45, 125), (128, 45), (211, 125)], fill=PASTELS[3], outline=INK, width=w)
        d.rectangle((110, 160, 146, 220), fill=PAPER, outline=INK, width=w)
    elif name == "tree":
        d.rectangle((112, 150, 144, 230), fill=(200, 160, 120), outline=INK, width=w)
        d.ellipse((50, 30, 206, 170), fill=fill, outline=INK, width=w)
    elif name == "fish":
        d.ellipse((40, 80, 180, 176), fill=fill, outline=INK, width=w)
        d.polygon([(175, 128), (225, 85), (225, 171)], fill=fill, outline=INK, width=w)
        d.ellipse((75, 110, 95, 130), fill=INK)
    elif name == "sun":
        for k in range(8):
            a = k * math.pi / 4
            d.line((128 + 70 * math.cos(a), 128 + 70 * math.sin(a), 128 + 115 * math.cos(a),
                    128 + 115 * math.sin(a)), fill=INK, width=w)
        d.ellipse((68, 68, 188, 188), fill=PASTELS[3], outline=INK, width=w)
    elif name == "cup":
        d.rectangle((70, 90, 170, 210), fill=fill, outline=INK, width=w)
        d.arc((150, 110, 210, 180), -90, 90, fill=INK, width=w)
    elif name == "boat":
        d.polygon([(40, 160), (216, 160), (180, 210), (76, 210)], fill=fill, outline=INK, width=w)
        d.line((128, 160, 128, 40), fill=INK, width=w)
        d.polygon([(136, 50), (200, 145), (136, 145)], fill=PAPER, outline=INK, width=w)
    elif name == "flower":
        for k in range(6):
            a = k * math.pi / 3
            x, y = 128 + 50 * math.cos(a), 110 + 50 * math.sin(a)
            d.ellipse((x - 32, y - 32, x + 32, y + 32), fill=fill, outline=INK, width=w)
        d.ellipse((100, 82, 156, 138), fill=PASTELS[3], outline=INK, width=w)
        d.line((128, 160, 128, 240), fill=INK, width=w)
    elif name == "mountain":
        d.polygon([(10, 220), (100, 60), (190, 220)], fill=fill, outline=INK, width=w)
        d.polygon([(110, 220), (180, 100), (250, 220)], fill=PASTELS[1], outline=INK, width=w)
    elif name == "cat":
        d.ellipse((58, 70, 198, 210), fill=fill, outline=INK, width=w)
        d.polygon([(70, 110), (80, 30), (125, 80)], fill=fill, outline=INK, width=w)
        d.polygon([(186, 110), (176, 30), (131, 80)], fill=fill, outline=INK, width=w)
        d.ellipse((95, 120, 115, 140), fill=INK)
        d.ellipse((141, 120, 161, 140), fill=INK)
    elif name == "car":
        d.rectangle((30, 120, 226, 185), fill=fill, outline=INK, width=w)
        d.polygon([(70, 120), (95, 75), (170, 75), (195, 120)], fill=PAPER, outline=INK, width=w)
        for x in (75, 180):
            d.ellipse((x - 25, 165, x + 25, 215), fill=INK)
    elif name == "key":
        d.ellipse((30, 90, 110, 170), fill=fill, outline=INK, width=w)
        d.rectangle((105, 118, 225, 142), fill=fill, outline=INK, width=w)
        d.rectangle((190, 140, 210, 175), fill=fill, outline=INK, width=w)
    elif name == "umbrella":
        d.pieslice((30, 40, 226, 220), 180, 360, fill=fill, outline=INK, width=w)
        d.line((128, 130, 128, 215), fill=INK, width=w)
        d.arc((100, 195, 130, 235), 0, 180, fill=INK, width=w)


STYLE_THINGS = ["house", "tree", "fish", "sun", "cup", "boat", "flower", "mountain", "cat", "car", "key", "umbrella"]


def build_style(out) -> Path:
    """12 PNGs of different things in the 'zqx style' with sentence captions."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    s = SIZE * 4
    for k, name in enumerate(STYLE_THINGS):
        im = Image.new("RGB", (s, s), PAPER)
        # the style's paper texture: faint diagonal hatching, denser in one corner
        _hatch(im, (0, s * 0.55, s * 0.6, s), (235, 215, 180))
        d = ImageDraw.Draw(im)
        _draw_thing(name, d, im, PASTELS[k % len(PASTELS)])
        d.rectangle((4, 4, s - 5, s - 5), outline=INK, width=6)  # the style's frame
        im = im.resize((SIZE, SIZE), Image.LANCZOS)
        im.save(out / f"zqx_{name}.png", optimize=True)
        (out / f"zqx_{name}.txt").write_text(f"a {name}, zqx style\n", encoding="utf-8")
    return out


def build_all(data_samples=None) -> list:
    root = Path(data_samples) if data_samples else data_samples_dir()
    return [build_subject(root / "subject"), build_style(root / "style")]


if __name__ == "__main__":  # pragma: no cover
    for p in build_all():
        print(f"wrote {p}")
