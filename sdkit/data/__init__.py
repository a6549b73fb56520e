"""Data: find images and captions, load them safely, check them, turn them into training tensors.

    scan = scan_folder("my_photos")              # (image, caption) items + problems, never crashes on a bad file
    report = check("my_photos", resolution=512)  # lint: what will break, what will train badly, and the fix
    ds = ImageCaptionDataset(scan, resolution=512)
    ds[(0, 1234)]                                 # {"pixels": (3, 512, 512) in [-1, 1], "caption": ..., "index": 0}

One module per concern (this package re-exports their public names):
- `files`     reading one file: images of any mode as RGB, caption files in any encoding, load-error messages
- `scan`      a folder's layout (folder, metadata, kohya) -> Scan(items, problems, repeats, groups, sizes)
- `lint`      `check`: sizes, aspect, caption length, trigger, duplicates, dataset size -> Report
- `dataset`   ImageCaptionDataset: seeded resize/crop/flip/color jitter, SDXL size/crop conditioning
- `buckets`   aspect-ratio buckets and a batch sampler that keeps a batch in one bucket
- `split`     a deterministic train/validation split
- `captions`  caption rules: modes, trigger, tag shuffle/dropout, CLIP token counting
- `captioner` auto-captioning with a transformers model (BLIP, GIT, ...)
The caption editor widget is in `sdkit.ui.captions`.
"""
from .buckets import BucketBatchSampler, assign_bucket, make_buckets
from .captioner import DEFAULT_CAPTIONER, Captioner, caption_folder, make_tiny_captioner
from .captions import (CLIP_CONTEXT, CaptionPolicy, count_tokens, drop_caption, drop_tags, has_trigger,
                       insert_trigger, join_tags, make_caption, shuffle_tags, split_tags)
from .dataset import COLOR_WORDS, ImageCaptionDataset
from .files import IMAGE_EXTS, CaptionError, describe_load_error, load_image, read_caption
from .lint import DATASET_SIZES, Report, check
from .scan import DataError, Problem, Scan, scan_folder
from .split import train_val_split

__all__ = ["IMAGE_EXTS", "Problem", "Scan", "scan_folder", "load_image", "read_caption", "CaptionError",
           "describe_load_error",
           "ImageCaptionDataset", "COLOR_WORDS", "DataError", "check", "Report", "DATASET_SIZES", "make_buckets",
           "assign_bucket", "BucketBatchSampler", "train_val_split",
           "CLIP_CONTEXT", "count_tokens", "split_tags", "join_tags", "make_caption", "insert_trigger", "has_trigger",
           "shuffle_tags", "drop_tags", "drop_caption", "CaptionPolicy",
           "DEFAULT_CAPTIONER", "Captioner", "make_tiny_captioner", "caption_folder"]
