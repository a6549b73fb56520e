"""Batch plumbing: the training dataset (with its aspect-ratio buckets), which samples each micro-batch holds,
loading them (in this process or in DataLoader workers), and their VAE latents (encoded once per image with
cache_latents).

Global sample index g = step x global_batch + micro x batch_size x processes + process x batch_size + k. The image
it reads comes from a per-epoch permutation and its augmentation from `sample_seed(seed, g)` (sdkit.rng), so a
micro-batch is the same whether it is built here or in a worker, before or after a resume.

With several buckets, a micro-batch must hold one bucket (its tensors stack). The same stream of samples (g, image)
is regrouped: walking it in order, each sample joins its bucket's open batch, and a batch that reaches
batch_size x processes samples is emitted as the next micro-batch (process p takes its slice). So every micro-batch
is one bucket; each epoch still trains every picture once (a sample waits at most until its bucket's batch fills:
fewer than buckets x batch_size x processes samples); the order stays a function of (seed, g), so a resumed run,
DataLoader workers, and 2 processes x batch 1 vs 1 process x batch 2 see the same micro-batches. With one bucket
(all pictures square) the regrouping changes nothing: the batches are exactly those without buckets.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import weakref

import torch
from torch.utils.data import DataLoader, Dataset

from ..config import ConfigError
from ..data.buckets import bucket_options, bucket_rows, bucket_settings, format_bucket_table
from ..data.dataset import ImageCaptionDataset
from ..rng import epoch_permutation, sample_seed

__all__ = ["BatchPlan", "batch_plan", "micro_batch", "batches", "posterior", "training_dataset", "bucket_record",
           "write_bucket_table"]

BUCKETS_FILE = "buckets.json"  # RUN/buckets.json: the bucket table of the run (size -> pictures)


# ---- the dataset and its buckets ---------------------------------------------------------------------------------
def training_dataset(trainer, caption_transform=None) -> ImageCaptionDataset:
    """The trainer's dataset: its scan at its resolution, in aspect-ratio buckets when `bucketing` is on. Says the
    bucket table; on a resume, refuses a batch layout that would regroup the buckets differently."""
    c, R = trainer.config, trainer.resolution
    buckets = bucket_options(R, c.bucket_step, c.min_bucket_side, c.max_bucket_side) if c.bucketing else {}
    dataset = ImageCaptionDataset(trainer.scan, R, c.center_crop, c.random_flip, color_jitter=c.color_jitter,
                                  caption_transform=caption_transform, bucket_no_upscale=c.bucket_no_upscale,
                                  **buckets)
    record = bucket_record(trainer, dataset)
    if len(record["buckets"]) > 1:
        trainer.message("info", "aspect-ratio buckets (every micro-batch from one):\n"
                        + format_bucket_table(record["buckets"], c.batch_size))
    old = trainer.run_dir / BUCKETS_FILE
    if trainer.resume_from is not None and old.is_file():
        before = json.loads(old.read_text(encoding="utf-8"))
        if len(record["buckets"]) > 1 and before.get("micro_batch") != record["micro_batch"]:
            raise ConfigError(f"resume: {trainer.run_dir} trained micro-batches of {before.get('micro_batch')} "
                              f"pictures per bucket (batch_size x processes); this run has {record['micro_batch']}, "
                              f"which would regroup its {len(record['buckets'])} buckets into other batches. Fix: "
                              f"resume with the same batch_size and number of processes.")
        if before.get("buckets") != record["buckets"]:
            trainer.message("warning", f"resume: the bucket table differs from {old} (pictures added, removed or "
                                       f"resized, or other bucket settings): the batches differ from the first run.")
    return dataset


def bucket_record(trainer, dataset) -> dict:
    """What RUN/buckets.json holds: the settings and the table (one row per bucket: width, height, pictures)."""
    c = trainer.config
    settings = bucket_settings(trainer.resolution, c.bucket_step, c.min_bucket_side, c.max_bucket_side) \
        if c.bucketing else {}
    return {"bucketing": bool(c.bucketing), "resolution": trainer.resolution, **settings,
            "no_upscale": bool(c.bucketing and c.bucket_no_upscale),
            "micro_batch": c.batch_size * trainer.accelerator.num_processes, "buckets": bucket_rows(dataset)}


def write_bucket_table(trainer) -> None:
    """RUN/buckets.json: the bucket table the run trains with (main process, beside config.yaml)."""
    text = json.dumps(bucket_record(trainer, trainer.dataset), indent=2)
    (trainer.run_dir / BUCKETS_FILE).write_text(text + "\n", encoding="utf-8")


class BatchPlan(Dataset):
    """Which samples each micro-batch holds, and loading them: item k = micro-batch k counted from `start`.
    Picklable (dataset + numbers), so DataLoader workers can build batches."""

    def __init__(self, dataset, seed, batch_size, global_batch, num_processes, process_index, grad_accum):
        self.dataset, self.seed, self.batch_size, self.global_batch = dataset, seed, batch_size, global_batch
        self.num_processes, self.process_index, self.grad_accum = num_processes, process_index, grad_accum
        self.start, self.length = 0, 0
        self.width = batch_size * num_processes  # samples of one micro-batch over all processes: one bucket
        bucket_of = dataset.bucket_of
        self.bucket_of = bucket_of if len(set(bucket_of)) > 1 else None  # one bucket: the plain order
        self.chunks, self.open, self.next_g = [], {}, 0  # the regrouped stream, built as far as asked
        self.permutation = (-1, None)  # (epoch, its permutation), the last one used

    def dataset_index(self, g: int) -> int:
        epoch, pos = divmod(g, len(self.dataset))
        if self.permutation[0] != epoch:
            self.permutation = (epoch, epoch_permutation(self.seed, epoch, len(self.dataset)))
        return int(self.permutation[1][pos])

    def chunk(self, k: int) -> list:
        """Micro-batch k (counted over the whole run) with buckets: [(g, dataset index)] x width, one bucket.
        Walks the sample stream g = 0, 1, ... and emits a bucket's open batch when it is full (module docstring)."""
        while len(self.chunks) <= k:
            g, self.next_g = self.next_g, self.next_g + 1
            i = self.dataset_index(g)
            batch = self.open.setdefault(self.bucket_of[i], [])
            batch.append((g, i))
            if len(batch) == self.width:
                self.chunks.append(batch)
                self.open[self.bucket_of[i]] = []
        return self.chunks[k]

    def samples(self, step: int, micro: int):
        """(global sample indices, dataset indices) of this process's share of micro-batch `micro` of `step`."""
        if self.bucket_of is not None:
            mine = self.chunk(step * self.grad_accum + micro)[self.process_index * self.batch_size:
                                                               (self.process_index + 1) * self.batch_size]
            return [g for g, _ in mine], [i for _, i in mine]
        base = (step * self.global_batch + micro * self.batch_size * self.num_processes
                + self.process_index * self.batch_size)
        gs = list(range(base, base + self.batch_size))
        return gs, [self.dataset_index(g) for g in gs]

    def load(self, gs, indices) -> dict:
        items = [self.dataset[(i, sample_seed(self.seed, g))] for i, g in zip(indices, gs)]
        return {"pixels": torch.stack([it["pixels"] for it in items]),         # (b, 3, h, w) in [-1, 1]
                "captions": [it["caption"] for it in items], "g": gs, "index": indices}

    def __len__(self):
        return self.length

    def __getitem__(self, k):
        step, micro = divmod(k, self.grad_accum)
        return self.load(*self.samples(self.start + step, micro))


_PLANS = weakref.WeakKeyDictionary()  # trainer -> its BatchPlan (the regrouped stream is built once per run)


def batch_plan(trainer) -> BatchPlan:
    c, acc = trainer.config, trainer.accelerator
    plan = _PLANS.get(trainer)
    if plan is None or plan.dataset is not trainer.dataset:
        plan = _PLANS[trainer] = BatchPlan(trainer.dataset, c.seed, c.batch_size, trainer.global_batch,
                                           acc.num_processes, acc.process_index, c.grad_accum)
    return plan


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
    """VAE posterior (mean, std) of the batch's images, each (b, 4, h/8, w/8) (one bucket's size); with cache_latents
    each image is encoded once (at its bucket's size: an image always trains in the same bucket)."""
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
