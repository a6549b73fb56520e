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
# # 00 · Setup and tour: train a diffusion model in one minute
#
# **Promise:** by the end of this notebook you have trained a (small) Stable Diffusion model yourself, watched its loss
# and samples change live, stopped it safely, and know where everything it wrote lives.
#
# **What you will learn**
# 1. How to set up sdkit on Colab or on your own machine, and read the environment check (GPU, VRAM, bf16, RAM, disk).
# 2. How a run is configured: one config, shown as a form whose fields explain themselves.
# 3. How to start, watch and stop training (Train / Stop buttons and the notebook's ■ interrupt).
# 4. How to look at any run afterwards with `sdkit.show`.
#
# **Time and memory budget** (rough: measured on the project's 2-core CPU machine, see docs/TEACHING.md; the GPU
# row is an estimate. Step 5 prints how long your run trained, and the last cell how long the whole notebook took.)
#
# | tier | what trains | time | memory |
# |---|---|---|---|
# | Colab T4 (16 GB) | mini pipeline (or tiny), 150 steps | estimate: under a minute | < 1 GB VRAM |
# | laptop CPU | mini pipeline (or tiny), 150 steps | about a minute (2 cores) | < 2 GB RAM |
# | `SDKIT_QUICK=1` (CI) | 8 steps | seconds | < 2 GB RAM |
#
# The mini pipeline has the same architecture as SD 1.5 (CLIP text encoder, VAE, UNet), only small: what you learn here
# carries over to the real models in notebooks 04–05.

# %% [markdown]
# ## Setup
#
# Run this cell first. Locally (sdkit already importable) it only prints the version, the device and where runs go.
# On Colab it clones the course repository and installs sdkit **without touching Colab's torch** (sdkit never pins
# torch), and can keep your runs on Google Drive so they survive a disconnect. Every notebook of the course starts
# with this cell: a Colab install, then one call, `sdkit.ui.setup_notebook()`.

# %%
import importlib.util, subprocess, sys  # on Colab, first fetch the course and install it (Colab's torch is kept)
if "google.colab" in sys.modules and importlib.util.find_spec("sdkit") is None:
    subprocess.run("test -d /content/sdkit || git clone -q --depth 1 "
                   "${SDKIT_REPO:-https://github.com/sdkit-course/sdkit} /content/sdkit && "
                   f"{sys.executable} -m pip install -q -e /content/sdkit", shell=True, check=True)
    sys.path.insert(0, "/content/sdkit")
import sdkit.ui
# drive=True (Colab only) keeps runs on Google Drive: they survive a disconnect
NB = sdkit.ui.setup_notebook(chdir=False, drive=False)
RUNS, QUICK = NB.runs, NB.quick   # QUICK: SDKIT_QUICK=1, the CI switch: everything small

# %% [markdown]
# ## Step 1 · Check the environment
#
# Which GPU do you have, how much memory, does it support bf16? The answers decide the config: a T4 has no bf16 (use
# fp16), a CPU trains only the mini pipeline. `environment_report()` shows the facts and what they mean.

# %%
env = sdkit.ui.environment_report()

# %% [markdown]
# ## Step 2 · A model and a dataset
#
# Training needs a base pipeline and a folder of images, each with a caption in a `.txt` file of the same name.
# We use the **mini** pipeline shipped in `data_samples/` when it is there; otherwise a **tiny** random pipeline is made
# on the spot (it learns, but draws noise-like pictures) with a folder of colored shapes.

# %%
from pathlib import Path
from sdkit.models import PRESETS, data_samples_dir
from sdkit.quickstart import write_shapes_folder

MODEL = "mini" if (Path(PRESETS["mini"]["path"]()) / "model_index.json").is_file() else "tiny"
glyphs = data_samples_dir() / "glyph"
DATA = str(glyphs) if MODEL == "mini" and glyphs.is_dir() else str(write_shapes_folder(Path(RUNS) / "shapes-data", n=16, size=32))
print("model:", MODEL, "· data:", DATA)

# %%
# Look at a few training images and their captions.
from PIL import Image
from sdkit.sample import make_grid

files = sorted(Path(DATA).glob("*.png"))[:8]
for f in files[:4]:
    print(f.name, "->", f.with_suffix(".txt").read_text().strip())
make_grid([Image.open(f).convert("RGB").resize((64, 64), Image.NEAREST) for f in files], cols=8)

# %% [markdown]
# ## Step 3 · The config, as a form
#
# Every field of `sdkit.TrainConfig` appears in the form below, grouped in tabs; hover a field (or read the grey line
# under it) for what it does. Try a bad value (e.g. `lr_warmup_steps` larger than `steps`): the message appears next to
# the field and **Train** stays disabled, so nothing starts with a bad config. The *preset* menu fills a group of fields
# at once: **T4 safe** (fp16, gradient checkpointing, batch 1, 8-bit Adam when bitsandbytes is installed) and
# **CPU quick**.

# %%
import time

config = sdkit.TrainConfig(
    model=MODEL, data=DATA, method="lora", lora_rank=8,
    steps=8 if QUICK else 150, batch_size=4, lr=1e-3,
    sample_every=4 if QUICK else 50, sample_steps=4 if QUICK else 20, sample_seeds=[0, 1],
    checkpoint_every=4 if QUICK else 50,
    out=f"{RUNS}/tour-{time.strftime('%Y%m%d-%H%M%S')}",
)
panel = sdkit.ui.train_panel(config)   # form + Train/Stop + live dashboard (text progress where widgets can't show)

# %% [markdown]
# ## Step 4 · Train and watch
#
# Press **Train** above, or run the next cell (it trains in the foreground of the cell, which works in every frontend).
# The dashboard shows progress with it/s and ETA, the loss (raw and smoothed, learning rate dashed on the right axis),
# the step-0 samples beside the latest ones, and each checkpoint as it is written.
#
# **Stopping:** press **■** (interrupt the kernel): the run finishes its step, writes a checkpoint and returns; press
# twice to stop at once. The **Stop** button does the same where the frontend delivers clicks while the kernel is busy
# (JupyterLab ≥ 4.4.4 with ipykernel ≥ 7); in VS Code and Colab use ■. The panel tells you which applies here.

# %%
run = panel.last_run or panel.run()   # the run the Train button made, or train now
run

# %% [markdown]
# ## Step 5 · Look at the run
#
# Everything a run has is in its folder: `config.yaml`, `metrics.jsonl`, `samples/step_XXXXXX/`, `checkpoints/`.
# `sdkit.show` draws any run folder — this one, one written by the command line, or one on Drive after a disconnect —
# with plain images, so it works after a tab reload too. The last line says how long this run trained.

# %%
sdkit.show(run)
steps_done = run.metrics[-1] if run.metrics else {}
print(f"{run.final_step} steps in {steps_done.get('time', float('nan')):.0f} s of training, samples and checkpoints "
      f"included (metrics.jsonl's 'time' column)")

# %% [markdown]
# ## Exercises
#
# **1.** Type `20` into `lr_warmup_steps` with `steps` at 8 (or any warm-up longer than the run). What does the form
# say, and why is that an error rather than silently clamped?
#
# <details><summary>Solution</summary>
#
# The form shows `lr_warmup_steps: 20 is more than steps (8); the run would never reach lr. Fix: lr_warmup_steps <= 8`
# under the field, and Train stays disabled. Clamping silently would hide that the learning rate never reaches the value
# you asked for — sdkit raises errors that teach instead.
# </details>
#
# **2.** Train a second run with a learning rate ten times higher and compare the loss curves.
#
# <details><summary>Solution</summary>
#
# ```python
# panel.config = config.replace(lr=1e-2, out=f"{RUNS}/tour-lr1e-2")
# run2 = panel.run()
# sdkit.show(run2)
# for r in (run, run2):   # mean loss over the first and the last 10 logged steps, and how much it jumps step to step
#     loss = [m["loss"] for m in r.metrics]
#     jumps = [abs(b - a) for a, b in zip(loss, loss[1:])]
#     print(f"lr {r.config.lr:g}: first 10 {sum(loss[:10]) / 10:.4f}, last 10 {sum(loss[-10:]) / 10:.4f}, "
#           f"mean jump {sum(jumps) / len(jumps):.4f}")
# ```
# Look at two things: which run's loss falls faster over the first steps, and which one jumps more from step to
# step. A rate that is too high shows, with a real dataset, as a loss that stops falling or as samples that get
# worse from one sample step to the next.
# </details>
#
# **3.** Stop a run half-way with ■, then continue it.
#
# <details><summary>Solution</summary>
#
# ```python
# panel.config = config.replace(steps=400, out=f"{RUNS}/tour-resume")
# run3 = panel.run()                 # press ■ after a few seconds: a checkpoint is written
# panel.config = run3.config.replace(resume="latest")
# run3 = panel.run()                 # continues from the checkpoint, to step 400
# ```
# </details>

# %% [markdown]
# ## What to try next
#
# - Open **01 · build a UNet** to see what is inside the model you just trained.
# - Change `lora_rank`, `batch_size` or `sample_every` in the form and watch how speed and loss change.
# - On a GPU, apply the **T4 safe** preset and train `model="sd15"` on your own images (notebook 04 walks you through it).
# - From a terminal: `python -m sdkit train --help` runs the same loop; `sdkit.show("runs/NAME")` shows its run here.

# %%
print("notebook time:", NB.elapsed())
