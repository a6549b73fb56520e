"""Captions, as `sdkit.captions` (the name notebooks and older code import): the caption rules live in
`sdkit.data.captions`, auto-captioning in `sdkit.data.captioner`, the caption editor widget in `sdkit.ui.captions`."""
from .data.captioner import DEFAULT_CAPTIONER, Captioner, caption_folder, make_tiny_captioner
from .data.captions import (CLIP_CONTEXT, CaptionPolicy, count_tokens, drop_caption, drop_tags, has_trigger,
                            insert_trigger, join_tags, make_caption, shuffle_tags, split_tags)

__all__ = ["CLIP_CONTEXT", "count_tokens", "split_tags", "join_tags", "make_caption", "insert_trigger",
           "has_trigger", "shuffle_tags", "drop_tags", "drop_caption", "CaptionPolicy", "Captioner",
           "make_tiny_captioner", "caption_folder", "DEFAULT_CAPTIONER"]
