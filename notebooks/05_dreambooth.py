# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · DreamBooth
#
# **Fine-tune a model on a handful of pictures of one subject — with prior preservation, so that the subject's class
# keeps its meaning — and measure whether it did.**
#
# ### What you will learn
# - DreamBooth's three parts: an *instance prompt* with a rare token (`a sks glyph`), *class images* the base model
#   draws for the class prompt (`a glyph`), and the *prior-preservation loss*
#   `loss = mean(instance) + prior_loss_weight × mean(class)`;
# - full-UNet DreamBooth (`method="dreambooth"`) and LoRA DreamBooth (`method="lora", prior_preservation=True`);
# - what fits a 16 GB T4: the pre-flight estimate and the T4 preset (fp16, gradient checkpointing, 8-bit Adam,
#   cached latents);
# - measuring **bleeding** with and without prior preservation — the claim is that it lowers it: does it, and by how
#   much?
# - exporting a fine-tuned model as a diffusers folder.
#
# Where the text claims a direction (prior preservation lowers bleeding into the class, it costs some fidelity, the
# export draws what the trained model drew), a cell measures it and prints `claim held: True/False` with the figures.
# In quick mode the models barely train, so its verdicts mean nothing: run full mode to test the claims.
#
# ### Time and memory
# | where | time | memory |
# |---|---|---|
# | Colab T4, SD 1.5 at 512 px (real path, 400 steps, 100 class images) | not measured yet | the pre-flight in Step 1 estimates it |
# | CPU, quick mode (`SDKIT_QUICK=1`: 30 steps, 8 class images, 2 seeds) | ~1–2 min | see the last cell |
# | CPU, full (mini model, 300 steps, 50 class images, 4 seeds) | ~2–3 min (2.2 min on 1 thread, 2026-12-05) | see the last cell |
#
# The CPU times are rough, measured on the project's 2-core VM (see docs/TEACHING.md); the last cell prints this
# notebook's own time and peak memory on your machine.

# %% [markdown]
# ## Setup
# On Colab this clones the course and installs it; locally, run it from a checkout (`pip install -e .`).
#
# > **Real path (Colab, SD 1.5).** Set `SDKIT_REAL=1` (e.g. `%env SDKIT_REAL=1`) on a GPU runtime and put 5–20
# > pictures of *your* subject with captions in `MY_DATA`. The cells marked *real* then train SD 1.5
# > (`stable-diffusion-v1-5/stable-diffusion-v1-5`, the community mirror) with the T4 preset; without a GPU they skip.

# %%
import importlib.util, subprocess, sys  # on Colab, first fetch the course and install it (Colab's torch is kept)
if "google.colab" in sys.modules and importlib.util.find_spec("sdkit") is None:
    subprocess.run("test -d /content/sdkit || git clone -q --depth 1 "
                   "${SDKIT_REPO:-https://github.com/sdkit-course/sdkit} /content/sdkit && "
                   f"{sys.executable} -m pip install -q -e /content/sdkit", shell=True, check=True)
    sys.path.insert(0, "/content/sdkit")
import sdkit.ui
NB = sdkit.ui.setup_notebook()   # repository root as working directory, quick mode, device

# %%
import os
import shutil
from pathlib import Path
import numpy as np
import torch
import matplotlib.pyplot as plt
from PIL import Image
from IPython.display import display

import sdkit
from sdkit.sample import generate, label_grid
from sdkit.mini.concept import StarDetector, measure, CONCEPT_PROMPTS, CONTROL_PROMPTS

QUICK = NB.quick   # SDKIT_QUICK=1 — CI and classrooms: about a minute on a CPU
REAL = torch.cuda.is_available() and os.environ.get("SDKIT_REAL", "0") == "1"  # SD 1.5 cells (Colab GPU)
MODEL = os.environ.get("SDKIT_MODEL") or (  # mini when shipped; tiny (random weights) only runs the code path
    "mini" if Path("data_samples/mini-sd/model_index.json").is_file() else "tiny")
WORK = Path("runs/nb05")
shutil.rmtree(WORK, ignore_errors=True)
WORK.mkdir(parents=True)
SEEDS = (0, 1) if QUICK else (0, 1, 2, 3)
STEPS = 10 if QUICK else 25            # denoising steps per picture
detector = StarDetector.fit()           # star-vs-rest on shape masks (the judge does not know stars)
print("model:", MODEL)


# %% [markdown]
# ## Step 1 · What fits a T4? The pre-flight estimate
#
# Before a long run dies of *CUDA out of memory*, add up what it will hold: weights, gradients, optimizer states,
# activations. `sdkit.train.preflight` does it from the model's configs (no download), and proposes safer settings when a
# config is over budget. Its constants are fitted to three published T4 measurements of full-UNet DreamBooth
# (9.92 / 11.17 / 15.79 GB; docs/BENCHMARKS.md), so treat it as an estimate, not a guarantee.

# %%
from sdkit.train.preflight import preflight, t4_preset
sd15 = sdkit.TrainConfig(model="sd15", data="x", method="dreambooth", instance_prompt="a photo of sks dog",
                         class_prompt="a photo of a dog", resolution=512)
print(preflight(sd15, budget_gb=15, bitsandbytes=True).text())
print()
print("T4 preset:", t4_preset(bitsandbytes=True))
print(preflight(sd15.replace(**t4_preset(bitsandbytes=True)), budget_gb=15).text())

# %% [markdown]
# ## Step 2 · Class images
#
# The base model draws `num_class_images` pictures of the class prompt into `RUN/class_images/` (seed k for picture k,
# so they are the same for everyone). They are reused when the folder already holds them, and count toward N — give a
# second run `class_data=` that folder and it draws nothing.

# %%
N = 8 if QUICK else 50
common = dict(model=MODEL, data="data_samples/glyph", instance_prompt="a sks glyph", class_prompt="a glyph",
              num_class_images=N, batch_size=2, steps=30 if QUICK else 300, lr=2e-4,
              sample_steps=STEPS, sample_every=0, sample_seeds=[0], tensorboard=False, checkpoint_every=0)
prior_cfg = sdkit.TrainConfig(method="dreambooth", prior_loss_weight=1.0, out=str(WORK / "prior"), **common)
from sdkit.train.loop import Trainer
trainer = Trainer(prior_cfg, progress=None)     # draws the class images (a real run does it at its start)
class_images = sorted((WORK / "prior" / "class_images").glob("*.png"))
print(len(class_images), "class images in", WORK / "prior" / "class_images")
display(label_grid([Image.open(p) for p in class_images[:8]], ["a glyph"], [""] * min(8, len(class_images)), cell=64))

# %% [markdown]
# ## Step 3 · Train twice: with and without prior preservation
#
# Same seed, same data, same steps; the only difference is the class half of each batch. The instance pictures all
# use the instance prompt `a sks glyph` (their colors are not in the prompt, so the model must learn them as part of
# the subject — try the sidecar captions in exercise 2).

# %%
runs = {"without prior": sdkit.train(prior_cfg.replace(prior_preservation=False, out=str(WORK / "plain")),
                                   progress=None)}
del trainer
runs["with prior"] = sdkit.train(prior_cfg, progress=None)
for name, r in runs.items():
    print(f"{name:>14}: {r}")

# %% [markdown]
# ## Step 4 · Measure: fidelity and bleeding
#
# - **fidelity**: concept prompts drawn as stars;
# - **glyph = star**: how often the class prompt *alone* now draws the subject (bleeding into the class);
# - **control acc.**: the judge's accuracy (shape and colors) on unrelated prompts; **drift**: how far those pictures
#   moved from the base model's (mini-CLIP image embeddings, 0 = unchanged).

# %%
base = measure(sdkit.load_pipeline(MODEL), seeds=SEEDS, steps=STEPS, detector=detector)
results = {"base model": base}
for name, r in runs.items():
    results[name] = measure(r.load_pipeline(), base["images"]["control"], seeds=SEEDS, steps=STEPS,
                            detector=detector)
print(f"{'':>14} {'fidelity':>9} {'glyph=star':>11} {'control acc':>12} {'drift':>7}")
for name, r in results.items():
    print(f"{name:>14} {r['fidelity']:>9.2f} {r['class_star_rate']:>11.2f} {r['control_acc']:>12.2f} "
          f"{r.get('control_drift', 0):>7.3f}")
keys = ["fidelity", "class_star_rate", "control_acc"]
x = np.arange(len(keys))
plt.figure(figsize=(6, 3))
for k, (name, r) in enumerate(results.items()):
    plt.bar(x + 0.27 * (k - 1), [r[key] for key in keys], width=0.27, label=name)
plt.xticks(x, ["fidelity", "'a glyph' = star", "control accuracy"]); plt.ylim(0, 1.05); plt.legend(); plt.show()
for name, r in results.items():
    display(label_grid([Image.fromarray(a) for a in list(r["images"]["class"][:2]) + list(r["images"]["control"][:4])],
                       [name], ["a glyph", "a glyph", *["control"] * 4], cell=64))

# %% [markdown]
# **Reading the table.** Prior preservation protects *the class prompt*: the class half of every batch pulls
# `a glyph` back toward the base model's pictures, so `glyph = star` should stay near the base model's value, while
# without it the class word can turn into your subject (every instance caption contains it). The same half of the
# batch pulls against the subject, so at the same steps prior preservation can cost some fidelity. Nothing in the
# loss mentions prompts that are neither subject nor class, so whether their drift changes is a question, not a
# claim: the cell prints both runs' figures.
#
# With 4 seeds the star rate moves in steps of 0.25, so the cell also measures the class pictures more finely:
# **class drift** is how far the `a glyph` pictures moved from the base model's (mini-CLIP image embeddings, as the
# control drift). On SD 1.5 the same measurement uses CLIP/DINO (`sdkit.evaluate`).

# %%
from sdkit.evaluate.metrics import mini_extractors
extractors = mini_extractors(judge=False)
base_class = torch.as_tensor(extractors.image(base["images"]["class"])).float()
def class_drift(r):      # 1 - cosine to the base model's "a glyph" pictures, seed by seed
    return float(1 - (torch.as_tensor(extractors.image(r["images"]["class"])).float() * base_class).sum(-1).mean())
off, on = results["without prior"], results["with prior"]
print("prior preservation lowers bleeding into the class ('a glyph' = star): claim held:",
      bool(on["class_star_rate"] < off["class_star_rate"]),
      f"(without {off['class_star_rate']:.2f} -> with {on['class_star_rate']:.2f}; base {base['class_star_rate']:.2f})")
print("prior preservation keeps 'a glyph' closer to the base model's pictures (class drift): claim held:",
      bool(class_drift(on) < class_drift(off)), f"(without {class_drift(off):.3f} -> with {class_drift(on):.3f})")
print("prior preservation costs fidelity at the same steps: claim held:", bool(on["fidelity"] < off["fidelity"]),
      f"(without {off['fidelity']:.2f} -> with {on['fidelity']:.2f})")
print(f"unrelated prompts (a question, not a claim): drift without {off['control_drift']:.3f} -> with "
      f"{on['control_drift']:.3f}, control accuracy {off['control_acc']:.2f} -> {on['control_acc']:.2f} "
      f"(base {base['control_acc']:.2f})")

# %% [markdown]
# ## Step 5 · Export the fine-tuned model
#
# A DreamBooth run changes every UNet weight, so it is exported as a whole pipeline (`--format pipeline`), which
# `StableDiffusionPipeline.from_pretrained` loads. A LoRA DreamBooth run (`method="lora", prior_preservation=True`)
# exports as a LoRA file like notebook 04. The check: the exported folder draws the trained model's picture (at most
# 0.02 apart in any pixel, on a 0–1 scale).

# %%
from sdkit.export import export
from diffusers import StableDiffusionPipeline
folder = export(runs["with prior"], "pipeline", WORK / "export" / "pipeline")
loaded = StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None, requires_safety_checker=False)
loaded.set_progress_bar_config(disable=True)
a = np.asarray(generate(loaded, ["a red sks glyph on a blue background"], [0], steps=STEPS)[0], dtype=np.float32)
b = np.asarray(generate(runs["with prior"].load_pipeline(), ["a red sks glyph on a blue background"], [0],
                        steps=STEPS)[0], dtype=np.float32)
d = float(np.abs(a - b).max() / 255)
print(folder)
print("the exported pipeline draws what the trained model drew: claim held:", d <= 0.02,
      f"(max pixel difference {d:.4f})")

# %% [markdown]
# ## Step 6 · Real path: SD 1.5 DreamBooth on your own pictures (Colab GPU)
#
# Runs only with a GPU and `SDKIT_REAL=1`. Drawing the 100 class images is part of the run's time (not measured on
# a T4 yet); they are kept in the run folder (on Drive, they survive a disconnect and are reused).

# %%
if REAL:
    from sdkit.methods.prior import with_control_prompts
    MY_DATA = os.environ.get("SDKIT_MY_DATA", "/content/drive/MyDrive/my_subject")
    real = sdkit.TrainConfig(model="sd15", data=MY_DATA, method="dreambooth", resolution=512,
                             instance_prompt="a photo of sks dog", class_prompt="a photo of a dog",
                             num_class_images=100, lr=2e-6, steps=400, checkpoint_every=100, sample_every=100,
                             out="/content/drive/MyDrive/runs/dreambooth",
                             sample_prompts=with_control_prompts(["a photo of sks dog"], "dog", ["a photo of a cat"]),
                             **t4_preset())
    report = preflight(real)
    print(report.text())
    real_run = sdkit.train(real.replace(**(report.safer or {})))
    sdkit.show(real_run)
else:
    print("skipped: needs a GPU and SDKIT_REAL=1")

# %% [markdown]
# ## Exercises
#
# 1. Train LoRA DreamBooth (`method="lora", prior_preservation=True`) with the same class images. Compare its row
#    with the full-UNet one.
# <details><summary>Solution</summary>
#
# ```python
# lora_db = sdkit.train(prior_cfg.replace(method="lora", prior_preservation=True, lr=5e-3, out=str(WORK / "lora_db"),
#                                         lora_targets="to_q,to_k,to_v,to_out.0,ff.net.0.proj,ff.net.2,conv1,conv2",
#                                         class_data=str(WORK / "prior" / "class_images")), progress=None)
# r = measure(lora_db.load_pipeline(), base["images"]["control"], seeds=SEEDS, steps=STEPS, detector=detector)
# print(r["fidelity"], r["class_star_rate"], r["control_acc"], r["control_drift"])
# ```
# </details>
#
# 2. Drop `instance_prompt` so each picture trains on its own caption (`a red sks glyph on a blue background`). Which
#    changes: fidelity for colored prompts, or bleeding?
# <details><summary>Solution</summary>
#
# ```python
# cap = sdkit.train(prior_cfg.replace(instance_prompt="", out=str(WORK / "captions"),
#                                     class_data=str(WORK / "prior" / "class_images")), progress=None)
# print({k: v for k, v in measure(cap.load_pipeline(), base["images"]["control"], seeds=SEEDS, steps=STEPS,
#                                 detector=detector).items() if k != "images"})
# ```
# </details>
#
# 3. Sweep `prior_loss_weight` over 0.3, 1 and 3. Plot fidelity and `glyph = star` against it.
# <details><summary>Solution</summary>
#
# ```python
# ws, fid, bleed = [0.3, 1.0, 3.0], [], []
# for w in ws:
#     r = sdkit.train(prior_cfg.replace(prior_loss_weight=w, out=str(WORK / f"w{w}"),
#                                       class_data=str(WORK / "prior" / "class_images")), progress=None)
#     m = measure(r.load_pipeline(), seeds=SEEDS, steps=STEPS, detector=detector)
#     fid.append(m["fidelity"]); bleed.append(m["class_star_rate"])
# plt.plot(ws, fid, "o-", label="fidelity"); plt.plot(ws, bleed, "o-", label="'a glyph' = star")
# plt.xscale("log"); plt.legend(); plt.show()
# ```
# Look for the trade-off: as the weight grows, `glyph = star` should fall or stay at the base model's value while
# fidelity falls (in quick mode the runs are too short to show either).
# </details>
#
# 4. Raise the learning rate to 1e-3 and train both runs again. Does prior preservation still protect the class
#    word, and does it protect the unrelated prompts when the learning rate is too high?
# <details><summary>Solution</summary>
#
# ```python
# hot = {"without prior": prior_cfg.replace(prior_preservation=False, lr=1e-3, out=str(WORK / "plain_hot")),
#        "with prior": prior_cfg.replace(lr=1e-3, out=str(WORK / "prior_hot"),
#                                        class_data=str(WORK / "prior" / "class_images"))}
# for name, c in hot.items():
#     m = measure(sdkit.train(c, progress=None).load_pipeline(), base["images"]["control"], seeds=SEEDS,
#                 steps=STEPS, detector=detector)
#     print(f"{name:>14} {m['fidelity']:>9.2f} {m['class_star_rate']:>11.2f} {m['control_acc']:>12.2f} "
#           f"{m['control_drift']:>7.3f}")
# ```
# Compare the control accuracy and drift of both rows with the base model's and with Step 4's table. If both runs
# lose the unrelated prompts, prior preservation guards the class word, not the rest of the model: the learning rate
# and the number of steps set that.
# </details>
#
# ## What to try next
# - Notebook **06 · Evaluation**: pick the best checkpoint with held-out metrics instead of by eye.
# - `python -m sdkit export RUN --format pipeline` and load the folder in any diffusers script.
# - On Colab: the real-path cell with your own subject, then compare its class prompt before and after.

# %%
print("notebook time:", NB.elapsed(), "|", NB.peak_memory())   # the header's time and memory, measured here
