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
# # 03 · Dataset and captioning
#
# **Turn a messy folder of pictures into a clean, captioned training set — then train a LoRA on it.**
#
# Most failed fine-tunes fail in the data folder, not in the optimizer: a broken file, a duplicate the model memorizes,
# captions CLIP cuts off at 77 tokens, or a trigger word missing from half the captions. This notebook finds each of
# those with one function, fixes them, and shows exactly what the training loop will see.
#
# ### What you will learn
# - which folder layouts sdkit reads (sidecar `.txt` captions, Hugging Face `metadata.jsonl`, kohya `10_sks dog/` folders);
# - how to **check** a folder (`sdkit.data.check` / `python -m sdkit data check`) and read its report;
# - the three captioning modes (single token, multi token, full sentence), trigger tokens, caption shuffling and dropout;
# - auto-captioning with BLIP, and editing captions by hand;
# - crops, flips, aspect-ratio buckets, a train/validation split — and a preview of a real training batch.
#
# ### Time and memory
# | where | time | memory |
# |---|---|---|
# | Colab T4 (BLIP captioner, 300 LoRA steps on the mini model) | not measured yet — expect a few minutes | < 2 GB VRAM |
# | CPU, quick mode (`SDKIT_QUICK=1`: tiny captioner, 20 steps) | ~1 min | < 2 GB RAM |
# | CPU, full (300 steps) | 0.5 min on one thread (measured 2026-12-05) | < 2 GB RAM |
#
# The CPU times are rough, measured on the project's 2-core VM (see docs/TEACHING.md); the last cell prints this
# run's own time. Where the text says a fix or an option makes something better (fixing the folder clears its
# problems, buckets keep more of a picture than a square crop), a cell measures it and prints `claim held:` with the
# figures.

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
NB = sdkit.ui.setup_notebook(pip=("imagehash", "ipywidgets"))   # + on Colab, the extras this notebook uses

# %%
import os, subprocess, sys
import shutil
from pathlib import Path
import numpy as np
import torch
from PIL import Image
from IPython.display import display

import sdkit
from sdkit import captions, data

QUICK = NB.quick   # SDKIT_QUICK=1 — CI and classrooms: ~1 minute on a CPU
WORK = Path("runs/nb03")
shutil.rmtree(WORK, ignore_errors=True)
WORK.mkdir(parents=True)

# %% [markdown]
# ## Step 1 · A messy folder
#
# We start from `data_samples/subject/`: ten 64 px pictures of a made-up object, the **sks star** (a teal star with an
# orange dot), each with a caption file (`sks_01.png` + `sks_01.txt`). Then we make it look like a real folder after a
# few days of collecting: a notebook checkpoint copy, a half-downloaded file, a CMYK JPEG from a print shop, a picture
# whose caption was never written, a duplicate saved twice under another name, and one over-long caption.

# %%
MESSY = WORK / "messy"
shutil.copytree("data_samples/subject", MESSY)
print(len(list(MESSY.glob("*.png"))), "pictures of", Image.open(MESSY / "sks_01.png").size, "px, with",
      len(list(MESSY.glob("*.txt"))), "captions")

(MESSY / ".ipynb_checkpoints").mkdir()                                          # notebook noise
shutil.copy(MESSY / "sks_01.png", MESSY / ".ipynb_checkpoints" / "sks_01-checkpoint.png")
(MESSY / "download.png").write_bytes((MESSY / "sks_02.png").read_bytes()[:300])  # truncated download
Image.open(MESSY / "sks_03.png").convert("CMYK").save(MESSY / "sks_03_print.jpg", quality=95)  # CMYK JPEG
(MESSY / "sks_03.png").unlink(); (MESSY / "sks_03.txt").rename(MESSY / "sks_03_print.txt")
(MESSY / "sks_05.txt").unlink()                                                 # missing caption
shutil.copy(MESSY / "sks_04.png", MESSY / "sks_04 (copy).png")                   # duplicate
shutil.copy(MESSY / "sks_04.txt", MESSY / "sks_04 (copy).txt")
(MESSY / "sks_06.txt").write_text("sks star, " + ", ".join(["a lovely bright teal five pointed star with an orange "
                                  "dot in the middle"] * 5))                    # far too long
print("\n".join(sorted(str(p.relative_to(MESSY)) for p in MESSY.rglob("*"))))

# %% [markdown]
# ## Step 2 · Check it
#
# `data.check` reads every file fully (a truncated PNG often fails only on the last bytes), and reports each problem
# with the file, what is wrong and what to do. **Errors** are files training will skip; **warnings** will train but
# badly; **info** is for your eyes. Hidden files, `.ipynb_checkpoints`, `__MACOSX`, `.DS_Store` and `Thumbs.db` are
# ignored without a word. `resolution` is the size you will train at (32 px for the mini model, 512 for SD 1.5).

# %%
report = data.check(MESSY, resolution=32, trigger="sks", kind="subject")
print(report.table())
before = {s: report.count(s) for s in ("error", "warning")}   # for Step 3's check

# %% [markdown]
# The same report as thumbnails — red frame: error (crossed tile: could not be read), orange: warning.

# %%
display(report.grid(thumb=64, columns=6))

# %% [markdown]
# The same from a terminal, with a JSON file for scripts (exit status 0 when the folder is trainable, 2 when nothing
# is usable):

# %%
r = subprocess.run([sys.executable, "-m", "sdkit", "data", "check", str(MESSY), "--resolution", "32", "--quiet",
                    "--json", str(WORK / "report.json")], capture_output=True, text=True)
print("exit status", r.returncode)
import json
print(json.dumps(json.loads((WORK / "report.json").read_text())["stats"], indent=1)[:600], "...")

# %% [markdown]
# ## Step 3 · Fix it
#
# Each message says what to do. We move unreadable files and exact duplicates out of the folder (never delete a
# learner's data silently), write the missing caption and shorten the long one. The CMYK JPEG needs nothing: sdkit
# converts every color mode (CMYK, palette, 16-bit, 1-bit, transparency) to RGB when it loads. The claim: after these
# fixes the check finds no error and no warning.

# %%
CLEAN = MESSY                                   # we fix in place
rejected = WORK / "rejected"; rejected.mkdir()
for p in report.problems:
    if p.severity == "error" or "exact duplicate" in p.message:
        for f in (Path(p.path), Path(p.path).with_suffix(".txt")):
            if f.exists():
                shutil.move(str(f), str(rejected / f.name))
(CLEAN / "sks_05.txt").write_text("sks star, left, dots background")
(CLEAN / "sks_06.txt").write_text("sks star, on the grass, grass and sky")

report = data.check(CLEAN, resolution=32, trigger="sks", kind="subject")
print(report.table())
print("moved aside:", sorted(p.name for p in rejected.iterdir()))
after = {s: report.count(s) for s in ("error", "warning")}
print("claim held: the fixes clear every error and warning:", sum(after.values()) == 0 and report.ok,
      f"(errors {before['error']} -> {after['error']}, warnings {before['warning']} -> {after['warning']})")

# %% [markdown]
# ## Step 4 · Captions
#
# **Tokens, not words.** CLIP reads 77 tokens, including a start and an end token; everything after is cut off
# without a warning at training time. A token is a piece of a word from CLIP's 49,408-entry vocabulary: common words
# are one token, made-up words split into pieces (`zqx` is `z` + `qx`). `sks`, the DreamBooth paper's trigger, is a
# single rare token — that is why it was chosen. Measure instead of guessing (the counts include the start and end
# tokens; `</w>` marks the end of a word):

# %%
from sdkit.data.captions import clip_tokenizer
tokenizer = clip_tokenizer()
print("CLIP reads", captions.CLIP_CONTEXT, "tokens; vocabulary:", f"{len(tokenizer):,}", "entries")
for text in ["a star", "sks star", "zqx style", "a lovely bright teal five pointed star", "photorealistic, 8k, masterpiece"]:
    print(f"{captions.count_tokens(text):3d} tokens  {text!r:42s} {tokenizer.tokenize(text)}")

# %% [markdown]
# **Three captioning modes.** A *single-token* caption (`sks star`) sends everything in the picture to the trigger —
# quick, but the background and the pose get learned as part of the object. *Multi-token* captions name what varies
# (`sks star, top left, stripes background`) so those features attach to their own words and the trigger keeps only
# what is constant: the object. *Full sentences* are how SD was pre-trained (web alt-texts) and suit large fine-tunes.

# %%
tags = ["top left", "stripes background"]
for mode in ("single", "multi", "sentence"):
    print(f"{mode:9s}", captions.make_caption(mode, trigger="sks", class_word="star", tags=tags))
print(captions.insert_trigger("a teal star on stripes", "sks"), "|", captions.insert_trigger("a sks star", "sks"))

# %% [markdown]
# **Augmenting captions.** Each training sample can see its caption a little differently: tags shuffled (so order
# carries no meaning), some tags dropped (`tag_dropout`), the whole caption dropped now and then (`caption_dropout`,
# which trains the unconditional branch classifier-free guidance needs). `keep_tokens` pins the first tags — the
# trigger — in place. Every function takes a seeded random generator: the same seed gives the same caption, so a
# resumed run is identical to an uninterrupted one.

# %%
policy = captions.CaptionPolicy(trigger="sks", shuffle=True, keep_tokens=1, tag_dropout=0.25)
cap = "star, top left, stripes background, tilted"
for seed in range(4):
    print(seed, policy(cap, np.random.default_rng(seed)))
print("same seed again:", policy(cap, np.random.default_rng(0)))

# %% [markdown]
# **Auto-captioning.** `captions.Captioner` runs an image-to-text model from transformers. On a GPU (Colab) we use
# BLIP (`Salesforce/blip-image-captioning-base`, ~1 GB); offline, a tiny *random* BLIP built here goes through the same
# code — its captions are random words, which shows the mechanics, not the quality. `caption_folder` writes sidecar
# files and never overwrites an existing caption unless you pass `overwrite=True`.

# %%
if torch.cuda.is_available() and not QUICK:
    CAPTIONER = captions.DEFAULT_CAPTIONER
else:
    CAPTIONER = str(captions.make_tiny_captioner(WORK / "tiny-blip"))
AUTO = WORK / "autocaption"
shutil.copytree(CLEAN, AUTO, ignore=shutil.ignore_patterns("*.txt"))   # the pictures, without captions
result = captions.caption_folder(AUTO, captions.Captioner(CAPTIONER, max_new_tokens=12), trigger="sks")
for f in sorted(result["written"])[:4]:
    print(f.name, "->", f.read_text().strip())

# %% [markdown]
# Machine captions are a first draft. The editor shows each picture with its caption and token count; **Save** writes
# the files you changed. (It needs a live notebook; on GitHub you only see this text.)

# %%
editor = captions.caption_editor(CLEAN, thumb=64)
editor

# %% [markdown]
# ## Step 5 · What the model sees: crops, flips, buckets, a validation split
#
# SD trains on fixed-size tensors. `ImageCaptionDataset` resizes the short side to the resolution and crops (center,
# or random); `random_flip` mirrors half the samples — fine for a symmetric star, wrong for text or a face with a scar.
# Color jitter (`color_jitter`) would teach wrong colors to a teal star: `check(..., color_jitter=0.1)` warns when
# captions name colors.
#
# **Aspect-ratio buckets** avoid most of the cropping: pictures are grouped by shape into sizes with about the same
# pixel count (e.g. 512x512, 576x448, 640x384 at 512 px), each picture is resized to *cover* the bucket closest to its
# shape (only what sticks out past the bucket's shape is cut), and every batch draws from one bucket so its tensors
# stack. Training does this by default
# (`bucketing=True`; `bucket_step`, `min_bucket_side`, `max_bucket_side`, `bucket_no_upscale` tune it, and
# `sample_width` / `sample_height` draw non-square samples). `no_upscale` keeps small pictures at their own size
# instead of enlarging them.

# %%
buckets = data.make_buckets(512, min_size=256, max_size=1024, step=64)
print(len(buckets), "buckets, e.g.", buckets[:3], "...", buckets[-3:])
print("the five closest to square:", sorted(buckets, key=lambda b: abs(np.log(b[0] / b[1])))[:5])
for size in [(4032, 3024), (1080, 1920), (800, 200), (600, 400)]:
    print(size, "->", data.assign_bucket(size, buckets), "| no upscale ->",
          data.assign_bucket(size, buckets, no_upscale=True))

# %% [markdown]
# The same pictures both ways. A mixed folder of glyph pictures — square, portrait 1:2 (two stars stacked), landscape
# 2:1 and a 3:1 panorama — loaded as training would at the mini model's 32 px: center-cropped to a square, and in
# buckets (`bucket_options(32)`: step 8 px, sides 16–64). Columns: the original, the center crop, the bucket.
# "Keeps" is the share of the original picture's area that survives resizing and cropping, measured from each
# sample's `original_size` and `target_size`. The claim: buckets keep at least as much of every picture as the square
# crop, and more of every picture that is not square.

# %%
from sdkit.data.buckets import bucket_options, bucket_rows, format_bucket_table, kept_fraction
from sdkit.mini.glyph import write_mixed_glyph_set

MIXED = write_mixed_glyph_set(WORK / "mixed", n=4)   # one picture of each shape, with captions
mixed_scan = data.scan_folder(MIXED)
cropped = data.ImageCaptionDataset(mixed_scan, resolution=32)                          # bucketing=False
bucketed = data.ImageCaptionDataset(mixed_scan, resolution=32, **bucket_options(32))   # bucketing=True (default)
print(format_bucket_table(bucket_rows(bucketed)))   # what `sdkit data check` prints and RUN/buckets.json records


def enlarge(x, scale=3):
    """(3, h, w) in [-1, 1] -> a PIL image, `scale` times bigger."""
    im = Image.fromarray(((x.permute(1, 2, 0).numpy() + 1) * 127.5).clip(0, 255).astype("uint8"))
    return im.resize((im.width * scale, im.height * scale), Image.NEAREST)


rows, kept = [], []
for i in range(len(bucketed)):
    a, b = cropped[(i, 0)], bucketed[(i, 0)]
    h, w = a["original_size"]
    keep = [kept_fraction((w, h), s["target_size"][::-1]) for s in (a, b)]   # target_size is (h, w)
    kept.append((mixed_scan.items[i][0].name, f"{w}x{h}", keep[0], "x".join(map(str, b["target_size"][::-1])), keep[1]))
    rows.append([Image.open(mixed_scan.items[i][0]).resize((w * 3, h * 3), Image.NEAREST),
                 enlarge(a["pixels"]), enlarge(b["pixels"])])
sheet = Image.new("RGB", (sum(max(r[k].width for r in rows) + 12 for k in range(3)),
                          sum(max(im.height for im in r) + 12 for r in rows)), "white")
y = 0
for r in rows:   # columns: original | center crop | bucket
    x = 0
    for k, im in enumerate(r):
        sheet.paste(im, (x, y))
        x += max(row[k].width for row in rows) + 12
    y += max(im.height for im in r) + 12
display(sheet)
print(f"{'picture':<14}{'size':>7}{'square crop keeps':>19}{'bucket':>8}{'bucket keeps':>14}")
for name, size, k_crop, bucket, k_bucket in kept:
    print(f"{name:<14}{size:>7}{k_crop:>19.0%}{bucket:>8}{k_bucket:>14.0%}")
is_square = lambda size: len(set(size.split("x"))) == 1
print("claim held: buckets keep more than a square crop:",
      all(k_bucket >= k_crop if is_square(size) else k_bucket > k_crop for _, size, k_crop, _, k_bucket in kept),
      f"(mean kept: square crop {np.mean([k[2] for k in kept]):.0%}, buckets {np.mean([k[4] for k in kept]):.0%})")

# %%
scan = data.scan_folder(CLEAN)
train_scan, val_scan = data.train_val_split(scan, val_fraction=0.2, seed=0)
print("train:", len(train_scan.items), "validation:", [p.name for p, _ in val_scan.items])

# %% [markdown]
# ## Step 6 · Preview a training batch
#
# The exact tensors and captions the loop will draw for samples 0–7 (`dataset[(index, seed)]`: the seed fixes the crop,
# flip and caption augmentation). Look at this before every long run.

# %%
ds = data.ImageCaptionDataset(scan, resolution=32, center_crop=False, random_flip=True,
                              caption_transform=captions.CaptionPolicy(shuffle=True, keep_tokens=1))
batch = [ds[(i % len(ds), 1000 + i)] for i in range(8)]
tiles = [((b["pixels"].permute(1, 2, 0).numpy() + 1) * 127.5).clip(0, 255).astype("uint8") for b in batch]
display(Image.fromarray(np.concatenate(tiles, axis=1)).resize((8 * 96, 96), Image.NEAREST))
for b in batch:
    print(b["index"], b["caption"])

# %% [markdown]
# ## Step 7 · Train a LoRA on the clean folder
#
# The mini pipeline (shipped in `data_samples/mini-sd`) when it is there, else a tiny random one that only exercises
# the code. Quick mode trains 20 steps; the full run 300.

# %%
MODEL = "mini" if Path("data_samples/mini-sd/model_index.json").is_file() else "tiny"
config = sdkit.TrainConfig(model=MODEL, data=str(CLEAN), resolution=32, steps=20 if QUICK else 300,
                           lr=1e-3, out=str(WORK / "lora"), sample_steps=4 if QUICK else 25, tensorboard=False,
                           sample_prompts=["sks star, centred, plain background", "sks star, on the grass"])
run = sdkit.train(config)
print(run)

# %%
sdkit.show(run)

# %%
print("notebook time:", NB.elapsed())

# %% [markdown]
# ## Exercises
#
# 1. List every caption of `CLEAN` longer than 12 CLIP tokens, longest first.
# <details><summary>Solution</summary>
#
# ```python
# scan = data.scan_folder(CLEAN)
# long = sorted(((captions.count_tokens(c), p.name) for p, c in scan.items), reverse=True)
# print([x for x in long if x[0] > 12])
# ```
# </details>
#
# 2. Rebuild the set in kohya layout — `WORK/"kohya"/"5_sks star"/` — and check that one epoch now has 5 samples per
# picture. What caption does a picture get when its `.txt` is missing?
# <details><summary>Solution</summary>
#
# ```python
# k = WORK / "kohya" / "5_sks star"
# shutil.copytree(CLEAN, k)
# (k / "sks_01.txt").unlink()
# s = data.scan_folder(WORK / "kohya")
# print(s.layout, len(data.ImageCaptionDataset(s, 32)), dict(s.items)[k / "sks_01.png"])   # kohya, 5 x N, 'sks star'
# ```
# </details>
#
# 3. Switch the captions to single-token mode (`sks star` everywhere) and run the check again. Which message appears,
# and why is it only *info*?
# <details><summary>Solution</summary>
#
# ```python
# single = WORK / "single"; shutil.copytree(CLEAN, single)
# for f in single.glob("*.txt"):
#     f.write_text(captions.make_caption("single", "sks", "star"))
# print(data.check(single, resolution=32).table())
# # "N images share the caption 'sks star'": expected for single-token captioning, a mistake for multi-token.
# ```
# </details>
#
# 4. Train on the mixed folder `MIXED` with buckets (the default) and draw a landscape sample. Where does the run
# record its buckets?
# <details><summary>Solution</summary>
#
# ```python
# run = sdkit.train(config.replace(data=str(MIXED), out=str(WORK / "mixed_lora"), steps=20, batch_size=1,
#                                  sample_width=48, sample_height=24))
# print((run.path / "buckets.json").read_text())   # the same table `python -m sdkit data check` prints
# ```
# </details>
#
# ## What to try next
# - Your own pictures on Colab: `data.check` them at `resolution=512`, caption with BLIP, fix, then notebook **04 · LoRA**.
# - Train once with single-token and once with multi-token captions, same seed; compare samples for
#   `sks star, on a red background` — which one learned the background?
# - Read `docs/DATA.md` for every layout, check and option.
