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
# # 06 · Evaluation
#
# **Pick the best checkpoint of a run with evidence — grids, metrics and a reading of the loss curve — not by eye alone.**
#
# A fine-tune writes several checkpoints. Which one is best? The training loss cannot say on its own (it is noisy,
# and lower is not always better), and one sample per checkpoint can fool you. This notebook compares checkpoints on
# the same prompts and seeds, measures them, reads their loss curves, and picks one — with the rule written down.
#
# ### What you will learn
# - grids across checkpoints × prompts × seeds × LoRA strength (the "X/Y/Z plot"), base model included;
# - the metrics and what each one does **not** tell: prompt alignment (CLIP-T), subject fidelity (CLIP-I / DINO),
#   diversity, memorization, bleeding, FID/KID, Inception Score, PSNR, and a **deterministic validation loss**;
# - reading a loss curve: still improving, down-then-up, overtraining, diverging — on real runs provoked into each;
# - choosing the best checkpoint by a stated rule, and exporting it.
#
# ### Time and memory
# Rough figures: the CPU rows were measured on the project's 2-core CPU machine (docs/TEACHING.md), the GPU row is an
# estimate. The last cell prints how long the notebook took for you.
#
# | where | time | memory |
# |---|---|---|
# | Colab T4 (mini world, 3 runs of 300 steps; or your own SD 1.5 LoRA run with Hub CLIP/DINO) | estimate: ~5 min | < 3 GB VRAM |
# | CPU, quick mode (`SDKIT_QUICK=1`: 40-step runs, 2 prompts × 2 seeds) | ~1-2 min | < 2 GB RAM |
# | CPU, full (mini world, 3 runs of 300 steps) | ~3 min (2.2 min on 1 thread, 2026-12-05) | < 2 GB RAM |
#
# Every claim below that has a direction ("FID falls as n grows", "the gap widens") is measured by a cell that prints
# the figures and `claim held: True/False`. In quick mode the models barely train: its verdicts mean nothing, only
# that the code runs.

# %% [markdown]
# ## Setup
# On Colab this clones the course repository and installs it; locally, run the notebook from a checkout (`pip install -e .`).

# %%
import importlib.util, subprocess, sys  # on Colab, first fetch the course and install it (Colab's torch is kept)
if "google.colab" in sys.modules and importlib.util.find_spec("sdkit") is None:
    subprocess.run("test -d /content/sdkit || git clone -q --depth 1 "
                   "${SDKIT_REPO:-https://github.com/sdkit-course/sdkit} /content/sdkit && "
                   f"{sys.executable} -m pip install -q -e /content/sdkit", shell=True, check=True)
    sys.path.insert(0, "/content/sdkit")
import sdkit.ui
NB = sdkit.ui.setup_notebook(pip=("torchmetrics", "ipywidgets"))   # + on Colab, the extras this notebook uses

# %%
import json, shutil
from pathlib import Path
import numpy as np
import torch
from IPython.display import display, Image as IPImage
from matplotlib.figure import Figure

import sdkit
from sdkit import evaluate as ev
from sdkit.plot import figure_png
from sdkit.mini import world
from sdkit.mini.glyph import write_glyph_set

QUICK = NB.quick   # SDKIT_QUICK=1 — CI and classrooms: about a minute on a CPU
MODEL = "mini" if Path("data_samples/mini-sd/model_index.json").is_file() else "tiny"   # tiny draws noise
WORK = Path("runs/nb06")
shutil.rmtree(WORK, ignore_errors=True)
WORK.mkdir(parents=True)
STEPS, EVERY = (40, 20) if QUICK else (300, 50)
print("model:", MODEL)

# %% [markdown]
# ## Step 1 · A run with several checkpoints
#
# We teach the mini pipeline the **sks glyph** (a five-pointed star it has never seen; `data_samples/glyph/`, 24
# pictures) with a LoRA, writing a checkpoint every few steps. We also write 8 *new* stars (another seed) that the run
# never sees: the held-out set for the validation loss.

# %%
HELD_OUT = write_glyph_set(WORK / "glyph_heldout", n=8, seed=1)      # stars the run never trains on
PROMPTS = ["a white sks glyph on a black background", "a yellow sks glyph on a blue background"]

def lora_run(name, **kw):
    cfg = dict(model=MODEL, data="data_samples/glyph", steps=STEPS, checkpoint_every=EVERY, lr=1e-3,
               out=str(WORK / name), sample_steps=4 if QUICK else 20, sample_prompts=PROMPTS[:1],
               tensorboard=False, sample_at_start=False)
    cfg.update(kw)
    return sdkit.train(sdkit.TrainConfig(**cfg), progress=None)

run = lora_run("good")
print(run, [p.name for p in run.checkpoints])

# %% [markdown]
# ## Step 2 · A grid: checkpoints × prompts × seeds × LoRA strength
#
# Every cell uses the same sampler settings and its column's seed, so two cells differ only in what their row says.
# The first row is the base model (step 0). LoRA strength 0 *is* the base model; 1 is as trained; in between shows how
# much of the concept each strength adds. The same command line: `python -m sdkit eval grid RUN --prompts ... --seeds 0 1 --scales 0 0.5 1 --out grid.png`.

# %%
SEEDS = [0, 1] if QUICK else [0, 1, 2, 3]
grid = ev.checkpoint_grid(run, PROMPTS, seeds=SEEDS, scales=[0.5, 1.0], steps=4 if QUICK else 20)
paths = grid.save(WORK / "grid.png", cell=64)
print(grid.legend())
display(IPImage(filename=str(paths[0])))

# %% [markdown]
# The same pictures in a small browser (core ipywidgets: works on Colab's 7.7 and on 8.x). Move the slider.

# %%
ev.grid_browser(grid)

# %% [markdown]
# ### The X/Y/Z plot
# `xyz_grid` draws any three axes; here X = seed, Y = checkpoint, Z = guidance scale.

# %%
sw = ev.CheckpointSwitcher(run)          # one pipeline; checkpoints swapped in and out
names = ev.select_checkpoints(run)
def draw(seed, checkpoint, guidance):
    return sw.draw(checkpoint, PROMPTS[:1], [seed], **{**sw.settings(steps=4 if QUICK else 20), "guidance_scale": guidance})[0]
for page in ev.xyz_grid(draw, x=("seed", SEEDS), y=("checkpoint", names), z=("guidance", [3.0, 7.5]), cell=64):
    display(page)

# %% [markdown]
# ## Step 3 · Metrics for every checkpoint
#
# `evaluate_run` draws each checkpoint's pictures for the prompts and for **control prompts** (the same scenes
# without `sks`, plus an unrelated one), and measures them with injectable feature extractors: offline the mini CLIP
# (+ the mini world's judge), on Colab `ev.hub_extractors()` (CLIP ViT-L/14, DINOv2, Inception). The validation loss
# uses fixed timesteps (100, 300, 500, 700, 900) and fixed noise on the held-out stars: the same weights always give
# the same number. Command line: `python -m sdkit eval metrics RUN --val-data DIR`.

# %%
EX = ev.mini_extractors()
report = ev.evaluate_run(run, prompts=PROMPTS, seeds=SEEDS, extractors=EX, val_data=HELD_OUT,
                         steps=4 if QUICK else 20, progress=None)
print(ev.table(report))
print(json.dumps(report["best"], indent=1)[:600])


# %%
def metric_plot(report, keys=("val_loss", "clip_t", "clip_i", "bleeding", "memorization", "diversity")):
    rows = sorted(report["checkpoints"].values(), key=lambda m: m["step"])
    fig = Figure(figsize=(9, 4.5), dpi=80)
    for i, k in enumerate(keys):
        ax = fig.add_subplot(2, 3, i + 1)
        ax.plot([m["step"] for m in rows], [m[k] for m in rows], "o-")
        ax.set_title(k, fontsize=9); ax.grid(alpha=0.3)
    fig.tight_layout()
    return IPImage(data=figure_png(fig))
display(metric_plot(report))

# %% [markdown]
# **Bleeding** is the change of control-prompt pictures against the base model (0 = untouched): the concept leaking
# into prompts that never asked for it. **Memorization** is each generated picture's similarity to its nearest training
# picture; it means something only next to `train_nn_baseline`, how close the training pictures are to *each other*.

# %%
last = report["checkpoints"][max(report["checkpoints"])]
print("control prompts:", report["settings"]["control_prompts"])
print(f"bleeding at the last checkpoint: {last['bleeding']:.4f} (pixel MSE {last['bleeding_pixel_mse']:.5f})")
print(f"memorization {last['memorization']:.3f} (max {last['memorization_max']:.3f}) "
      f"vs training-set nearest-neighbor baseline {report['baselines']['train_nn_baseline']:.3f}")

# %% [markdown]
# ## Step 4 · What the metrics do not tell — in numbers
#
# **FID needs many images.** Two sets drawn from the *same* distribution (mini-world pictures, different seeds) should
# have FID 0. With few pictures it is far from 0, and the bias shrinks only as n grows; KID is unbiased (it scatters
# around 0) but noisy. So: compare FIDs only at the same n, and never quote a 30-picture FID as a quality number.
# The cell checks both claims on its own numbers.

# %%
fid_feature = ev.FeatureModule(EX.image, 64, size=32)          # FID in mini-CLIP space (not Inception's)
fid_rows = []
for n in ([8, 32, 64] if QUICK else [8, 32, 128, 512]):
    a, _, _ = world.build_dataset(seed=1, n=n)
    b, _, _ = world.build_dataset(seed=2, n=n)
    r = ev.fid_kid(a, b, fid_feature, subset_size=min(n, 50))
    fid_rows.append((n, r))
    print(f"n={n:4d}  same distribution: FID {r['fid']:.4f}   KID {r['kid']:+.5f} ± {r['kid_std']:.5f}")
fids = [r["fid"] for _, r in fid_rows]
print("claim held: FID falls as n grows:", all(b < a for a, b in zip(fids, fids[1:])),
      "(" + " -> ".join(f"{f:.4f}" for f in fids) + ")")
# KID's ± is the spread over random subsets; with n <= 50 there is one subset and no spread, so the check compares
# KID with FID's bias at the same n instead: an unbiased score stays near 0 where FID is far from it.
print("claim held: KID stays near 0 where FID is biased (|KID| < FID / 10 at every n):",
      all(abs(r["kid"]) < r["fid"] / 10 for _, r in fid_rows),
      "(" + ", ".join(f"n={n}: FID {r['fid']:.4f}, KID {r['kid']:+.5f}" for n, r in fid_rows) + ")")

# %% [markdown]
# **CLIP score is not a percentage.** The same 32 real mini-world pictures scored against their true captions,
# against captions with the foreground color wrong, and after heavy pixel noise. A real, correct picture does not
# score 1: the scale depends on the CLIP model, so compare checkpoints with each other and with the base model, not
# with a fixed threshold. Read the numbers next to the judge's (a classifier that says right or wrong per picture):
# how far does a wrong color move CLIP-T, compared with the gap between a correct picture and 1? The last lines check
# the directions: a wrong color and pixel noise should both lower the score.

# %%
from sdkit.evaluate.metrics import clip_t
imgs, caps, labels = world.build_dataset(seed=3, n=32)
colors = list(world.PALETTE)
wrong_fg = [world.caption(l.get("digit", l.get("shape")), colors[(colors.index(l["fg"]) + 1) % 8] if colors[(colors.index(l["fg"]) + 1) % 8] != l["bg"] else colors[(colors.index(l["fg"]) + 2) % 8], l["bg"]) for l in labels]
print(f"CLIP-T true captions {clip_t(EX, imgs, caps):.3f}  |  foreground color wrong {clip_t(EX, imgs, wrong_fg):.3f}")
noisy = np.clip(imgs.astype(np.int16) + np.random.default_rng(0).normal(0, 60, imgs.shape), 0, 255).astype(np.uint8)
print(f"CLIP-T true captions, pictures with pixel noise (sigma 60): {clip_t(EX, noisy, caps):.3f}")
if EX.judge is not None:
    print("judge, clean pictures:", EX.judge.score(imgs, labels))
    print("judge, noisy pictures:", EX.judge.score(noisy, labels))
ct_true, ct_wrong, ct_noisy = clip_t(EX, imgs, caps), clip_t(EX, imgs, wrong_fg), clip_t(EX, noisy, caps)
print("claim held: true pictures with true captions score below 1:", ct_true < 1, f"({ct_true:.3f})")
print("claim held: a wrong foreground color lowers CLIP-T:", ct_wrong < ct_true, f"({ct_true:.3f} -> {ct_wrong:.3f})")
print("claim held: pixel noise lowers CLIP-T:", ct_noisy < ct_true, f"({ct_true:.3f} -> {ct_noisy:.3f})")

# %% [markdown]
# ## Step 5 · Reading loss curves: three runs provoked into patterns
#
# The training loss draws a new timestep for every sample, so neighboring points jump a lot (the next cell prints by
# how much in the healthy run). `diagnose` smooths it,
# fits trends with their standard errors, and — when `evaluate_run` has written `RUN/eval/metrics.json` — uses the
# deterministic validation loss of each checkpoint. (The source texts say "a loss going down faster and faster means
# overtrained": that is not the sign. Overtraining is the training loss falling while held-out numbers get worse.)
#
# - **healthy**: the run above;
# - **learning rate too high**: a full fine-tune at lr = 0.05 without gradient clipping;
# - **too many steps on too few pictures**: a full fine-tune on 3 stars. Its deterministic loss on those 3 training
#   pictures should keep falling while the loss on the 8 held-out stars rises after the first checkpoint: the gap
#   between the two curves is what overtraining *is*.
#
# The cell after the plot checks each of these expectations on the three runs and prints the figures. With the `tiny`
# model (when `data_samples/mini-sd` is missing), or in quick mode (40 steps), the verdicts are only a smoke test; with
# `mini` and the full 300 steps they are the real patterns.

# %%
raw = np.array([m["loss"] for m in run.metrics])
jump = np.abs(np.diff(raw)) / raw[:-1]
print(f"healthy run, raw loss: one logged step to the next changes it by {100 * np.median(jump):.0f} % (median), "
      f"{100 * np.percentile(jump, 90):.0f} % or more one time in ten")
print("healthy:\n" + str(ev.diagnose(run)), "\n")

def provoked(name, **kw):
    try:
        r = lora_run(name, **kw)
    except sdkit.TrainingError as e:       # the loop stops on a NaN loss and says why
        print(f"{name}: {e}")
        r = sdkit.Run(WORK / name)
    if r.checkpoints:
        ev.evaluate_run(r, prompts=PROMPTS[:1], seeds=SEEDS, extractors=EX, val_data=HELD_OUT,
                        steps=4 if QUICK else 20, progress=None)
    return r

hot = provoked("lr_too_high", method="full", lr=0.05, max_grad_norm=0.0)
print("lr too high:\n" + str(ev.diagnose(hot)), "\n")
few = WORK / "three_stars"
few.mkdir(exist_ok=True)
for p in sorted(Path("data_samples/glyph").glob("star_0[0-2].*")):
    shutil.copy(p, few / p.name)
over = provoked("overtrained", data=str(few), method="full", lr=1e-4)
print("three pictures, full fine-tune:\n" + str(ev.diagnose(over)))

# %%
fig = Figure(figsize=(10, 3), dpi=80)
for i, (title, r) in enumerate([("healthy", run), ("lr too high", hot), ("3 pictures", over)]):
    ax = fig.add_subplot(1, 3, i + 1)
    m = r.metrics
    if m:
        ax.plot([x["step"] for x in m], [x["loss"] for x in m], alpha=0.3, label="loss")
        ax.plot([x["step"] for x in m], ev.smooth([x["loss"] for x in m]), lw=2, label="smoothed")
    f = r.path / "eval" / "metrics.json"
    if f.is_file():
        rows = sorted(json.loads(f.read_text())["checkpoints"].values(), key=lambda x: x["step"])
        ax.plot([x["step"] for x in rows], [x["val_loss"] for x in rows], "ko-", label="held-out (deterministic)")
        ax.plot([x["step"] for x in rows], [x["train_loss_det"] for x in rows], "s--", color="tab:red",
                label="training pictures (deterministic)")
    ax.set_title(f"{title}: {ev.diagnose(r).verdict}", fontsize=9); ax.set_yscale("log"); ax.legend(fontsize=7)
fig.tight_layout()
display(IPImage(data=figure_png(fig)))

# %% [markdown]
# Did the three runs show the patterns they were provoked into? Each line is computed from the numbers above.

# %%
def det_rows(r):
    f = r.path / "eval" / "metrics.json"
    rows = sorted(json.loads(f.read_text())["checkpoints"].values(), key=lambda x: x["step"]) if f.is_file() else []
    return [x for x in rows if x["step"] > 0]            # trained checkpoints only

o = det_rows(over)
if len(o) >= 2:
    first, last = o[0], o[-1]
    print("claim held: 3 pictures, full fine-tune: the loss on the training pictures falls after the first checkpoint "
          "while the held-out loss rises:",
          last["train_loss_det"] < first["train_loss_det"] and last["val_loss"] > first["val_loss"],
          f"(training pictures {first['train_loss_det']:.4f} -> {last['train_loss_det']:.4f}, "
          f"held-out {first['val_loss']:.4f} -> {last['val_loss']:.4f}, steps {first['step']} -> {last['step']})")
else:
    print("claim not measurable: the 3-picture run has fewer than two evaluated checkpoints")
verdicts = {"healthy": ev.diagnose(run).verdict, "lr too high": ev.diagnose(hot).verdict,
            "3 pictures": ev.diagnose(over).verdict}
print("claim held: lr = 0.05 without clipping is diagnosed as diverging:", verdicts["lr too high"] == "diverging",
      f"(verdict {verdicts['lr too high']})")
print("claim held: the healthy run is neither diverging nor overtraining:",
      verdicts["healthy"] not in ("diverging", "overtraining"), f"(verdict {verdicts['healthy']})")
print("claim held: the 3-picture run is diagnosed as overtraining or down-then-up:",
      verdicts["3 pictures"] in ("overtraining", "down_then_up"), f"(verdict {verdicts['3 pictures']})")

# %% [markdown]
# ## Step 6 · The best checkpoint, by a stated rule, exported
#
# `report["best"]` names the rule and the numbers. The default rule is the lowest deterministic validation loss; with
# `best_by="clip_t"` it is the best prompt alignment among checkpoints that bleed little (`python -m sdkit eval metrics RUN --best-by clip_t`).

# %%
best = report["best"]
print(f"best: {best['checkpoint']}  rule: {best['rule']}")
print(f"  val_loss {best['val_loss']:.4f} (base model {best['base_value']:.4f}), clip_t {best['clip_t']:.3f}, bleeding {best['bleeding']:.4f}")
print("  is it the last checkpoint?", best["checkpoint"] == run.checkpoints[-1].name,
      "| ranking:", ", ".join(f"{k} {v:.4f}" for k, v in best["ranking"]))
print("claim held: fine-tuning lowered the held-out loss below the base model's:", best["val_loss"] < best["base_value"],
      f"({best['base_value']:.4f} -> {best['val_loss']:.4f})")
try:
    from sdkit.export import export
    out = export(run, "diffusers", out=WORK / "best_lora", checkpoint=best["checkpoint"])
except ImportError:                           # an sdkit without the export module: save the whole pipeline
    out = WORK / "best_pipeline"
    run.load_pipeline(best["checkpoint"]).save_pretrained(out)
print("exported:", out, sorted(p.name for p in Path(out).iterdir()))

# %% [markdown]
# ## Exercises
#
# 1. Pick the best checkpoint by prompt alignment instead of validation loss. Does it change? Why might it?
# <details><summary>Solution</summary>
#
# ```python
# print(ev.pick_best(report["checkpoints"], "clip_t"))
# # CLIP-T rewards "looks like a star of the right colors"; the validation loss rewards denoising held-out stars.
# ```
# Compare the `ranking` lists of the two rules. If they name different checkpoints, look at how far apart the top
# CLIP-T values are: with a handful of prompts and seeds, a difference in the third decimal is noise, while the
# validation loss (fixed timesteps and noise) gives the same number for the same weights every time.
# </details>
#
# 2. Measure how much the concept bleeds at LoRA strength 0.5 compared with 1.0 for the last checkpoint.
# <details><summary>Solution</summary>
#
# ```python
# from sdkit.evaluate.metrics import to_uint8
# ctrl = report["settings"]["control_prompts"]
# s = sw.settings(steps=4 if QUICK else 20)
# base = EX.image(to_uint8(sw.draw("step_000000", ctrl, SEEDS, **s), 32))
# for scale in (0.5, 1.0):
#     e = EX.image(to_uint8(sw.draw(run.checkpoints[-1].name, ctrl, SEEDS, scale=scale, **s), 32))
#     print(scale, float(1 - (e * base).sum(-1).mean()))
# ```
# Look whether half the strength gives about half the bleeding, less than half, or more: the two numbers tell whether
# you can trade some of the concept for a cleaner class by lowering the strength when you draw.
# </details>
#
# 3. Show that the *training* loss cannot rank two checkpoints: compare the raw loss at the last 5 logged steps with the
# validation loss of the last checkpoint.
# <details><summary>Solution</summary>
#
# ```python
# print([round(m["loss"], 3) for m in run.metrics[-5:]])     # how much does it jump from one step to the next?
# print(report["checkpoints"][run.checkpoints[-1].name]["val_loss_per_t"])   # fixed t and noise: one number each
# ```
# Look whether the raw losses jump from one step to the next by more than the differences between checkpoints you
# would want to read from them; the validation losses per timestep come from fixed noise, so they do not jump.
# </details>
#
# ## What to try next
# - On Colab, your own SD 1.5 LoRA: `ev.evaluate_run(run, extractors=ev.hub_extractors(), reference="my_photos/")`
#   (CLIP ViT-L/14 for CLIP-T, DINOv2 for subject fidelity; FID needs hundreds of pictures per checkpoint to mean much).
# - `python -m sdkit eval diagnose RUN` after every run, and resume when it says *still improving*.
# - Notebook 05: train with and without prior preservation and measure whether bleeding falls.

# %%
print("notebook time:", NB.elapsed())
