"""Measure a new concept in the mini world: did the model learn the sks glyph (a star), and did it bleed?

The judge (sdkit.mini.judge) knows digits and the four shapes but not the star, so star fidelity is measured by a
small star-vs-rest detector trained here, in a second, on rendered pictures: real stars (sdkit.mini.glyph) against
circles, squares, triangles, crosses and MNIST digits, all in random color pairs. It reads the *shape* only: each
picture becomes a foreground mask (pixels far from the border color), so colors cannot give the answer, and the
training pictures are degraded (thicker/thinner strokes, blur, color blotches, noise) to look like generated ones.

    det = StarDetector.fit()
    det.star_rate(images)             # fraction of pictures that show a star
    report = measure(pipe, base_pipe) # fidelity, class bleeding, control-prompt accuracy and drift

What `measure` reports (pictures drawn with fixed seeds, so two models are compared on the same noise):
- fidelity          star rate of the concept prompts ("a red sks glyph on a blue background")
- class_star_rate   star rate of the class prompt alone ("a glyph"): the concept taking over its class (bleeding)
- control_acc       the judge's accuracy (glyph and both colors) on unrelated prompts whose answer it knows
- control_drift     1 - cosine (mini CLIP image tower) between the control pictures and the base model's
"""
from __future__ import annotations

import numpy as np
import torch

from ..evaluate.metrics import mini_extractors
from ..sample import generate
from .glyph import CLASS_WORD, TOKEN, star_alpha
from .judge import Judge
from .world import SHAPES, color_pairs, mnist_split, render

__all__ = ["foreground_mask", "StarDetector", "measure", "CONCEPT_PROMPTS", "CONTROL_PROMPTS"]

CONCEPT_PROMPTS = [f"a red {TOKEN} {CLASS_WORD} on a blue background", f"a yellow {TOKEN} {CLASS_WORD} on a black "
                   f"background", f"a white {TOKEN} {CLASS_WORD} on a green background"]
# unrelated prompts the judge can check (shapes and digits in canonical captions)
CONTROL_PROMPTS = ["a red circle on a blue background", "a green seven on a white background",
                   "a yellow square on a purple background", "a blue triangle on a yellow background"]
CONTROL_LABELS = [{"shape": "circle", "fg": "red", "bg": "blue"}, {"digit": 7, "fg": "green", "bg": "white"},
                  {"shape": "square", "fg": "yellow", "bg": "purple"}, {"shape": "triangle", "fg": "blue",
                                                                         "bg": "yellow"}]


def foreground_mask(images) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float (N, H, W) in [0, 1]: distance of each pixel from the border's median color,
    divided by the largest distance in the picture (so color pairs of any contrast give the same mask)."""
    x = np.asarray(images, dtype=np.float32)
    border = np.concatenate([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], axis=1)     # (N, 4W, 3)
    bg = np.median(border, axis=1)[:, None, None, :]
    d = np.sqrt(((x - bg) ** 2).sum(-1))
    return d / np.maximum(d.max(axis=(1, 2), keepdims=True), 1e-6)


def _degrade(im: np.ndarray, rng) -> np.ndarray:
    """Make a crisp render look like a small model's picture: thicker or thinner strokes, blur, color blotches and
    pixel noise (generated glyphs are soft-edged and their backgrounds are not flat)."""
    x = im.astype(np.float32)
    bg = np.median(np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]]), axis=0)
    fg_mask = np.abs(x - bg).sum(-1) > 30
    grow = rng.integers(-1, 2)  # -1: erode, 0: keep, 1: dilate the glyph by one pixel
    if grow:
        shifted = [np.roll(np.roll(fg_mask, dy, 0), dx, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        new = np.any(shifted, axis=0) if grow > 0 else np.all(shifted, axis=0)
        fg = x[fg_mask].mean(0) if fg_mask.any() else bg
        x = np.where(new[..., None], fg, bg)
    for _ in range(rng.integers(0, 4)):  # 3x3 box blur, 0-3 times
        x = sum(np.roll(np.roll(x, dy, 0), dx, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9
    blotch = rng.normal(0, rng.uniform(0, 25), size=(4, 4, 3)).repeat(8, 0).repeat(8, 1)
    x = x + blotch + rng.normal(0, rng.uniform(0, 12), size=x.shape)
    return x.clip(0, 255).astype(np.uint8)


class StarDetector:
    """Logistic regression on 32x32 foreground masks: star (1) against every other glyph (0)."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor):
        self.w, self.b = w, b

    @staticmethod
    def training_set(n: int = 600, seed: int = 0, augment: bool = True):
        rng = np.random.default_rng([seed, 99])
        pairs = color_pairs()
        digits, _ = mnist_split("train")
        images, labels = [], []
        for i in range(n):
            fg, bg = pairs[rng.integers(len(pairs))]
            kind = i % 3
            if kind == 0:
                glyph, y = star_alpha(rng), 1
            elif kind == 1:
                glyph, y = SHAPES[rng.integers(len(SHAPES))], 0
            else:
                glyph, y = digits[rng.integers(len(digits))], 0
            im = render(glyph, fg, bg, rng=rng) if isinstance(glyph, str) else render(glyph, fg, bg)
            images.append(_degrade(im, rng) if augment else im)
            labels.append(y)
        return np.stack(images), np.array(labels)

    @classmethod
    def fit(cls, n: int = 900, seed: int = 0, steps: int = 300) -> "StarDetector":
        images, labels = cls.training_set(n, seed)
        x = torch.from_numpy(foreground_mask(images).reshape(len(images), -1))
        y = torch.from_numpy(labels).float()
        g = torch.Generator().manual_seed(seed)
        w = (torch.randn(x.shape[1], generator=g) * 0.01).requires_grad_()
        b = torch.zeros((), requires_grad=True)
        opt = torch.optim.Adam([w, b], lr=0.05)
        for _ in range(steps):  # full batch; a few hundred steps take well under a second
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + 1e-3 * (w ** 2).sum()
            loss.backward()
            opt.step()
        return cls(w.detach(), b.detach())

    def p_star(self, images) -> np.ndarray:
        x = torch.from_numpy(foreground_mask(images).reshape(len(images), -1))
        return torch.sigmoid(x @ self.w + self.b).numpy()

    def star_rate(self, images) -> float:
        return float((self.p_star(images) > 0.5).mean())


def _uint8(images) -> np.ndarray:
    return np.stack([np.asarray(im.convert("RGB")) for im in images])


def measure(pipe, base_images=None, seeds=(0, 1, 2, 3), steps: int = 25, guidance_scale: float = 5.0,
            concept_prompts=CONCEPT_PROMPTS, class_prompt: str = f"a {CLASS_WORD}", detector=None,
            extractors=None, scale: float | None = None) -> dict:
    """Fidelity and bleeding of `pipe` (see the module docstring). base_images: the base model's control pictures
    (the "control" entry of a previous report) for control_drift. scale: LoRA strength (None: as loaded)."""
    det = detector or StarDetector.fit()
    kw = dict(steps=steps, guidance_scale=guidance_scale,
              cross_attention_kwargs={"scale": scale} if scale is not None else None)
    concept = _uint8(generate(pipe, concept_prompts, seeds, **kw))
    klass = _uint8(generate(pipe, [class_prompt], seeds, **kw))
    control = _uint8(generate(pipe, CONTROL_PROMPTS, seeds, **kw))
    labels = [lab for lab in CONTROL_LABELS for _ in seeds]
    out = {"fidelity": det.star_rate(concept), "class_star_rate": det.star_rate(klass),
           "control_acc": Judge.load().score(control, labels)["joint_acc"],
           "images": {"concept": concept, "class": klass, "control": control}}
    if base_images is not None:
        if extractors is None:
            extractors = mini_extractors(judge=False)
        a = torch.as_tensor(extractors.image(control)).float()
        b = torch.as_tensor(extractors.image(base_images)).float()
        out["control_drift"] = float(1 - (a * b).sum(-1).mean())
    return out
