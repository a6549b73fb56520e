"""Reading files safely: images of any mode as RGB, caption files in any common encoding, and a message that says
what is wrong with a file that does not load and how to fix it. Writing .safetensors files with the usual file mode
(`write_safetensors`, `respect_umask`)."""
from __future__ import annotations

import codecs
import os
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from safetensors.torch import save_file

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
NOISE_NAMES = {".ipynb_checkpoints", "__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini", "__pycache__"}


def is_noise(path: Path, root: Path) -> bool:
    """Hidden files and folders and OS/notebook noise below `root` (.ipynb_checkpoints, __MACOSX, .DS_Store, ...)."""
    rel = path.relative_to(root)
    return any(part.startswith(".") or part in NOISE_NAMES for part in rel.parts)


# Byte-order marks, longest first (a UTF-32 LE mark starts with the UTF-16 LE one).
BOMS = ((codecs.BOM_UTF32_LE, "utf-32-le", "UTF-32 LE"), (codecs.BOM_UTF32_BE, "utf-32-be", "UTF-32 BE"),
        (codecs.BOM_UTF8, "utf-8", "UTF-8"), (codecs.BOM_UTF16_LE, "utf-16-le", "UTF-16 LE"),
        (codecs.BOM_UTF16_BE, "utf-16-be", "UTF-16 BE"))
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # not text: NUL and friends (tab, CR, LF are fine)


class CaptionError(ValueError):
    """A caption file that is not text in an encoding sdkit reads; the message names the file and the fix.
    `problem` and `fix` are its two halves (a scan puts "its image is skipped" between them)."""

    def __init__(self, problem: str, fix: str = "Fix: open it in a text editor and save it as UTF-8."):
        super().__init__(f"{problem}. {fix}")
        self.problem, self.fix = problem, fix


def decode_caption(raw: bytes, name: str = "caption file") -> tuple:
    """(text, encoding) of a caption file's bytes: by its byte-order mark (UTF-8, UTF-16 LE/BE, UTF-32 LE/BE), else
    UTF-8, else Windows-1252 when that gives plain text (encoding "cp1252": the caller warns). Raises CaptionError
    naming `name` and the fix for anything else (binary, UTF-16 without a byte-order mark, a wrong mark)."""
    for bom, codec, label in BOMS:
        if raw.startswith(bom):
            try:
                text = raw[len(bom):].decode(codec)
            except UnicodeDecodeError as e:
                raise CaptionError(f"{name}: starts with a {label} byte-order mark but is not {label} text ({e.reason} "
                                   f"at byte {e.start + len(bom)})") from None
            encoding = codec
            break
    else:
        try:
            text, encoding = raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            try:
                text, encoding = raw.decode("cp1252"), "cp1252"
            except UnicodeDecodeError:
                text, encoding = None, None
    if text is None or _CONTROL.search(text):
        why = "it has NUL bytes: UTF-16 without a byte-order mark, or not text at all" if b"\x00" in raw else \
            "neither UTF-8, UTF-16 nor UTF-32 text"
        raise CaptionError(f"{name}: not a caption sdkit can read ({why})")
    return " ".join(text.split()), encoding


def read_caption_encoding(path, name: str = None) -> tuple:
    """(caption as one clean line, encoding it was read in) of a caption file; see `decode_caption`."""
    return decode_caption(Path(path).read_bytes(), name or str(path))


def read_caption(path: Path) -> str:
    """A caption file as one clean line: decoded by its byte-order mark (UTF-8, UTF-16, UTF-32), else UTF-8 (else
    Windows-1252 when that is plain text); CRLF and stray whitespace collapsed. Raises CaptionError (a ValueError
    naming the file and the fix) for a file that is not text in any of these."""
    return read_caption_encoding(path)[0]


def respect_umask(path) -> Path:
    """Give a written .safetensors file (or every one below a folder) the mode any new file gets, 0o666 & ~umask
    (usually 0644). safetensors writes through a temporary file created 0600 and renames it, so without this a
    checkpoint or export is readable by its owner alone (a shared Drive folder, a web server, a teammate).
    Returns `path`."""
    path = Path(path)
    mask = current_umask()
    files = [path] if path.is_file() else sorted(path.rglob("*.safetensors")) if path.is_dir() else []
    for f in files:
        os.chmod(f, 0o666 & ~mask)
    return path


def current_umask() -> int:
    """The process's umask, read without changing it where Linux says it (/proc/self/status), so that no other
    thread ever creates a file under a momentary umask of 0; elsewhere set and restored at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def write_safetensors(tensors: dict, path, metadata: dict = None) -> Path:
    """safetensors' save_file, then `respect_umask`: how sdkit writes every .safetensors file."""
    save_file(tensors, str(path), metadata=metadata)
    return respect_umask(path)


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

