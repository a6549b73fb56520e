"""Every metric for every checkpoint of one run (the base model as step_000000), and the choice of the best one.
The metrics themselves, and what each measures, are in sdkit.evaluate.metrics."""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from PIL import Image

from ..data import scan_folder, train_val_split
from ..mini.world import canonical_prompts
from ..run import Run
from ..train.validation import VAL_TIMESTEPS, validation_loss
from .grid import CheckpointSwitcher, select_checkpoints
from .metrics import (Extractors, FeatureModule, bleeding, clip_i, clip_t, diversity, fid_kid, inception_score,
                      load_folder, memorization, mini_extractors, to_uint8, train_nn_baseline, vae_reconstruction)

__all__ = ["evaluate_run", "pick_best", "control_prompts_for", "RULES"]


# ---- 1. one run, every checkpoint ---------------------------------------------------------------------------------
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

    # 5a. data: training pictures (fidelity, memorization), validation pictures, reference set
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
    settings = switcher.settings(steps, guidance_scale, square=True)  # square pictures, as the extractors read them
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
        # 5b. prompt pictures: alignment, fidelity, diversity, memorization, FID/KID, IS, judge
        imgs = switcher.draw(name, prompts, seeds, **settings)
        px = to_uint8(imgs, size)
        emb = torch.as_tensor(ex.image(px)).float()
        per_image_prompts = [p for p in prompts for _ in seeds]
        m["clip_t"] = clip_t(ex, imgs, per_image_prompts)
        m["clip_i"] = clip_i(ex, imgs, train_imgs)
        m["diversity"] = diversity(emb, groups)
        m.update(memorization(emb, train_emb, px, train_px))
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


# ---- 2. the best checkpoint -----------------------------------------------------------------------------------------
RULES = {
    "val_loss": ("lowest deterministic validation loss (fixed timesteps and noise); trained checkpoints only", min),
    "clip_t": ("highest prompt alignment (CLIP-T) among trained checkpoints whose bleeding is at most twice the "
               "smallest bleeding of any trained checkpoint", max),
    "judge_joint_acc": ("highest judge accuracy (glyph and both colors right); trained checkpoints only", max),
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
