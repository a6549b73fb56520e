"""Caption rules: the three captioning modes, trigger tokens, per-sample caption augmentation and CLIP token counting.

Augmentations are pure functions of (caption, rng): the same seed gives the same caption, so a run is reproducible.

    policy = CaptionPolicy(trigger="sks", shuffle=True, keep_tokens=1, tag_dropout=0.1)
    policy("red star, white background, small", np.random.default_rng(0))   # 'sks, small, red star' (say)
"""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import numpy as np

__all__ = ["CLIP_CONTEXT", "TOKENIZER_DIR", "clip_tokenizer", "count_tokens", "split_tags", "join_tags",
           "make_caption", "insert_trigger", "has_trigger", "shuffle_tags", "drop_tags", "drop_caption",
           "CaptionPolicy"]

CLIP_CONTEXT = 77  # tokens the CLIP text encoder reads, start and end tokens included
TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "assets" / "clip_tokenizer"  # shipped with the package

_tokenizer = None


def clip_tokenizer():
    """The real CLIP BPE tokenizer (49,408 tokens, 77-token context), built offline from sdkit/assets."""
    from transformers import CLIPTokenizer
    return CLIPTokenizer.from_pretrained(os.fspath(TOKENIZER_DIR))


def count_tokens(caption: str, tokenizer=None) -> int:
    """CLIP tokens of `caption`, with the start and end tokens: what counts against CLIP's 77."""
    global _tokenizer
    if tokenizer is None:
        if _tokenizer is None:
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
