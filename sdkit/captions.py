"""Captions in one namespace for notebooks (`from sdkit import captions`): the caption rules (`sdkit.data.captions`),
auto-captioning (`sdkit.data.captioner`) and the caption editor widget (`sdkit.ui.captions`).

Nothing inside sdkit imports this module: library code imports from those three modules directly, so the data layer
never depends on the UI.
"""
from .data.captioner import DEFAULT_CAPTIONER, Captioner, caption_folder, make_tiny_captioner
from .data.captions import (CLIP_CONTEXT, CaptionPolicy, count_tokens, drop_caption, drop_tags, has_trigger,
                            insert_trigger, join_tags, make_caption, shuffle_tags, split_tags)
from .ui.captions import caption_editor

__all__ = ["CLIP_CONTEXT", "count_tokens", "split_tags", "join_tags", "make_caption", "insert_trigger",
           "has_trigger", "shuffle_tags", "drop_tags", "drop_caption", "CaptionPolicy", "Captioner",
           "make_tiny_captioner", "caption_folder", "caption_editor", "DEFAULT_CAPTIONER"]
