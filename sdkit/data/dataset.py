"""The dataset: (pixel tensor, caption) pairs from a scanned folder, with seeded transforms (resize, crop, flip,
color jitter), optional aspect-ratio buckets and SDXL's size/crop conditioning.

    ds = ImageCaptionDataset(scan_folder("my_photos"), resolution=512)
    ds[(0, 1234)]        # {"pixels": (3, 512, 512) in [-1, 1], "caption": ..., "index": 0, "original_size": ...}
"""
from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .buckets import assign_bucket
from .files import describe_load_error, load_image
from .scan import DataError, Scan

__all__ = ["ImageCaptionDataset", "COLOR_WORDS"]

# Words that name a color in a caption (British spellings included: captions are written both ways).
COLOR_WORDS = {"red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "black", "white", "grey",
               "gray", "violet", "cyan", "magenta", "teal", "gold", "golden", "silver", "colour", "color",
               "colourful", "colorful"}


def _size_or_none(path):
    try:
        return load_image(path).size
    except Exception:  # noqa: BLE001 - the scan read it once; a file broken since trains on a neighbor
        return None


class ImageCaptionDataset(torch.utils.data.Dataset):
    """(pixel tensor in [-1, 1] of shape (3, H, W), caption) pairs from a scanned folder.

    Index with `(dataset index, seed)`: the crop, flip, jitter and caption transform of that sample come from the
    seed, so they are the same after a resume. Length = sum of repeats (kohya folders repeat images per epoch).
    - resolution, center_crop, random_flip: resize the short side to `resolution`, crop a square.
    - color_jitter: max relative change of brightness / contrast / saturation (0: off); do not use it when the
      concept is a color (`color_warning` says so).
    - caption_transform: a function (caption, rng) -> caption, e.g. `sdkit.data.CaptionPolicy(...)`.
    - buckets: a list of (w, h) from `make_buckets` (or `**bucket_options(resolution)`); each image is resized to
      cover its nearest bucket and cropped to it (`bucket_of[i]`); batches must hold one bucket (the training loop's
      BatchPlan, or `BucketBatchSampler(self.bucket_of, ...)`). bucket_no_upscale: a smaller picture gets its own
      size rounded down to `bucket_step` (at least `min_bucket_side`) instead of being enlarged.
    Items also carry `original_size`, `crop_top_left`, `target_size` (SDXL's size/crop conditioning, sdkit.families);
    `geometry(index, seed)` gives them without decoding the image (cached latents).
    """

    def __init__(self, scan: Scan, resolution: int, center_crop: bool = True, random_flip: bool = False,
                 color_jitter: float = 0.0, caption_transform=None, buckets=None, bucket_no_upscale: bool = False,
                 background=(255, 255, 255), bucket_step: int = None, min_bucket_side: int = None):
        self.scan, self.resolution = scan, resolution
        self.center_crop, self.random_flip = center_crop, random_flip
        self.color_jitter, self.caption_transform, self.background = color_jitter, caption_transform, background
        # index -> item: an item with repeats r appears r times
        self._item_of = [i for i, r in enumerate(scan.repeats) for _ in range(r)]
        self.buckets = buckets
        self.item_bucket = None
        if buckets:
            step = bucket_step or math.gcd(*[s for b in buckets for s in b])
            sizes = [s if s is not None else _size_or_none(p) for (p, _), s in zip(scan.items, scan.sizes)]
            # a file that can no longer be read trains on a neighbor (see __getitem__): give it the square bucket
            self.item_bucket = [assign_bucket(s, buckets, bucket_no_upscale, step, min_bucket_side) if s else
                                assign_bucket((1, 1), buckets) for s in sizes]
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

    def color_warning(self):
        """A warning text when color jitter is on and captions name colors (the concept may be a color)."""
        if not self.color_jitter:
            return None
        hits = sorted({w for c in self.scan.captions for w in re.findall(r"[a-z]+", c.lower()) if w in COLOR_WORDS})
        if hits:
            return (f"color_jitter={self.color_jitter} changes colors, but captions name colors ({', '.join(hits)}): "
                    f"the model would learn wrong colors for them. Fix: color_jitter=0 for color-dependent concepts.")
        return None

    def transform(self, im: Image.Image, size, rng=None) -> torch.Tensor:
        """Resize to cover `size` = (w, h), crop (center, or random with rng), flip, jitter -> (3, h, w) in [-1, 1]."""
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
        """SDXL's size/crop conditioning (sdkit.families), (h, w) / (top, left) order as in diffusers: the image's size
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
            gray = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
            x = (x - gray) * s + gray                              # saturation
            x = x.clamp(0, 1)
        return x * 2.0 - 1.0, self._geometry(orig, size, resized, left, top, flip)

    def load(self, index: int, rng: np.random.Generator | None = None):
        pixels, caption, _ = self._load(index, rng)
        return pixels, caption

    def _load(self, index: int, rng: np.random.Generator | None = None, size=None):
        item = self._item_of[index]
        path, caption = self.scan.items[item]
        size = size or self.bucket_of_item(item)
        im = load_image(path, self.background)
        self._image_sizes[item] = im.size
        pixels, geometry = self._transform(im, size, rng)
        return pixels, caption, geometry

    def geometry(self, index: int, seed=None) -> dict:
        """The SDXL size/crop conditioning of sample `(index, seed)` — the same as `self[(index, seed)]` gives —
        without decoding the image again (its size is remembered from the last load, or read from the scan)."""
        item = self._item_of[index]
        size = self.bucket_of_item(item)
        im_size = self._image_sizes.get(item) or self.scan.sizes[item]
        if im_size is None:
            try:
                im_size = self._image_sizes[item] = load_image(self.scan.items[item][0], self.background).size
            except Exception:  # noqa: BLE001 - a broken file trains on a neighbor's pixels; say "whole picture"
                im_size = size
        rng = np.random.default_rng(seed) if seed is not None else None
        return self._geometry(im_size, size, *self._placement(im_size, size, rng))

    def bucket_of_item(self, item: int) -> tuple:
        """(w, h) the picture `item` of the scan trains at: its bucket, or the square resolution."""
        return tuple(self.item_bucket[item]) if self.item_bucket else (self.resolution, self.resolution)

    def __getitem__(self, item, size=None):
        # item = (dataset index, per-sample seed): crops and flips are reproducible, also after a resume.
        # size: (w, h) to load at (a replacement for a broken file keeps the bucket of the sample it replaces)
        index, seed = item if isinstance(item, tuple) else (item, None)
        rng = np.random.default_rng(seed) if seed is not None else None
        size = size or self.bucket_of_item(self._item_of[index])
        try:
            pixels, caption, geometry = self._load(index, rng, size)
        except Exception as e:  # noqa: BLE001 - a file broke after the scan: warn once, train on a neighbor
            path = self.scan.items[self._item_of[index]][0]
            if path not in self._bad:
                self._bad.add(path)
                warnings.warn(describe_load_error(Path(path), e).replace("skipped", "replaced by another image"))
            if len(self._bad) >= len(self.scan.items):
                raise DataError("no image of the data folder can be read any more (files deleted or changed "
                                "during training?)") from e
            return self.__getitem__(((index + 1) % len(self), seed), size)
        # original_size / crop_top_left / target_size: SDXL's micro-conditioning (sdkit.families); SD 1.x ignores them
        return {"pixels": pixels, "caption": self._transform_caption(caption, seed), "index": index, **geometry}

    def _transform_caption(self, caption, seed):
        if self.caption_transform is None:
            return caption
        crng = np.random.default_rng([seed, 1]) if seed is not None else np.random.default_rng()
        return self.caption_transform(caption, crng)

    def caption(self, index: int, seed=None) -> str:
        """The caption sample `(index, seed)` trains on, without loading its image (for cached latents)."""
        return self._transform_caption(self.item(index)[1], seed)

