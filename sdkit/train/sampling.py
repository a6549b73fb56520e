"""Samples during training: the fixed prompts x seeds drawn into samples/step_XXXXXX/ (step 0 first), so every
checkpoint is compared on the same pictures."""
from __future__ import annotations

import torch

from ..data.captions import insert_trigger
from ..checkpoint import step_name
from ..sample import generate, make_grid
from .ema import evaluation

__all__ = ["sample_prompts", "sample_size", "draw_samples"]


def sample_prompts(trainer) -> list:
    """The configured prompts, or the first two training captions with the trigger word as training puts it in;
    each as the method wants it (textual inversion: its token goes in)."""
    c = trainer.config
    prompts = c.sample_prompts
    if not prompts:
        prompts = list(dict.fromkeys(trainer.scan.captions))[:2]
        if c.trigger_token:
            prompts = [insert_trigger(p, c.trigger_token, "start") for p in prompts]
    return [trainer.method.sample_prompt(p) for p in prompts]


def sample_size(trainer) -> tuple:
    """(width, height) of the samples: sample_width / sample_height, each defaulting to the training resolution (a
    model trained with aspect-ratio buckets can draw a portrait or landscape picture)."""
    c = trainer.config
    return c.sample_width or trainer.resolution, c.sample_height or trainer.resolution


def draw_samples(trainer, step: int) -> None:
    """Draw the fixed prompts x seeds at `step` into samples/step_XXXXXX/ (main process; the others wait), then
    tell the callbacks (`on_sample`)."""
    acc, c = trainer.accelerator, trainer.config
    trainer.sampled_steps.add(step)
    if acc.is_main_process:
        out = trainer.run_dir / "samples" / step_name(step)
        out.mkdir(parents=True, exist_ok=True)
        with evaluation(trainer), torch.no_grad(), acc.autocast():
            prompts = sample_prompts(trainer)
            width, height = sample_size(trainer)
            images = generate(trainer.pipeline(), prompts, c.sample_seeds, steps=c.sample_steps,
                              guidance_scale=c.guidance_scale, negative_prompt=c.negative_prompt,
                              height=height, width=width)
        paths = []
        for i, im in enumerate(images):
            p, s = divmod(i, len(c.sample_seeds))
            path = out / f"p{p:02d}_s{c.sample_seeds[s]}.png"
            im.save(path)
            paths.append(path)
        trainer.last_grid = make_grid(images, cols=len(c.sample_seeds))
        trainer.last_grid.save(out / "grid.png")
        (out / "prompts.txt").write_text("\n".join(prompts) + "\n", encoding="utf-8")
        trainer.emit("on_sample", step, images, paths)
    acc.wait_for_everyone()
