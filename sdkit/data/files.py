"""Reading files safely: images of any mode as RGB, caption files in any common encoding, and a message that says
what is wrong with a file that does not load and how to fix it."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
NOISE_NAMES = {".ipynb_checkpoints", "__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini", "__pycache__"}


def is_noise(path: Path, root: Path) -> bool:
    """Hidden files and folders and OS/notebook noise below `root` (.ipynb_checkpoints, __MACOSX, .DS_Store, ...)."""
    rel = path.relative_to(root)
    return any(part.startswith(".") or part in NOISE_NAMES for part in rel.parts)


def read_caption(path: Path) -> str:
    """A caption file as one clean line: UTF-8 with or without BOM (cp1252 as a fallback), CRLF, stray whitespace."""
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("cp1252", errors="replace")
    return " ".join(text.split())


def load_image(path, background=(255, 255, 255)) -> Image.Image:
    """Open any image as RGB: EXIF orientation applied, transparency composited on `background`, frame 0 of
    animations, 16-bit / 1-bit / CMYK / palette converted. Fully decodes (a truncated file fails here, not later).
    Raises OSError / ValueError / Image.DecompressionBombError for a broken file."""
    with warnings.catch_warnings():
        # A picture above Image.MAX_IMAGE_PIXELS only warns in PIL (up to 2x, then it raises): refuse both.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            im.seek(0)
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                arr = np.asarray(im, dtype=np.float64)
                top = 65535.0 if im.mode.startswith("I;16") else max(float(arr.max()), 1.0)
                arr = (np.clip(arr, 0, top) / top * 255).round().astype(np.uint8)
                im = Image.fromarray(arr, "L")
            if im.mode == "P" and "transparency" in im.info:
                im = im.convert("RGBA")
            if im.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, tuple(background) + (255,))
                im = Image.alpha_composite(bg, im)
            return im.convert("RGB")



def relative_path(path, root) -> str:
    """`path` relative to the data root, for messages."""
    try:
        return Path(os.path.relpath(path, root)).as_posix()
    except ValueError:
        return str(path)


def describe_load_error(path: Path, e: BaseException, name: str = None) -> str:
    """What is wrong with a file that did not load, in words, with the fix."""
    name = name or str(path)
    if path.is_symlink() and not path.exists():
        return f"{name}: broken symbolic link (points to {os.readlink(path)}, which does not exist); skipped. " \
               f"Fix: copy the real file here or delete the link."
    if isinstance(e, PermissionError):
        return f"{name}: cannot be opened: permission denied; skipped. Fix: chmod a+r the file."
    if path.is_file() and path.stat().st_size == 0:
        return f"{name}: empty file (0 bytes); skipped. Fix: copy it again or delete it."
    if isinstance(e, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"{name}: too many pixels ({e}); refused as a possible decompression bomb; skipped. Fix: downscale " \
               f"it, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file."
    if isinstance(e, Image.UnidentifiedImageError):
        head = path.read_bytes()[:64] if path.is_file() else b""
        kind = " (it looks like text or HTML: a download that saved an error page?)" if head.strip()[:1] in \
            (b"<", b"{") or all(32 <= b < 127 or b in (9, 10, 13) for b in head) else ""
        return f"{name}: not an image{kind}; skipped. Fix: delete it or replace it with the real picture."
    text = str(e)
    if "truncated" in text or "broken data stream" in text or isinstance(e, SyntaxError):
        return f"{name}: truncated or corrupt image ({e.__class__.__name__}: {text}); skipped. Fix: copy or " \
               f"download it again."
    return f"{name}: cannot be read as an image ({e.__class__.__name__}: {text}); skipped. Fix: re-export or delete it."

