"""Aspect-ratio buckets: the (width, height) sizes of kohya/NovelAI bucketing, the nearest bucket of an image, and a
batch sampler whose batches share one bucket (so their tensors stack).

    buckets = make_buckets(512)                              # [(256, 1024), ..., (512, 512), ..., (1024, 256)]
    ds = ImageCaptionDataset(scan, 512, buckets=buckets)     # each image resized and cropped to its bucket
    sampler = BucketBatchSampler(ds.bucket_of, batch_size=4, seed=0)
"""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["make_buckets", "assign_bucket", "BucketBatchSampler"]


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

