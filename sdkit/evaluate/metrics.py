"""Metrics on pictures, with injectable feature extractors (one run's checkpoints: sdkit.evaluate.run_metrics).

What each number measures (and what it does not):
- val_loss        denoising MSE on held-out images at FIXED timesteps and FIXED noise: the same number every time
                  for the same weights, so a curve of it is comparable across checkpoints (the training loss is not:
                  each step draws new timesteps, and t near 0 or 1000 gives very different losses).
- x0_psnr         PSNR of the one-step clean-image estimate from those noised latents, decoded (dB; higher better).
- clip_t          prompt alignment: cosine(image embedding, prompt embedding). Saturates: a picture that shows the
                  subject scores about as high as a perfect one.
- clip_i          subject fidelity: mean cosine to the training images (CLIP, or DINO on Colab: DINO separates
                  instances of a class better than CLIP does).
- diversity       1 - mean cosine between seeds of one prompt: falls when every seed draws the same picture.
- memorization    mean over generated images of the cosine to the NEAREST training image (+ the pixel MSE to it):
                  compare it with train_nn_baseline (how close training images are to each other).
- bleeding        how much pictures of CONTROL prompts (without the new concept) changed from the base model's
                  (same seed): 1 - cosine of embeddings; 0 = untouched.
- fid / kid       distance between feature distributions of generated and reference images. FID is biased for
                  small sets (it needs thousands of images for published-style numbers; with 10s of images use it
                  only to compare checkpoints drawn with the same n), KID is unbiased but noisy at small n.
- inception_score only with a classifier whose classes fit the pictures (the mini world's judge).
- judge_*         the mini world's independent judge: did the picture show the asked glyph and colors?
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..data import scan_folder
from ..mini.clip import image_embeds, load_clip, load_tokenizer, text_embeds
from ..mini.judge import JUDGE_DIR, Judge
from ..models import native_resolution
from ..train.validation import to_pixels, to_uint8, validation_loss

__all__ = ["Extractors", "mini_extractors", "hub_extractors", "FeatureModule", "to_uint8", "load_folder",
           "clip_t", "clip_i", "diversity", "memorization", "bleeding", "fid_kid", "inception_score",
           "psnr", "validation_loss", "vae_reconstruction", "train_nn_baseline"]


# ---- 1. pictures as arrays -------------------------------------------------------------------------------------
def load_folder(folder, limit: int | None = None) -> tuple:
    """(PIL images, captions) of an image folder in sdkit's format (captions '' when there are none)."""
    scan = scan_folder(folder)
    items = scan.items[:limit] if limit else scan.items
    return [Image.open(p).convert("RGB") for p, _ in items], [c for _, c in items]


# ---- 2. feature extractors ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class Extractors:
    """The models that turn pictures and prompts into numbers. Swap them to change the metric's eyes.

    image(uint8 NHWC) -> (N, D) L2-normalized embeddings (CLIP image tower: clip_i, memorization, bleeding, FID)
    text(list[str])   -> (N, D) L2-normalized embeddings in the same space (clip_t); None: no clip_t
    subject           -> like image, for subject fidelity (DINO on Colab); None: use `image`
    classifier(uint8 NHWC) -> (N, classes) logits, for the Inception Score; None: no IS
    judge             the mini world's Judge (sdkit.mini.judge), or None
    """
    name: str
    image: Callable
    image_size: int
    text: Optional[Callable] = None
    subject: Optional[Callable] = None
    classifier: Optional[Callable] = None
    judge: object = None


def mini_extractors(judge: bool = True) -> Extractors:
    """Offline: the mini CLIP (data_samples/mini-clip; 32x32 pictures) and, when present, the mini world's judge."""
    model, tok = load_clip(), load_tokenizer()
    j = None
    if judge:
        if (Path(JUDGE_DIR) / "model.safetensors").is_file():
            j = Judge.load()
    classifier = None
    if j is not None:
        def classifier(x):
            return torch.log(j.glyph_probs(x).clamp_min(1e-12))  # log-probabilities work as logits
    return Extractors(name="mini-clip" + ("+judge" if j else ""), image=lambda x: image_embeds(model, x),
                      text=lambda caps: text_embeds(model, tok, list(caps)), image_size=32,
                      classifier=classifier, judge=j)


def hub_extractors(clip_id: str = "openai/clip-vit-large-patch14", dino_id: str = "facebook/dinov2-base",
                   device: str | None = None) -> Extractors:
    """On Colab (internet, GPU): the standard models. CLIP ViT-L/14 for clip_t/clip_i/bleeding/memorization/FID
    features, DINOv2 for subject fidelity (the DreamBooth paper's DINO score), Inception (torch-fidelity, via
    torchmetrics) for the Inception Score. Downloads ~2 GB on first use; not run offline."""
    from transformers import AutoImageProcessor, AutoModel, CLIPModel, CLIPProcessor
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    clip = CLIPModel.from_pretrained(clip_id).eval().to(device)
    proc = CLIPProcessor.from_pretrained(clip_id)
    dino = AutoModel.from_pretrained(dino_id).eval().to(device)
    dproc = AutoImageProcessor.from_pretrained(dino_id)

    def feats(out):
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    @torch.no_grad()
    def image(x):
        pv = proc(images=list(x), return_tensors="pt").pixel_values.to(device)
        return F.normalize(feats(clip.get_image_features(pixel_values=pv)).float(), dim=-1).cpu()

    @torch.no_grad()
    def text(caps):
        enc = proc(text=list(caps), return_tensors="pt", padding=True, truncation=True).to(device)
        return F.normalize(feats(clip.get_text_features(**enc)).float(), dim=-1).cpu()

    @torch.no_grad()
    def subject(x):
        pv = dproc(images=list(x), return_tensors="pt").pixel_values.to(device)
        return F.normalize(dino(pixel_values=pv).last_hidden_state[:, 0].float(), dim=-1).cpu()  # CLS token

    classifier = None
    try:
        from torchmetrics.image.inception import InceptionScore
        inception = InceptionScore().inception.to(device)  # torch-fidelity's Inception v3; logits head

        @torch.no_grad()
        def classifier(x):
            t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).to(device)
            return inception(t).float().cpu()
    except (ImportError, ModuleNotFoundError):
        pass
    return Extractors(name=f"{clip_id}+{dino_id}", image=image, text=text, image_size=224, subject=subject,
                      classifier=classifier)


class FeatureModule(torch.nn.Module):
    """Wraps an embedding function as the nn.Module torchmetrics' FID/KID/IS take (`feature=`).

    Input: uint8 (N, 3, H, W) like torchmetrics passes; output: (N, num_features) float64-safe features."""

    def __init__(self, fn: Callable, num_features: int, size: int | None = None):
        super().__init__()
        self.fn, self.num_features, self.size = fn, int(num_features), size

    def forward(self, x):
        arr = x.detach().cpu().permute(0, 2, 3, 1).numpy().astype(np.uint8)
        if self.size and arr.shape[1] != self.size:
            arr = to_uint8(list(arr), self.size)
        return torch.as_tensor(self.fn(arr)).float()


# ---- 3. metrics on embeddings -----------------------------------------------------------------------------------
def _embed(fn, images, size):
    return torch.as_tensor(fn(to_uint8(images, size))).float()


def clip_t(ex: Extractors, images, prompts) -> float:
    """Mean cosine between each picture and its own prompt (one prompt per picture)."""
    if ex.text is None:
        return float("nan")
    im = _embed(ex.image, images, ex.image_size)
    tx = torch.as_tensor(ex.text(list(prompts))).float()
    return float((im * tx).sum(-1).mean())


def clip_i(ex: Extractors, images, train_images) -> float:
    """Subject fidelity: mean cosine between generated and training pictures (subject extractor if given)."""
    fn = ex.subject or ex.image
    a, b = _embed(fn, images, ex.image_size), _embed(fn, train_images, ex.image_size)
    return float((a @ b.T).mean())


def diversity(emb: torch.Tensor, groups: list) -> float:
    """1 - mean pairwise cosine within each group (the seeds of one prompt), averaged over groups."""
    vals = []
    for idx in groups:
        if len(idx) < 2:
            continue
        e = emb[idx]
        sim = e @ e.T
        n = len(idx)
        vals.append(1 - float((sim.sum() - sim.diagonal().sum()) / (n * (n - 1))))
    return float(np.mean(vals)) if vals else float("nan")


def memorization(gen_emb, train_emb, gen_px=None, train_px=None) -> dict:
    """Nearest training image of each generated one: cosine (mean, max) and, with pixels, its pixel MSE."""
    sim = gen_emb @ train_emb.T                      # (generated, training)
    best, idx = sim.max(dim=1)
    out = {"memorization": float(best.mean()), "memorization_max": float(best.max())}
    if gen_px is not None and train_px is not None:
        g = torch.from_numpy(gen_px).float() / 255
        t = torch.from_numpy(train_px).float() / 255
        d = ((g[:, None] - t[None]) ** 2).mean(dim=(2, 3, 4))   # (generated, training) pixel MSE
        out["nearest_pixel_mse"] = float(d.min(dim=1).values.mean())
    return out


def train_nn_baseline(train_emb) -> float:
    """Mean cosine of each training image to its nearest OTHER training image: what 'close' means in this set."""
    if len(train_emb) < 2:
        return float("nan")
    sim = train_emb @ train_emb.T
    sim.fill_diagonal_(-2)
    return float(sim.max(dim=1).values.mean())


def bleeding(emb: torch.Tensor, base_emb: torch.Tensor, px=None, base_px=None) -> dict:
    """Change of control-prompt pictures against the base model's (same prompt and seed)."""
    out = {"bleeding": float(1 - (emb * base_emb).sum(-1).mean())}
    if px is not None:
        out["bleeding_pixel_mse"] = float(((px.astype(np.float32) - base_px.astype(np.float32)) / 255) .__pow__(2)
                                          .mean())
    return out


def fid_kid(real, fake, feature: torch.nn.Module | None = None, subset_size: int | None = None) -> dict:
    """FID and KID (torchmetrics) between two picture sets (PIL or uint8 NHWC), in the feature space of `feature`
    (a FeatureModule; None: torchmetrics' Inception v3, which needs torch-fidelity and 299 px inputs)."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance
    size = getattr(feature, "size", None) or 299
    r = torch.from_numpy(to_uint8(real, size)).permute(0, 3, 1, 2).contiguous()
    f = torch.from_numpy(to_uint8(fake, size)).permute(0, 3, 1, 2).contiguous()
    n = min(len(r), len(f))
    if n < 2:
        raise ValueError(f"fid_kid: {len(r)} reference and {len(f)} generated pictures; FID needs at least 2 of each "
                         f"(and thousands for numbers comparable to papers).")
    feat = feature if feature is not None else 2048
    fid = FrechetInceptionDistance(feature=feat, reset_real_features=True)
    k = subset_size or min(50, n)
    kid = KernelInceptionDistance(feature=feat if feature is not None else 2048, subset_size=k, subsets=20)
    for m in (fid, kid):
        m.update(r, real=True)
        m.update(f, real=False)
    kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()), "kid": float(kid_mean), "kid_std": float(kid_std), "fid_n": int(n)}


def inception_score(images, classifier: Callable, size: int, splits: int = 1) -> dict:
    """Inception Score (torchmetrics) with `classifier` (uint8 NHWC -> logits) as the network."""
    from torchmetrics.image.inception import InceptionScore
    x = torch.from_numpy(to_uint8(images, size)).permute(0, 3, 1, 2).contiguous()
    m = InceptionScore(feature=_LogitModule(classifier, size), splits=splits)
    m.update(x)
    mean, std = m.compute()
    return {"inception_score": float(mean)}


class _LogitModule(torch.nn.Module):
    def __init__(self, fn, size):
        super().__init__()
        self.fn, self.size = fn, size

    def forward(self, x):
        arr = x.detach().cpu().permute(0, 2, 3, 1).numpy().astype(np.uint8)
        return torch.as_tensor(self.fn(to_uint8(list(arr), self.size))).float()


def psnr(a, b) -> dict:
    """PSNR (dB) and MSE between two same-size picture sets in [0, 1]."""
    x = torch.from_numpy(to_uint8(a)).float() / 255
    y = torch.from_numpy(to_uint8(b, x.shape[1])).float() / 255
    mse = ((x - y) ** 2).mean(dim=(1, 2, 3))
    return {"psnr": float((10 * torch.log10(1 / mse.clamp_min(1e-10))).mean()), "mse": float(mse.mean())}


# ---- 4. the VAE's ceiling (the deterministic validation loss is in sdkit.train.validation) ---------------------------
@torch.no_grad()
def vae_reconstruction(pipe, images, resolution: int | None = None) -> dict:
    """PSNR/MSE of VAE encode -> decode (posterior mean): the ceiling any generated detail can reach."""
    size = resolution or native_resolution(pipe)
    x = to_pixels(images, size).to(pipe.vae.device, pipe.vae.dtype)
    rec = pipe.vae.decode(pipe.vae.encode(x).latent_dist.mean).sample.float().cpu().clamp(-1, 1)
    mse = (((rec - x.float().cpu()) / 2) ** 2).mean(dim=(1, 2, 3))
    return {"vae_psnr": float((10 * torch.log10(1 / mse.clamp_min(1e-10))).mean()), "vae_mse": float(mse.mean())}
