"""Every training method on the same mini-world concept (the sks glyph, a star), measured the same way.

    rows = compare(["lora", "loha", "textual-inversion"], steps=200, out="runs/compare")
    print(table(rows))

Each method trains on data_samples/glyph with the same data, steps, batch and seed; only the method and its learning
rate differ (each method's own usual range: textual inversion and LyCORIS adapters take higher rates than LoRA,
a full fine-tune a lower one). Then, on the same seeds: trainable parameters, exported file size (in the format
the usual tools load), training time, fidelity (star rate of the concept prompts), class bleeding (star rate of
"a glyph") and control-prompt accuracy and drift (sdkit.mini.concept.measure). notebooks/07_more_methods.ipynb and
bench/methods_compare.py call this.
"""
from __future__ import annotations

import time
from pathlib import Path

from ..export import export
from ..methods import make_method, method_class, method_names
from ..models import data_samples_dir, load_pipeline
from ..train.loop import train
from ..config import TrainConfig
from .concept import CONCEPT_PROMPTS, StarDetector, measure

__all__ = ["recipe", "recipes", "file_format", "train_method", "compare", "table"]


def recipe(name: str) -> dict:
    """TrainConfig fields of method `name` on the glyph concept (on top of the shared ones in train_method): the
    method's own `recipe`."""
    return {"method": name, **method_class(name).recipe}


def recipes() -> dict:
    """{method: recipe} of every registered method that has a recipe and trains on the glyph captions alone
    (DreamBooth needs class images: notebook 05), in registry order: what notebook 07 compares."""
    return {name: recipe(name) for name in method_names()
            if method_class(name).recipe and not method_class(name).prior_preservation_default}


def file_format(config) -> str:
    """The export a user's tools load as one file (a kohya LoRA, an embedding, a single-file checkpoint...): the
    method's first format that is not a pipeline folder."""
    formats = make_method(config).export_formats
    return next((f for f, name in formats.items() if "." in name), next(iter(formats)))


def train_method(name: str, steps: int, out, model: str = "mini", data=None, **overrides):
    """Train recipe `name` on the glyph set; return the Run."""
    fields = dict(model=model, data=str(data or data_samples_dir() / "glyph"), steps=steps, batch_size=8,
                  cache_latents=True, seed=0, out=str(Path(out) / name), checkpoint_every=0, sample_steps=10,
                  sample_prompts=["a red sks glyph on a blue background"], sample_at_start=False,
                  tensorboard=False)
    fields.update(recipe(name))
    fields.update(overrides)
    return train(TrainConfig(**fields), progress=None)


def _trainable(run) -> int:
    from safetensors.torch import load_file
    return sum(t.numel() for t in load_file(str(run.latest_checkpoint / "trainable.safetensors")).values())


def compare(names, steps: int, out, seeds=(0, 1, 2, 3), sample_steps: int = 25, model: str = "mini",
            detector=None, progress=print) -> list:
    """Train each method in `names`, export it, measure it; one row (dict) per method, base model first."""
    detector = detector or StarDetector.fit()
    base = measure(load_pipeline(model), seeds=seeds, steps=sample_steps, detector=detector)
    rows = [{"method": "base model", "trainable": 0, "file_bytes": 0, "train_s": 0.0,
             **{k: base[k] for k in ("fidelity", "class_star_rate", "control_acc")}, "control_drift": 0.0}]
    for name in names:
        t0 = time.time()
        run = train_method(name, steps, out, model=model)
        train_s = time.time() - t0
        fmt = file_format(run.config)
        path = export(run, fmt)
        size = sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) if Path(path).is_dir() \
            else Path(path).stat().st_size
        pipe = run.load_pipeline()
        method = make_method(run.config)  # textual inversion: its concept is the new token, not the word sks
        prompts = [method.sample_prompt(p) for p in CONCEPT_PROMPTS]
        m = measure(pipe, base["images"]["control"], seeds=seeds, steps=sample_steps, detector=detector,
                    concept_prompts=prompts)
        row = {"method": name, "trainable": _trainable(run), "file_bytes": size, "train_s": train_s,
               "format": fmt, "fidelity": m["fidelity"], "class_star_rate": m["class_star_rate"],
               "control_acc": m["control_acc"], "control_drift": m["control_drift"], "run": str(run.path),
               "images": m["images"]["concept"]}
        rows.append(row)
        if progress:
            progress(f"{name:>18}: fidelity {row['fidelity']:.2f}  class stars {row['class_star_rate']:.2f}  "
                     f"control acc {row['control_acc']:.2f}  drift {row['control_drift']:.4f}  "
                     f"file {size / 1e6:.2f} MB  {train_s:.0f} s")
    return rows


def table(rows) -> str:
    """A plain-text table of compare()'s rows."""
    head = f"{'method':>18} {'trainable':>10} {'file':>9} {'train s':>8} {'fidelity':>8} {'class*':>7} " \
           f"{'ctrl acc':>8} {'drift':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['method']:>18} {r['trainable']:>10,} {r['file_bytes'] / 1e6:>7.2f}MB {r['train_s']:>8.0f} "
                     f"{r['fidelity']:>8.2f} {r['class_star_rate']:>7.2f} {r['control_acc']:>8.2f} "
                     f"{r['control_drift']:>7.4f}")
    return "\n".join(lines)
