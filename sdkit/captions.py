"""Captions: the three captioning modes, trigger tokens, per-sample caption augmentation, token counting,
auto-captioning with a transformers model, and a caption-editor widget.

Augmentations are pure functions of (caption, rng): the same seed gives the same caption, so a run is reproducible.

    policy = CaptionPolicy(trigger="sks", shuffle=True, keep_tokens=1, tag_dropout=0.1)
    policy("red star, white background, small", np.random.default_rng(0))   # 'sks, small, red star' (say)
"""
from __future__ import annotations

import dataclasses
import io
import os
import re
from pathlib import Path

import numpy as np

__all__ = ["CLIP_CONTEXT", "count_tokens", "split_tags", "join_tags", "make_caption", "insert_trigger",
           "has_trigger", "shuffle_tags", "drop_tags", "drop_caption", "CaptionPolicy", "Captioner",
           "make_tiny_captioner", "caption_folder", "caption_editor", "DEFAULT_CAPTIONER"]

CLIP_CONTEXT = 77  # tokens the CLIP text encoder reads, start and end tokens included
DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-base"  # ~1 GB; on Colab (GPU) a few images per second

_tokenizer = None


def count_tokens(caption: str, tokenizer=None) -> int:
    """CLIP tokens of `caption`, with the start and end tokens: what counts against CLIP's 77."""
    global _tokenizer
    if tokenizer is None:
        if _tokenizer is None:
            from .models import clip_tokenizer
            _tokenizer = clip_tokenizer()
        tokenizer = _tokenizer
    return len(tokenizer(caption, truncation=False, add_special_tokens=True, verbose=False)["input_ids"])


# ---- tags and modes ---------------------------------------------------------------------------------------------
def split_tags(caption: str, sep: str = ",") -> list:
    """'sks, red star ,  white' -> ['sks', 'red star', 'white'] (empty tags dropped)."""
    return [t.strip() for t in caption.split(sep) if t.strip()]


def join_tags(tags, sep: str = ",") -> str:
    return f"{sep} ".join(tags)


def make_caption(mode: str, trigger: str = "", class_word: str = "", tags=(), sentence: str = "") -> str:
    """A caption in one of the three modes:
    - "single": only the instance prompt, e.g. 'sks star' (trains fast; everything in the picture goes to it);
    - "multi":  instance prompt + tags of what varies, e.g. 'sks star, red, top left, white background';
    - "sentence": a full sentence, e.g. 'a photo of a sks star, red, in the top left corner'."""
    subject = " ".join(w for w in (trigger, class_word) if w)
    if mode == "single":
        return subject
    if mode == "multi":
        return join_tags([subject, *tags] if subject else list(tags))
    if mode == "sentence":
        text = sentence or join_tags(tags)
        if subject and not has_trigger(text, trigger or class_word):
            text = f"a picture of a {subject}" + (f", {text}" if text else "")
        return text
    raise ValueError(f"caption mode: got {mode!r}; expected single, multi or sentence")


def has_trigger(caption: str, trigger: str) -> bool:
    """Whether `trigger` appears in `caption` as a whole word (case-insensitive)."""
    return bool(trigger) and re.search(rf"(?<!\w){re.escape(trigger)}(?!\w)", caption, re.IGNORECASE) is not None


def insert_trigger(caption: str, trigger: str, position: str = "start", sep: str = ",") -> str:
    """Put `trigger` at the start (or end) of the caption, unless it is already there as a word."""
    if not trigger or has_trigger(caption, trigger):
        return caption
    if not caption.strip():
        return trigger
    return f"{trigger}{sep} {caption}" if position == "start" else f"{caption}{sep} {trigger}"


def shuffle_tags(caption: str, rng: np.random.Generator, keep_tokens: int = 0, sep: str = ",") -> str:
    """Shuffle the comma-separated tags, keeping the first `keep_tokens` tags in place (kohya's keep_tokens counts
    tags, not CLIP tokens). Shuffling stops the model tying meaning to tag order."""
    tags = split_tags(caption, sep)
    head, tail = tags[:keep_tokens], tags[keep_tokens:]
    tail = [tail[i] for i in rng.permutation(len(tail))]
    return join_tags(head + tail, sep)


def drop_tags(caption: str, rng: np.random.Generator, p: float, keep_tokens: int = 0, sep: str = ",") -> str:
    """Drop each tag after the first `keep_tokens` with probability p (tag dropout)."""
    tags = split_tags(caption, sep)
    head, tail = tags[:keep_tokens], tags[keep_tokens:]
    return join_tags(head + [t for t, u in zip(tail, rng.random(len(tail))) if u >= p], sep)


def drop_caption(caption: str, rng: np.random.Generator, p: float) -> str:
    """The empty caption with probability p (caption dropout: trains the unconditional branch used by guidance)."""
    return "" if rng.random() < p else caption


@dataclasses.dataclass
class CaptionPolicy:
    """Per-sample caption transform for `ImageCaptionDataset(caption_transform=...)`: trigger insertion, tag dropout,
    shuffle with keep-tokens, caption dropout, in that order. An inserted trigger is always kept in place.
    (The training loop applies config.caption_dropout itself; leave caption_dropout 0 here when using it.)"""
    trigger: str = ""
    shuffle: bool = False
    keep_tokens: int = 0
    tag_dropout: float = 0.0
    caption_dropout: float = 0.0
    sep: str = ","

    def __call__(self, caption: str, rng: np.random.Generator) -> str:
        keep = self.keep_tokens
        if self.trigger:
            caption = insert_trigger(caption, self.trigger, "start", self.sep)
            if split_tags(caption, self.sep)[:1] == [self.trigger]:
                keep = max(keep, 1)
        if self.tag_dropout:
            caption = drop_tags(caption, rng, self.tag_dropout, keep, self.sep)
        if self.shuffle:
            caption = shuffle_tags(caption, rng, keep, self.sep)
        if self.caption_dropout:
            caption = drop_caption(caption, rng, self.caption_dropout)
        return caption


# ---- auto-captioning --------------------------------------------------------------------------------------------
class Captioner:
    """An image-to-text model from transformers (BLIP, GIT, ...) that writes one caption per image.

        cap = Captioner("Salesforce/blip-image-captioning-base")   # Hub id or a local save_pretrained folder
        cap([img1, img2])                                          # ['a red star on a white background', ...]
    """

    def __init__(self, model_id: str = DEFAULT_CAPTIONER, device=None, max_new_tokens: int = 30, prompt: str = None,
                 batch_size: int = 8):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.float16 if str(self.device).startswith("cuda") else torch.float32
        self.processor = AutoProcessor.from_pretrained(model_id)
        self.model = AutoModelForImageTextToText.from_pretrained(model_id, dtype=dtype).to(self.device).eval()
        self.dtype, self.max_new_tokens, self.prompt, self.batch_size = dtype, max_new_tokens, prompt, batch_size

    def __call__(self, images) -> list:
        import torch
        out = []
        for k in range(0, len(images), self.batch_size):
            batch = images[k:k + self.batch_size]
            kwargs = {"images": batch, "return_tensors": "pt"}
            if self.prompt:  # conditional captioning: the caption continues the prompt
                kwargs["text"] = [self.prompt] * len(batch)
            inputs = self.processor(**kwargs).to(self.device)
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
            from transformers.utils import logging as tlog
            level = tlog.get_verbosity()
            tlog.set_verbosity_error()  # BLIP's "attention mask is not set" notice is harmless for image-only input
            with torch.no_grad():
                ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
            tlog.set_verbosity(level)
            out += [" ".join(t.split()) for t in self.processor.batch_decode(ids, skip_special_tokens=True)]
        return out


def make_tiny_captioner(out_dir, seed: int = 0) -> Path:
    """A tiny random BLIP captioner (real classes, shipped CLIP tokenizer) saved with save_pretrained: loads through
    the same `Captioner` path as the real one, offline. Its captions are random words, not descriptions."""
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor
    from .models import clip_tokenizer
    tok = clip_tokenizer()
    cfg = BlipConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=64, encoder_hidden_size=32,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, sep_token_id=tok.eos_token_id),
        projection_dim=32)
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(cfg)
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def caption_folder(folder, captioner, caption_ext: str = ".txt", overwrite: bool = False, trigger: str = "",
                   layout: str = "auto") -> dict:
    """Caption every usable image of `folder` with `captioner` (a Captioner, or any function list[PIL] -> list[str])
    and write sidecar files. Existing caption files are kept unless `overwrite`. `trigger` is put in front.
    Returns {"written": [paths], "kept": [paths]}."""
    from .data import load_image, scan_folder
    scan = scan_folder(folder, caption_ext, layout=layout)
    todo, kept = [], []
    for path, _ in scan.items:
        cap_path = path.with_suffix(caption_ext)
        (todo if overwrite or not cap_path.exists() else kept).append(path)
    written = []
    bs = getattr(captioner, "batch_size", 8)
    for k in range(0, len(todo), bs):
        chunk = todo[k:k + bs]
        texts = captioner([load_image(p) for p in chunk])
        for p, t in zip(chunk, texts):
            cap_path = p.with_suffix(caption_ext)
            cap_path.write_text(insert_trigger(t, trigger) + "\n", encoding="utf-8")
            written.append(cap_path)
    return {"written": written, "kept": kept}


# ---- caption editor ---------------------------------------------------------------------------------------------
def caption_editor(folder, caption_ext: str = ".txt", thumb: int = 96, max_items: int = 200, layout: str = "auto"):
    """A widget: one row per image (thumbnail, caption text box, token count); Save writes the changed sidecar
    files. Core ipywidgets only (works with ipywidgets 7.7 and 8). `editor.save()` does the same from code;
    `editor.boxes` maps each image path to its Textarea."""
    import ipywidgets as W
    from .data import load_image, scan_folder
    scan = scan_folder(folder, caption_ext, layout=layout)
    rows, boxes, counts = [], {}, {}
    for path, caption in scan.items[:max_items]:
        im = load_image(path)
        im.thumbnail((thumb, thumb))
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        box = W.Textarea(value=caption, layout=W.Layout(width="420px", height="60px"))
        count = W.HTML()

        def update(change=None, box=box, count=count):
            n = count_tokens(box.value)
            colour = "#c00" if n > CLIP_CONTEXT else "#666"
            count.value = f"<span style='color:{colour}'>{n}/{CLIP_CONTEXT} tokens</span>"

        update()
        box.observe(update, names="value")
        boxes[path], counts[path] = box, count
        label = W.HTML(f"<code>{os.path.relpath(path, scan.root)}</code>")
        rows.append(W.HBox([W.Image(value=buf.getvalue(), format="png", width=thumb), W.VBox([label, box, count])]))
    status = W.HTML()
    button = W.Button(description="Save captions", button_style="primary")
    originals = {p: b.value for p, b in boxes.items()}

    def save(_=None):
        changed = []
        for p, b in boxes.items():
            cap_path = Path(p).with_suffix(caption_ext)
            text = " ".join(b.value.split())
            if text != originals[p] or not cap_path.exists():
                cap_path.write_text(text + "\n", encoding="utf-8")
                originals[p] = text
                changed.append(cap_path)
        status.value = f"saved {len(changed)} caption file(s)"
        return changed

    button.on_click(save)
    more = f"<i>showing {max_items} of {len(scan.items)} images</i>" if len(scan.items) > max_items else ""
    editor = W.VBox([W.HBox([button, status]), W.HTML(more), *rows])
    editor.save, editor.boxes = save, boxes
    return editor
