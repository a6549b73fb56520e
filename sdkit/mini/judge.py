"""The judge: an independent reader of mini-world pictures, trained only on real data.

It answers "does this picture show what its prompt asked for?" with three readings:
- glyph: a small CNN trained on the 4,000 *real* MNIST train digits (recolored onto palette colors,
  shifted, blurred, noised: still real digits, never generated pictures) and on procedural shapes;
  it sees a color-free "ink map" (distance of each pixel from the background color), so it reads any color pair;
- bg: nearest palette color to the median of the border pixels;
- fg: nearest palette color to the median of the pixels farthest from the background color.

    >>> from sdkit.mini.judge import Judge
    >>> judge = Judge.load()                         # data_samples/judge/
    >>> judge.predict(images)[0]                     # {'digit': 7, 'digit_conf': 0.99, 'fg': 'red', 'bg': 'blue', ...}
    >>> judge.score(images, labels)                  # {'digit_acc', 'fg_acc', 'bg_acc', 'joint_acc', 'n'}
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.files import write_safetensors
from .world import (COLORS, DATA_SAMPLES, GLYPHS, IMAGE_SIZE, PALETTE, SHAPES, color_pairs, glyph_index, mnist_split,
                    render, shape_glyph, warmup_cosine)

JUDGE_DIR = DATA_SAMPLES / "judge"
_PALETTE_T = torch.tensor(list(PALETTE.values()), dtype=torch.float32)     # (8, 3)
FG_TOP_K = 24            # pixels farthest from the background whose median names the foreground
INK_FLOOR = 40.0         # ink map = distance / max(max distance, INK_FLOOR): a blank picture stays blank


# ---------------------------------------------------------------------------------------------
# Pre-processing: pictures -> float tensors, background color, ink map, color names
# ---------------------------------------------------------------------------------------------
def to_float_images(images) -> torch.Tensor:
    """uint8 NxHxWx3 array, float array in [0, 1], or a list of PIL images -> float (N, 32, 32, 3) in 0..255."""
    if isinstance(images, (list, tuple)) and images and not isinstance(images[0], np.ndarray):
        from PIL import Image

        arrs = []
        for im in images:
            im = im.convert("RGB")
            if im.size != (IMAGE_SIZE, IMAGE_SIZE):
                im = im.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC)
            arrs.append(np.asarray(im))
        images = np.stack(arrs)
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ValueError(f"images of shape {arr.shape}: expected N x 32 x 32 x 3 (uint8, or floats in [0, 1]) or a list of PIL images")
    x = torch.from_numpy(arr.astype(np.float32))
    if arr.dtype != np.uint8:
        x = x * 255.0
    return x


def background_rgb(x: torch.Tensor) -> torch.Tensor:
    """(N, 32, 32, 3) -> (N, 3): per-channel median of the 124 border pixels."""
    border = torch.cat([x[:, 0], x[:, -1], x[:, 1:-1, 0], x[:, 1:-1, -1]], dim=1)    # (N, 124, 3)
    return border.median(dim=1).values


def ink_map(x: torch.Tensor, bg: torch.Tensor | None = None) -> torch.Tensor:
    """(N, 32, 32, 3) -> (N, 1, 32, 32): distance from the background color, scaled to ~[0, 1]."""
    bg = background_rgb(x) if bg is None else bg
    d = (x - bg[:, None, None, :]).norm(dim=-1)                                      # (N, 32, 32)
    scale = d.flatten(1).amax(dim=1).clamp_min(INK_FLOOR)                            # (N,)
    return (d / scale[:, None, None]).unsqueeze(1)


def nearest_color(rgb: torch.Tensor) -> list[str]:
    """(N, 3) RGB -> nearest palette names (Euclidean in RGB)."""
    idx = torch.cdist(rgb, _PALETTE_T).argmin(dim=1)
    return [COLORS[i] for i in idx.tolist()]


def name_colors(x: torch.Tensor) -> tuple[list[str], list[str]]:
    """(N, 32, 32, 3) float -> (fg names, bg names)."""
    bg = background_rgb(x)                                                           # (N, 3)
    d = (x - bg[:, None, None, :]).norm(dim=-1).flatten(1)                           # (N, 1024)
    top = d.topk(FG_TOP_K, dim=1).indices                                            # (N, K)
    pix = x.flatten(1, 2).gather(1, top[..., None].expand(-1, -1, 3))               # (N, K, 3)
    fg = pix.median(dim=1).values
    return nearest_color(fg), nearest_color(bg)


# ---------------------------------------------------------------------------------------------
# The glyph classifier
# ---------------------------------------------------------------------------------------------
class GlyphCNN(nn.Module):
    """(N, 1, 32, 32) ink map -> (N, 14) logits over "0".."9", circle, square, triangle, cross."""

    def __init__(self, width: int = 32, n_classes: int = len(GLYPHS)):
        super().__init__()
        w = width

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *block(1, w), *block(w, w), nn.MaxPool2d(2),                 # (N, w, 16, 16)
            *block(w, 2 * w), *block(2 * w, 2 * w), nn.MaxPool2d(2),     # (N, 2w, 8, 8)
            *block(2 * w, 4 * w), nn.MaxPool2d(2),                       # (N, 4w, 4, 4)
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.3),
            nn.Linear(4 * w * 16, 128), nn.ReLU(inplace=True), nn.Dropout(0.3),
            nn.Linear(128, n_classes),                                   # (N, 14)
        )

    def forward(self, ink: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(ink))


class Judge:
    """Reads a mini-world picture: glyph (digit or shape) with confidence, foreground and background color."""

    def __init__(self, model: GlyphCNN, config: dict | None = None):
        self.model = model.eval()
        self.config = config or {}

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def random(cls, seed: int = 0, width: int = 32) -> "Judge":
        """An untrained judge (random weights): a baseline that must fail the accuracy floors."""
        torch.manual_seed(seed)
        return cls(GlyphCNN(width), {"width": width, "trained": False})

    @classmethod
    def load(cls, path=None) -> "Judge":
        """Load from a folder with ``model.safetensors`` + ``config.json`` (default data_samples/judge/)."""
        from safetensors.torch import load_file

        path = Path(path) if path is not None else JUDGE_DIR
        wfile, cfile = path / "model.safetensors", path / "config.json"
        if not wfile.exists() or not cfile.exists():
            raise FileNotFoundError(
                f"no judge in {path}: expected model.safetensors and config.json; "
                "build one with sdkit.mini.judge.train_judge(out_dir) or sdkit.mini.build_parts()"
            )
        config = json.loads(cfile.read_text())
        if list(config.get("classes", [])) != list(GLYPHS):
            raise ValueError(f"{cfile}: classes {config.get('classes')} differ from this sdkit's {list(GLYPHS)}")
        model = GlyphCNN(config["width"])
        model.load_state_dict({k: v.float() for k, v in load_file(str(wfile)).items()})
        return cls(model, config)

    def save(self, path) -> Path:

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        write_safetensors({k: v.contiguous() for k, v in self.model.state_dict().items()}, str(path / "model.safetensors"))
        cfg = {"arch": "sdkit-mini-judge", "classes": list(GLYPHS), "palette": dict(PALETTE),
               "fg_top_k": FG_TOP_K, **self.config}
        (path / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        return path

    # -- reading pictures ---------------------------------------------------------------------
    @torch.no_grad()
    def glyph_probs(self, images, batch_size: int = 512) -> torch.Tensor:
        """(N, 14) class probabilities."""
        x = to_float_images(images)
        out = [F.softmax(self.model(ink_map(x[i : i + batch_size])), dim=1) for i in range(0, len(x), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, len(GLYPHS))

    def predict(self, images) -> list[dict]:
        """-> one dict per picture: {digit (int, or None for a shape), digit_conf, shape (or None), glyph, fg, bg}."""
        x = to_float_images(images)
        probs = self.glyph_probs(x)
        conf, cls_ = probs.max(dim=1)
        fg, bg = name_colors(x)
        preds = []
        for c, p, f, b in zip(cls_.tolist(), conf.tolist(), fg, bg):
            preds.append({"digit": c if c < 10 else None, "digit_conf": float(p),
                          "shape": GLYPHS[c] if c >= 10 else None, "glyph": GLYPHS[c], "fg": f, "bg": b})
        return preds

    def score(self, images, labels: list[dict]) -> dict:
        """Accuracy against labels ({digit|shape, fg, bg}): digit_acc (glyph right), fg_acc, bg_acc, joint_acc, n."""
        preds = self.predict(images)
        if len(preds) != len(labels):
            raise ValueError(f"{len(preds)} images but {len(labels)} labels: expected one label per image")
        g = np.array([GLYPHS.index(p["glyph"]) == glyph_index(lab) for p, lab in zip(preds, labels)])
        f = np.array([p["fg"] == lab["fg"] for p, lab in zip(preds, labels)])
        b = np.array([p["bg"] == lab["bg"] for p, lab in zip(preds, labels)])
        n = len(labels)
        mean = lambda a: float(a.mean()) if n else float("nan")  # noqa: E731
        return {"digit_acc": mean(g), "fg_acc": mean(f), "bg_acc": mean(b), "joint_acc": mean(g & f & b), "n": n}


# ---------------------------------------------------------------------------------------------
# Training on real digits
# ---------------------------------------------------------------------------------------------
def heldout_digit_set(seed: int = 0, shapes_per_class: int = 50):
    """Evaluation pictures: the 1,000 held-out real digits, each in a random palette pair (+ shapes).

    -> (uint8 Nx32x32x3, labels). The digits were never seen by the judge during training.
    """
    rng = np.random.default_rng([seed, 99])
    gx, gy = mnist_split("heldout")
    pairs = color_pairs()
    imgs, labels = [], []
    for g, d in zip(gx, gy):
        f, b = pairs[rng.integers(len(pairs))]
        imgs.append(render(g, f, b))
        labels.append({"digit": int(d), "fg": f, "bg": b})
    for s in SHAPES:
        for _ in range(shapes_per_class):
            f, b = pairs[rng.integers(len(pairs))]
            imgs.append(render(s, f, b, rng=rng))
            labels.append({"shape": s, "fg": f, "bg": b})
    return np.stack(imgs), labels


def _augment_batch(alpha: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """(N, 32, 32) alpha maps -> (N, 1, 32, 32) ink maps of recolored, blurred, noised, warped pictures."""
    n = alpha.shape[0]
    pairs = torch.tensor([[COLORS.index(f), COLORS.index(b)] for f, b in color_pairs()])
    pick = pairs[torch.randint(len(pairs), (n,), generator=g)]
    fg, bg = _PALETTE_T[pick[:, 0]], _PALETTE_T[pick[:, 1]]                          # (N, 3) each
    # 1. affine warp of the glyph: rotation +-12 deg, scale 0.85-1.1, shift +-2.5 px
    ang = (torch.rand(n, generator=g) - 0.5) * math.radians(24)
    sc = 0.85 + 0.25 * torch.rand(n, generator=g)
    tr = (torch.rand(n, 2, generator=g) - 0.5) * (5.0 / 16)                          # in [-1, 1] grid units
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    theta = torch.stack([torch.stack([cos, -sin, tr[:, 0]], 1), torch.stack([sin, cos, tr[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, (n, 1, 32, 32), align_corners=False)
    a = F.grid_sample(alpha[:, None], grid, align_corners=False).clamp(0, 1)         # (N, 1, 32, 32)
    # 2. stroke thickness: sometimes thicken the ink (blend with a 3x3 max-pool)
    thick = torch.rand(n, generator=g) < 0.2
    if thick.any():
        a[thick] = 0.5 * a[thick] + 0.5 * F.max_pool2d(a[thick], 3, 1, 1)
    # 3. paint: RGB = bg + (fg - bg) * alpha
    x = bg[:, :, None, None] + (fg - bg)[:, :, None, None] * a                       # (N, 3, 32, 32)
    # 4. blur (like a VAE reconstruction) and noise (like a sampler's leftovers)
    blur = torch.rand(n, generator=g) < 0.35
    if blur.any():
        k = torch.tensor([1.0, 2.0, 1.0])
        k = (k[:, None] * k[None, :] / 16).expand(3, 1, 3, 3)
        x[blur] = F.conv2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"), k, groups=3)
    sigma = torch.rand(n, 1, 1, 1, generator=g) * 12 * (torch.rand(n, 1, 1, 1, generator=g) < 0.5)
    x = (x + sigma * torch.randn(x.shape, generator=g)).clamp(0, 255)
    return ink_map(x.permute(0, 2, 3, 1))


def train_judge(out_dir=JUDGE_DIR, seed: int = 0, steps: int = 450, batch_size: int = 128,
                width: int = 32, log_every: int = 100) -> float:
    """Train the judge on real MNIST train digits (+ shapes), save it, return held-out real-digit accuracy."""
    t0 = time.time()
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    # 1. the training glyph bank: 4,000 real digits + 400 procedural variants of each shape, as 32x32 alpha
    gx, gy = mnist_split("train")
    shapes = [(shape_glyph(s, rng), 10 + i) for i, s in enumerate(SHAPES) for _ in range(400)]
    bank28 = np.concatenate([gx.astype(np.float32) / 255.0, np.stack([s for s, _ in shapes])])
    bank = torch.from_numpy(np.pad(bank28, ((0, 0), (2, 2), (2, 2))))                # (5600, 32, 32)
    ybank = torch.from_numpy(np.concatenate([gy, [c for _, c in shapes]]).astype(np.int64))
    # 2. model, optimizer, warm-up + cosine schedule
    model = GlyphCNN(width)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = warmup_cosine(opt, steps, 0.15)
    print(f"[judge] training on {len(bank)} real digits + shapes, {steps} steps x {batch_size}, "
          f"{sum(p.numel() for p in model.parameters()):,} params", flush=True)
    model.train()
    run_loss = run_acc = 0.0
    for step in range(1, steps + 1):
        idx = torch.randint(len(bank), (batch_size,), generator=g)
        ink = _augment_batch(bank[idx], g)                                           # (B, 1, 32, 32)
        logits = model(ink)
        loss = F.cross_entropy(logits, ybank[idx], label_smoothing=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        run_loss += loss.item()
        run_acc += (logits.argmax(1) == ybank[idx]).float().mean().item()
        if step % log_every == 0 or step == steps:
            k = log_every if step % log_every == 0 else step % log_every
            print(f"[judge] step {step}/{steps} loss {run_loss / k:.3f} train-acc {run_acc / k:.3f} "
                  f"({time.time() - t0:.0f} s)", flush=True)
            run_loss = run_acc = 0.0
    # 3. held-out evaluation on real digits never used for training
    judge = Judge(model.eval(), {"width": width, "trained": True, "seed": seed, "steps": steps})
    imgs, labels = heldout_digit_set(seed=0)
    digits = [i for i, lab in enumerate(labels) if "digit" in lab]
    s_dig = judge.score(imgs[digits], [labels[i] for i in digits])
    s_all = judge.score(imgs, labels)
    gxh, gyh = mnist_split("heldout")
    plain = np.stack([render(g_, "white", "black") for g_ in gxh])
    plain_acc = judge.score(plain, [{"digit": int(d), "fg": "white", "bg": "black"} for d in gyh])["digit_acc"]
    elapsed = time.time() - t0
    judge.config.update({
        "heldout_digit_acc": s_dig["digit_acc"], "heldout_digit_acc_white_on_black": plain_acc,
        "heldout_fg_acc": s_all["fg_acc"], "heldout_bg_acc": s_all["bg_acc"],
        "heldout_glyph_acc_with_shapes": s_all["digit_acc"], "heldout_joint_acc": s_all["joint_acc"],
        "train_seconds": round(elapsed, 1), "torch_threads": torch.get_num_threads(),
    })
    judge.save(out_dir)
    print(f"[judge] held-out real digits (colored): {s_dig['digit_acc']:.4f}; white-on-black: {plain_acc:.4f}; "
          f"with shapes: {s_all['digit_acc']:.4f}; fg {s_all['fg_acc']:.4f} bg {s_all['bg_acc']:.4f} "
          f"joint {s_all['joint_acc']:.4f}; {elapsed:.0f} s -> {out_dir}", flush=True)
    return s_dig["digit_acc"]
