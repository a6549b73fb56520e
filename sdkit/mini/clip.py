"""Mini CLIP: a transformers ``CLIPModel`` small enough to train on a laptop CPU in minutes.

The tokenizer is the real CLIP BPE tokenizer (49,408 tokens, 77-token context, shipped in
``sdkit/assets/clip_tokenizer``), so prompts are tokenized exactly as Stable Diffusion does. The text tower
is what a mini UNet is conditioned on (via ``CLIPTextModel``, per-token ``last_hidden_state``), and the pair
of towers gives CLIP scores for evaluation.

Training is contrastive on mini-world pictures + captions, with two additions that suit a world where many
pictures share one description: (1) soft targets, so two pictures of "a red seven on a blue background" in
one batch are not each other's negatives; (2) small auxiliary linear heads reading glyph, fg and bg from the
mean of the text tower's per-token states, so ``last_hidden_state`` (what the UNet reads) carries the caption,
not only the pooled EOS vector, and a glyph head on the pooled image state, which speeds up reading digits.
The heads are discarded after training.

    >>> from sdkit.mini.clip import load_clip, load_tokenizer
    >>> model, tok = load_clip(), load_tokenizer()      # data_samples/mini-clip/, float32
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.captions import TOKENIZER_DIR
from ..data.files import respect_umask
from .world import (CAPTION_STYLES, COLORS, DATA_SAMPLES, GLYPHS, IMAGE_SIZE, SHAPES, build_dataset, caption,
                    color_pairs, glyph_index, held_out_combos, label_key, train_combos, warmup_cosine)

CLIP_DIR = DATA_SAMPLES / "mini-clip"
MAX_LEN = 77


def load_tokenizer(path=None):
    """The real CLIP tokenizer (default: the copy shipped in sdkit/assets/clip_tokenizer)."""
    from transformers import CLIPTokenizer

    path = Path(path) if path is not None else TOKENIZER_DIR
    if not (path / "vocab.json").exists():
        raise FileNotFoundError(f"no CLIP tokenizer in {path}: expected vocab.json and merges.txt")
    return CLIPTokenizer.from_pretrained(str(path))


def save_tokenizer(out_dir) -> Path:
    """Save the CLIP tokenizer next to a model in its compact form (vocab.json + merges.txt, 1.5 MB).

    ``tokenizer.save_pretrained`` in transformers 5 writes a 3.6 MB tokenizer.json instead; both load with
    ``CLIPTokenizer.from_pretrained(out_dir)`` and give the same token ids (checked here).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("tokenizer.json", "special_tokens_map.json"):
        (out / stale).unlink(missing_ok=True)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copyfile(TOKENIZER_DIR / name, out / name)
    probe = ["a red seven on a blue background"]
    if load_tokenizer(out)(probe).input_ids != load_tokenizer()(probe).input_ids:
        raise RuntimeError(f"tokenizer saved to {out} does not reproduce sdkit/assets/clip_tokenizer's ids")
    return out


def mini_clip_config(text_hidden: int = 64, text_layers: int = 3, vision_hidden: int = 64, vision_layers: int = 3,
                     patch_size: int = 4):
    """A small ``CLIPConfig``: 49,408-token vocab, 77 positions; 32x32 images in 4x4 patches (64 patches + CLS).

    patch_size=8 (16 patches) costs ~4x less vision compute on a CPU but reads digits less well.
    """
    from transformers import CLIPConfig

    text = dict(vocab_size=49408, hidden_size=text_hidden, intermediate_size=4 * text_hidden,
                num_hidden_layers=text_layers, num_attention_heads=4, max_position_embeddings=MAX_LEN,
                hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    vision = dict(image_size=IMAGE_SIZE, patch_size=patch_size, num_channels=3, hidden_size=vision_hidden,
                  intermediate_size=4 * vision_hidden, num_hidden_layers=vision_layers, num_attention_heads=4,
                  hidden_act="quick_gelu")
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=64)


def pixel_values(images) -> torch.Tensor:
    """uint8 Nx32x32x3 -> float (N, 3, 32, 32) in [-1, 1] (mean 0.5, std 0.5: the saved image processor's rule)."""
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ValueError(f"images of shape {arr.shape}: expected N x 32 x 32 x 3 uint8")
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def tokenize(tokenizer, captions: list[str]) -> dict:
    """Pad to 77 tokens like Stable Diffusion; refuse captions that would be cut."""
    enc = tokenizer(list(captions), padding="max_length", max_length=MAX_LEN, truncation=False, return_tensors="pt")
    if enc.input_ids.shape[1] > MAX_LEN:
        raise ValueError(f"a caption has {enc.input_ids.shape[1]} tokens; CLIP reads {MAX_LEN}: shorten it")
    return enc


def load_clip(path=None, dtype=torch.float32):
    """Load the mini ``CLIPModel`` (default data_samples/mini-clip/) in ``dtype``, eval mode."""
    from transformers import CLIPModel

    path = Path(path) if path is not None else CLIP_DIR
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no mini CLIP in {path}: build it with sdkit.mini.clip.train_clip(out_dir)")
    return CLIPModel.from_pretrained(str(path), dtype=dtype).eval()


def export_text_encoder(clip_dir=None, out_dir=None, dtype=torch.float16) -> Path:
    """Save the text tower of a mini CLIP as a ``CLIPTextModel`` (same weights) + its tokenizer, with save_pretrained.

    (``CLIPTextModel.from_pretrained(clip_dir)`` also works directly; it warns about the unused vision weights.)
    """
    from transformers import CLIPTextModel

    clip_dir = Path(clip_dir) if clip_dir is not None else CLIP_DIR
    if out_dir is None:
        raise ValueError("export_text_encoder needs out_dir (e.g. a pipeline folder's text_encoder/)")
    clip = load_clip(clip_dir)
    text = CLIPTextModel(clip.config.text_config)
    # transformers 5: CLIPTextModel holds embeddings/encoder/final_layer_norm itself; 4.x: under .text_model
    getattr(text, "text_model", text).load_state_dict(clip.text_model.state_dict(), strict=True)
    out = Path(out_dir)
    text.to(dtype).save_pretrained(str(out))
    respect_umask(out)
    save_tokenizer(out)
    return out


# ---------------------------------------------------------------------------------------------
# Embeddings and evaluation
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def text_embeds(model, tokenizer, captions: list[str], batch_size: int = 256) -> torch.Tensor:
    """(N, projection_dim) L2-normalized text embeddings."""
    out = []
    for i in range(0, len(captions), batch_size):
        enc = tokenize(tokenizer, captions[i : i + batch_size])
        feats = _features(model.get_text_features(input_ids=enc.input_ids, attention_mask=enc.attention_mask))
        out.append(F.normalize(feats.float(), dim=-1))
    return torch.cat(out)


@torch.no_grad()
def image_embeds(model, images, batch_size: int = 256) -> torch.Tensor:
    """(N, projection_dim) L2-normalized image embeddings of uint8 Nx32x32x3 pictures."""
    dtype = next(model.parameters()).dtype
    out = []
    for i in range(0, len(images), batch_size):
        pv = pixel_values(images[i : i + batch_size]).to(dtype)
        out.append(F.normalize(_features(model.get_image_features(pixel_values=pv)).float(), dim=-1))
    return torch.cat(out)


def _features(out) -> torch.Tensor:
    """transformers 5 returns a ModelOutput from get_*_features; older versions a tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def zero_shot(model, tokenizer, images, labels: list[dict]) -> dict:
    """Zero-shot reading of pictures by their best-matching canonical prompt among all 784 (glyph, fg, bg) prompts.

    -> {"digit_acc" (glyph right), "fg_acc", "bg_acc", "joint_acc", "n"}.
    """
    prompts, keys = [], []
    for g in list(range(10)) + list(SHAPES):
        for f, b in color_pairs():
            prompts.append(caption(g, f, b))
            keys.append((g, f, b))
    t = text_embeds(model, tokenizer, prompts)                                       # (784, D)
    v = image_embeds(model, images)                                                  # (N, D)
    best = (v @ t.T).argmax(dim=1).tolist()
    truth = [label_key(lab) for lab in labels]
    g = np.array([keys[b][0] == k[0] for b, k in zip(best, truth)])
    f = np.array([keys[b][1] == k[1] for b, k in zip(best, truth)])
    bg = np.array([keys[b][2] == k[2] for b, k in zip(best, truth)])
    return {"digit_acc": float(g.mean()), "fg_acc": float(f.mean()), "bg_acc": float(bg.mean()),
            "joint_acc": float((g & f & bg).mean()), "n": len(labels)}


@torch.no_grad()
def mean_token_states(model_or_text, tokenizer, captions: list[str]) -> torch.Tensor:
    """(N, hidden) mean of ``last_hidden_state`` over each caption's real tokens (BOS..EOS)."""
    text = getattr(model_or_text, "text_model", model_or_text)
    enc = tokenize(tokenizer, captions)
    h = text(input_ids=enc.input_ids, attention_mask=enc.attention_mask).last_hidden_state.float()  # (N, 77, H)
    m = enc.attention_mask[..., None].float()
    return (h * m).sum(1) / m.sum(1)


def token_state_probe(model, tokenizer, seed: int = 0) -> dict:
    """Ridge probe: does the per-token ``last_hidden_state`` carry glyph, fg and bg?

    Fit on captions (all 3 styles) of the 504 training combinations, test on captions of the 56 held-out
    combinations the text tower never saw. -> {"digit_acc", "fg_acc", "bg_acc"} on the held-out captions.
    """
    def data(held):
        caps, labs = [], []
        for (d, f, b) in (sorted(held_out_combos()) if held else train_combos()):
            for s in range(CAPTION_STYLES):
                caps.append(caption(d, f, b, s))
                labs.append((d, COLORS.index(f), COLORS.index(b)))
        return mean_token_states(model, tokenizer, caps), torch.tensor(labs)

    xtr, ytr = data(False)
    xte, yte = data(True)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    xtr1 = torch.cat([xtr, torch.ones(len(xtr), 1)], 1)
    xte1 = torch.cat([xte, torch.ones(len(xte), 1)], 1)
    out = {}
    for j, (name, k) in enumerate([("digit_acc", 10), ("fg_acc", 8), ("bg_acc", 8)]):
        y = F.one_hot(ytr[:, j], k).float()
        w = torch.linalg.solve(xtr1.T @ xtr1 + 1.0 * torch.eye(xtr1.shape[1]), xtr1.T @ y)
        out[name] = float(((xte1 @ w).argmax(1) == yte[:, j]).float().mean())
    return out


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def train_clip(out_dir=CLIP_DIR, steps: int = 1400, seed: int = 0, batch_size: int = 128, n_train: int = 24000,
               lr: float = 2e-3, aux_weight: float = 0.5, full_len_every: int = 8, log_every: int = 100,
               save_dtype=torch.float16) -> dict:
    """Train the mini CLIP on mini-world pictures + captions; save it (+ tokenizer); return its metrics.

    Captions are padded to 77 tokens like SD, but to save CPU most steps cut the batch after the longest
    caption's padding (``short_len`` tokens); every ``full_len_every``-th step runs all 77 positions so every
    position embedding (and what the UNet reads at padding positions) is trained too.
    """
    from transformers import CLIPModel

    t0 = time.time()
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    # 1. data: generated pictures, tokenized captions, label ids for soft targets and the auxiliary heads
    images, captions, labels = build_dataset(seed=seed, n=n_train, split="train")
    tok = load_tokenizer()
    enc = tokenize(tok, captions)
    pv_all = pixel_values(images)                                                    # (N, 3, 32, 32)
    keys = [label_key(lab) for lab in labels]
    key_id = {k: i for i, k in enumerate(sorted(set(keys), key=str))}
    kid = torch.tensor([key_id[k] for k in keys])
    y_glyph = torch.tensor([glyph_index(lab) for lab in labels])
    y_fg = torch.tensor([COLORS.index(lab["fg"]) for lab in labels])
    y_bg = torch.tensor([COLORS.index(lab["bg"]) for lab in labels])
    short_len = int(enc.attention_mask.sum(1).max()) + 4                             # longest caption + a few pads
    print(f"[clip] {n_train} pictures built ({time.time() - t0:.0f} s)", flush=True)
    # 2. model + auxiliary heads (not saved)
    model = CLIPModel(mini_clip_config())
    hidden = model.config.text_config.hidden_size
    vhidden = model.config.vision_config.hidden_size
    aux = nn.ModuleDict({"glyph": nn.Linear(hidden, len(GLYPHS)), "fg": nn.Linear(hidden, 8), "bg": nn.Linear(hidden, 8),
                         "v_glyph": nn.Linear(vhidden, len(GLYPHS))})
    params = list(model.parameters()) + list(aux.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = warmup_cosine(opt, steps, 0.1)
    print(f"[clip] {sum(p.numel() for p in model.parameters()):,} params "
          f"(token embedding {model.text_model.embeddings.token_embedding.weight.numel():,}); "
          f"{steps} steps x {batch_size}", flush=True)
    model.train()
    hist = {"loss": 0.0, "aux": 0.0, "acc": 0.0}
    for step in range(1, steps + 1):
        idx = torch.randint(n_train, (batch_size,), generator=g)
        length = MAX_LEN if step % full_len_every == 0 else short_len
        ids, am = enc.input_ids[idx, :length], enc.attention_mask[idx, :length]      # (B, L), L = 77 or short_len
        # 3. forward both towers
        t_out = model.text_model(input_ids=ids, attention_mask=am)
        v_out = model.vision_model(pixel_values=pv_all[idx])
        t = F.normalize(model.text_projection(t_out.pooler_output), dim=-1)          # (B, D)
        v = F.normalize(model.visual_projection(v_out.pooler_output), dim=-1)        # (B, D)
        logits = model.logit_scale.exp().clamp(max=100) * v @ t.T                    # (B, B) image x text
        # 4. soft-target contrastive loss: every caption with the same (glyph, fg, bg) is a positive
        same = (kid[idx][:, None] == kid[idx][None, :]).float()
        target = same / same.sum(1, keepdim=True)
        loss_c = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        # 5. auxiliary heads on the mean per-token state (what the UNet cross-attends to)
        m = am[..., None].float()
        hm = (t_out.last_hidden_state * m).sum(1) / m.sum(1)                         # (B, H)
        loss_a = (F.cross_entropy(aux["glyph"](hm), y_glyph[idx]) + F.cross_entropy(aux["fg"](hm), y_fg[idx])
                  + F.cross_entropy(aux["bg"](hm), y_bg[idx])) / 3
        # 5b. and a glyph head on the pooled image state: digits are the hard part for a small ViT
        loss_a = loss_a + F.cross_entropy(aux["v_glyph"](v_out.pooler_output), y_glyph[idx])
        loss = loss_c + aux_weight * loss_a
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        hist["loss"] += loss_c.item()
        hist["aux"] += loss_a.item()
        hist["acc"] += (same[torch.arange(batch_size), logits.argmax(1)]).mean().item()
        if step % log_every == 0 or step == steps:
            k = log_every if step % log_every == 0 else step % log_every
            print(f"[clip] step {step}/{steps} contrastive {hist['loss'] / k:.3f} aux {hist['aux'] / k:.3f} "
                  f"in-batch i->t acc {hist['acc'] / k:.3f} ({time.time() - t0:.0f} s)", flush=True)
            hist = {k_: 0.0 for k_ in hist}
    train_seconds = time.time() - t0
    # 6. evaluate: zero-shot reading of new pictures (seen combos / held-out combos), token-state probe
    model.eval()
    vx, _, vl = build_dataset(seed=seed + 1, n=1000, split="val")
    hx, _, hl = build_dataset(seed=seed + 1, n=500, split="heldout")
    metrics = {"zero_shot_val": zero_shot(model, tok, vx, vl), "zero_shot_heldout_combos": zero_shot(model, tok, hx, hl),
               "token_state_probe_heldout_combos": token_state_probe(model, tok), "train_seconds": round(train_seconds, 1),
               "steps": steps, "batch_size": batch_size, "seed": seed, "torch_threads": torch.get_num_threads()}
    # 7. save: model (fp16 by default), tokenizer, metrics
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.to(save_dtype).save_pretrained(str(out))
    respect_umask(out)
    save_tokenizer(out)
    try:
        from transformers import CLIPImageProcessor

        CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                           image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(str(out))
    except Exception as e:  # pragma: no cover - the processor is a convenience only
        print(f"[clip] note: image processor not saved ({e})")
    (out / "sdkit_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"[clip] zero-shot val {metrics['zero_shot_val']}\n[clip] zero-shot held-out combos "
          f"{metrics['zero_shot_heldout_combos']}\n[clip] token-state probe {metrics['token_state_probe_heldout_combos']}\n"
          f"[clip] done in {time.time() - t0:.0f} s (training {train_seconds:.0f} s) -> {out}", flush=True)
    return metrics
