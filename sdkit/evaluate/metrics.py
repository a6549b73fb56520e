"""Metrics per checkpoint, with injectable feature extractors, and the choice of the best checkpoint.

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
- memorisation    mean over generated images of the cosine to the NEAREST training image (+ the pixel MSE to it):
                  compare it with train_nn_baseline (how close training images are to each other).
- bleeding        how much pictures of CONTROL prompts (without the new concept) changed from the base model's
                  (same seed): 1 - cosine of embeddings; 0 = untouched.
- fid / kid       distance between feature distributions of generated and reference images. FID is biased for
                  small sets (it needs thousands of images for published-style numbers; with 10s of images use it
                  only to compare checkpoints drawn with the same n), KID is unbiased but noisy at small n.
- inception_score only with a classifier whose classes fit the pictures (the mini world's judge).
- judge_*         the mini world's independent judge: did the picture show the asked glyph and colours?
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..data import scan_folder, train_val_split
from ..mini.clip import image_embeds, load_clip, load_tokenizer, text_embeds
from ..mini.judge import JUDGE_DIR, Judge
from ..mini.world import canonical_prompts
from ..models import native_resolution
from ..run import Run
from ..train.validation import VAL_TIMESTEPS, validation_loss
from .grid import CheckpointSwitcher, select_checkpoints

__all__ = ["Extractors", "mini_extractors", "hub_extractors", "FeatureModule", "to_uint8", "load_folder",
           "clip_t", "clip_i", "diversity", "memorisation", "bleeding", "fid_kid", "inception_score",
           "psnr", "validation_loss", "vae_reconstruction", "evaluate_run", "pick_best", "control_prompts_for"]


# ---- 1. pictures as arrays -------------------------------------------------------------------------------------
def to_uint8(images, size: int | None = None) -> np.ndarray:
    """PIL images / uint8 arrays -> uint8 (N, size, size, 3), resized (bicubic) when `size` is given."""
    out = []
    for im in images:
        im = im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im, dtype=np.uint8))
        im = im.convert("RGB")
        if size and im.size != (size, size):
            im = im.resize((size, size), Image.BICUBIC)
        out.append(np.asarray(im, dtype=np.uint8))
    return np.stack(out) if out else np.zeros((0, size or 1, size or 1, 3), np.uint8)


def load_folder(folder, limit: int | None = None) -> tuple:
    """(PIL images, captions) of an image folder in sdkit's format (captions '' when there are none)."""
    scan = scan_folder(folder)
    items = scan.items[:limit] if limit else scan.items
    return [Image.open(p).convert("RGB") for p, _ in items], [c for _, c in items]


# ---- 2. feature extractors ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class Extractors:
    """The models that turn pictures and prompts into numbers. Swap them to change the metric's eyes.

    image(uint8 NHWC) -> (N, D) L2-normalised embeddings (CLIP image tower: clip_i, memorisation, bleeding, FID)
    text(list[str])   -> (N, D) L2-normalised embeddings in the same space (clip_t); None: no clip_t
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
    """On Colab (internet, GPU): the standard models. CLIP ViT-L/14 for clip_t/clip_i/bleeding/memorisation/FID
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


def memorisation(gen_emb, train_emb, gen_px=None, train_px=None) -> dict:
    """Nearest training image of each generated one: cosine (mean, max) and, with pixels, its pixel MSE."""
    sim = gen_emb @ train_emb.T                      # (generated, training)
    best, idx = sim.max(dim=1)
    out = {"memorisation": float(best.mean()), "memorisation_max": float(best.max())}
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
def _pixels(images, size):
    x = torch.from_numpy(to_uint8(images, size)).float().permute(0, 3, 1, 2) / 127.5 - 1.0  # (N, 3, H, W) in [-1, 1]
    return x


@torch.no_grad()
def vae_reconstruction(pipe, images, resolution: int | None = None) -> dict:
    """PSNR/MSE of VAE encode -> decode (posterior mean): the ceiling any generated detail can reach."""
    size = resolution or native_resolution(pipe)
    x = _pixels(images, size).to(pipe.vae.device, pipe.vae.dtype)
    rec = pipe.vae.decode(pipe.vae.encode(x).latent_dist.mean).sample.float().cpu().clamp(-1, 1)
    mse = (((rec - x.float().cpu()) / 2) ** 2).mean(dim=(1, 2, 3))
    return {"vae_psnr": float((10 * torch.log10(1 / mse.clamp_min(1e-10))).mean()), "vae_mse": float(mse.mean())}


# ---- 5. one run, every checkpoint ---------------------------------------------------------------------------------
def control_prompts_for(prompts, trigger: str = "") -> list:
    """Prompts without the new concept: each prompt with its trigger word removed, plus one unrelated prompt."""
    out = []
    for p in prompts:
        for t in [trigger, "sks"]:
            if t and f" {t} " in f" {p} ":
                out.append(" ".join(w for w in p.split() if w != t))
                break
    out.append("a red seven on a blue background")
    return list(dict.fromkeys(out))


def _judge_labels(prompts):
    table = {}
    for held in (False, True):
        for p, lab in canonical_prompts(held_out=held, shapes=not held):
            table[p] = lab
    return [table.get(p) for p in prompts]


def evaluate_run(run, prompts=None, seeds=(0, 1, 2, 3), checkpoints="all", extractors: Extractors = None,
                 control_prompts=None, reference=None, val_data=None, val_fraction: float = 0.25, steps=None,
                 guidance_scale=None, best_by: str = "val_loss", json_path=None, max_train_images: int = 64,
                 progress=print) -> dict:
    """Every metric for every checkpoint of `run` (the base model as step_000000) and the best checkpoint.

    prompts: default the run's sample prompts. control_prompts: pictures that must NOT change (bleeding); default
    the prompts without their trigger word + one unrelated prompt. reference: a folder for FID/KID (default: the
    training images). val_data: held-out images for the validation loss (default: a deterministic split of the
    training folder — which the run saw; say so). Writes RUN/eval/metrics.json (or json_path) and returns the dict."""
    run = run if isinstance(run, Run) else Run(run)
    cfg = run.config
    ex = extractors or mini_extractors()
    say = progress or (lambda *a: None)

    # 5a. data: training pictures (fidelity, memorisation), validation pictures, reference set
    scan = scan_folder(cfg.data, cfg.caption_ext, layout=cfg.data_layout)
    train_imgs = [Image.open(p).convert("RGB") for p, _ in scan.items[:max_train_images]]
    if val_data:
        val_imgs, val_caps = load_folder(val_data)
        val_note = f"held-out folder {val_data}"
    else:
        _, vscan = train_val_split(scan, val_fraction, seed=0)
        val_imgs = [Image.open(p).convert("RGB") for p, _ in vscan.items]
        val_caps = [c for _, c in vscan.items]
        val_note = (f"train_val_split(val_fraction={val_fraction}) of the training folder: {len(val_imgs)} images the "
                    f"run also trained on (pass val_data= a folder the run never saw for a true held-out loss)")
    ref_imgs = load_folder(reference)[0] if reference else train_imgs
    ref_note = str(reference) if reference else "the training images"

    switcher = CheckpointSwitcher(run)
    settings = switcher.settings(steps, guidance_scale)
    prompts = list(prompts or cfg.sample_prompts or list(dict.fromkeys(scan.captions))[:2])
    controls = list(control_prompts or control_prompts_for(prompts, cfg.trigger_token))
    seeds = [int(s) for s in seeds]
    size = ex.image_size
    train_px = to_uint8(train_imgs, size)
    train_emb = torch.as_tensor(ex.image(train_px)).float()
    labels = _judge_labels(prompts) if ex.judge is not None else [None] * len(prompts)
    fid_feature = FeatureModule(ex.image, train_emb.shape[1], size)
    groups = [list(range(i * len(seeds), (i + 1) * len(seeds))) for i in range(len(prompts))]
    resolution = settings["height"]

    result = {"run": str(run.path), "method": cfg.method,
              "settings": {"prompts": prompts, "control_prompts": controls, "seeds": seeds, **settings,
                           "extractors": ex.name, "validation_set": val_note, "reference": ref_note,
                           "val_timesteps": list(VAL_TIMESTEPS)},
              "baselines": {"train_nn_baseline": train_nn_baseline(train_emb),
                            **vae_reconstruction(switcher.pipe, val_imgs or train_imgs[:8], resolution)},
              "checkpoints": {}}
    base_control = None
    for name in select_checkpoints(run, checkpoints, include_base=True):
        pipe = switcher.use(name)
        m = {"step": int(name[5:])}
        # 5b. prompt pictures: alignment, fidelity, diversity, memorisation, FID/KID, IS, judge
        imgs = switcher.draw(name, prompts, seeds, **settings)
        px = to_uint8(imgs, size)
        emb = torch.as_tensor(ex.image(px)).float()
        per_image_prompts = [p for p in prompts for _ in seeds]
        m["clip_t"] = clip_t(ex, imgs, per_image_prompts)
        m["clip_i"] = clip_i(ex, imgs, train_imgs)
        m["diversity"] = diversity(emb, groups)
        m.update(memorisation(emb, train_emb, px, train_px))
        m.update(fid_kid(ref_imgs, imgs, fid_feature))
        if ex.classifier is not None:
            m.update(inception_score(imgs, ex.classifier, size))
        if any(lab is not None for lab in labels):
            keep = [i for i, p in enumerate(per_image_prompts) if labels[prompts.index(p)] is not None]
            s = ex.judge.score(px[keep], [labels[prompts.index(per_image_prompts[i])] for i in keep])
            m.update({f"judge_{k}": v for k, v in s.items() if k != "n"})
        # 5c. control pictures against the base model: bleeding
        cimgs = switcher.draw(name, controls, seeds, **settings)
        cpx = to_uint8(cimgs, size)
        cemb = torch.as_tensor(ex.image(cpx)).float()
        if base_control is None:
            base_control = (cemb, cpx)
        m.update(bleeding(cemb, base_control[0], cpx, base_control[1]))
        # 5d. the deterministic validation loss (and one-step reconstruction PSNR)
        if val_imgs:
            m.update(validation_loss(pipe, val_imgs, val_caps, prediction_type=cfg.prediction_type,
                                     resolution=resolution))
            # the same deterministic loss on (up to 8) TRAINING pictures: the gap between the two is overfitting
            m["train_loss_det"] = validation_loss(pipe, train_imgs[:8], scan.captions[:8],
                                                  prediction_type=cfg.prediction_type, resolution=resolution,
                                                  x0_psnr=False)["val_loss"]
        result["checkpoints"][name] = m
        say(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in m.items()
                                    if isinstance(v, float) and k in ("val_loss", "clip_t", "bleeding", "fid")))
    result["best"] = pick_best(result["checkpoints"], best_by)
    path = Path(json_path) if json_path else run.path / "eval" / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    result["path"] = str(path)
    return result


# ---- 6. the best checkpoint -----------------------------------------------------------------------------------------
RULES = {
    "val_loss": ("lowest deterministic validation loss (fixed timesteps and noise); trained checkpoints only", min),
    "clip_t": ("highest prompt alignment (CLIP-T) among trained checkpoints whose bleeding is at most twice the "
               "smallest bleeding of any trained checkpoint", max),
    "judge_joint_acc": ("highest judge accuracy (glyph and both colours right); trained checkpoints only", max),
}


def pick_best(checkpoints: dict, by: str = "val_loss") -> dict:
    """{"checkpoint", "rule", "by", "value", "ranking", numbers of the winner}; the base model is not eligible."""
    if by not in RULES:
        raise ValueError(f"best_by {by!r}: expected one of {', '.join(RULES)}")
    rule, better = RULES[by]
    trained = {k: v for k, v in checkpoints.items() if v.get("step", 0) > 0 and
               isinstance(v.get(by), (int, float)) and math.isfinite(v[by])}
    if not trained:
        return {"checkpoint": None, "rule": rule, "by": by, "why": f"no trained checkpoint has {by!r}"}
    if by == "clip_t":
        floor = min(v.get("bleeding", 0.0) for v in trained.values())
        trained = {k: v for k, v in trained.items() if v.get("bleeding", 0.0) <= 2 * floor + 1e-6}
    ranking = sorted(trained, key=lambda k: trained[k][by], reverse=(better is max))
    name = ranking[0]
    base = next((v for v in checkpoints.values() if v.get("step") == 0), {})
    return {"checkpoint": name, "step": trained[name]["step"], "rule": rule, "by": by, "value": trained[name][by],
            "base_value": base.get(by), "ranking": [[k, trained[k][by]] for k in ranking],
            **{k: v for k, v in trained[name].items() if isinstance(v, (int, float)) and k != "step"}}
