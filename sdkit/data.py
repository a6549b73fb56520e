"""Data: find images and captions in a folder, load them safely, turn them into training tensors.

`scan_folder` finds (image, caption) pairs and reports what it skipped; `ImageCaptionDataset` loads them
for training. Hidden files and OS/notebook noise (.ipynb_checkpoints, __MACOSX, .DS_Store, Thumbs.db) are ignored.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

__all__ = ["IMAGE_EXTS", "Problem", "Scan", "scan_folder", "load_image", "ImageCaptionDataset", "DataError"]

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
NOISE_NAMES = {".ipynb_checkpoints", "__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini", "__pycache__"}


class DataError(ValueError):
    """The data folder cannot be trained on; the message says why and what to do."""


@dataclasses.dataclass
class Problem:
    path: str
    severity: str  # "error" | "warning" | "info"
    message: str


@dataclasses.dataclass
class Scan:
    """What a folder holds: usable (image path, caption) items and the problems found."""
    root: Path
    items: list  # [(Path, str)]
    problems: list  # [Problem]

    @property
    def captions(self):
        return [c for _, c in self.items]


def _is_noise(path: Path, root: Path) -> bool:
    rel = path.relative_to(root)
    return any(part.startswith(".") or part in NOISE_NAMES for part in rel.parts)


def read_caption(path: Path) -> str:
    """A caption file as one clean line: UTF-8 with or without BOM, CRLF, stray whitespace."""
    text = path.read_bytes().decode("utf-8-sig", errors="replace")
    return " ".join(text.split())


def load_image(path, background=(255, 255, 255)) -> Image.Image:
    """Open any image as RGB: EXIF orientation applied, transparency composited on `background`, frame 0 of
    animations, 16-bit / 1-bit / CMYK / palette converted. Raises OSError/ValueError for a broken file."""
    with Image.open(path) as im:
        im.seek(0)
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(im, dtype=np.float64)
            arr = (arr / max(arr.max(), 1) * 255).round().astype(np.uint8)
            im = Image.fromarray(arr, "L")
        if im.mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")
        if im.mode in ("RGBA", "LA", "PA"):
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, tuple(background) + (255,))
            im = Image.alpha_composite(bg, im)
        return im.convert("RGB")


def scan_folder(root, caption_ext: str = ".txt", check_images: bool = True) -> Scan:
    """Find every image under `root` (recursive) and its sidecar caption; report, never crash, on bad files."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder {root} does not exist. Fix: check the path (relative paths are from "
                        f"{Path.cwd()}).")
    if not root.is_dir():
        raise DataError(f"data {root} is a file; expected a folder of images with {caption_ext} captions.")
    items, problems = [], []
    for path in sorted(root.rglob("*")):
        if _is_noise(path, root) or path.is_dir():
            continue
        if path.suffix.lower() not in IMAGE_EXTS:
            if path.suffix.lower() != caption_ext.lower() and not path.is_symlink():
                problems.append(Problem(str(path), "info", f"{path.name}: not an image; ignored."))
            continue
        if check_images:
            try:
                load_image(path).size
            except Exception as e:  # noqa: BLE001 - any decoder error means: skip and report
                problems.append(Problem(str(path), "error", f"{path.name}: cannot be read as an image "
                                        f"({e.__class__.__name__}: {e}); skipped. Fix: re-export or delete it."))
                continue
        cap_path = path.with_suffix(caption_ext)
        if cap_path.is_file():
            caption = read_caption(cap_path)
            if not caption:
                problems.append(Problem(str(cap_path), "warning", f"{cap_path.name}: empty caption; the image "
                                        f"trains unconditionally. Fix: write a caption."))
        else:
            caption = path.stem.replace("_", " ").replace("-", " ")
            problems.append(Problem(str(path), "warning", f"{path.name}: no {caption_ext} caption; using the file "
                                    f"name {caption!r}. Fix: add {cap_path.name}."))
        items.append((path, caption))
    if not items:
        found = sorted({p.suffix.lower() for p in root.rglob("*") if p.is_file()})
        raise DataError(f"data folder {root}: no usable image found (extensions present: {found or 'none'}; "
                        f"images read: {', '.join(sorted(IMAGE_EXTS))}). Fix: put images (with {caption_ext} "
                        f"caption files of the same name) in the folder.")
    return Scan(root, items, problems)


class ImageCaptionDataset(torch.utils.data.Dataset):
    """(pixel tensor in [-1, 1] of shape (3, R, R), caption) pairs from a scanned folder."""

    def __init__(self, scan: Scan, resolution: int, center_crop: bool = True, random_flip: bool = False):
        self.scan, self.resolution = scan, resolution
        self.center_crop, self.random_flip = center_crop, random_flip

    def __len__(self):
        return len(self.scan.items)

    def load(self, index: int, rng: np.random.Generator | None = None):
        path, caption = self.scan.items[index]
        im = load_image(path)
        r = self.resolution
        scale = r / min(im.size)
        im = im.resize((max(r, round(im.width * scale)), max(r, round(im.height * scale))), Image.BICUBIC)
        if self.center_crop or rng is None:
            left, top = (im.width - r) // 2, (im.height - r) // 2
        else:
            left, top = int(rng.integers(0, im.width - r + 1)), int(rng.integers(0, im.height - r + 1))
        im = im.crop((left, top, left + r, top + r))
        if self.random_flip and rng is not None and rng.random() < 0.5:
            im = ImageOps.mirror(im)
        x = torch.from_numpy(np.asarray(im, dtype=np.float32).copy()).permute(2, 0, 1)  # (3, R, R) in [0, 255]
        return x / 127.5 - 1.0, caption

    def __getitem__(self, item):
        # item = (dataset index, per-sample seed): crops and flips are reproducible, also after a resume.
        index, seed = item if isinstance(item, tuple) else (item, None)
        rng = np.random.default_rng(seed) if seed is not None else None
        pixels, caption = self.load(index, rng)
        return {"pixels": pixels, "caption": caption, "index": index}
