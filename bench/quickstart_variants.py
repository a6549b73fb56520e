"""Train variants of the quickstart's LoRA recipe and judge each one (the variant tables of docs/BENCHMARKS.md,
"Does the quickstart keep color control?").

Each argument is one variant as JSON: TrainConfig fields over the recipe (sdkit.quickstart.GLYPH_LORA, prior
preservation on), plus `name`, `n` (regularization pictures, default REGULARIZATION_IMAGES), `regseed` (which draw
of the regularization prompts, default 0), `model` (a pipeline folder; default the shipped mini pipeline) and
`random_set` (true: n prompts drawn at random out of the 728 canonical ones, the earlier recipe; default false:
`regularization_prompts`, every color pair in turn).

    python bench/quickstart_variants.py '{"name": "recipe_r1", "regseed": 1}' '{"name": "w5", "prior_loss_weight": 5}'

Prints one JSON line per variant: concept prompts fg+bg both right (12 prompts x 4 seeds), digit prompts joint
(10 x 4), star-detector rate on the README's two concept prompts (star) and on the 12 (star12), training seconds.
One thread; about 3-4 minutes a variant on the project's 2-core VM. Work goes to /tmp/sdkit-variants.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from quickstart_colors import GUIDANCE, SEEDS, STEPS, colors_right, concept_pairs, digits_right  # noqa: E402
from sdkit.config import TrainConfig  # noqa: E402
from sdkit.mini.concept import StarDetector  # noqa: E402
from sdkit.mini.judge import Judge  # noqa: E402
from sdkit.mini.world import canonical_prompts  # noqa: E402
from sdkit.quickstart import GLYPH_LORA, GLYPH_STEPS, REGULARIZATION_IMAGES, write_regularization_set  # noqa: E402
from sdkit.sample import generate  # noqa: E402
from sdkit.train.loop import train  # noqa: E402

WORK = Path("/tmp/sdkit-variants")


def regularization_set(n: int, seed: int, random_set: bool) -> Path:
    folder = WORK / f"reg_{'random' if random_set else 'even'}{n}_s{seed}"
    prompts = None                                   # write_regularization_set's own: every color pair in turn
    if random_set:
        pairs = list(canonical_prompts(shapes=True))
        prompts = [pairs[i][0] for i in np.random.default_rng(seed).choice(len(pairs), n, replace=False)]
    return write_regularization_set("mini", folder, n=n, seed=seed, prompts=prompts, report=lambda *a: None)


def main() -> int:
    torch.set_num_threads(1)
    judge, pairs, det = Judge.load(), concept_pairs(), StarDetector.fit()
    readme = ["a red sks glyph on a white background", "a blue sks glyph on a yellow background"]
    for spec in sys.argv[1:]:
        kw = json.loads(spec)
        name, n, seed = kw.pop("name"), kw.pop("n", REGULARIZATION_IMAGES), kw.pop("regseed", 0)
        reg = regularization_set(n, seed, kw.pop("random_set", False))
        fields = dict(GLYPH_LORA, steps=GLYPH_STEPS, prior_preservation=True, class_data=str(reg), num_class_images=n)
        model = kw.pop("model", "mini")      # a pipeline folder instead of the shipped mini pipeline
        fields.update(kw)
        t0 = time.time()
        run = train(TrainConfig(model=model, data=str(ROOT / "data_samples" / "glyph"), method="lora",
                                cache_latents=True, sample_every=0, checkpoint_every=fields["steps"],
                                sample_at_start=False, out=str(WORK / f"run_{name}"), **fields), progress=None)
        seconds = time.time() - t0
        pipe = run.load_pipeline()
        concept = colors_right(judge, pipe, "a {fg} sks glyph on a {bg} background", pairs)
        digits = digits_right(judge, pipe)
        star = [det.star_rate(np.stack([np.asarray(i) for i in generate(pipe, ps, list(SEEDS), steps=STEPS,
                                                                          guidance_scale=GUIDANCE)]))
                for ps in (readme, [f"a {f} sks glyph on a {b} background" for f, b in pairs])]
        print(json.dumps({"v": name, "n": n, "regseed": seed, **kw, "train_s": round(seconds),
                          "both": round(concept["both_acc"], 3), "digit_joint": digits["joint_acc"],
                          "digit": digits["digit_acc"], "star": float(star[0]), "star12": round(float(star[1]), 3)}),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
