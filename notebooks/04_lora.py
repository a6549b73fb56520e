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
# # 04 · LoRA
#
# **Teach a model a new concept with a small fraction of its weights — measure that it learned it, that nothing else
# changed, and export one file that AUTOMATIC1111, ComfyUI and diffusers all load.**
#
# ### What you will learn
# - what a LoRA is: `W + (alpha / rank) · B A`, which layers get one (`lora_targets`), rank, alpha, dropout;
# - control prompts in the samples from step 0, so *bleeding* shows the moment it starts;
# - why a LoRA on a new word can move every prompt, and two remedies: **give the word a meaning first** (a short
#   textual inversion) and a **regularization set** (the base model's own pictures of other prompts, trained beside
#   the concept: kohya's "regularization images");
# - measuring the concept (**fidelity**) and what must not change (**control accuracy**) against the steps;
# - strength at inference (`cross_attention_kwargs={"scale": s}`, `set_adapters`), merging (`fuse_lora`) and unmerging;
# - exporting: diffusers (`load_lora_weights`) and kohya (A1111 / ComfyUI), checked to draw the same picture;
# - a small rank × learning-rate sweep.
#
# Where the text claims a direction (the concept is learned, unrelated prompts keep their accuracy, learning the word
# moves its prompt away from the digits, the remedies keep more unrelated prompts right, a higher rank or learning
# rate changes the model more), a cell measures it and prints `claim held: True/False` with the figures.
# In quick mode the models barely train, so its verdicts mean nothing: run full mode to test the claims.
#
# ### Time and memory
# | where | time | memory |
# |---|---|---|
# | Colab T4, SD 1.5 at 512 px (real path, 800 steps, rank 8) | not measured yet | the pre-flight in Step 2 estimates it |
# | CPU, quick mode (`SDKIT_QUICK=1`: 40 steps, 2 seeds, a 2 × 2 sweep) | ~1–2 min | see the last cell |
# | CPU, full (mini model, 400 + 400 steps, 4 seeds, a 3 × 3 sweep of 200 steps) | ~12–16 min | see the last cell |
#
# The CPU times are rough, measured on the project's 2-core VM (see docs/TEACHING.md); the last cell prints this
# notebook's own time and peak memory on your machine.
#
# The offline default is the **mini world**: a small Stable Diffusion (same classes as SD 1.5) that draws digits and
# shapes in colors, and a new concept it has never seen — the **sks glyph**, a star (`data_samples/glyph`, 24 pictures).

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
WORK = Path("runs/nb04")
shutil.rmtree(WORK, ignore_errors=True)
WORK.mkdir(parents=True)
SEEDS = (0, 1) if QUICK else (0, 1, 2, 3)
STEPS = 10 if QUICK else 25            # denoising steps per picture
detector = StarDetector.fit()           # star-vs-rest on shape masks (the judge does not know stars)
held_x, held_y = StarDetector.training_set(300, seed=1)   # rendered glyphs it did not train on (a third are stars)
print("model:", MODEL, f"| star detector right on {np.mean((detector.p_star(held_x) > 0.5) == held_y):.0%} "
      "of 300 held-out rendered glyphs")


# %% [markdown]
# ## Step 1 · The concept, and what the base model draws for it
#
# Training pictures on the top row; below them the base model's answer to `a red sks glyph on a blue background`:
# it has never seen `sks`, so it should draw some other glyph, and its fidelity should be near zero. The **fidelity**
# number is the share of pictures a star-vs-rest detector calls a star. The detector reads shape masks, not colors;
# the setup cell printed how often it is right on rendered glyphs it never saw, but generated stars are softer than
# rendered ones and it misses some of them, so read fidelity as a lower bound and always look at the pictures.

# %%
train = [Image.open(p) for p in sorted(Path("data_samples/glyph").glob("*.png"))[:8]]
base_pipe = sdkit.load_pipeline(MODEL)
base = measure(base_pipe, seeds=SEEDS, steps=STEPS, detector=detector)
drawn = [Image.fromarray(x) for x in base["images"]["concept"]]
k = min(8, len(drawn))
display(label_grid(train[:k] + drawn[:k], ["training", "base model"], [""] * k, cell=64))
print(f"base model: fidelity {base['fidelity']:.2f}, 'a glyph' is a star {base['class_star_rate']:.2f}, "
      f"control accuracy {base['control_acc']:.2f}")

# %% [markdown]
# ## Step 2 · Configure the LoRA (and check it fits)
#
# A LoRA replaces each chosen weight `W` by `W + (alpha / rank) · B A`, with `A` (rank × in) and `B` (out × rank)
# the only trained tensors; `B` starts at zero, so step 0 draws exactly the base model.
# - `lora_rank` — size of the update (4–32 is usual for SD 1.5); the parameters grow linearly with it;
# - `lora_alpha` — the update is multiplied by alpha / rank: alpha = rank gives scale 1; alpha = rank / 2 halves it
#   (kohya's `network_alpha`; with a smaller alpha you usually raise the learning rate by the same factor);
# - `lora_targets` — attention projections by default; add `ff.net.0.proj,ff.net.2` (feed-forward) or `conv1,conv2`
#   (ResNet convolutions: "LoCon") for concepts that are about texture rather than layout;
# - `lora_dropout` — dropout on the LoRA branch while training (0.0–0.1).
#
# Here a new *shape* must be learned by a very small UNet. Attention is where the prompt enters and where positions
# exchange information; the feed-forward layers and the transformer's input/output projections (`proj_in`,
# `proj_out`) do much of the drawing inside each transformer block, and a new outline needs them too. The ResNet
# convolutions are left out: they are shared by every prompt, and a LoRA there moved unrelated prompts more in the
# project's measurements (docs/BENCHMARKS.md). Whether attention alone would do is exercise 2, which trains one and
# measures it. This is the quickstart's recipe, `sdkit.quickstart.GLYPH_LORA`, printed below.
#
# The pre-flight below counts the trained parameters and prints what share of the UNet they are, for the mini model
# and for SD 1.5 with the same targets and rank.
#
# **Control prompts** go in the samples from step 0: the class word alone and unrelated prompts. If they start to
# show stars, the concept is bleeding. `with_control_prompts` builds that list.

# %%
from sdkit.methods.prior import with_control_prompts
from sdkit.train.preflight import preflight, t4_preset
from sdkit.quickstart import GLYPH_LORA, GLYPH_STEPS, REGULARIZATION_IMAGES, write_regularization_set

print("recipe:", GLYPH_LORA)
config = sdkit.TrainConfig(
    model=MODEL, data="data_samples/glyph", out=str(WORK / "lora"), steps=40 if QUICK else GLYPH_STEPS,
    **GLYPH_LORA,    # rank 8 = alpha (scale 1), lr 1e-3, batch 8, attention + feed-forward + proj_in/out
    checkpoint_every=10 if QUICK else 100, sample_every=20 if QUICK else 100, sample_steps=STEPS,
    sample_prompts=with_control_prompts(CONCEPT_PROMPTS[:2], "glyph"), sample_seeds=[0], tensorboard=False)
print(config.sample_prompts)
report = preflight(config)
print(report.text())
print(f"the LoRA trains {report.params['trained'] / report.params['unet']:.2%} of the UNet's weights")
sd15 = config.replace(model="sd15", resolution=512, batch_size=1, **t4_preset(bitsandbytes=True))
report15 = preflight(sd15, budget_gb=15)
print("\nthe same LoRA on SD 1.5 with the T4 preset:\n" + report15.text())
print(f"on SD 1.5 it trains {report15.params['trained'] / report15.params['unet']:.2%} of the UNet's weights")

# %% [markdown]
# ## Step 3 · Why a new word can move every prompt, and two remedies
#
# The UNet never reads the words: it reads the text encoder's output, one vector per token. A word the encoder never
# saw in training (`sks`, and `glyph`, which the mini world never uses) gets an embedding nothing has shaped, so the
# prompt's vectors may differ little from those of prompts the model already knows. Then whatever the LoRA learns
# for `a red sks glyph on a white background`, it also applies to `a red five on a white background`. The cell below
# measures how close the encoder puts them (cosine similarity of the output vectors, averaged over the tokens).
# (SD 1.5's CLIP read billions of captions, so `sks` already means something there; the mini encoder read only the
# mini world's.)
#
# Two remedies, used together by the quickstart and here:
# 1. **Give the word a meaning first.** A short textual-inversion run (notebook 07 explains the method) learns one
#    vector for `sks` from the concept's pictures, with the UNet and the encoder frozen; the vector goes into the
#    word's row of the embedding table (`sdkit.quickstart.write_word_pipeline`). Every other prompt encodes exactly
#    as before, and the concept's prompts now point somewhere of their own. Trained together with a LoRA, this is
#    what diffusers' advanced DreamBooth script calls *pivotal tuning*; here it runs first, as its own stage.
# 2. **A regularization set** (kohya's "regularization images", DreamBooth's "prior preservation"): the base model
#    draws pictures of many prompts it already knows, here every (foreground, background) color pair twice with
#    digits and shapes in turn, and they train beside the concept pictures; their loss (weighted by
#    `prior_loss_weight`) pulls the model back to what it drew before.

# %%
from sdkit.quickstart import WORD_STEPS, write_word_pipeline

def encoder_cosines(pipe, pairs):
    """Mean cosine similarity of the encoder's output vectors for each pair of prompts."""
    tok, te = pipe.tokenizer, pipe.text_encoder
    with torch.no_grad():
        ids = tok([t for pair in pairs for t in pair], padding="max_length", max_length=tok.model_max_length,
                  truncation=True, return_tensors="pt")
        states = te(ids.input_ids)[0]                            # (prompts, 77, hidden): what the UNet reads
    return [torch.nn.functional.cosine_similarity(states[2 * i], states[2 * i + 1], dim=-1).mean().item()
            for i in range(len(pairs))]

pairs = [("a red sks glyph on a white background", "a red five on a white background"),
         ("a red sks glyph on a white background", "a blue five on a black background"),
         ("a red five on a white background", "a red seven on a white background")]
cos = encoder_cosines(base_pipe, pairs)
for c, (a, b) in zip(cos, pairs):
    print(f"{c:.3f}  {a!r} vs {b!r}")
print("the encoder puts the sks prompt closer to a digit prompt of the same colors than to one of other colors: "
      "claim held:", cos[0] > cos[1], f"({cos[0]:.3f} vs {cos[1]:.3f})")

word_model = str(write_word_pipeline(MODEL, "data_samples/glyph", WORK / "base_with_sks",
                                     steps=10 if QUICK else WORD_STEPS))
after = encoder_cosines(sdkit.load_pipeline(word_model), pairs)
print("learning the word moves the sks prompt away from the digit prompt: claim held:", after[0] < cos[0],
      f"(cosine {cos[0]:.3f} -> {after[0]:.3f}; digit vs digit unchanged: {cos[2]:.3f} -> {after[2]:.3f})")

n_reg = 8 if QUICK else REGULARIZATION_IMAGES
reg_dir = write_regularization_set(MODEL, WORK / "regularization", n=n_reg, steps=STEPS)
reg = sorted(reg_dir.glob("*.png"))
print(f"{len(reg)} regularization pictures in {reg_dir}, e.g. {(reg_dir / (reg[0].stem + '.txt')).read_text().strip()!r}")
display(label_grid([Image.open(p) for p in reg[:8]], ["base model"], [""] * min(8, len(reg)), cell=64))

# %% [markdown]
# ## Step 4 · Train
# Loss and samples update as it runs; every row of the sample grid is one prompt, the last three are the controls.
# The LoRA trains on the pipeline with `sks` learned; `prior_preservation=True` adds a batch of regularization
# pictures to every step (the loss curve is their sum). A second run, the plain LoRA on the original model without
# either remedy, is what the next step compares it with.

# %%
plain = sdkit.train(config.replace(out=str(WORK / "lora_plain"), checkpoint_every=0, sample_every=0,
                                   sample_at_start=False), progress=None)
config = config.replace(model=word_model, prior_preservation=True, class_data=str(reg_dir), num_class_images=n_reg)
run = sdkit.train(config)
sdkit.show(run)

# %% [markdown]
# ## Step 5 · Fidelity and bleeding against the steps
#
# Each checkpoint is loaded on the base model and measured on the same prompts and seeds. Two claims: fidelity
# should rise, and the judge's accuracy on unrelated prompts should stay at the base model's level (the LoRA learned
# one thing, not a new way of drawing), and more of them drawn right than with the plain LoRA. Drift (how far
# the unrelated pictures moved, by mini-CLIP image embedding) is printed too: a picture can move and still be right,
# so the two need not agree. Also watch the class word: `glyph` is in every training caption, so the
# LoRA may teach it the star too — that is *bleeding into the class*, and notebook 05 measures a remedy.

# %%
from sdkit.evaluate.metrics import mini_extractors
extractors = mini_extractors(judge=False)          # mini CLIP's image tower, for the drift (loaded once)
rows = [(0, base)]
for ck in run.checkpoints:
    step = int(ck.name[5:])
    rows.append((step, measure(run.load_pipeline(ck.name), base["images"]["control"], seeds=SEEDS, steps=STEPS,
                               detector=detector, extractors=extractors)))
print(f"{'step':>5} {'fidelity':>9} {'glyph=star':>11} {'control acc':>12} {'control drift':>14}")
for step, r in rows:
    print(f"{step:>5} {r['fidelity']:>9.2f} {r['class_star_rate']:>11.2f} {r['control_acc']:>12.2f} "
          f"{r.get('control_drift', 0):>14.3f}")
steps_ = [s for s, _ in rows]
plt.figure(figsize=(5, 3))
for key in ("fidelity", "class_star_rate", "control_acc"):
    plt.plot(steps_, [r[key] for _, r in rows], marker="o", label=key)
plt.xlabel("step"); plt.ylim(-0.05, 1.05); plt.legend(); plt.title("LoRA on the sks glyph"); plt.show()

first, last = rows[0][1], rows[-1][1]
n_control = len(CONTROL_PROMPTS) * len(SEEDS)     # judged pictures: one more or fewer right moves accuracy by 1/n
print(f"step 0 -> step {rows[-1][0]}:")
print("  the concept was learned (fidelity rose): claim held:", bool(last["fidelity"] > first["fidelity"]),
      f"({first['fidelity']:.2f} -> {last['fidelity']:.2f})")
print(f"  unrelated prompts kept their accuracy (lost at most 2 of {n_control} pictures): claim held:",
      bool(last["control_acc"] >= first["control_acc"] - 2 / n_control - 1e-9),
      f"({first['control_acc']:.2f} -> {last['control_acc']:.2f}, drift {last.get('control_drift', 0):.3f})")
print(f"  'a glyph' drawn as a star (bleeding into the class): {first['class_star_rate']:.2f} -> "
      f"{last['class_star_rate']:.2f}")
without = measure(plain.load_pipeline(), base["images"]["control"], seeds=SEEDS, steps=STEPS, detector=detector,
                  extractors=extractors)
print("plain LoRA (no learned word, no regularization set):", f"fidelity {without['fidelity']:.2f}, control "
      f"accuracy {without['control_acc']:.2f}, drift {without['control_drift']:.3f}")
print("  the two remedies keep more unrelated prompts drawn right than the plain LoRA: claim held:",
      bool(last["control_acc"] > without["control_acc"]),
      f"({last['control_acc']:.2f} with, {without['control_acc']:.2f} without)")
print("  ... and closer to the base model's pictures by mini-CLIP embedding (less drift): claim held:",
      bool(last["control_drift"] < without["control_drift"]),
      f"({last['control_drift']:.3f} with, {without['control_drift']:.3f} without)")

# %% [markdown]
# ## Step 6 · Strength, merge and unmerge
#
# Export the LoRA in diffusers format, load it on a fresh base pipeline and draw it at several strengths:
# `cross_attention_kwargs={"scale": s}` (per call) or `pipe.set_adapters([name], adapter_weights=[s])` (sticky).
# `fuse_lora()` merges `W + s · (alpha/rank) · BA` into the weights (no extra cost per step, what you ship);
# `unfuse_lora()` subtracts it again. The cell checks both claims on one picture: fused draws what the adapter drew,
# and after unfusing the adapter draws it again (same picture: at most 0.02 apart in any pixel, on a 0–1 scale).

# %%
from sdkit.export import export, lora_modules
diff_dir = export(run, "diffusers", WORK / "export" / "diffusers")
pipe = sdkit.load_pipeline(config.model)   # the base it trained on: mini + `sks`
pipe.load_lora_weights(str(diff_dir), adapter_name="glyph")
scales = [0.0, 0.5, 1.0, 1.5]
images = []
for s in scales:
    pipe.set_adapters(["glyph"], adapter_weights=[s])
    images += generate(pipe, [CONCEPT_PROMPTS[0]], SEEDS, steps=STEPS)
display(label_grid(images, [f"scale {s}" for s in scales], [f"seed {s}" for s in SEEDS], cell=64))
pipe.set_adapters(["glyph"], adapter_weights=[1.0])
before = np.asarray(generate(pipe, [CONCEPT_PROMPTS[0]], [0], steps=STEPS)[0], dtype=np.float32)
pipe.fuse_lora(lora_scale=1.0)
fused = np.asarray(generate(pipe, [CONCEPT_PROMPTS[0]], [0], steps=STEPS)[0], dtype=np.float32)
pipe.unfuse_lora()
unfused = np.asarray(generate(pipe, [CONCEPT_PROMPTS[0]], [0], steps=STEPS)[0], dtype=np.float32)
for name, x in (("fused", fused), ("unfused", unfused)):
    d = float(np.abs(x - before).max() / 255)
    print(f"{name} draws what the adapter drew: claim held:", d <= 0.02, f"(max pixel difference {d:.4f})")

# %% [markdown]
# ## Step 7 · Export for every tool
#
# - **kohya** (`.safetensors` with `lora_unet_…` / `lora_te_text_model_…` keys, `lora_down`/`lora_up`/`alpha`, `ss_*`
#   metadata): the only layout AUTOMATIC1111 and ComfyUI both load whole — copy it to `models/Lora` (A1111) or
#   `models/loras` (ComfyUI). diffusers loads it too.
# - **diffusers** (a folder for `pipe.load_lora_weights`).
#
# Same command line: `python -m sdkit export RUN --format kohya --out FILE`. The check below is what the tests assert:
# every module in the file becomes a LoRA layer, and both files draw the same picture (at most 0.02 apart).
#
# This LoRA was trained on the pipeline where `sks` has its learned vector (Step 3), so it is loaded on that one here;
# ship the word with it. In AUTOMATIC1111 or ComfyUI that is an embedding file named after the word, exported from
# stage 1's run: `python -m sdkit export runs/nb04/base_with_sks-run --format embedding --out sks.safetensors`
# (`models/embeddings`; the prompt's `sks` then uses it), or ship the saved pipeline folder `runs/nb04/base_with_sks`.

# %%
kohya = export(run, "kohya", WORK / "export" / "glyph.safetensors")
drawn = {}
for name, path in (("diffusers", diff_dir), ("kohya", kohya)):
    p = sdkit.load_pipeline(config.model)
    p.load_lora_weights(str(path))
    drawn[name] = np.asarray(generate(p, [CONCEPT_PROMPTS[0]], [0], steps=STEPS)[0], dtype=np.float32) / 255
    loaded = len(lora_modules(p.unet)) + len(lora_modules(p.text_encoder))
    print(f"{name:>9}: {len(lora_modules(p.unet))} UNet LoRA layers, {path}")
from safetensors import safe_open
with safe_open(str(kohya), "pt") as f:
    in_file = {k.split(".")[0] for k in f.keys()}     # lora_unet_..., one name per module
    print(sorted(f.keys())[:3]); print({k: v for k, v in f.metadata().items() if k in ("ss_network_dim",
                                        "ss_network_alpha", "ss_base_model_version")})
print("every module in the kohya file became a LoRA layer: claim held:", loaded == len(in_file),
      f"({len(in_file)} modules in the file, {loaded} LoRA layers loaded)")
d = float(np.abs(drawn["diffusers"] - drawn["kohya"]).max())
print("diffusers and kohya files draw the same picture: claim held:", d <= 0.02, f"(max pixel difference {d:.4f})")

# %% [markdown]
# ## Step 8 · A small rank × learning-rate sweep
#
# Same seed, same steps, only rank and learning rate change; each run is measured on the same prompts.
# `bench/lora_sweep.py` runs the bigger version from the command line and writes a table.
#
# The claim to test: with `alpha = rank` the update `B A` is a sum of `rank` terms, and Adam moves every entry of `A`
# and `B` by about the learning rate per step, so **a higher rank or a higher learning rate changes the model more**
# in the same steps. "More" is measured on the unrelated prompts, as their drift from the base model's pictures
# (fidelity can saturate at 1, drift keeps growing). The cell compares the mean drift of the first and last column
# (learning rate) and of the first and last row (rank).

# %%
ranks = [2, 8] if QUICK else [2, 8, 32]
lrs = [1e-3, 5e-3] if QUICK else [1e-3, 5e-3, 2e-2]
table = np.zeros((len(ranks), len(lrs)))           # fidelity
drift = np.zeros((len(ranks), len(lrs)))           # how far the unrelated prompts moved
for i, r in enumerate(ranks):
    for j, lr in enumerate(lrs):
        sweep_run = sdkit.train(config.replace(lora_rank=r, lora_alpha=r, lr=lr, out=str(WORK / f"sweep_r{r}_lr{lr}"),
                                               steps=20 if QUICK else 200, checkpoint_every=0, sample_at_start=False,
                                               sample_every=0), progress=None)
        m = measure(sweep_run.load_pipeline(), base["images"]["control"], seeds=SEEDS, steps=STEPS,
                    detector=detector, extractors=extractors)
        table[i, j], drift[i, j] = m["fidelity"], m["control_drift"]
for title, t, fmt in (("fidelity", table, "9.2f"), ("control drift", drift, "9.3f")):
    print(f"{title} (rows: rank, columns: lr)")
    print("        " + "".join(f"{lr:>9g}" for lr in lrs))
    for r, row in zip(ranks, t):
        print(f"rank {r:>3}" + "".join(f"{v:{fmt}}" for v in row))
lo, hi = drift[:, 0].mean(), drift[:, -1].mean()
print(f"a higher learning rate changes the model more (mean drift at lr {lrs[0]:g} -> {lrs[-1]:g}): claim held:",
      bool(hi > lo), f"({lo:.3f} -> {hi:.3f})")
lo, hi = drift[0].mean(), drift[-1].mean()
print(f"a higher rank changes the model more (mean drift at rank {ranks[0]} -> {ranks[-1]}): claim held:",
      bool(hi > lo), f"({lo:.3f} -> {hi:.3f})")
fig, axes = plt.subplots(1, 2, figsize=(8, 3))
for ax, t, title, vmax in ((axes[0], table, "fidelity", 1), (axes[1], drift, "control drift", None)):
    im = ax.imshow(t, vmin=0, vmax=vmax, cmap="viridis"); fig.colorbar(im, ax=ax, label=title)
    ax.set_xticks(range(len(lrs)), [f"{x:g}" for x in lrs]); ax.set_yticks(range(len(ranks)), ranks)
    ax.set_xlabel("learning rate"); ax.set_ylabel("rank")
plt.tight_layout(); plt.show()

# %% [markdown]
# ## Step 9 · Real path: SD 1.5 on your own pictures (Colab GPU)
#
# Runs only when a GPU is present and `SDKIT_REAL=1`. Put your pictures and `.txt` captions (with a rare trigger
# word, e.g. `sks`) in `MY_DATA` — on Colab, a Google Drive folder survives disconnects.

# %%
if REAL:
    MY_DATA = os.environ.get("SDKIT_MY_DATA", "/content/drive/MyDrive/my_subject")
    real = sdkit.TrainConfig(model="sd15", data=MY_DATA, resolution=512, out="/content/drive/MyDrive/runs/lora",
                             lora_rank=8, lr=1e-4, steps=800, checkpoint_every=200, sample_every=200,
                             sample_prompts=with_control_prompts(["a photo of sks dog"], "dog",
                                                                 ["a photo of a cat", "a city street at night"]),
                             **t4_preset())
    print(preflight(real).text())
    real_run = sdkit.train(real)
    sdkit.show(real_run)
    print(export(real_run, "kohya"))
else:
    print("skipped: needs a GPU and SDKIT_REAL=1")

# %% [markdown]
# ## Exercises
#
# 1. Train with `lora_alpha = rank / 4` and everything else the same. What happens to fidelity, and which learning
#    rate brings it back?
# <details><summary>Solution</summary>
#
# ```python
# r = sdkit.train(config.replace(lora_alpha=2, out=str(WORK / "alpha2"), checkpoint_every=0), progress=None)
# print(measure(r.load_pipeline(), seeds=SEEDS, steps=STEPS, detector=detector)["fidelity"])
# # alpha/rank = 1/4 scales every update by 1/4: roughly lr x 4 gives the same training (Adam normalizes the
# # gradient's size, so the step in B A is what the scale multiplies).
# r4 = sdkit.train(config.replace(lora_alpha=2, lr=config.lr * 4, out=str(WORK / "alpha2_lr4"),
#                                 checkpoint_every=0), progress=None)
# print(measure(r4.load_pipeline(), seeds=SEEDS, steps=STEPS, detector=detector)["fidelity"])
# ```
# Look for the first fidelity to fall below the last row of Step 5's table and the second to come back near it
# (in quick mode both runs are too short to tell).
# </details>
#
# 2. Train attention-only (`lora_targets="to_q,to_k,to_v,to_out.0"`). How many parameters does the LoRA have now
#    (ask the pre-flight), what happens to fidelity, and does the kohya export still load whole?
# <details><summary>Solution</summary>
#
# ```python
# att = config.replace(lora_targets="to_q,to_k,to_v,to_out.0", out=str(WORK / "attention_only"), checkpoint_every=0)
# print(preflight(att).params["trained"], "vs", preflight(config).params["trained"])
# r = sdkit.train(att, progress=None)
# print(measure(r.load_pipeline(), seeds=SEEDS, steps=STEPS, detector=detector)["fidelity"])
# p = sdkit.load_pipeline(MODEL); p.load_lora_weights(str(export(r, "kohya")))
# print(len(lora_modules(p.unet)))     # the attention projections only, none left out
# ```
# Compare the fidelity with the last row of Step 5's table: if attention alone cannot draw the new outline in the
# same steps, the feed-forward layers and projections are where this small UNet stores shapes.
# </details>
#
# 3. Find the smallest strength at which the concept prompt draws a star for most seeds.
# <details><summary>Solution</summary>
#
# ```python
# for s in (0.25, 0.5, 0.75, 1.0):
#     print(s, measure(run.load_pipeline(), seeds=SEEDS, steps=STEPS, detector=detector, scale=s)["fidelity"])
# ```
# </details>
#
# ## What to try next
# - Notebook **05 · DreamBooth**: prior preservation against bleeding, and a full-UNet fine-tune.
# - Load `glyph.safetensors` in ComfyUI or A1111 (any SD 1.5 LoRA goes the same way).
# - `python bench/lora_sweep.py --steps 300` for a bigger sweep with a written table.

# %%
print("notebook time:", NB.elapsed(), "|", NB.peak_memory())   # the header's time and memory, measured here
