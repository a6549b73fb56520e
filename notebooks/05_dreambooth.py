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
# **Fine-tune a model on a handful of pictures of one subject — with prior preservation, so the rest of the world stays
# as it was — and measure whether it did.**
#
# ### What you will learn
# - DreamBooth's three parts: an *instance prompt* with a rare token (`a sks glyph`), *class images* the base model
#   draws for the class prompt (`a glyph`), and the *prior-preservation loss*
#   `loss = mean(instance) + prior_loss_weight × mean(class)`;
# - full-UNet DreamBooth (`method="dreambooth"`) and LoRA DreamBooth (`method="lora", prior_preservation=True`);
# - what fits a 16 GB T4: the pre-flight estimate and the T4 preset (fp16, gradient checkpointing, 8-bit Adam,
#   cached latents);
# - measuring **bleeding** with and without prior preservation — the claim is that it prevents it: does it, and how much?
# - exporting a fine-tuned model as a diffusers folder.
#
# ### Time and memory
# | where | time | memory |
# |---|---|---|
# | Colab T4, SD 1.5 at 512 px (real path, 400 steps, 100 class images) | ~15 min + ~5 min for class images | ~10 GB VRAM |
# | CPU, quick mode (`SDKIT_QUICK=1`: 30 steps, 8 class images, 2 seeds) | ~1–2 min | < 2 GB RAM |
# | CPU, full (mini model, 300 steps, 50 class images, 4 seeds) | ~10 min | < 2 GB RAM |

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
# Before a 20-minute run dies of *CUDA out of memory*, add up what it will hold: weights, gradients, optimizer states,
# activations. `sdkit.train.preflight` does it from the model's configs (no download), and proposes safer settings when a
# config is over budget. Its constants are fitted to the published T4 measurements (9.92 / 11.17 / 15.79 GB).

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
# `a glyph` back toward the base model's pictures, so `glyph = star` stays near the base model's value, while without
# it the class word turns into your subject. It does **not** protect prompts that are neither subject nor class: their
# drift is set by the learning rate and the number of steps. Measured on an early (500-step) mini model, full
# DreamBooth, 300 steps, batch 2 + 2, 50 class images, 4 seeds:
#
# | lr 2e-4 | fidelity | `a glyph` = star | control accuracy | control drift |
# |---|---|---|---|---|
# | base model | 0.00 | 0.00 | 0.62 | 0 |
# | without prior | 0.33 | **1.00** | 0.56 | 0.19 |
# | with prior | 0.17 | **0.00** | 0.56 | 0.15 |
#
# Prior preservation stopped the class from turning into the subject entirely, at half the fidelity for the same
# steps; unrelated prompts moved a little either way. At lr 1e-3 both runs wrecked the unrelated prompts (judge
# accuracy 0.62 → 0.00, drift ~0.9) — prior preservation did not help there. Your numbers will differ (another mini
# model, quick mode); the direction is what to check. On SD 1.5 the same measurement uses CLIP/DINO (`sdkit.evaluate`).

# %% [markdown]
# ## Step 5 · Export the fine-tuned model
#
# A DreamBooth run changes every UNet weight, so it is exported as a whole pipeline (`--format pipeline`), which
# `StableDiffusionPipeline.from_pretrained` loads. A LoRA DreamBooth run (`method="lora", prior_preservation=True`)
# exports as a LoRA file like notebook 04.

# %%
from sdkit.export import export
from diffusers import StableDiffusionPipeline
folder = export(runs["with prior"], "pipeline", WORK / "export" / "pipeline")
loaded = StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None, requires_safety_checker=False)
loaded.set_progress_bar_config(disable=True)
a = np.asarray(generate(loaded, ["a red sks glyph on a blue background"], [0], steps=STEPS)[0], dtype=np.float32)
b = np.asarray(generate(runs["with prior"].load_pipeline(), ["a red sks glyph on a blue background"], [0],
                        steps=STEPS)[0], dtype=np.float32)
print(folder, "| max pixel difference to the trained model:", np.abs(a - b).max() / 255)

# %% [markdown]
# ## Step 6 · Real path: SD 1.5 DreamBooth on your own pictures (Colab GPU)
#
# Runs only with a GPU and `SDKIT_REAL=1`. 100 class images take about 5 minutes on a T4 and are kept in the run
# folder (on Drive, they survive a disconnect and are reused).

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
# </details>
#
# ## What to try next
# - Notebook **06 · Evaluation**: pick the best checkpoint with held-out metrics instead of by eye.
# - `python -m sdkit export RUN --format pipeline` and load the folder in any diffusers script.
# - On Colab: the real-path cell with your own subject, then compare its class prompt before and after.
