"""Batch plumbing: which samples each micro-batch holds, loading them (in this process or in DataLoader workers),
and their VAE latents (encoded once per image with cache_latents).

Global sample index g = step x global_batch + micro x batch_size x processes + process x batch_size + k. The image
it reads comes from a per-epoch permutation and its augmentation from `sample_seed(seed, g)` (sdkit.rng), so a
micro-batch is the same whether it is built here or in a worker, before or after a resume.
"""
from __future__ import annotations

import multiprocessing as mp

import torch
from torch.utils.data import DataLoader, Dataset

from ..rng import epoch_permutation, sample_seed

__all__ = ["BatchPlan", "batch_plan", "micro_batch", "batches", "posterior"]


class BatchPlan(Dataset):
    """Which samples each micro-batch holds, and loading them: item k = micro-batch k counted from `start`.
    Picklable (dataset + numbers), so DataLoader workers can build batches."""

    def __init__(self, dataset, seed, batch_size, global_batch, num_processes, process_index, grad_accum):
        self.dataset, self.seed, self.batch_size, self.global_batch = dataset, seed, batch_size, global_batch
        self.num_processes, self.process_index, self.grad_accum = num_processes, process_index, grad_accum
        self.start, self.length = 0, 0

    def dataset_index(self, g: int) -> int:
        epoch, pos = divmod(g, len(self.dataset))
        return int(epoch_permutation(self.seed, epoch, len(self.dataset))[pos])

    def samples(self, step: int, micro: int):
        """(global sample indices, dataset indices) of this process's share of micro-batch `micro` of `step`."""
        base = (step * self.global_batch + micro * self.batch_size * self.num_processes
                + self.process_index * self.batch_size)
        gs = list(range(base, base + self.batch_size))
        return gs, [self.dataset_index(g) for g in gs]

    def load(self, gs, indices) -> dict:
        items = [self.dataset[(i, sample_seed(self.seed, g))] for i, g in zip(indices, gs)]
        return {"pixels": torch.stack([it["pixels"] for it in items]),         # (b, 3, R, R) in [-1, 1]
                "captions": [it["caption"] for it in items], "g": gs, "index": indices}

    def __len__(self):
        return self.length

    def __getitem__(self, k):
        step, micro = divmod(k, self.grad_accum)
        return self.load(*self.samples(self.start + step, micro))


def batch_plan(trainer) -> BatchPlan:
    c, acc = trainer.config, trainer.accelerator
    return BatchPlan(trainer.dataset, c.seed, c.batch_size, trainer.global_batch, acc.num_processes,
                     acc.process_index, c.grad_accum)


def _with_method_samples(trainer, batch):
    """A method may add samples of its own (DreamBooth: one class image per instance sample)."""
    return trainer.method.extend_batch(trainer, batch) if hasattr(trainer.method, "extend_batch") else batch


def micro_batch(trainer, step: int, micro: int) -> dict:
    """The samples of this process for micro-batch `micro` of optimizer step `step` (0-based)."""
    c = trainer.config
    plan = batch_plan(trainer)
    gs, indices = plan.samples(step, micro)
    if c.cache_latents and all(i in trainer.latent_cache for i in indices):
        # cached: no image decoding at all; captions come from the scan
        batch = {"pixels": None, "g": gs, "index": indices,
                 "captions": [trainer.dataset.caption(i, sample_seed(c.seed, g)) for i, g in zip(indices, gs)]}
    else:
        batch = plan.load(gs, indices)
    return _with_method_samples(trainer, batch)


def batches(trainer):
    """Every micro-batch from the trainer's current step on, in order. With num_workers > 0 (and no latent cache,
    which lives in this process) worker processes decode and augment the next batches while this one trains; each
    sample is seeded by its global index, so the batches are the same as without workers."""
    c, start = trainer.config, trainer.step
    if c.num_workers and not c.cache_latents:
        plan = batch_plan(trainer)
        plan.start, plan.length = start, (c.steps - start) * c.grad_accum
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        loader = DataLoader(plan, batch_size=None, shuffle=False, num_workers=c.num_workers,
                            pin_memory=torch.cuda.is_available(), multiprocessing_context=ctx)
        for batch in loader:
            yield _with_method_samples(trainer, batch)
    else:
        for step in range(start, c.steps):
            for micro in range(c.grad_accum):
                yield micro_batch(trainer, step, micro)


@torch.no_grad()
def posterior(trainer, batch):
    """VAE posterior (mean, std) of the batch's images, each (b, 4, R/8, R/8); with cache_latents each image is
    encoded once."""
    c, device, vae, cache = trainer.config, trainer.accelerator.device, trainer.vae, trainer.latent_cache
    if not c.cache_latents:
        dist = vae.encode(batch["pixels"].to(device, dtype=vae.dtype)).latent_dist  # SDXL: the VAE may be fp32
        return dist.mean, dist.std
    missing = [k for k, i in enumerate(batch["index"]) if i not in cache]
    if missing:
        dist = vae.encode(batch["pixels"][missing].to(device, dtype=vae.dtype)).latent_dist
        for k, m, sd in zip(missing, dist.mean, dist.std):
            cache[batch["index"][k]] = (m.clone(), sd.clone())
    mean = torch.stack([cache[i][0] for i in batch["index"]])
    std = torch.stack([cache[i][1] for i in batch["index"]])
    return mean, std
