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
# until a judge can read what it draws.**
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
# - sampling with classifier-free guidance, and measuring prompt adherence with the judge.
#
# ### Time and memory
# | where | what runs | time | result (judge, 40 canonical prompts) | memory |
# |---|---|---|---|---|
# | Colab T4 | full mode | not measured yet — expect a few minutes | as CPU full (same seeds and steps) | < 1 GB VRAM |
# | CPU, quick mode (`SDKIT_QUICK=1`) | 256 pictures, 30 steps | ~1 min | ≈ chance: quick mode only checks that everything runs | < 2 GB RAM |
# | CPU, full (1 thread) | 4,000 pictures, 1,200 steps of batch 64 | 17 min (16 of them training) | digit 0.38 · fg 0.78 · bg 0.70 · joint 0.23 | < 2 GB RAM |
#
# Chance is digit 0.07 · color 0.125 · joint 0.001. The full numbers were measured once on one CPU thread of a busy
# shared machine (0.8 s per step); a laptop with several free threads is faster. With 40 prompts an accuracy is
# known to about ±0.07.

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
# The course's UNet has SD 1.5's block layout at a small size: 8×8×4 latents go down to 4×4 and 2×2 and back up.
# Every output on the way down is kept and concatenated onto the way up (the skips). We print the shape after every
# block with forward hooks.

# %%
config = ScratchUNetConfig(block_out_channels=(32, 64, 64), norm_num_groups=32, cross_attention_dim=64,
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
N_TRAIN = 256 if QUICK else 4000
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
# loss = F.mse_loss(unet(x_t, t, context), noise)               #    and predict the noise
# opt.zero_grad(); loss.backward(); clip_grad_norm_(...); opt.step(); sched.step()   # 4. AdamW
# ema.lerp_(unet, 1 - ema_decay)                                #    the smoothed copy we sample with
# ```
#
# No discriminator, no adversary: one network, one mean-squared error.

# %%
SETTINGS = dict(steps=30, batch_size=16, lr=1e-3, ema_decay=None, warmup=5) if QUICK else \
           dict(steps=1200, batch_size=64, lr=1e-3, ema_decay=0.995, log_every=100)
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
# which foreground and background color. *Joint* accuracy = all three right.
#
# Tutorials that train an MNIST UNet for 10–20 GPU-minutes usually stop at "the samples look like digits". Ours, in
# full mode: 1,200 steps, 16 minutes on **one** CPU thread, and the judge reads the asked-for foreground color in
# 78 % of samples, the background in 70 %, the digit in 38 %, all three in 23 % (chance: 0.1 %). Colors are learned
# first; digit shapes need more steps or a bigger UNet (the shipped mini pipeline trains 2,000 steps at 4× the size).

# %%
JUDGE = dict(n_prompts=8, steps=10) if QUICK else dict(n_prompts=40, steps=25)
t0 = time.time()
scores = st.judge_unet(result.model, guidance=5.0, seeds=(0,), **JUDGE)
print(f"judged {scores['n']} samples in {time.time() - t0:.0f} s")
print({k: round(v, 3) for k, v in scores.items() if k.endswith("acc")})
print("chance: digit 1/14 = 0.07, color 1/8 = 0.125, joint ~ 0.001")
print("full mode, measured: digit 0.38, fg 0.78, bg 0.70, joint 0.23 after 1,200 steps (16 CPU-minutes)")

# %%
n = min(16, scores["n"])
fig, axes = plt.subplots(2, 8, figsize=(14, 4.4))
for ax, img, p in zip(axes.flat, scores["images"][:n], scores["prompts"][:n]):
    ax.imshow(img); ax.set_title(p.replace(" on ", "\non "), fontsize=7)
for ax in axes.flat:
    ax.axis("off")
plt.show()

# %% [markdown]
# ## Step 10 · Your UNet in a diffusers pipeline
#
# `to_diffusers()` gives a `UNet2DConditionModel` with the same weights, so the model you just trained drops into a
# normal `StableDiffusionPipeline` (here assembled from the mini CLIP text tower, the mini VAE and SD's DDIM
# scheduler). The pipeline's latents equal our sampler's.

# %%
from sdkit.mini.pipeline import assemble
pipe = sdkit.load_pipeline(str(assemble("runs/nb01/pipeline")))      # mini text encoder + mini VAE + a random UNet
pipe.unet = result.model.to_diffusers().eval()                         # ... replaced by ours
prompt = "a red seven on a blue background"
with torch.no_grad():
    theirs = pipe(prompt, num_inference_steps=10, guidance_scale=5.0, output_type="latent",
                  generator=torch.Generator().manual_seed(0)).images
ours = st.sample(result.model, st.encode_text([prompt]), data.null_state, steps=10, guidance=5.0, seeds=[0])
print("max |pipeline - our sampler| =", (theirs - ours.cpu()).abs().max().item())
plt.figure(figsize=(2, 2)); plt.imshow(pipe(prompt, num_inference_steps=25, generator=torch.Generator().manual_seed(0)).images[0])
plt.title(prompt, fontsize=7); plt.axis("off"); plt.show()

# %% [markdown]
# ## Exercises
#
# 1. How much does guidance matter? Judge the trained model at guidance 1 (no guidance) and 5.
# <details><summary>Solution</summary>
#
# ```python
# for g in (1.0, 5.0):
#     s = st.judge_unet(result.model, guidance=g, **JUDGE)
#     print(g, {k: round(v, 3) for k, v in s.items() if k.endswith("acc")})
# # Full mode, measured: g=1 -> digit 0.33, fg 0.75, bg 0.33, joint 0.05;  g=5 -> 0.38, 0.78, 0.70, 0.23.
# # Without guidance the background color is mostly ignored; guidance trades variety for adherence.
# ```
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
# <details><summary>Solution</summary>
#
# ```python
# torch.manual_seed(0)
# r0 = st.train(ScratchUNet(config).to(DEVICE), data, caption_dropout=0.0, seed=0, **SETTINGS)
# s0 = st.judge_unet(r0.model, guidance=5.0, **JUDGE)
# print({k: round(v, 3) for k, v in s0.items() if k.endswith("acc")})
# # Measured (300 steps each, 40 prompts, digit/fg/bg/joint):
# #   dropout 0.1: g=1 -> 0.15/0.83/0.33/0.05   g=5 -> 0.15/0.75/0.78/0.05
# #   dropout 0.0: g=1 -> 0.20/0.70/0.35/0.08   g=5 -> 0.03/0.80/0.95/0.00
# # The model never saw the empty prompt, so its "unconditional" prediction is arbitrary; guidance extrapolates
# # away from an arbitrary point: the background floods in and the digits are lost. CFG needs caption dropout.
# ```
# </details>
#
# 4. Break the proof on purpose: swap `to_k` and `to_v` in our `Attention.forward` (a classic bug) and run Step 6.
# <details><summary>Solution</summary>
#
# The max difference jumps from ~1e-6 to order 1. Equality with a reference implementation catches wiring bugs
# that training would only show as "it learns a bit worse".
# </details>
#
# 5. Composition: the world holds out 56 (digit, color, color) combinations from training. Judge the model on
# exactly those prompts. Does it only reproduce what it saw?
# <details><summary>Solution</summary>
#
# ```python
# s = st.judge_unet(result.model, n_prompts=56, held_out=True, guidance=5.0, steps=JUDGE["steps"])
# print({k: round(v, 3) for k, v in s.items() if k.endswith("acc")})
# # Full mode, measured: digit 0.43, fg 0.79, bg 0.88, joint 0.36 on the 56 never-seen combinations (0.23 on
# # seen ones; 40 vs 56 prompts, so the two differ within noise): it composes digit and colors it never saw together.
# ```
# </details>
#
# ## What to try next
# - Scale the model: `ScratchUNetConfig.like_sd("mini", cross_attention_dim=64)` (64/128/128 channels, the shipped
#   mini pipeline's size) — 4× the parameters, about 2.5× the time per step on a CPU.
# - Train on the shapes too (`world.build_dataset(..., shape_frac=0.2)` is the default) and judge shape prompts
#   (`world.canonical_prompts(shapes=True)`).
# - Notebook **02 · Noising & denoising** takes the sampler apart: schedules, ε/v/x₀, DDPM vs DDIM vs Euler vs
#   DPM-Solver++, guidance sweeps and the latent space.
