"""A deterministic train/validation split of a scanned folder."""
from __future__ import annotations

import hashlib
import os

from .scan import Scan

__all__ = ["train_val_split"]


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

