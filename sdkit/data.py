"""Data: find images and captions, load them safely, turn them into training tensors.

    scan = scan_folder("my_photos")              # (image, caption) items + problems, never crashes on a bad file
    ds = ImageCaptionDataset(scan, resolution=512)
    ds[(0, 1234)]                                 # {"pixels": (3, 512, 512) in [-1, 1], "caption": ..., "index": 0}

Folder layouts read (auto-detected, or `layout=` stated):
- "folder":   images anywhere below the root, each with a sidecar caption (cat_01.png + cat_01.txt); the file name
              becomes the caption when there is none.
- "metadata": a Hugging Face imagefolder: metadata.jsonl / metadata.csv with a `file_name` column and a caption column
              (`text`, `caption`, `prompt`, ...).
- "kohya":    train_dir/<repeats>_<name>/ sub-folders: each image is seen <repeats> times per epoch, and its caption
              defaults to <name> (e.g. "10_sks dog" -> "sks dog") when it has no sidecar.
Hidden files and folders and OS/notebook noise (.ipynb_checkpoints, __MACOSX, .DS_Store, Thumbs.db) are ignored.

Also here: transforms (resize, crop, flip, colour jitter), aspect-ratio buckets and a bucket batch sampler, a
deterministic train/validation split and a latent cache. Lint lives in `sdkit.lint`, captions in `sdkit.captions`.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

__all__ = ["IMAGE_EXTS", "Problem", "Scan", "scan_folder", "load_image", "read_caption", "ImageCaptionDataset",
           "DataError", "check", "make_buckets", "assign_bucket", "BucketBatchSampler", "train_val_split",
           "LatentCache", "file_hash"]

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
NOISE_NAMES = {".ipynb_checkpoints", "__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini", "__pycache__"}
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
CAPTION_COLUMNS = ("text", "caption", "captions", "prompt", "description", "label", "tags")
KOHYA_DIR = re.compile(r"^(\d+)_(.+)$")


class DataError(ValueError):
    """The data folder cannot be trained on; the message says why and what to do."""


@dataclasses.dataclass
class Problem:
    path: str
    severity: str  # "error" | "warning" | "info"
    message: str


@dataclasses.dataclass
class Scan:
    """What a folder holds: usable (image path, caption) items and the problems found.

    `repeats[i]` is how often item i is seen per epoch (kohya folders; 1 otherwise), `groups[i]` its concept folder
    ("" outside kohya layouts), `sizes[i]` its (width, height) after EXIF rotation (None when not checked).
    """
    root: Path
    items: list  # [(Path, str)]
    problems: list  # [Problem]
    layout: str = "folder"
    repeats: list = None
    groups: list = None
    sizes: list = None

    def __post_init__(self):
        n = len(self.items)
        self.repeats = list(self.repeats) if self.repeats is not None else [1] * n
        self.groups = list(self.groups) if self.groups is not None else [""] * n
        self.sizes = list(self.sizes) if self.sizes is not None else [None] * n

    @property
    def captions(self):
        return [c for _, c in self.items]

    @property
    def skipped(self) -> int:
        return sum(p.severity == "error" for p in self.problems)

    def subset(self, indices) -> "Scan":
        """A Scan of the items at `indices` (problems kept)."""
        idx = list(indices)
        return Scan(self.root, [self.items[i] for i in idx], list(self.problems), self.layout,
                    [self.repeats[i] for i in idx], [self.groups[i] for i in idx], [self.sizes[i] for i in idx])


# ---- reading files ----------------------------------------------------------------------------------------------
def _is_noise(path: Path, root: Path) -> bool:
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


def _rel(path, root) -> str:
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


def _filename_caption(path: Path) -> str:
    """cat_03.jpg -> 'cat', 'red ball (2).png' -> 'red ball'."""
    stem = re.sub(r"[\s_-]*(\(\d+\)|\d+)$", "", path.stem) or path.stem
    return " ".join(stem.replace("_", " ").replace("-", " ").split())


def _read_metadata(meta_path: Path, problems: list) -> dict:
    """{image path: caption} from a Hugging Face imagefolder metadata.jsonl / metadata.csv."""
    rows = []
    try:
        if meta_path.suffix == ".jsonl":
            for n, line in enumerate(meta_path.read_text(encoding="utf-8-sig").splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        problems.append(Problem(str(meta_path), "warning", f"{meta_path}: line {n} is not JSON "
                                                f"({e.msg}); skipped. Fix: one JSON object per line."))
        else:
            with open(meta_path, newline="", encoding="utf-8-sig") as f:
                rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        problems.append(Problem(str(meta_path), "error", f"{meta_path}: cannot be read ({e}); its captions are not "
                                f"used. Fix: save it as UTF-8."))
        return {}
    rows = [r for r in rows if isinstance(r, dict)]
    if not rows:
        return {}
    cols = list(rows[0])
    if "file_name" not in cols:
        problems.append(Problem(str(meta_path), "error", f"{meta_path}: no 'file_name' column (columns: {cols}); "
                                f"not used. Fix: name the image column file_name, as Hugging Face imagefolder does."))
        return {}
    cap_col = next((c for c in CAPTION_COLUMNS if c in cols), None)
    if cap_col is None:
        cap_col = next((c for c in cols if c != "file_name" and isinstance(rows[0][c], str)), None)
    out = {}
    for r in rows:
        cap = r.get(cap_col, "") if cap_col else ""
        if isinstance(cap, list):  # several captions per image: use the first
            cap = cap[0] if cap else ""
        out[(meta_path.parent / str(r["file_name"])).resolve()] = " ".join(str(cap or "").split())
    return out


def _detect_layout(root: Path) -> str:
    if any((root / m).is_file() for m in METADATA_FILES):
        return "metadata"
    subdirs = [d for d in root.iterdir() if d.is_dir() and not _is_noise(d, root)]
    if subdirs and any(KOHYA_DIR.match(d.name) for d in subdirs):
        return "kohya"
    return "folder"


# ---- scanning ---------------------------------------------------------------------------------------------------
def scan_folder(root, caption_ext: str = ".txt", check_images: bool = True, layout: str = "auto",
                require_images: bool = True) -> Scan:
    """Find every image under `root` (recursive) and its caption; report, never crash, on bad files.

    `layout`: "auto" (detected), "folder", "metadata" or "kohya" (see the module docstring). Broken images are
    reported as errors and skipped. With `require_images` (the default) a folder with no usable image raises
    DataError; otherwise an empty Scan comes back (what `sdkit.lint.check` reports on)."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder {root} does not exist. Fix: check the path (relative paths are from "
                        f"{Path.cwd()}).")
    if not root.is_dir():
        raise DataError(f"data {root} is a file; expected a folder of images with {caption_ext} captions.")
    if layout == "auto":
        layout = _detect_layout(root)
    if layout not in ("folder", "metadata", "kohya"):
        raise DataError(f"layout: got {layout!r}; expected auto, folder, metadata or kohya.")
    items, problems, repeats, groups, sizes = [], [], [], [], []
    metadata = {}
    if layout == "metadata":
        for m in METADATA_FILES:
            for meta_path in sorted(root.rglob(m)):
                if not _is_noise(meta_path, root):
                    metadata.update(_read_metadata(meta_path, problems))
    caption_ext_l = caption_ext.lower()
    for path in sorted(root.rglob("*")):
        if _is_noise(path, root) or path.is_dir():
            continue
        suffix = path.suffix.lower()
        if suffix not in IMAGE_EXTS:
            if suffix == caption_ext_l:
                if not any(path.with_suffix(e).exists() or path.with_suffix(e.upper()).exists() for e in IMAGE_EXTS):
                    problems.append(Problem(str(path), "info", f"{_rel(path, root)}: caption file with no image of the same "
                                            f"name; ignored."))
            elif path.name not in METADATA_FILES:
                problems.append(Problem(str(path), "info", f"{_rel(path, root)}: not an image; ignored."))
            continue
        # kohya: the first folder below the root names repeats and the default caption
        rep, group, default_caption = 1, "", None
        if layout == "kohya":
            rel = path.relative_to(root).parts
            m = KOHYA_DIR.match(rel[0]) if len(rel) > 1 else None
            if m is None:
                problems.append(Problem(str(path), "warning", f"{_rel(path, root)}: not inside a <repeats>_<name> folder, so "
                                        f"it is not used (kohya layout). Fix: move it into e.g. 10_sks dog/."))
                continue
            rep, group = int(m.group(1)), rel[0]
            default_caption = " ".join(m.group(2).split())
            if rep == 0:
                problems.append(Problem(str(path), "warning", f"{_rel(path, root)}: folder {rel[0]!r} repeats 0 times; "
                                        f"not used. Fix: rename it with a repeat count of at least 1."))
                continue
        size = None
        if check_images:
            try:
                size = load_image(path).size
            except Exception as e:  # noqa: BLE001 - any decoder error means: skip and report
                problems.append(Problem(str(path), "error", describe_load_error(path, e, _rel(path, root))))
                continue
        # caption: sidecar file, else metadata row, else kohya folder name, else file name
        cap_path = path.with_suffix(caption_ext)
        resolved = path.resolve() if path.exists() else path
        if cap_path.is_file():
            try:
                caption = read_caption(cap_path)
            except OSError as e:
                caption = None
                problems.append(Problem(str(cap_path), "warning", f"{_rel(cap_path, root)}: cannot be read ({e}); "
                                        f"using the default caption."))
            if caption == "":
                problems.append(Problem(str(cap_path), "warning", f"{_rel(cap_path, root)}: empty caption; the image "
                                        f"trains unconditionally. Fix: write a caption."))
        else:
            caption = None
        if caption is None:
            if resolved in metadata:
                caption = metadata[resolved]
                if not caption:
                    problems.append(Problem(str(path), "warning", f"{_rel(path, root)}: empty caption in metadata; the image "
                                            f"trains unconditionally. Fix: fill in its caption."))
            elif default_caption is not None:
                caption = default_caption
            else:
                caption = _filename_caption(path)
                where = "no row in metadata" if layout == "metadata" else f"no {caption_ext} caption"
                problems.append(Problem(str(path), "warning", f"{_rel(path, root)}: {where}; using the file name "
                                        f"{caption!r}. Fix: add {cap_path.name}."))
        items.append((path, caption))
        repeats.append(rep)
        groups.append(group)
        sizes.append(size)
    if not items and require_images:
        found = sorted({p.suffix.lower() for p in root.rglob("*") if p.is_file() and not _is_noise(p, root)})
        broken = sum(p.severity == "error" for p in problems)
        why = f"{broken} image(s) could not be read (run `python -m sdkit data check {root}`); " if broken else ""
        raise DataError(f"data folder {root}: no usable image found ({why}extensions present: {found or 'none'}; "
                        f"images read: {', '.join(sorted(IMAGE_EXTS))}). Fix: put images (with {caption_ext} "
                        f"caption files of the same name) in the folder.")
    return Scan(root, items, problems, layout, repeats, groups, sizes)


def check(root, **kwargs):
    """Lint a data folder; see `sdkit.lint.check`. Returns a Report (`.ok`, `.to_json()`, `.table()`, `.grid()`)."""
    from .lint import check as _check
    return _check(root, **kwargs)


def file_hash(path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


# ---- aspect-ratio buckets ---------------------------------------------------------------------------------------
def make_buckets(resolution: int = 512, min_size: int = 256, max_size: int = 1024, step: int = 64) -> list:
    """Every (width, height), multiples of `step` within [min_size, max_size], with width*height <= resolution^2 and
    as close to it as the step allows: the sizes of kohya/NovelAI aspect-ratio bucketing."""
    if step <= 0 or min_size > max_size:
        raise ValueError(f"buckets: need step > 0 and min_size <= max_size (got {step}, {min_size}, {max_size})")
    area = resolution * resolution
    lo = math.ceil(min_size / step) * step
    out = set()
    w = lo
    while w <= max_size:
        h = min(max_size, (area // w) // step * step)
        if h >= lo:
            out.add((w, h))
            out.add((h, w))
        w += step
    if not out:
        raise ValueError(f"buckets: no size in [{min_size}, {max_size}] (step {step}) fits {resolution}^2 pixels")
    return sorted(out)


def assign_bucket(size, buckets, no_upscale: bool = False, step: int = 64, min_size: int = None) -> tuple:
    """The bucket for an image of `size` = (width, height): the one with the nearest aspect ratio (log scale).

    `no_upscale`: an image smaller than its bucket gets its own size instead, rounded down to `step` with the aspect
    kept (kohya's bucket_no_upscale), so it is never enlarged; sides are kept at or above `min_size`."""
    w, h = size
    ar = math.log(w / h)
    bw, bh = min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - ar), -b[0] * b[1]))
    if no_upscale and (w < bw or h < bh):
        scale = min(1.0, math.sqrt(bw * bh / (w * h)))
        bw, bh = max(step, int(w * scale) // step * step), max(step, int(h * scale) // step * step)
        if min_size:
            bw, bh = max(bw, math.ceil(min_size / step) * step), max(bh, math.ceil(min_size / step) * step)
    return int(bw), int(bh)


class BucketBatchSampler(torch.utils.data.Sampler):
    """Batches of dataset indices that share a bucket (so their tensors stack), in a seeded order per epoch.

        sampler = BucketBatchSampler(dataset.bucket_of, batch_size=4, seed=0)
        for batch in sampler.batches(epoch=0): ...          # [[i, j, k, l], ...]
    """

    def __init__(self, bucket_of, batch_size: int, seed: int = 0, drop_last: bool = False):
        self.bucket_of, self.batch_size, self.seed, self.drop_last = list(bucket_of), batch_size, seed, drop_last
        self.epoch = 0

    def batches(self, epoch: int = 0) -> list:
        rng = np.random.default_rng([self.seed, 11, epoch])
        by_bucket = {}
        for i, b in enumerate(self.bucket_of):
            by_bucket.setdefault(tuple(b), []).append(i)
        out = []
        for b in sorted(by_bucket):
            idx = [by_bucket[b][j] for j in rng.permutation(len(by_bucket[b]))]
            for k in range(0, len(idx), self.batch_size):
                chunk = idx[k:k + self.batch_size]
                if len(chunk) == self.batch_size or not self.drop_last:
                    out.append(chunk)
        return [out[j] for j in rng.permutation(len(out))]

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __iter__(self):
        return iter(self.batches(self.epoch))

    def __len__(self):
        return len(self.batches(self.epoch))


# ---- the dataset ------------------------------------------------------------------------------------------------
COLOUR_WORDS = {"red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "black", "white", "grey",
                "gray", "violet", "cyan", "magenta", "teal", "gold", "golden", "silver", "colour", "color",
                "colourful", "colorful"}


class ImageCaptionDataset(torch.utils.data.Dataset):
    """(pixel tensor in [-1, 1] of shape (3, H, W), caption) pairs from a scanned folder.

    Index with `(dataset index, seed)`: the crop, flip, jitter and caption transform of that sample come from the
    seed, so they are the same after a resume. Length = sum of repeats (kohya folders repeat images per epoch).
    - resolution, center_crop, random_flip: resize the short side to `resolution`, crop a square.
    - color_jitter: max relative change of brightness / contrast / saturation (0: off); do not use it when the
      concept is a colour (`colour_warning` says so).
    - caption_transform: a function (caption, rng) -> caption, e.g. `sdkit.captions.CaptionPolicy(...)`.
    - buckets: a list of (w, h) from `make_buckets`; each image is resized and cropped to its nearest bucket
      (`bucket_of[i]`), and `BucketBatchSampler(self.bucket_of, ...)` batches same-size items.
    Items also carry `original_size`, `crop_top_left`, `target_size` (SDXL's size/crop conditioning, sdkit.sdxl);
    `geometry(index, seed)` gives them without decoding the image (cached latents).
    """

    def __init__(self, scan: Scan, resolution: int, center_crop: bool = True, random_flip: bool = False,
                 color_jitter: float = 0.0, caption_transform=None, buckets=None, bucket_no_upscale: bool = False,
                 background=(255, 255, 255)):
        self.scan, self.resolution = scan, resolution
        self.center_crop, self.random_flip = center_crop, random_flip
        self.color_jitter, self.caption_transform, self.background = color_jitter, caption_transform, background
        # index -> item: an item with repeats r appears r times
        self._item_of = [i for i, r in enumerate(scan.repeats) for _ in range(r)]
        self.buckets = buckets
        self.item_bucket = None
        if buckets:
            step = math.gcd(*[s for b in buckets for s in b])
            sizes = [s if s is not None else load_image(p).size for (p, _), s in zip(scan.items, scan.sizes)]
            self.item_bucket = [assign_bucket(s, buckets, bucket_no_upscale, step) for s in sizes]
        self._bad = set()
        self._image_sizes = {}  # item -> (w, h) of the file, remembered for `geometry`

    def __len__(self):
        return len(self._item_of)

    def item(self, index: int) -> tuple:
        """(path, caption) behind dataset index `index` (indices repeat items of kohya folders)."""
        return self.scan.items[self._item_of[index]]

    @property
    def bucket_of(self) -> list:
        """(w, h) of every dataset index (all (R, R) without buckets)."""
        if self.item_bucket is None:
            return [(self.resolution, self.resolution)] * len(self)
        return [self.item_bucket[i] for i in self._item_of]

    def colour_warning(self):
        """A warning text when colour jitter is on and captions name colours (the concept may be a colour)."""
        if not self.color_jitter:
            return None
        hits = sorted({w for c in self.scan.captions for w in re.findall(r"[a-z]+", c.lower()) if w in COLOUR_WORDS})
        if hits:
            return (f"color_jitter={self.color_jitter} changes colours, but captions name colours ({', '.join(hits)}): "
                    f"the model would learn wrong colours for them. Fix: color_jitter=0 for colour-dependent concepts.")
        return None

    def transform(self, im: Image.Image, size, rng=None) -> torch.Tensor:
        """Resize to cover `size` = (w, h), crop (centre, or random with rng), flip, jitter -> (3, h, w) in [-1, 1]."""
        return self._transform(im, size, rng)[0]

    def _placement(self, im_size, size, rng=None):
        """Where `transform` puts an image of `im_size` = (w, h): resized (w, h), crop (left, top), flipped — the
        random draws in transform's order (crop, then flip), so `geometry` repeats them without the pixels."""
        w, h = size
        scale = max(w / im_size[0], h / im_size[1])
        resized = (max(w, round(im_size[0] * scale)), max(h, round(im_size[1] * scale)))
        if self.center_crop or rng is None:
            left, top = (resized[0] - w) // 2, (resized[1] - h) // 2
        else:
            left, top = int(rng.integers(0, resized[0] - w + 1)), int(rng.integers(0, resized[1] - h + 1))
        flip = bool(self.random_flip and rng is not None and rng.random() < 0.5)
        return resized, left, top, flip

    @staticmethod
    def _geometry(im_size, size, resized, left, top, flip) -> dict:
        """SDXL's size/crop conditioning (sdkit.sdxl), (h, w) / (top, left) order as in diffusers: the image's size
        before resizing, the crop's top-left in the resized image (mirrored when flipped: the offset in the picture
        the model sees), the trained size."""
        w, h = size
        return {"original_size": (im_size[1], im_size[0]),
                "crop_top_left": (top, resized[0] - left - w if flip else left), "target_size": (h, w)}

    def _transform(self, im: Image.Image, size, rng=None):
        """transform + the geometry of the sample: (pixels, {"original_size", "crop_top_left", "target_size"})."""
        w, h = size
        orig = im.size
        resized, left, top, flip = self._placement(orig, size, rng)
        im = im.resize(resized, Image.BICUBIC)
        im = im.crop((left, top, left + w, top + h))
        if flip:
            im = ImageOps.mirror(im)
        x = torch.from_numpy(np.asarray(im, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0  # (3, h, w) in [0, 1]
        if self.color_jitter and rng is not None:
            j = self.color_jitter
            b, c, s = (1 + rng.uniform(-j, j) for _ in range(3))
            x = x * b                                              # brightness
            x = (x - x.mean()) * c + x.mean()                      # contrast
            grey = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
            x = (x - grey) * s + grey                              # saturation
            x = x.clamp(0, 1)
        return x * 2.0 - 1.0, self._geometry(orig, size, resized, left, top, flip)

    def load(self, index: int, rng: np.random.Generator | None = None):
        pixels, caption, _ = self._load(index, rng)
        return pixels, caption

    def _load(self, index: int, rng: np.random.Generator | None = None):
        item = self._item_of[index]
        path, caption = self.scan.items[item]
        size = self.item_bucket[item] if self.item_bucket else (self.resolution, self.resolution)
        im = load_image(path, self.background)
        self._image_sizes[item] = im.size
        pixels, geometry = self._transform(im, size, rng)
        return pixels, caption, geometry

    def geometry(self, index: int, seed=None) -> dict:
        """The SDXL size/crop conditioning of sample `(index, seed)` — the same as `self[(index, seed)]` gives —
        without decoding the image again (its size is remembered from the last load, or read from the scan)."""
        item = self._item_of[index]
        size = self.item_bucket[item] if self.item_bucket else (self.resolution, self.resolution)
        im_size = self._image_sizes.get(item) or self.scan.sizes[item]
        if im_size is None:
            try:
                im_size = self._image_sizes[item] = load_image(self.scan.items[item][0], self.background).size
            except Exception:  # noqa: BLE001 - a broken file trains on a neighbour's pixels; say "whole picture"
                im_size = size
        rng = np.random.default_rng(seed) if seed is not None else None
        return self._geometry(im_size, size, *self._placement(im_size, size, rng))

    def __getitem__(self, item):
        # item = (dataset index, per-sample seed): crops and flips are reproducible, also after a resume.
        index, seed = item if isinstance(item, tuple) else (item, None)
        rng = np.random.default_rng(seed) if seed is not None else None
        try:
            pixels, caption, geometry = self._load(index, rng)
        except Exception as e:  # noqa: BLE001 - a file broke after the scan: warn once, train on a neighbour
            path = self.scan.items[self._item_of[index]][0]
            if path not in self._bad:
                self._bad.add(path)
                warnings.warn(describe_load_error(Path(path), e).replace("skipped", "replaced by another image"))
            if len(self._bad) >= len(self.scan.items):
                raise DataError("no image of the data folder can be read any more (files deleted or changed "
                                "during training?)") from e
            return self[((index + 1) % len(self), seed)]
        # original_size / crop_top_left / target_size: SDXL's micro-conditioning (sdkit.sdxl); SD 1.x ignores them
        return {"pixels": pixels, "caption": self._transform_caption(caption, seed), "index": index, **geometry}

    def _transform_caption(self, caption, seed):
        if self.caption_transform is None:
            return caption
        crng = np.random.default_rng([seed, 1]) if seed is not None else np.random.default_rng()
        return self.caption_transform(caption, crng)

    def caption(self, index: int, seed=None) -> str:
        """The caption sample `(index, seed)` trains on, without loading its image (for cached latents)."""
        return self._transform_caption(self.item(index)[1], seed)


# ---- train / validation split -----------------------------------------------------------------------------------
def train_val_split(scan: Scan, val_fraction: float = 0.1, seed: int = 0):
    """Split a Scan into (train, validation) Scans, deterministically: each image is ranked by a hash of
    (seed, its path relative to the root), so adding a file does not move the others. At least one validation
    image when val_fraction > 0 and there are 2+ images."""
    n = len(scan.items)
    k = int(round(n * val_fraction))
    if val_fraction > 0 and n >= 2:
        k = min(max(k, 1), n - 1)

    def rank(i):
        rel = os.path.relpath(scan.items[i][0], scan.root).replace(os.sep, "/")
        return hashlib.sha256(f"{seed}:{rel}".encode()).hexdigest()

    order = sorted(range(n), key=rank)
    val = sorted(order[:k])
    train = [i for i in range(n) if i not in set(val)]
    return scan.subset(train), scan.subset(val)


# ---- latent cache -----------------------------------------------------------------------------------------------
class LatentCache:
    """VAE latents keyed by (file content hash, transform parameters): a changed image or a changed transform
    (resolution, crop, bucket, VAE) is a different key, so a stale latent is never used.

        cache = LatentCache("runs/x/latents")     # on disk; LatentCache() keeps them in memory
        z = cache.get(path, {"size": (512, 512), "crop": "center", "vae": "sd15"}, lambda: encode(path))
    Only deterministic transforms can be cached (centre crop; a flipped copy is another key)."""

    def __init__(self, folder=None):
        self.folder = Path(folder) if folder is not None else None
        self.memory = {}
        self.hits = self.misses = 0
        self._hashes = {}
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)

    def key(self, path, params: dict) -> str:
        st = os.stat(path)
        sig = (str(path), st.st_size, st.st_mtime_ns)  # re-hash a file only when it changed on disk
        if self._hashes.get(str(path), (None,))[0] != sig:
            self._hashes[str(path)] = (sig, file_hash(path))
        content = self._hashes[str(path)][1]
        blob = json.dumps(params, sort_keys=True, default=str)
        return hashlib.sha256(f"{content}|{blob}".encode()).hexdigest()[:32]

    def get(self, path, params: dict, compute):
        k = self.key(path, params)
        if k in self.memory:
            self.hits += 1
            return self.memory[k]
        f = self.folder / f"{k}.pt" if self.folder is not None else None
        if f is not None and f.is_file():
            try:
                value = torch.load(f, map_location="cpu", weights_only=True)
                self.hits += 1
                self.memory[k] = value
                return value
            except Exception:  # noqa: BLE001 - a half-written cache file: recompute
                pass
        self.misses += 1
        value = compute()
        self.memory[k] = value
        if f is not None:
            tmp = f.with_suffix(".tmp")
            torch.save(value, tmp)
            os.replace(tmp, f)
        return value
