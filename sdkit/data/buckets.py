"""Aspect-ratio buckets: the (width, height) sizes of kohya/NovelAI bucketing, the nearest bucket of an image, the
table of a data folder's buckets (what `sdkit data check` prints and a run records in buckets.json), and a batch
sampler whose batches share one bucket (so their tensors stack).

    buckets = make_buckets(512)                              # [(256, 1024), ..., (512, 512), ..., (1024, 256)]
    ds = ImageCaptionDataset(scan, 512, **bucket_options(512))   # each image resized and cropped to its bucket
    print(format_bucket_table(bucket_rows(ds), batch_size=2))
    sampler = BucketBatchSampler(ds.bucket_of, batch_size=4, seed=0)

The training loop batches with `sdkit.train.batches.BatchPlan` (every micro-batch from one bucket, the per-sample
seeded order of sdkit.rng kept); `BucketBatchSampler` is for a plain torch DataLoader outside sdkit's loop.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..config import ConfigError

__all__ = ["make_buckets", "assign_bucket", "bucket_settings", "default_step", "bucket_options", "bucket_rows", "format_bucket_table",
           "kept_fraction", "BucketBatchSampler"]

VAE_MULTIPLE = 8  # every side a multiple of 8 px: the SD VAE halves the size three times


def bucket_settings(resolution: int, step=None, min_side=None, max_side=None) -> dict:
    """The resolved bucket settings {"step", "min_side", "max_side"} in pixels for training at `resolution`.

    Defaults scale with the resolution, so they fit SD (512: step 64, sides 256-1024, kohya's defaults) and the mini
    model (32: step 8 px = one latent pixel of SD's VAE, sides 16-64) alike: step = `default_step(resolution)`
    (resolution / 8 within [8, 64], a multiple of 8 dividing the resolution); min_side = resolution / 2;
    max_side = 2 x resolution."""
    auto = default_step(resolution)
    step = auto if step is None else step
    min_side = max(step, resolution // 2) if min_side is None else min_side
    max_side = 2 * resolution if max_side is None else max_side
    if step <= 0 or step % VAE_MULTIPLE or resolution % step:
        raise ConfigError(f"bucket_step: got {step}; expected a positive multiple of {VAE_MULTIPLE} px (the VAE "
                          f"halves each side three times) that divides the resolution {resolution} (so square "
                          f"pictures train at {resolution}x{resolution}). Fix: bucket_step={auto}, or leave it empty.")
    if min_side > resolution or max_side < resolution:
        raise ConfigError(f"min_bucket_side / max_bucket_side: got {min_side} / {max_side}; the square bucket "
                          f"({resolution} px, the training resolution) must lie between them. Fix: "
                          f"min_bucket_side <= {resolution} <= max_bucket_side, or leave both empty "
                          f"({max(step, resolution // 2)} / {2 * resolution}).")
    return {"step": int(step), "min_side": int(min_side), "max_side": int(max_side)}


def default_step(resolution: int) -> int:
    """The default bucket step: the largest multiple of 8 px that divides `resolution`, at most resolution / 8 and
    64 (64 at 512, 768 and 1024; 8 at the mini model's 32)."""
    top = min(64, max(VAE_MULTIPLE, resolution // 8))
    return next((s for s in range(top // VAE_MULTIPLE * VAE_MULTIPLE, 0, -VAE_MULTIPLE) if resolution % s == 0),
                VAE_MULTIPLE)


def bucket_options(resolution: int, step=None, min_side=None, max_side=None) -> dict:
    """Keyword arguments of `ImageCaptionDataset` for bucketing at `resolution` with these settings (see
    `bucket_settings` for the defaults): {"buckets": make_buckets(...), "bucket_step", "min_bucket_side"}."""
    s = bucket_settings(resolution, step, min_side, max_side)
    return {"buckets": make_buckets(resolution, s["min_side"], s["max_side"], s["step"]),
            "bucket_step": s["step"], "min_bucket_side": s["min_side"]}


def kept_fraction(size, target) -> float:
    """Share of a picture of `size` = (w, h) that survives being resized to cover `target` = (w, h) and cropped to
    it: 1.0 when the aspect ratios agree; a 16:9 picture cropped to a square keeps 9/16 = 0.5625."""
    ar, at = size[0] / size[1], target[0] / target[1]
    return min(ar, at) / max(ar, at)


def bucket_rows(dataset) -> list:
    """The bucket table of an `ImageCaptionDataset`: one row per bucket, portrait to landscape, as
    {"width", "height", "pictures", "samples_per_epoch"} (samples count kohya repeats). Without buckets: one row,
    the square training size."""
    R = dataset.resolution
    per_item = dataset.item_bucket or [(R, R)] * len(dataset.scan.items)
    rows = {}
    for b, r in zip(per_item, dataset.scan.repeats):
        row = rows.setdefault(tuple(b), {"width": b[0], "height": b[1], "pictures": 0, "samples_per_epoch": 0})
        row["pictures"] += 1
        row["samples_per_epoch"] += r
    return [rows[b] for b in sorted(rows, key=lambda b: (b[0] / b[1], b[0]))]


def format_bucket_table(rows, batch_size: int = 1) -> str:
    """The bucket table as text (`sdkit data check` and the training log print it), with a warning under each
    bucket holding fewer pictures than `batch_size`."""
    lines = [f"  buckets: {len(rows)} ({sum(r['pictures'] for r in rows)} pictures)",
             f"  {'SIZE (W x H)':<14}  {'ASPECT':>6}  {'PICTURES':>8}"]
    for r in rows:
        lines.append(f"  {str(r['width']) + ' x ' + str(r['height']):<14}  {r['width'] / r['height']:>6.2f}  "
                     f"{r['pictures']:>8}")
    for r in rows:
        if r["pictures"] < batch_size:
            lines.append(f"  WARNING  bucket {r['width']}x{r['height']} holds {r['pictures']} picture(s), fewer than "
                         f"batch_size {batch_size}: each of its batches repeats a picture. Fix: add pictures of that "
                         f"shape, crop them to a neighboring shape, or batch_size={max(1, r['pictures'])}.")
    return "\n".join(lines)


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

