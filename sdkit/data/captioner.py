"""Auto-captioning: an image-to-text model from transformers (BLIP, GIT, ...) writes a caption for every image of a
folder; a tiny random captioner for offline tests.

    cap = Captioner("Salesforce/blip-image-captioning-base")   # Hub id or a local save_pretrained folder
    caption_folder("my_photos", cap, trigger="sks")            # writes my_photos/*.txt (existing ones kept)
"""
from __future__ import annotations

from pathlib import Path

import torch

from .captions import clip_tokenizer, insert_trigger
from .files import load_image, respect_umask
from .scan import scan_folder

__all__ = ["DEFAULT_CAPTIONER", "Captioner", "make_tiny_captioner", "caption_folder"]

DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-base"  # ~1 GB; on Colab (GPU) a few images per second


class Captioner:
    """An image-to-text model from transformers (BLIP, GIT, ...) that writes one caption per image.

        cap = Captioner("Salesforce/blip-image-captioning-base")   # Hub id or a local save_pretrained folder
        cap([img1, img2])                                          # ['a red star on a white background', ...]
    """

    def __init__(self, model_id: str = DEFAULT_CAPTIONER, device=None, max_new_tokens: int = 30, prompt: str = None,
                 batch_size: int = 8):
        from transformers import AutoModelForImageTextToText, AutoProcessor
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.float16 if str(self.device).startswith("cuda") else torch.float32
        self.processor = AutoProcessor.from_pretrained(model_id)
        self.model = AutoModelForImageTextToText.from_pretrained(model_id, dtype=dtype).to(self.device).eval()
        self.dtype, self.max_new_tokens, self.prompt, self.batch_size = dtype, max_new_tokens, prompt, batch_size

    def __call__(self, images) -> list:
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
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor
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
    return respect_umask(out_dir)


def caption_folder(folder, captioner, caption_ext: str = ".txt", overwrite: bool = False, trigger: str = "",
                   layout: str = "auto") -> dict:
    """Caption every usable image of `folder` with `captioner` (a Captioner, or any function list[PIL] -> list[str])
    and write sidecar files. Existing caption files are kept unless `overwrite`. `trigger` is put in front.
    Returns {"written": [paths], "kept": [paths]}."""
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
