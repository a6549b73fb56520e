"""DreamBooth's mechanism: an instance prompt, class images drawn by the base model, a prior-preservation loss.

`PriorPreservation` is a mixin any method that sets `supports_prior_preservation` gets when its config asks for
prior preservation or an instance prompt (`sdkit.methods.base.make_method`):
- `method="dreambooth"` (sdkit/methods/dreambooth.py): every UNet weight trains, prior preservation on by default —
  the paper's recipe;
- `method="lora", prior_preservation=True`: LoRA DreamBooth (diffusers' train_dreambooth_lora): adapters only.

    run = sdkit.train(sdkit.TrainConfig(method="dreambooth", model="mini", data="data_samples/glyph",
                      instance_prompt="a sks glyph", class_prompt="a glyph", num_class_images=50, steps=200))

Why class images: fine-tuning on 5-20 pictures of *your* glyph pulls the class word ("glyph") toward them, so every
glyph starts to look like yours ("bleeding"). Prior preservation trains, beside each instance sample, on a picture the
*base* model drew for the class prompt, with the loss

    loss = mean(instance losses) + prior_loss_weight x mean(class losses)

so the model keeps drawing the class as it did. Class images are drawn once into `<run>/class_images/` (or
`class_data`), reused when present, and the ones already there count toward `num_class_images`.

Determinism: class sample k of global sample g is picked from a permutation seeded by (seed, epoch) and gets the
noise/timestep generators of the index CLASS_OFFSET + g, so resume and gradient accumulation equalities still hold.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.files import read_caption
from ..rng import Stream, epoch_permutation, sample_seed

__all__ = ["PriorPreservation", "ensure_class_images", "images_in", "load_pixels", "control_prompts",
           "with_control_prompts", "CLASS_OFFSET", "CONTROL_PROMPTS"]

CLASS_OFFSET = 1 << 40  # class samples use global indices CLASS_OFFSET + g: their own noise, never an instance's
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

# Unrelated prompts whose pictures must not change while a concept trains (valid in the mini world and for SD).
CONTROL_PROMPTS = ["a red circle on a blue background", "a green seven on a white background"]


# ---- 1. control prompts: bleeding shows from step 0 -------------------------------------------------------------
def control_prompts(class_word: str, unrelated=None) -> list:
    """The class word alone ("a glyph") and unrelated prompts: what a concept must leave unchanged."""
    return [f"a {class_word}"] + list(CONTROL_PROMPTS if unrelated is None else unrelated)


def with_control_prompts(concept_prompts, class_word: str, unrelated=None) -> list:
    """Sample prompts = the concept's prompts + control prompts, e.g. for `TrainConfig(sample_prompts=...)`."""
    return list(dict.fromkeys(list(concept_prompts) + control_prompts(class_word, unrelated)))


# ---- 2. class images ----------------------------------------------------------------------------------------------
def images_in(folder: Path) -> list:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []


@torch.no_grad()
def ensure_class_images(pipe, folder, prompt, n: int, resolution: int, steps: int = 25,
                        guidance_scale: float = 5.0, negative_prompt: str = "", batch: int = 8, report=print) -> list:
    """Make sure `folder` holds at least `n` class images; draw the missing ones with `pipe` from `prompt`.

    prompt: the class prompt, or a list of prompts (image k gets prompt[k % len(prompt)]: a regularization set of
    many prompts, as kohya's). Image k is drawn with seed k and saved as class_{k:05d}.png (+ .txt with its prompt),
    so the set is the same whoever draws it, and images already there (any name) count toward `n`. Returns the
    first n image paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    have = images_in(folder)
    todo = [k for k in range(n * 2 + len(have)) if not (folder / f"class_{k:05d}.png").exists()][: n - len(have)]
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if todo:
        what = repr(prompts[0]) if len(prompts) == 1 else f"{len(prompts)} prompts"
        report(f"class images: drawing {len(todo)} of {n} for {what} with the base model into {folder} "
               f"({len(have)} already there)")
        done = 0
        for start in range(0, len(todo), batch):
            ks = todo[start:start + batch]
            gens = [torch.Generator("cpu").manual_seed(k) for k in ks]
            images = pipe(prompt=[prompts[k % len(prompts)] for k in ks],
                          negative_prompt=[negative_prompt] * len(ks) if negative_prompt else None,
                          num_inference_steps=steps, guidance_scale=guidance_scale, generator=gens,
                          height=resolution, width=resolution).images
            for k, im in zip(ks, images):
                tmp = folder / f".class_{k:05d}.png"
                im.save(tmp, format="PNG")
                (folder / f"class_{k:05d}.txt").write_text(prompts[k % len(prompts)] + "\n", encoding="utf-8")
                tmp.replace(folder / f"class_{k:05d}.png")  # atomic: a kill never leaves half an image
            done += len(ks)
            report(f"class images: {len(have) + done}/{n}")
    paths = images_in(folder)
    if len(paths) < n:
        raise RuntimeError(f"class images: {folder} holds {len(paths)} images after drawing; expected {n}.")
    return paths[:n]


def load_pixels(path: Path, size) -> torch.Tensor:
    """(3, h, w) in [-1, 1] for `size` = R (a square) or (w, h) (the micro-batch's aspect-ratio bucket): resized to
    cover it, center crop (class images need no augmentation)."""
    from PIL import Image
    tw, th = (size, size) if isinstance(size, int) else size
    im = Image.open(path).convert("RGB")
    w, h = im.size
    s = max(tw / w, th / h)
    im = im.resize((max(tw, round(w * s)), max(th, round(h * s))), Image.BICUBIC)
    w, h = im.size
    left, top = (w - tw) // 2, (h - th) // 2
    im = im.crop((left, top, left + tw, top + th))
    x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1.0)
    return x.permute(2, 0, 1).contiguous()


# ---- 3. the strategy: prepare, extend each micro-batch, weigh the loss ------------------------------------------
class PriorPreservation:
    """Mixin for a Method: instance prompt, class images, loss = instance mean + w x class mean."""

    def prepare(self, trainer):
        """After the models load (base weights, before any resume): class images and default sample prompts."""
        c = self.config
        self.prior = c.uses_prior_preservation()
        self.class_paths, self.class_pixels = [], {}
        if not c.sample_prompts:
            concept = [c.instance_prompt] if c.instance_prompt else list(dict.fromkeys(trainer.scan.captions))[:1]
            word = (c.class_prompt.split()[-1] if c.class_prompt else "glyph")
            c.sample_prompts = with_control_prompts(concept, word)
        if not self.prior:
            return
        acc = trainer.accelerator
        folder = Path(c.class_data) if c.class_data else trainer.run_dir / "class_images"
        if acc.is_main_process:
            pipe = trainer.pipeline()
            unet, te = pipe.unet, pipe.text_encoder
            was = unet.training, te.training
            unet.eval(), te.eval()
            rng = torch.get_rng_state()
            with acc.autocast():
                ensure_class_images(pipe, folder, c.class_prompt, c.num_class_images, trainer.resolution,
                                    steps=c.sample_steps, guidance_scale=c.guidance_scale,
                                    negative_prompt=c.negative_prompt,
                                    report=lambda text: trainer.message("info", text))
            torch.set_rng_state(rng)
            unet.train(was[0]), te.train(was[1])
        acc.wait_for_everyone()
        self.class_paths = images_in(folder)[: c.num_class_images]
        if not self.class_paths:
            raise RuntimeError(f"class_data: {folder} holds no images.")
        self.class_captions = []
        for p in self.class_paths:
            side = p.with_suffix(c.caption_ext)
            text = read_caption(side).strip() if side.is_file() else ""
            self.class_captions.append(c.class_prompt or text)
        trainer.message("info", f"prior preservation: {len(self.class_paths)} class images from {folder}, "
                                f"prior_loss_weight {c.prior_loss_weight:g}")

    def _class_index(self, g: int) -> int:
        k = len(self.class_paths)
        epoch, pos = divmod(g, k)
        return int(epoch_permutation(self.config.seed, epoch, k, Stream.CLASS_ORDER)[pos])

    def _class_pixels(self, j: int, size: tuple) -> torch.Tensor:
        if (j, size) not in self.class_pixels:  # a few KB each at mini size; decoded once per bucket size
            self.class_pixels[(j, size)] = load_pixels(self.class_paths[j], size)
        return self.class_pixels[(j, size)]

    def extend_batch(self, trainer, batch):
        """Instance captions -> instance_prompt (when given); append one class sample per instance sample."""
        c = self.config
        n = len(batch["g"])
        if c.instance_prompt:
            batch["captions"] = [c.instance_prompt] * n
        batch["n_instance"] = n
        if not self.prior:
            return batch
        js = [self._class_index(g) for g in batch["g"]]
        size = trainer.dataset.bucket_of[batch["index"][0]]  # (w, h): a micro-batch is one aspect-ratio bucket
        keys = [("class", j, size) for j in js]
        pixels = batch["pixels"]
        if pixels is None and not all(k in trainer.latent_cache for k in keys):
            # instance latents cached, some class ones not yet: decode the instance images too (first epoch only)
            items = [trainer.dataset[(i, sample_seed(c.seed, g))] for i, g in zip(batch["index"], batch["g"])]
            pixels = torch.stack([it["pixels"] for it in items])
        if pixels is not None:
            pixels = torch.cat([pixels, torch.stack([self._class_pixels(j, size) for j in js])])
        return {"pixels": pixels, "captions": batch["captions"] + [self.class_captions[j] for j in js],
                "g": batch["g"] + [CLASS_OFFSET + g for g in batch["g"]], "index": batch["index"] + keys,
                "n_instance": n}

    def loss(self, per_sample, batch):
        """per_sample: (2 x batch,) instance losses then class losses."""
        n = batch.get("n_instance", len(per_sample))
        loss = per_sample[:n].mean()
        if n < len(per_sample):
            loss = loss + self.config.prior_loss_weight * per_sample[n:].mean()
        return loss
