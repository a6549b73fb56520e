"""Seeds of the per-sample random streams. Every random choice for the sample with global index g (data order,
crop/flip, VAE posterior noise, timestep, noise, caption dropout) comes from a generator seeded by (seed, g), so a
resumed run continues exactly where it stopped and 4 micro-batches of 1 see what one batch of 4 sees."""
from __future__ import annotations

import numpy as np

__all__ = ["sample_seed"]


def sample_seed(seed: int, g: int) -> int:
    """The seed of global sample g's generators in a run seeded with `seed`."""
    return int(np.random.SeedSequence([seed, g]).generate_state(1)[0])
