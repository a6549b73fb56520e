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
# # 01 · Build a UNet with cross-attention
#
# **Write Stable Diffusion's denoiser part by part, prove it equals diffusers', then train it from scratch on a CPU
# until a judge can read what it draws, and save it as a pipeline diffusers loads.**
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/sdkit-course/sdkit/blob/main/notebooks/01_build_a_unet.ipynb)
#
# Many tutorials build a small text-conditioned UNet on MNIST, train it for 10–20 GPU-minutes and stop at "the samples
# look like digits". Here every claim is measured: each block's shapes are printed, the whole network is checked
# against diffusers' `UNet2DConditionModel` number for number, and the trained model is scored by an independent judge
# (a digit classifier plus color naming) on prompts such as *a red seven on a blue background*.
#
# ### What you will learn
# - the parts of SD's UNet: sinusoidal **time embedding**, **ResNet block**, **self- and cross-attention**, the
#   **transformer block**, and the **down / mid / up path with skip connections** — each with the tensor shapes it makes;
# - how to prove a from-scratch model right: load diffusers' weights into it and compare outputs (the minGPT way);
# - the whole training loop of a text-to-image diffusion model: latents from a VAE, text states from CLIP, the noise
#   (ε) loss, caption dropout for classifier-free guidance, AdamW, EMA;
# - sampling with classifier-free guidance, and measuring prompt adherence with the judge;
# - packing your UNet into a `StableDiffusionPipeline` folder (`runs/nb01/pipeline`) that any diffusers code loads.
#
# ### Time and memory
# | where | what runs | time | result (judge: 160 seen + 112 held-out pictures) | memory |
# |---|---|---|---|---|
# | CPU, quick mode (`SDKIT_QUICK=1`) | 256 pictures, 30 steps | ~1 min | ≈ chance: quick mode only checks that everything runs | < 2 GB RAM |
# | CPU, full (2 cores) | 20,000 pictures, 2,400 steps of batch 64 | 12.6 min in all, 11.4 of them training (measured 2026-12-05) | joint 0.99 (digit 0.99, colors 1.00) on seen and held-out alike | < 3 GB RAM |
# | Colab GPU (T4 / L4 / A100) | full mode, same cell | **estimate, not measured**: 1–3 min of training | as CPU full (same seeds and steps) | < 1 GB VRAM |
#
# Chance is digit 0.07 · color 0.125 · joint 0.001. The CPU figures were measured on the project's 2-core VM
# (docs/TEACHING.md has the date and command); the notebook prints its own when you run it. With 272 pictures an
# accuracy is known to about ±0.03. On a GPU the same 2,400 steps should take a minute or two (this UNet is tiny for
# a GPU; the time goes to launching kernels): an estimate until someone measures it.

# %% [markdown]
# ## Setup
# On Colab this clones the course repository and installs it (torch is never reinstalled); locally, run the notebook
# from a checkout (`pip install -e .`).

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
import time
import numpy as np
import torch
import matplotlib.pyplot as plt

import sdkit
from sdkit.scratch import ScratchUNet, ScratchUNetConfig, schedules, timestep_embedding
from sdkit.scratch import unet as su
from sdkit.scratch import train as st

QUICK = NB.quick   # SDKIT_QUICK=1 — CI and classrooms: ~1 minute on a CPU
DEVICE = NB.device
torch.manual_seed(0)

# %% [markdown]
# ## Step 1 · Time embedding: telling the network *how noisy* its input is
#
# The same UNet denoises at every noise level, so it must be told the step `t` (0 = clean, 999 = pure noise).
# SD turns the integer into a vector of sines and cosines at many frequencies (as a Transformer encodes positions),
# then an MLP turns that into the vector every ResNet block receives.

# %%
t = torch.tensor([0, 250, 500, 999])
sinusoid = timestep_embedding(t, 64)                 # (4,) -> (4, 64): cos of 32 frequencies, then sin
mlp = su.TimestepEmbedding(64, 256)                  # the UNet uses 4 x the first block's channels
temb = mlp(sinusoid)
print("timesteps", tuple(t.shape), "-> sinusoid", tuple(sinusoid.shape), "-> time embedding", tuple(temb.shape))

# %%
plt.figure(figsize=(8, 2.2))
plt.imshow(timestep_embedding(torch.arange(0, 1000, 10), 64).T, aspect="auto", cmap="RdBu")
plt.xlabel("timestep / 10"); plt.ylabel("dimension"); plt.title("sinusoidal timestep embedding: every t gets its own pattern")
plt.colorbar(); plt.show()

# %% [markdown]
# ## Step 2 · The ResNet block
#
# GroupNorm → SiLU → 3×3 conv, **add the time embedding** (one shift per channel), GroupNorm → SiLU → conv, plus a
# skip connection (a 1×1 conv when the channel count changes). This is where "how noisy" enters every layer.

# %%
res = su.ResnetBlock2D(in_ch=32, out_ch=64, time_dim=256, groups=32, eps=1e-5)
x = torch.randn(2, 32, 8, 8)                              # (batch, channels, height, width)
out = res(x, temb[:2])
print("in", tuple(x.shape), "+ time", tuple(temb[:2].shape), "-> out", tuple(out.shape))
print("changing only t changes the output by", (res(x, temb[2:]) - out).abs().max().item())

# %% [markdown]
# ## Step 3 · Self-attention and cross-attention
#
# Inside the UNet a feature map is a set of tokens, one per pixel. **Self-attention**: pixels look at each other
# (queries, keys and values all from the image). **Cross-attention**: pixels look at the prompt (queries from the
# image, keys and values from the text encoder's 77 hidden states). Cross-attention is the *only* place the prompt
# enters the UNet.

# %%
attn_self = su.Attention(dim=64, heads=4)
attn_cross = su.Attention(dim=64, heads=4, context_dim=64)  # 64 = the mini CLIP's hidden size (768 in SD 1.5)
pixels = torch.randn(2, 8 * 8, 64)                          # (batch, tokens = H*W, channels)
text = torch.randn(2, 77, 64)                               # (batch, 77 prompt tokens, text hidden size)
print("self-attention :", tuple(pixels.shape), "->", tuple(attn_self(pixels).shape))
print("cross-attention:", tuple(pixels.shape), "looking at", tuple(text.shape), "->", tuple(attn_cross(pixels, text).shape))
print("another prompt changes the output by", (attn_cross(pixels, text + 1) - attn_cross(pixels, text)).abs().max().item())

# %% [markdown]
# ## Step 4 · The transformer block, and the spatial transformer around it
#
# `BasicTransformerBlock` = LayerNorm → self-attention, LayerNorm → cross-attention, LayerNorm → GEGLU feed-forward,
# each added back (residual). `Transformer2DModel` flattens the (C, H, W) map into H·W tokens, runs the block, and
# folds it back.

# %%
spatial = su.Transformer2DModel(channels=64, heads=4, context_dim=64, groups=32)
fmap = torch.randn(2, 64, 8, 8)
print("feature map", tuple(fmap.shape), "+ text", tuple(text.shape), "->", tuple(spatial(fmap, text).shape))
print("inside: tokens", (2, 8 * 8, 64), "| parameters:", sum(p.numel() for p in spatial.parameters()))

# %% [markdown]
# ## Step 5 · The whole UNet: down, mid, up, with skip connections
#
# The course's UNet has SD 1.5's block layout at a small size (the shipped mini pipeline's: 64/128/128 channels,
# 5.8 M parameters): 8×8×4 latents go down to 4×4 and 2×2 and back up.
# Every output on the way down is kept and concatenated onto the way up (the skips). We print the shape after every
# block with forward hooks.

# %%
config = ScratchUNetConfig(block_out_channels=(64, 128, 128), norm_num_groups=32, cross_attention_dim=64,
                           attention_head_dim=4,
                           down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                           up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
unet = ScratchUNet(config)
shapes = []
for name in ["conv_in", "down_blocks.0", "down_blocks.1", "down_blocks.2", "mid_block", "up_blocks.0", "up_blocks.1",
             "up_blocks.2", "conv_out"]:
    m = unet.get_submodule(name)
    m.register_forward_hook(lambda mod, inp, out, name=name: shapes.append((name, tuple((out[0] if isinstance(out, tuple) else out).shape))))
latents, t, text = torch.randn(2, 4, 8, 8), torch.tensor([10, 900]), torch.randn(2, 77, 64)
eps = unet(latents, t, text)
for name, shape in shapes:
    print(f"{name:14s} {shape}")
print(f"parameters: {sum(p.numel() for p in unet.parameters()):,}  (SD 1.5's UNet: 859,520,964 with the same code)")

# %%
# the same code builds the real size; on the "meta" device nothing is allocated
with torch.device("meta"):
    big = ScratchUNet(ScratchUNetConfig.like_sd("sd15"))
print(f"SD 1.5-sized scratch UNet: {sum(p.numel() for p in big.parameters()):,} parameters")

# %% [markdown]
# ## Step 6 · Prove it equals diffusers
#
# Build diffusers' `UNet2DConditionModel` from the same config, nudge every weight (so no weight sits at its
# default), copy the weights into our model, and compare outputs. Then nudge *one* weight of ours: the check must
# fail — a test that cannot fail proves nothing. (`tests/test_scratch.py` does the same for every block and for the
# full SD 1.5 key map.)

# %%
from dataclasses import asdict
from diffusers import UNet2DConditionModel

torch.manual_seed(0)
reference = UNet2DConditionModel(**asdict(config)).eval()
with torch.no_grad():
    for p in reference.parameters():
        p.add_(0.05 * torch.randn_like(p))
mine = ScratchUNet.from_diffusers(reference).eval()
with torch.no_grad():
    theirs, ours = reference(latents, t, text).sample, mine(latents, t, text)
    print("max |diffusers - scratch| =", (theirs - ours).abs().max().item(), " (output scale", theirs.abs().mean().item(), ")")
    mine.mid_block.attentions[0].transformer_blocks[0].attn2.to_k.weight[0, 0] += 0.5
    print("after nudging one cross-attention weight:", (reference(latents, t, text).sample - mine(latents, t, text)).abs().max().item())

# %% [markdown]
# ## Step 7 · The training data: latents and text states
#
# Stable Diffusion never trains on pixels. The frozen **VAE** turns each 32×32×3 picture into 8×8×4 latents (already
# multiplied by its scaling factor so they have std ≈ 1), and the frozen **text encoder** (the mini CLIP's text tower,
# same class as SD's) turns each caption into 77 hidden states. Both are computed once, up front.

# %%
N_TRAIN = 256 if QUICK else 20000
t0 = time.time()
data = st.encode_dataset(n=N_TRAIN, seed=0)
print(f"{len(data)} pictures -> latents {tuple(data.latents.shape)}, std {data.latents.std():.2f}; "
      f"{len(data.text_states)} distinct captions -> states {tuple(data.text_states.shape)}; {time.time() - t0:.0f} s")
print("empty prompt (for caption dropout / CFG):", tuple(data.null_state.shape))

# %%
from sdkit.mini import world
images, captions, _ = world.build_dataset(seed=0, n=8)
fig, axes = plt.subplots(1, 8, figsize=(14, 2.2))
for ax, img, cap in zip(axes, images, captions):
    ax.imshow(img); ax.set_title(cap.replace(" on ", "\non "), fontsize=7); ax.axis("off")
plt.show()

# %% [markdown]
# ## Step 8 · Train
#
# The loop (`sdkit/scratch/train.py`, function `train`) is short enough to read in full. Each step:
#
# ```python
# idx = torch.randint(0, len(data), (batch_size,))             # 1. a random batch
# x0, context = data.latents[idx], data.text_states[data.caption_index[idx]]
# drop = torch.rand(batch_size) < caption_dropout               # 2. ~10 % of captions become "" (needed for CFG)
# context = torch.where(drop[:, None, None], data.null_state, context)
# noise = torch.randn_like(x0); t = torch.randint(0, 1000, (batch_size,))
# x_t = schedules.q_sample(x0, t, noise, alphas_cumprod)        # 3. noise the latents to a random step
# loss = F.mse_loss(unet(x_t, t, context), noise)               #    and predict the noise (min-SNR weighted)
# opt.zero_grad(); loss.backward(); clip_grad_norm_(...); opt.step(); sched.step()   # 4. AdamW
# ema.lerp_(unet, 1 - min(ema_decay, (1 + step) / (10 + step)))  # the smoothed copy we sample with
# ```
#
# No discriminator, no adversary: one network, one mean-squared error. Three choices make the difference between a
# model that mostly fails the judge and one that draws what it is asked for in a CPU-friendly time (docs/TEACHING.md
# records how this notebook's earlier recipe, without them, fared):
# - **size**: 64/128/128 channels (5.8 M parameters), the mini pipeline's; on an 8×8 latent that costs little;
# - **min-SNR weighting** (`snr_gamma=5`): the nearly clean timesteps are easy and would dominate the gradient;
#   capping each step's weight at min(SNR, 5)/SNR spends the updates where the digit's shape is decided;
# - **EMA with warm-up** (decay 0.999): we sample with the moving average of the weights, whose decay starts small
#   so it does not keep a share of the random initial weights.

# %%
SETTINGS = dict(steps=30, batch_size=16, lr=1e-3, ema_decay=None, warmup=5) if QUICK else \
           dict(steps=2400, batch_size=64, lr=1e-3, ema_decay=0.999, warmup=100, snr_gamma=5.0, min_lr_ratio=0.0,
                log_every=200)
torch.manual_seed(0)
unet = ScratchUNet(config).to(DEVICE)
result = st.train(unet, data, caption_dropout=0.1, seed=0, **SETTINGS)
print(f"{result.steps} steps in {result.seconds / 60:.1f} min; loss {np.mean(result.losses[:10]):.3f} -> {np.mean(result.losses[-10:]):.3f}")

# %%
plt.figure(figsize=(7, 3))
plt.plot(result.losses, alpha=0.3, label="loss per step")
k = max(1, len(result.losses) // 30)
plt.plot(np.convolve(result.losses, np.ones(k) / k, mode="valid"), label=f"mean of {k}")
plt.xlabel("step"); plt.ylabel("epsilon MSE"); plt.legend(); plt.title("training loss"); plt.show()

# %% [markdown]
# ## Step 9 · Sample with classifier-free guidance, and let the judge score it
#
# Sampling starts from noise and runs 25 DDIM steps (written out in `st.sample`; notebook 02 takes it apart). At each
# step the UNet predicts the noise twice, with the prompt and with "", and guidance pushes away from the unconditional
# prediction: `eps = eps_uncond + g * (eps_text - eps_uncond)`. The judge then reads each picture: which glyph,
# which foreground and background color. *Joint* accuracy = all three right. We score seen combinations and the 56
# (digit, color, color) combinations the world holds out of training: a model that composes draws both equally well.
#
# Tutorials that train an MNIST UNet for 10–20 GPU-minutes usually stop at "the samples look like digits". Ours, in
# full mode on 2 CPU cores (11.4 minutes of training, measured 2026-12-05), read all three right — digit, foreground and background
# — in 0.99 of 272 pictures, on held-out combinations as often as on seen ones (chance: 0.001). The cell prints your run's figures.

# %%
JUDGE = dict(n_seen=8, seeds=(0,), steps=10) if QUICK else dict(n_seen=80, seeds=(0, 1), steps=25)
t0 = time.time()
judged = st.judge_seen_and_held_out(result.model, guidance=5.0, **JUDGE)
scores = judged["seen"]
print(f"judged {judged['all']['n']} pictures in {time.time() - t0:.0f} s (guidance 5, {JUDGE['steps']} DDIM steps)")
for part in ("seen", "held_out", "all"):
    print(f"{part:9s}", {k: round(v, 3) for k, v in judged[part].items() if k.endswith("acc")})
print("chance: digit 1/14 = 0.07, color 1/8 = 0.125, joint ~ 0.001")

# %% [markdown]
# Does guidance matter? The claim: without guidance (scale 1) the model follows the prompt less, above all the
# background color. The same prompts and seeds at guidance 1:

# %%
judged_g1 = st.judge_seen_and_held_out(result.model, guidance=1.0, **JUDGE)
for g, r in ((1.0, judged_g1["all"]), (5.0, judged["all"])):
    print(f"guidance {g}: ", {k: round(v, 3) for k, v in r.items() if k.endswith("acc")})
print("guidance 5 raises joint accuracy over guidance 1:", judged["all"]["joint_acc"] > judged_g1["all"]["joint_acc"],
      f"({judged_g1['all']['joint_acc']:.3f} -> {judged['all']['joint_acc']:.3f})")

# %%
n = min(16, scores["n"])
fig, axes = plt.subplots(2, 8, figsize=(14, 4.4))
for ax, img, p in zip(axes.flat, scores["images"][:n], scores["prompts"][:n]):
    ax.imshow(img); ax.set_title(p.replace(" on ", "\non "), fontsize=7)
for ax in axes.flat:
    ax.axis("off")
plt.show()

# %% [markdown]
# ## Step 10 · Your UNet in a diffusers pipeline, saved
#
# `to_diffusers()` gives a `UNet2DConditionModel` with the same weights, so the model you just trained drops into a
# normal `StableDiffusionPipeline`: the mini CLIP text tower, the mini VAE, SD's DDIM scheduler, and your UNet. We save
# it to `runs/nb01/pipeline`, load it back with plain `from_pretrained`, and check that the loaded pipeline's latents
# equal our own sampler's.

# %%
from diffusers import StableDiffusionPipeline
from sdkit.mini.pipeline import assemble
pipe = StableDiffusionPipeline.from_pretrained(str(assemble("runs/nb01/parts")))  # mini text encoder + VAE + a random UNet
pipe.unet = result.model.to_diffusers().eval()                                      # ... replaced by yours
pipe.save_pretrained("runs/nb01/pipeline")
pipe = StableDiffusionPipeline.from_pretrained("runs/nb01/pipeline")                # what anyone else would load
prompt = "a red seven on a blue background"
with torch.no_grad():
    theirs = pipe(prompt, num_inference_steps=10, guidance_scale=5.0, output_type="latent",
                  generator=torch.Generator().manual_seed(0)).images
ours = st.sample(result.model, st.encode_text([prompt]), data.null_state, steps=10, guidance=5.0, seeds=[0])
print("saved to runs/nb01/pipeline; max |loaded pipeline - our sampler| =", (theirs - ours.cpu()).abs().max().item())
fig, axes = plt.subplots(1, 4, figsize=(8, 2.3))
for ax, p in zip(axes, [prompt, "a yellow two on a black background", "a white four on a green background",
                        "a blue nine on a orange background"]):
    ax.imshow(pipe(p, num_inference_steps=25, guidance_scale=5.0, generator=torch.Generator().manual_seed(0)).images[0])
    ax.set_title(p.replace(" on ", "\non "), fontsize=7); ax.axis("off")
plt.show()

# %% [markdown]
# ## Exercises
#
# 1. Where does guidance stop helping? Step 9 compared guidance 1 and 5; sweep 1, 2, 3, 5, 7.5 and 10 and plot joint,
# fg and bg accuracy against the scale.
# <details><summary>Solution</summary>
#
# ```python
# sweep = {g: st.judge_seen_and_held_out(result.model, guidance=g, **JUDGE)["all"] for g in (1, 2, 3, 5, 7.5, 10)}
# for key in ("joint_acc", "fg_acc", "bg_acc"):
#     plt.plot(list(sweep), [r[key] for r in sweep.values()], marker="o", label=key)
# plt.xlabel("guidance scale"); plt.legend(); plt.show()
# ```
# Look for the scale after which joint accuracy no longer rises; past it, guidance pushes colors towards saturated
# neighbors. Compare your curve with the shipped mini pipeline's sweep in docs/BENCHMARKS.md.
# </details>
#
# 2. Where are the parameters? Count them per top-level part of `unet` (conv_in, down_blocks, mid_block, up_blocks,
# conv_out, time_embedding) and find the share that sits in attention layers.
# <details><summary>Solution</summary>
#
# ```python
# for name, m in unet.named_children():
#     print(f"{name:15s} {sum(p.numel() for p in m.parameters()):>10,}")
# attn = sum(p.numel() for n, p in unet.named_parameters() if ".attentions." in n)
# print("attention share:", attn / sum(p.numel() for p in unet.parameters()))
# ```
# </details>
#
# 3. Train without caption dropout (`caption_dropout=0.0`) and sample with guidance 5. What goes wrong, and why?
# Predict first, then measure (use `steps=600` to keep it short, and train a dropout-0.1 model the same way to
# compare like with like).
# <details><summary>Solution</summary>
#
# ```python
# short = {**SETTINGS, "steps": 600}
# for dropout in (0.1, 0.0):
#     torch.manual_seed(0)
#     r = st.train(ScratchUNet(config).to(DEVICE), data, caption_dropout=dropout, seed=0, **short)
#     for g in (1.0, 5.0):
#         print(dropout, g, {k: round(v, 3) for k, v in st.judge_seen_and_held_out(r.model, guidance=g, **JUDGE)["all"].items() if k.endswith("acc")})
# ```
# Guidance computes `eps_uncond + g * (eps_text - eps_uncond)`. A model that never saw the empty prompt has never
# learned `eps_uncond`: what it returns for "" is arbitrary, and guidance extrapolates away from an arbitrary point.
# With dropout 0.0, guidance 5 should help less than with dropout 0.1, or hurt; your figures show by how much.
# </details>
#
# 4. Break the proof on purpose: swap `to_k` and `to_v` in our `Attention.forward` (a classic bug) and run Step 6.
# <details><summary>Solution</summary>
#
# The max difference jumps from ~1e-6 to order 1. Equality with a reference implementation catches wiring bugs
# that training would only show as "it learns a bit worse".
# </details>
#
# 5. Composition: Step 9 judged the 56 held-out combinations (never in training) beside seen ones. Compare the two
# rows: does the model only reproduce what it saw? Then look at the held-out pictures it got wrong.
# <details><summary>Solution</summary>
#
# ```python
# from sdkit.mini.judge import Judge
# h = judged["held_out"]
# preds = Judge.load().predict(h["images"])
# for p, pred in list(zip(h["prompts"], preds))[:12]:
#     print(p, "->", pred)
# ```
# When the held-out row is about as good as the seen row (within the ±0.05 that 112 and 160 pictures allow), the
# model composes digits and colors it never saw together rather than recalling pictures.
# </details>
#
# ## What to try next
# - Shrink the model: `block_out_channels=(32, 64, 64)` has about a quarter of the parameters. How much faster does
#   it step on your CPU, and how much accuracy does it cost at the same number of steps, and at the same minutes?
# - Train on the shapes too (`world.build_dataset(..., shape_frac=0.2)` is the default) and judge shape prompts
#   (`world.canonical_prompts(shapes=True)`).
# - Notebook **02 · Noising & denoising** takes the sampler apart: schedules, ε/v/x₀, DDPM vs DDIM vs Euler vs
#   DPM-Solver++, guidance sweeps and the latent space.

# %%
print("notebook time:", NB.elapsed())   # the header's time column, measured on this machine
