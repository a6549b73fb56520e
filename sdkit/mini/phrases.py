"""Free phrasing of mini-world captions: the same (glyph, fg, bg) said in many lengths and word orders.

Why it exists: a text encoder and a UNet trained only on captions of 5-7 tokens learn *where* the background
color word sits, not *which* word it is. A prompt two tokens longer (``a red sks glyph on a white background``:
``sks`` and ``gly`` ``ph`` are three tokens) moves the color to a position the models never saw there, and the
background is lost (measured in docs/BENCHMARKS.md, "Does the quickstart keep color control?"). Real captions
(LAION's, a user's) vary in length and contain words a model has never seen, such as DreamBooth's rare trigger
words. So a share of the mini world's captions is phrased freely: optional lead-ins ("a picture of"), filler
adjectives, made-up words (random letter strings, split by CLIP's BPE into 1-3 tokens as ``sks`` is) before or
after the glyph word, and several background phrasings. The colors then appear anywhere from the 2nd to about
the 25th token, and an unknown word teaches nothing about color.

    >>> import numpy as np
    >>> from sdkit.mini.phrases import free_caption
    >>> free_caption("seven", "red", "blue", np.random.default_rng(3))      # e.g. 'a drawing of a red qel seven ...'
"""
from __future__ import annotations

import numpy as np

__all__ = ["LEAD_INS", "FILLERS", "BACKGROUND_PHRASES", "made_up_word", "free_caption"]

LEAD_INS = ("", "", "", "a picture of ", "a drawing of ", "an image of ", "a photo of ", "a small picture of ",
            "a simple drawing of ", "here is ")
FILLERS = ("handwritten", "bold", "thin", "neat", "simple", "large", "small", "plain", "centered", "sketched")
BACKGROUND_PHRASES = ("on a {bg} background", "on a plain {bg} background", "against a {bg} background",
                      "over a {bg} background", "with a {bg} background", ", {bg} background", "on {bg}",
                      "drawn on a {bg} background", "on a {bg} background, simple", "on a {bg} background, centered")
_LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))
_VOWELS = np.array(list("aeiou"))


def made_up_word(rng: np.random.Generator, reserved=()) -> str:
    """A pronounceable or not, 2-6 letter string that is not one of the world's words (like ``sks`` or ``ohwx``)."""
    while True:
        n = int(rng.integers(2, 7))
        letters = rng.choice(_LETTERS, size=n)
        if rng.random() < 0.5:                                   # half of them pronounceable-ish
            letters[1::2] = rng.choice(_VOWELS, size=len(letters[1::2]))
        word = "".join(letters)
        if word not in reserved:
            return word


def free_caption(word: str, fg: str, bg: str, rng: np.random.Generator, reserved=()) -> str:
    """One free phrasing of ``word`` (the glyph's word) in ``fg`` on ``bg``: 6 to about 25 CLIP tokens.

    ``reserved`` are words a made-up word must not be (the world's colors, digits and shapes).
    """
    before, after = [], []
    if rng.random() < 0.35:
        before.append(str(FILLERS[rng.integers(len(FILLERS))]))
    for side in (before, after):
        if rng.random() < 0.4:
            side.append(made_up_word(rng, reserved))
    if rng.random() < 0.15:
        before.insert(0, made_up_word(rng, reserved))
    lead = str(LEAD_INS[rng.integers(len(LEAD_INS))])
    color_first = rng.random() < 0.5 or not before
    subject = (" ".join([fg, *before, word]) if color_first else " ".join([*before, fg, word]))
    subject = " ".join([subject, *after])
    bg_phrase = str(BACKGROUND_PHRASES[rng.integers(len(BACKGROUND_PHRASES))]).format(bg=bg)
    sep = "" if bg_phrase.startswith(",") else " "
    return f"{lead}a {subject}{sep}{bg_phrase}"
