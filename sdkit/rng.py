"""Seeds of the per-sample random streams. Every random choice for the sample with global index g (data order,
crop/flip, VAE posterior noise, timestep, noise, caption dropout) comes from a generator seeded by (seed, g), so a
resumed run continues exactly where it stopped and 4 micro-batches of 1 see what one batch of 4 sees.

One sample has several independent streams, named here (their values are part of every run's reproducibility:
changing one changes every trained weight):

    sample_seed(seed, g)                     the dataset: crop, flip, color jitter, caption shuffle/tag dropout
    sample_seed(seed, g, Stream.NOISE)       the loss: VAE posterior sample, timestep, noise, noise offset,
                                             caption dropout (one generator, drawn in that order)
    sample_seed(seed, g, Stream.DROPOUT)     torch's global RNG before the UNet's forward pass (dropout masks)
    epoch_permutation(seed, epoch, n)        the data order: a fresh permutation of the n images every epoch
    epoch_permutation(seed, epoch, k, Stream.CLASS_ORDER)   DreamBooth's class images, likewise
"""
from __future__ import annotations

import enum

import numpy as np

__all__ = ["Stream", "sample_seed", "epoch_permutation"]


class Stream(enum.IntEnum):
    """The random streams of one training sample: added to the sample's seed (AUGMENT, NOISE, DROPOUT) or, for the
    per-epoch data order, the middle word of the order generator's seed (ORDER)."""
    AUGMENT = 0   # the dataset's seeded transforms
    NOISE = 1     # posterior sample, timestep, noise, offset noise, caption dropout
    DROPOUT = 2   # LoRA / model dropout masks (torch.manual_seed before the UNet forward)
    ORDER = 7     # which image each global sample index reads, per epoch
    CLASS_ORDER = 11  # DreamBooth: which class image goes beside each instance sample, per pass over the class set


def sample_seed(seed: int, g: int, stream: Stream = Stream.AUGMENT) -> int:
    """The seed of global sample g's generator for `stream` in a run seeded with `seed`."""
    return int(np.random.SeedSequence([seed, g]).generate_state(1)[0]) + int(stream)


def epoch_permutation(seed: int, epoch: int, n: int, stream: int = Stream.ORDER) -> np.ndarray:
    """The order of n items in `epoch`: a permutation drawn from a generator seeded by (seed, stream, epoch)."""
    return np.random.default_rng([seed, int(stream), epoch]).permutation(n)
