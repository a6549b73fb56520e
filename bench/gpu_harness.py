"""GPU benchmark harness (issue #10): sdkit's loop against the diffusers example scripts' loop, on an
SD 1.5-architecture pipeline with random weights (same compute and memory as SD 1.5, nothing downloaded).

    python bench/gpu_harness.py --suite h100 --json bench/results_gpu_h100.json --markdown
    python bench/gpu_harness.py --suite t4   --json bench/results_gpu_t4.json   --markdown
    python bench/gpu_harness.py --scale tiny --suite quick --steps 3 --json /tmp/x.json    # CPU smoke, < 1 min
    python bench/gpu_harness.py --methods lora --precisions bf16 --batches 1,8,32 --cache-latents on --list

For every case it trains, interleaved (sdkit, example, sdkit, example, ... for `--repeats` rounds):
  (a) sdkit's loop: `sdkit.train.loop.Trainer(config, progress=None)`, samples and checkpoints off (as
      `python -m sdkit bench train`), a callback timing each step (CUDA-synchronised);
  (b) the "diffusers example" loop, reproduced here from the scripts' code with their argparse defaults:
      method lora -> examples/text_to_image/train_text_to_image_lora.py; method full / dreambooth ->
      examples/dreambooth/train_dreambooth.py (see EXAMPLE_DEFAULTS). It gets the case's settings that the script
      has a flag for (mixed precision, batch, gradient checkpointing, 8-bit Adam, xformers, data-loader
      workers) and keeps its fixed behavior for the rest (VAE encode and text encoder every step, no cached
      latents, AdamW not fused, `.item()` every step, no channels-last, no compile). Example runs with the same flags are measured once and
      shared between cases.
Per run: median seconds per step after the warm-up steps (cached-latents cases warm up until every image is in the
cache); over the repeats min / median / max; images/s; peak memory (CUDA: `torch.cuda.max_memory_allocated` and
`max_memory_reserved` after `reset_peak_memory_stats`; CPU: peak RSS sampled by a thread).

FLOPs: counted once per model with `torch.utils.flop_counter.FlopCounterMode` on the meta device (shapes only: no
memory, no time): the UNet's forward, and its forward + backward as each method trains it (LoRA: only input
gradients through the frozen weights, about 2.1x the forward; full: about 3x). MFU = UNet training FLOPs per step
(model FLOPs: gradient-checkpointing recomputation not counted) / measured seconds per step / the GPU's dense
16-bit tensor peak (PEAK_TFLOPS; for every precision, fp32 cases included). `mfu_all` also counts the VAE encoder
and text encoder forwards that the loop actually ran. FLOPs scale exactly with the batch, so they are counted at
batch 1. Why meta: on the meta device attention decomposes into counted matmuls; with real CPU tensors
FlopCounterMode misses CPU's fused SDPA kernel and reports 0.677 instead of 0.803 TFLOP for the SD 1.5 forward
(the gap, 0.126 TFLOP, is the attention matmuls: ~0.125 TFLOP by hand).

Fused AdamW, channels-last and torch.compile are sdkit settings (`optimizer="adamw_fused"`, `channels_last`,
`compile_unet`); the cases set them in the config like any user would. `hooks` / `sdkit_lacks` record any option a
case has to apply from outside (none at present).

Preflight: each case's config is also given to `sdkit.train.preflight.estimate`; `calibration` compares the estimate with
the measured peak (CUDA: reserved peak + the CUDA context measured at start; CPU: the RAM estimate against peak RSS)
and, on CUDA, back-solves the activation constant A of the preflight formula per case.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import importlib.util
import itertools
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")          # everything here is local: never reach the Hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

HARNESS_VERSION = 1

# ---- 1. SD 1.5's published component configs (stable-diffusion-v1-5/stable-diffusion-v1-5, */config.json) -----
# Random weights from these configs have SD 1.5's exact parameter count (UNet 859,520,964; text encoder
# 123,060,480; VAE 83,653,863), compute and memory. (`attention_head_dim: 8` is, in this old config, the number of
# heads: head sizes 40 / 80 / 160.)
SD15_UNET_CONFIG = {
    "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
SD15_VAE_CONFIG = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "norm_num_groups": 32, "out_channels": 3, "sample_size": 512, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "scaling_factor": 0.18215,   # diffusers' default; the published file predates the key
}
# openai/clip-vit-large-patch14's text tower, as in SD 1.5's text_encoder/config.json (ids 0/1/2 as published;
# transformers treats eos_token_id == 2 as the legacy config and pools at the argmax token, irrelevant for SD).
SD15_TEXT_ENCODER_CONFIG = {
    "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0, "eos_token_id": 2, "hidden_act": "quick_gelu",
    "hidden_size": 768, "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 3072,
    "layer_norm_eps": 1e-05, "max_position_embeddings": 77, "num_attention_heads": 12, "num_hidden_layers": 12,
    "pad_token_id": 1, "projection_dim": 768, "vocab_size": 49408,
}
SD15_SCHEDULER_CONFIG = {   # scheduler/scheduler_config.json (PNDM; the training loops use DDPM from this config)
    "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
    "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
    "clip_sample": False,
}
SD15_PARAMS = {"unet": 859_520_964, "text_encoder": 123_060_480, "vae": 83_653_863}
SD15_UNET_FORWARD_TFLOP = 0.80   # the figure for one UNet forward at 64x64 latents, batch 1

# ---- 2. peak dense 16-bit tensor throughput (TFLOP/s) ----------------------------------------------------------
# Source: NVIDIA's product datasheets, FP16/BF16 Tensor Core, dense (the datasheets' headline figures are with
# 2:4 sparsity, twice these). T4 and V100 have no bf16: their fp16 figure. Override with --peak-tflops.
PEAK_TFLOPS = [  # (regex on torch.cuda.get_device_name(), TFLOP/s, label)
    (r"H200", 989.0, "H200 (SXM)"),
    (r"H100.*PCIE", 756.0, "H100 PCIe"),
    (r"H100.*NVL", 835.0, "H100 NVL"),
    (r"H100", 989.0, "H100 SXM"),
    (r"A100", 312.0, "A100"),
    (r"L40S", 362.0, "L40S"),
    (r"\bL4\b", 121.0, "L4"),
    (r"\bA10\b", 125.0, "A10"),
    (r"\bT4\b", 65.0, "T4 (fp16)"),
    (r"V100", 125.0, "V100 SXM2 (fp16)"),
]
PEAK_SOURCE = "NVIDIA datasheets, dense FP16/BF16 tensor-core TFLOP/s (without 2:4 sparsity)"

# ---- 3. the diffusers example scripts' defaults (argparse defaults, read from the scripts) ---------------------
EXAMPLE_DEFAULTS = {
    "lora": {
        "script": "examples/text_to_image/train_text_to_image_lora.py",
        "train_batch_size": 16, "learning_rate": 1e-4, "rank": 4, "lora_alpha": "rank",
        "target_modules": ["to_k", "to_q", "to_v", "to_out.0"], "init_lora_weights": "gaussian",
        "mixed_precision": None, "gradient_checkpointing": False, "use_8bit_adam": False,
        "enable_xformers_memory_efficient_attention": False, "allow_tf32": False, "dataloader_num_workers": 0,
        "center_crop": False, "random_flip": False, "lr_scheduler": "constant", "lr_warmup_steps": 500,
        "adam_weight_decay": 1e-2, "adam_epsilon": 1e-8, "max_grad_norm": 1.0, "resolution": 512,
        "notes": "mixed_precision None = accelerate's default ('no' without an accelerate config): fp32. Frozen "
                 "weights in the compute dtype; LoRA weights upcast to fp32 only for fp16 (bf16 keeps them bf16). "
                 "Every step: VAE encode (latent_dist.sample()), text encoder forward, gather + .item() of the loss, "
                 "loss.detach().item() for the progress bar. clip_grad_norm_ gets the `lora_layers` filter that "
                 "the optimizer already consumed, as in the script, so it clips nothing.",
    },
    "full": {
        "script": "examples/dreambooth/train_dreambooth.py",
        "train_batch_size": 4, "learning_rate": 5e-6, "mixed_precision": None, "gradient_checkpointing": False,
        "use_8bit_adam": False, "enable_xformers_memory_efficient_attention": False, "allow_tf32": False,
        "with_prior_preservation": False, "prior_loss_weight": 1.0, "set_grads_to_none": False,
        "center_crop": False, "lr_scheduler": "constant", "lr_warmup_steps": 500, "adam_weight_decay": 1e-2,
        "max_grad_norm": 1.0, "resolution": 512, "train_text_encoder": False,
        "notes": "The UNet stays fp32 (the script refuses otherwise) under accelerate's autocast; VAE and text "
                 "encoder in the compute dtype. Every step: VAE encode, text encoder, loss.detach().item(); "
                 "optimizer.zero_grad(set_to_none=False). method dreambooth = --with_prior_preservation (class "
                 "images concatenated to the batch, loss = instance + prior_loss_weight x class).",
    },
}
EXAMPLE_DEFAULTS["dreambooth"] = dict(EXAMPLE_DEFAULTS["full"], with_prior_preservation=True)

SDKIT_LACKS = {}  # option -> how the harness applies it from outside, for options sdkit has no setting for

BOOL_KNOBS = ("compile", "channels_last", "cache_latents", "grad_ckpt")
METHODS, PRECISIONS = ("lora", "full", "dreambooth"), ("no", "fp16", "bf16")
ATTENTIONS, OPTIMIZERS = ("sdpa", "xformers"), ("adamw", "adamw_fused", "adamw8bit")


def log(*a):
    print("[gpu_harness]", *a, file=sys.stderr, flush=True)


# ---- 4. cases ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Case:
    method: str = "lora"            # lora | full | dreambooth (full UNet + prior preservation)
    precision: str = "bf16"         # no (fp32) | fp16 | bf16
    batch: int = 1
    attention: str = "sdpa"         # sdpa | xformers
    compile: bool = False           # torch.compile of the UNet
    channels_last: bool = False
    cache_latents: bool = False
    optimizer: str = "adamw"        # adamw | adamw_fused | adamw8bit
    grad_ckpt: bool = False
    workers: int = 0                # data-loader worker processes (sdkit num_workers / --dataloader_num_workers)
    name: str = ""
    role: str = ""                  # e.g. "example-defaults", "t4-goal"

    def __post_init__(self):
        self.batch, self.workers = int(self.batch), int(self.workers)
        if self.method not in METHODS or self.precision not in PRECISIONS or self.attention not in ATTENTIONS \
                or self.optimizer not in OPTIMIZERS or self.batch < 1 or self.workers < 0:
            raise ValueError(f"bad case {self}")
        if not self.name:
            self.name = self.auto_name()

    def auto_name(self) -> str:
        parts = [self.method, self.precision, f"b{self.batch}"]
        parts += [k for k in ("cache_latents", "grad_ckpt", "channels_last", "compile") if getattr(self, k)]
        if self.optimizer != "adamw":
            parts.append(self.optimizer)
        if self.attention != "sdpa":
            parts.append(self.attention)
        if self.workers:
            parts.append(f"w{self.workers}")
        return "-".join(parts).replace("cache_latents", "cached").replace("grad_ckpt", "ckpt") \
            .replace("channels_last", "cl")

    def settings(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("name", "role")}

    def example_key(self) -> tuple:
        """The settings the example script has a flag for: equal keys share one example measurement."""
        return (self.method, self.precision, self.batch, self.attention, self.optimizer == "adamw8bit",
                self.grad_ckpt, self.workers)

    def example_flags(self) -> str:
        d = EXAMPLE_DEFAULTS[self.method]
        flags = [f"--train_batch_size={self.batch}"]
        if self.precision != "no":
            flags.append(f"--mixed_precision={self.precision}")
        if self.grad_ckpt:
            flags.append("--gradient_checkpointing")
        if self.optimizer == "adamw8bit":
            flags.append("--use_8bit_adam")
        if self.attention == "xformers":
            flags.append("--enable_xformers_memory_efficient_attention")
        if self.workers:
            flags.append(f"--dataloader_num_workers={self.workers}")
        if self.method == "dreambooth":
            flags.append("--with_prior_preservation")
        return f"{d['script']} " + " ".join(flags)


def _suite(name: str, scale: str) -> list:
    C = Case
    if name == "quick":
        # precision "no" so that it runs on a CPU; on a GPU it is a 2-minute sanity check of both loops
        return [C("lora", "no", 2, name="lora-fp32-b2"),
                C("lora", "no", 2, cache_latents=True, optimizer="adamw_fused", name="lora-fp32-b2-cached-fused"),
                C("full", "no", 2, grad_ckpt=True, name="full-fp32-b2-ckpt")]
    if name == "h100":
        fast = dict(cache_latents=True, optimizer="adamw_fused")
        cases = [C("lora", "no", 16, name="example-defaults-lora", role="example-defaults"),
                 C("full", "no", 4, name="example-defaults-dreambooth", role="example-defaults")]
        cases += [C("lora", "bf16", b, name=f"lora-bf16-b{b}", role="batch-sweep") for b in (1, 4, 8, 16, 32, 64)]
        cases += [C("lora", "bf16", 16, workers=4),
                  C("lora", "bf16", 16, cache_latents=True),
                  C("lora", "bf16", 16, **fast),
                  C("lora", "bf16", 16, channels_last=True, **fast),
                  C("lora", "bf16", 16, compile=True, **fast),
                  C("lora", "bf16", 16, channels_last=True, compile=True, **fast),
                  C("lora", "bf16", 16, attention="xformers", **fast),
                  C("lora", "fp16", 16, **fast),
                  C("lora", "bf16", 16, grad_ckpt=True, **fast)]
        cases += [C("lora", "bf16", b, channels_last=True, compile=True, role="best-lora", **fast) for b in (32, 64)]
        cases += [C("full", "bf16", b, role="batch-sweep") for b in (1, 4, 8, 16)]
        cases += [C("full", "bf16", 8, workers=4),
                  C("full", "bf16", 8, **fast),
                  C("full", "bf16", 8, channels_last=True, compile=True, **fast),
                  C("full", "bf16", 8, cache_latents=True, optimizer="adamw8bit"),
                  C("full", "fp16", 8, **fast),
                  C("full", "bf16", 16, grad_ckpt=True, **fast)]
        return cases
    if name == "t4":
        t4 = dict(precision="fp16", batch=1, grad_ckpt=True, optimizer="adamw8bit", cache_latents=True)
        return [C("lora", name="t4-lora", role="t4-goal", **t4),
                C("dreambooth", name="t4-dreambooth", role="t4-goal", **t4),
                C("full", name="t4-full", **t4),
                C("lora", "fp16", 1, name="lora-fp16-b1"),
                C("lora", "fp16", 4, cache_latents=True, name="lora-fp16-b4-cached"),
                C("lora", "fp16", 4, cache_latents=True, grad_ckpt=True, name="lora-fp16-b4-cached-ckpt"),
                C("lora", "fp16", 1, attention="xformers", name="lora-fp16-b1-xformers"),
                C("lora", "no", 16, name="example-defaults-lora", role="example-defaults")]
    raise SystemExit(f"unknown suite {name!r}: quick, h100 or t4")


def _bools(text: str) -> list:
    out = []
    for v in text.split(","):
        v = v.strip().lower()
        if v in ("both",):
            out += [False, True]
        elif v in ("1", "on", "true", "yes"):
            out.append(True)
        elif v in ("0", "off", "false", "no"):
            out.append(False)
        else:
            raise SystemExit(f"expected on/off/both, got {v!r}")
    return out


def parse_case_spec(spec: str) -> list:
    """'method=lora,full precision=bf16 batch=1,4,16 compile=on' -> the product of the listed values."""
    fields = {f.name: f for f in dataclasses.fields(Case)}
    axes = {}
    for token in spec.replace(";", " ").split():
        key, _, values = token.partition("=")
        key = key.strip().replace("-", "_")
        key = {"cached": "cache_latents", "ckpt": "grad_ckpt", "opt": "optimizer", "attn": "attention",
               "bs": "batch"}.get(key, key)
        if key not in fields or key in ("name", "role") or not values:
            raise SystemExit(f"--cases: bad token {token!r}; keys: {', '.join(k for k in fields if k != 'role')}")
        if key in BOOL_KNOBS:
            axes[key] = _bools(values)
        elif key in ("batch", "workers"):
            axes[key] = [int(v) for v in values.split(",")]
        else:
            axes[key] = values.split(",")
    keys = list(axes)
    return [Case(**dict(zip(keys, combo))) for combo in itertools.product(*(axes[k] for k in keys))]


def cases_from_args(a) -> list:
    cases = []
    if a.suite:
        cases += _suite(a.suite, a.scale)
    for spec in a.cases or []:
        cases += parse_case_spec(spec)
    if not cases:   # the matrix flags
        axes = dict(method=a.methods.split(","), precision=a.precisions.split(","),
                    batch=[int(b) for b in a.batches.split(",")], attention=a.attention.split(","),
                    compile=_bools(a.compile), channels_last=_bools(a.channels_last),
                    cache_latents=_bools(a.cache_latents), optimizer=a.optimizers.split(","),
                    grad_ckpt=_bools(a.grad_ckpt), workers=[int(w) for w in a.workers.split(",")])
        cases = [Case(**dict(zip(axes, combo))) for combo in itertools.product(*axes.values())]
    seen, unique = set(), []
    for c in cases:   # drop repeats, keep names unique
        if c.name in seen:
            continue
        seen.add(c.name)
        unique.append(c)
    return unique


def skip_reason(case: Case, dev: dict) -> str | None:
    """Why a case cannot run on device `dev` (device_info()'s dict; None: it can)."""
    cuda = dev["kind"] == "cuda"
    if case.precision == "fp16" and not cuda:
        return "fp16 training needs a CUDA GPU (sdkit refuses fp16 on a CPU)"
    if case.precision == "bf16" and cuda and int(dev["capability"].split(".")[0]) < 8:
        return f"bf16 needs compute capability >= 8.0; {dev['name']} has {dev['capability']}"
    if case.attention == "xformers":
        if importlib.util.find_spec("xformers") is None:
            return "xformers is not installed (pip install xformers)"
        if not cuda:
            return "xformers needs CUDA"
    if case.optimizer == "adamw8bit":
        if importlib.util.find_spec("bitsandbytes") is None:
            return "bitsandbytes is not installed (pip install bitsandbytes)"
        if not cuda:
            return "bitsandbytes' 8-bit AdamW needs CUDA"
    return None


# ---- 5. the model folder and the data ---------------------------------------------------------------------------
def build_sd15_models(device="meta"):
    """UNet, text encoder, VAE of SD 1.5's architecture (random init, or shapes only on `meta`)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    with torch.device(device):
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
        vae = AutoencoderKL(**SD15_VAE_CONFIG)
        te = CLIPTextModel(CLIPTextConfig(**SD15_TEXT_ENCODER_CONFIG))
    return unet, te, vae


def build_pipeline(scale: str, folder: Path, seed: int = 0) -> Path:
    """Write the pipeline with save_pretrained (once; reused when the folder is complete) and return its path.
    `sd15`: SD 1.5's architecture with random weights, saved in fp16 (1.7 GB UNet); `tiny`: sdkit.models.make_tiny."""
    folder = Path(folder)
    marker = folder / "gpu_harness.json"
    want = {"scale": scale, "seed": seed, "harness_version": HARNESS_VERSION}
    if marker.is_file() and json.loads(marker.read_text()) == want:
        return folder
    if scale == "tiny":
        from sdkit.models import make_tiny
        make_tiny(folder, seed=seed)
    else:
        from diffusers import PNDMScheduler, StableDiffusionPipeline
        from diffusers.utils import logging as dlog
        from sdkit.models import clip_tokenizer
        dlog.set_verbosity_error()   # (its advice about fp16 pipelines on a CPU does not apply: files only)
        t0 = time.time()
        torch.manual_seed(seed)
        # on the CPU, so that this process holds no CUDA context while isolated cases measure memory
        unet, te, vae = build_sd15_models("cpu")
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=clip_tokenizer(), unet=unet,
                                       scheduler=PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG),
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe.to("cpu", dtype=torch.float16)
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        pipe.save_pretrained(tmp, safe_serialization=True)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
        del pipe, unet, te, vae
        gc.collect()
        log(f"built SD 1.5-architecture pipeline (random init, fp16 files) in {time.time() - t0:.0f} s: {folder}")
    marker.write_text(json.dumps(want))
    return folder


def write_data(root: Path, n: int, image_size: int) -> dict:
    from sdkit.quickstart import write_shapes_folder
    inst = write_shapes_folder(Path(root) / "instance", n=n, size=image_size, prefix="img")
    cls = write_shapes_folder(Path(root) / "class", n=n, size=image_size, prefix="class")
    return {"instance": str(inst), "class": str(cls), "n": n, "image_size": image_size}


# ---- 6. measuring -----------------------------------------------------------------------------------------------
def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class PeakMemory:
    """Peak memory over a block: CUDA allocator peaks, or the process RSS sampled every 5 ms on a CPU."""

    def __init__(self):
        self.cuda = torch.cuda.is_available()
        self.result = {}

    def __enter__(self):
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.result["baseline_allocated_gb"] = torch.cuda.memory_allocated() / 1e9
        else:
            self._stop = threading.Event()
            self._peak = _rss()
            self.result["baseline_rss_gb"] = self._peak / 1e9

            def sample():
                while not self._stop.wait(0.005):
                    self._peak = max(self._peak, _rss())
            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            _sync()
            self.result["peak_allocated_gb"] = torch.cuda.max_memory_allocated() / 1e9
            self.result["peak_reserved_gb"] = torch.cuda.max_memory_reserved() / 1e9
        else:
            self._stop.set()
            self._thread.join()
            self.result["peak_rss_gb"] = max(self._peak, _rss()) / 1e9
        return False


def _rss() -> int:
    try:
        import psutil
        return psutil.Process().memory_info().rss
    except ImportError:   # fall back to the process's lifetime maximum
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cuda_context_gb() -> float:
    """Device memory this process holds outside PyTorch's caching allocator (CUDA context, kernels), measured once
    after CUDA and cuBLAS initialize. Other processes on the same GPU would inflate it."""
    if not torch.cuda.is_available():
        return 0.0
    a = torch.ones(256, 256, device="cuda")
    (a @ a).sum().item()
    free, total = torch.cuda.mem_get_info()
    return max(0.0, (total - free - torch.cuda.memory_reserved()) / 1e9)


def _error_status(e: BaseException) -> tuple:
    text = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return ("oom" if "out of memory" in text.lower() else "error"), text[:400]


def sdkit_config(case: Case, env: dict, steps: int, out: str):
    import sdkit
    kw = dict(model=env["model_dir"], data=env["data"]["instance"], steps=steps, batch_size=case.batch,
              resolution=env["resolution"], out=out, tensorboard=False, sample_at_start=False,
              checkpoint_every=0, lora_rank=4, seed=0, mixed_precision=case.precision,
              gradient_checkpointing=case.grad_ckpt, attention=case.attention, cache_latents=case.cache_latents,
              optimizer=case.optimizer, channels_last=case.channels_last, compile_unet=case.compile,
              lr=1e-4 if case.method == "lora" else 5e-6, method=case.method, num_workers=case.workers)
    if case.method == "dreambooth":
        kw.update(instance_prompt="a sks shape", class_prompt="a shape", class_data=env["data"]["class"],
                  num_class_images=env["data"]["n"])
    return sdkit.TrainConfig(**kw)


def run_sdkit(case: Case, env: dict) -> dict:
    """sdkit's Trainer as the CLI builds it, samples/checkpoints off, each step timed."""
    from sdkit.train import callbacks as cb
    from sdkit.train.loop import Trainer
    steps = env["warmup"] + env["steps"]
    out = tempfile.mkdtemp(prefix="sdkit-gpu-harness-")
    times, hooks = [], []

    class StepTimer(cb.Callback):
        def on_train_start(self, trainer):
            _sync()
            self.t = time.perf_counter()

        def on_step_end(self, trainer, logs):
            _sync()
            now = time.perf_counter()
            times.append(now - self.t)
            self.t = now

    res = {"status": "ok"}
    try:
        with PeakMemory() as mem:
            cfg = sdkit_config(case, env, steps, out)
            trainer = Trainer(cfg, progress=None)   # fused AdamW, channels-last, compile: sdkit's own settings
            trainer.callbacks = [c for c in trainer.callbacks
                                 if type(c).__name__ not in ("SampleCallback", "CheckpointCallback")] + [StepTimer()]
            trainer.fit()
            del trainer
        res.update(mem.result)
    except Exception as e:  # OOM, a missing kernel, ...: record and go on
        res["status"], res["error"] = _error_status(e)
    finally:
        shutil.rmtree(out, ignore_errors=True)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    res.update(times=times, hooks=hooks)
    return res


class _PilTransform:
    """Resize the shorter side to `size` (bilinear) -> random crop size x size -> tensor in [-1, 1]: torchvision's
    Resize + RandomCrop + ToTensor + Normalize(0.5, 0.5), for machines without torchvision."""

    def __init__(self, size):
        self.size = size
        self.rng = np.random.default_rng(0)

    def __call__(self, im):
        from PIL import Image
        w, h = im.size
        scale = self.size / min(w, h)
        im = im.resize((max(self.size, round(w * scale)), max(self.size, round(h * scale))), Image.BILINEAR)
        w, h = im.size
        x, y = int(self.rng.integers(0, w - self.size + 1)), int(self.rng.integers(0, h - self.size + 1))
        a = np.asarray(im.crop((x, y, x + self.size, y + self.size)), dtype=np.float32) / 255.0
        return torch.from_numpy(a).permute(2, 0, 1) * 2.0 - 1.0


class _ExampleDataset(torch.utils.data.Dataset):
    """The scripts' preprocessing: Resize(bilinear) -> RandomCrop (center_crop off) -> ToTensor -> Normalize; the
    caption (or the DreamBooth instance prompt) tokenized to 77 tokens. The images repeat so that one epoch of
    whole batches covers the run (as with a real dataset: no epoch boundary, no worker restarts while timing)."""

    def __init__(self, folder, tokenizer, resolution, batch, steps, prompt=None, class_folder=None,
                 class_prompt=None):
        from sdkit.data import scan_folder
        self.items = scan_folder(folder).items
        self.class_items = scan_folder(class_folder).items if class_folder else None
        self.tok, self.prompt, self.class_prompt = tokenizer, prompt, class_prompt
        try:  # the scripts' own torchvision transforms when torchvision is installed (Colab has it)
            from torchvision import transforms
            self.tf = transforms.Compose([
                transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BILINEAR),
                transforms.RandomCrop(resolution), transforms.ToTensor(), transforms.Normalize([0.5], [0.5])])
        except ImportError:  # the same steps with PIL and numpy (sdkit does not depend on torchvision)
            self.tf = _PilTransform(resolution)
        self.length = max(math.ceil(len(self.items) / batch), steps) * batch

    def __len__(self):
        return self.length

    def _ids(self, text):
        return self.tok(text, max_length=self.tok.model_max_length, padding="max_length", truncation=True,
                        return_tensors="pt").input_ids[0]

    def __getitem__(self, i):
        from PIL import Image
        path, caption = self.items[i % len(self.items)][:2]
        ex = {"pixel_values": self.tf(Image.open(path).convert("RGB")), "input_ids": self._ids(self.prompt or caption)}
        if self.class_items:
            cpath = self.class_items[i % len(self.class_items)][0]
            ex["class_pixel_values"] = self.tf(Image.open(cpath).convert("RGB"))
            ex["class_input_ids"] = self._ids(self.class_prompt)
        return ex


def _example_collate(examples):
    pixels = [e["pixel_values"] for e in examples]
    ids = [e["input_ids"] for e in examples]
    if "class_pixel_values" in examples[0]:   # train_dreambooth.py's collate_fn with prior preservation
        pixels += [e["class_pixel_values"] for e in examples]
        ids += [e["class_input_ids"] for e in examples]
    return {"pixel_values": torch.stack(pixels).to(memory_format=torch.contiguous_format).float(),
            "input_ids": torch.stack(ids)}


def run_example(case: Case, env: dict) -> dict:
    """The diffusers example scripts' training loop (see EXAMPLE_DEFAULTS), with the case's script flags."""
    import torch.nn.functional as F
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params
    from transformers import CLIPTextModel, CLIPTokenizer
    from diffusers.utils import logging as dlog
    dlog.set_verbosity_error()   # the scripts' own casts trigger diffusers' dtype advice on every load
    steps, times = env["warmup"] + env["steps"], []
    d = EXAMPLE_DEFAULTS[case.method]
    lora = case.method == "lora"
    prior = case.method == "dreambooth"
    res = {"status": "ok"}
    try:
        with PeakMemory() as mem:
            AcceleratorState._reset_state(reset_partial_state=True)
            GradientState._reset_state()
            acc = Accelerator(mixed_precision=case.precision, gradient_accumulation_steps=1,
                              cpu=not torch.cuda.is_available())
            torch.manual_seed(0)
            folder = env["model_dir"]
            noise_scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
            tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
            # the published weights are fp32: load as fp32 whatever dtype our random files were saved in
            f32 = {"torch_dtype": torch.float32}
            text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", **f32)
            vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", **f32)
            unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **f32)
            vae.requires_grad_(False)
            text_encoder.requires_grad_(False)
            wd = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(acc.mixed_precision, torch.float32)
            if lora:   # train_text_to_image_lora.py
                from peft import LoraConfig
                unet.requires_grad_(False)
                unet.to(acc.device, dtype=wd)
                vae.to(acc.device, dtype=wd)
                text_encoder.to(acc.device, dtype=wd)
                unet.add_adapter(LoraConfig(r=d["rank"], lora_alpha=d["rank"], init_lora_weights="gaussian",
                                            target_modules=d["target_modules"]))
                if case.precision == "fp16":
                    cast_training_params(unet, dtype=torch.float32)
                if case.attention == "xformers":
                    unet.enable_xformers_memory_efficient_attention()
                params = filter(lambda p: p.requires_grad, unet.parameters())  # consumed by the optimizer
            else:      # train_dreambooth.py (UNet trained in fp32 under autocast)
                if case.attention == "xformers":
                    unet.enable_xformers_memory_efficient_attention()
                params = unet.parameters()
            if case.grad_ckpt:
                unet.enable_gradient_checkpointing()
            if case.optimizer == "adamw8bit":
                import bitsandbytes as bnb
                opt_cls = bnb.optim.AdamW8bit
            else:
                opt_cls = torch.optim.AdamW
            optimizer = opt_cls(params, lr=d["learning_rate"], betas=(0.9, 0.999),
                                weight_decay=d["adam_weight_decay"], eps=1e-8)
            dataset = _ExampleDataset(env["data"]["instance"], tokenizer, env["resolution"], case.batch, steps,
                                      prompt=None if lora else "a sks shape",
                                      class_folder=env["data"]["class"] if prior else None, class_prompt="a shape")
            loader = torch.utils.data.DataLoader(dataset, shuffle=True, collate_fn=_example_collate,
                                                 batch_size=case.batch, num_workers=case.workers)
            lr_scheduler = get_scheduler("constant", optimizer=optimizer, num_warmup_steps=500,
                                         num_training_steps=steps)
            unet, optimizer, loader, lr_scheduler = acc.prepare(unet, optimizer, loader, lr_scheduler)
            if not lora:
                vae.to(acc.device, dtype=wd)
                text_encoder.to(acc.device, dtype=wd)
            T = noise_scheduler.config.num_train_timesteps
            step = 0
            _sync()
            t_prev = time.perf_counter()
            while step < steps:
                unet.train()
                train_loss = 0.0
                for batch in loader:
                    with acc.accumulate(unet):
                        latents = vae.encode(batch["pixel_values"].to(dtype=wd)).latent_dist.sample()
                        latents = latents * vae.config.scaling_factor
                        noise = torch.randn_like(latents)
                        bsz = latents.shape[0]
                        timesteps = torch.randint(0, T, (bsz,), device=latents.device).long()
                        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
                        hidden = text_encoder(batch["input_ids"], return_dict=False)[0]
                        target = noise
                        pred = unet(noisy, timesteps, hidden, return_dict=False)[0]
                        if prior:
                            pred, pred_prior = torch.chunk(pred, 2, dim=0)
                            target, target_prior = torch.chunk(target, 2, dim=0)
                            loss = F.mse_loss(pred.float(), target.float(), reduction="mean")
                            loss = loss + d["prior_loss_weight"] * F.mse_loss(pred_prior.float(),
                                                                             target_prior.float())
                        else:
                            loss = F.mse_loss(pred.float(), target.float(), reduction="mean")
                        if lora:
                            avg_loss = acc.gather(loss.repeat(case.batch)).mean()
                            train_loss += avg_loss.item()
                        acc.backward(loss)
                        if acc.sync_gradients:
                            acc.clip_grad_norm_(params if lora else unet.parameters(), d["max_grad_norm"])
                        optimizer.step()
                        lr_scheduler.step()
                        optimizer.zero_grad(**({} if lora else {"set_to_none": d["set_grads_to_none"]}))
                    logs = {"loss": loss.detach().item(), "lr": lr_scheduler.get_last_lr()[0]}  # noqa: F841
                    _sync()
                    now = time.perf_counter()
                    times.append(now - t_prev)
                    t_prev = now
                    step += 1
                    if step >= steps:
                        break
            res["last_loss"] = float(loss.detach())
            del unet, vae, text_encoder, optimizer, loader, acc
        res.update(mem.result)
    except Exception as e:
        res["status"], res["error"] = _error_status(e)
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    res.update(times=times, flags=case.example_flags())
    return res


def measure_plan(plan: dict) -> dict:
    """Run one case's loops for `repeats` interleaved rounds; raw per-run measurements."""
    case, env = Case(**plan["case"]), plan["env"]
    env = dict(env, warmup=plan["warmup"])
    runs = {loop: [] for loop in plan["loops"]}
    fn = {"sdkit": run_sdkit, "example": run_example}
    for r in range(env["repeats"]):
        for loop in plan["loops"]:
            if runs[loop] and runs[loop][-1]["status"] != "ok":
                continue   # an OOM / error repeats: measure it once
            t0 = time.time()
            res = fn[loop](case, env)
            res["wall_s"] = time.time() - t0
            runs[loop].append(res)
            w = plan["warmup"]
            med = statistics.median(res["times"][w:]) if len(res["times"]) > w else float("nan")
            log(f"  {case.name} {loop} repeat {r + 1}/{env['repeats']}: {res['status']}"
                + (f", {med:.4f} s/step" if res["status"] == "ok" else f" ({res.get('error')})"))
    return runs


def _measure_isolated(plan: dict) -> dict:
    """measure_plan in a fresh Python process (clean allocator, caches and compile state per case)."""
    with tempfile.TemporaryDirectory(prefix="gpu-harness-child-") as tmp:
        inp, outp = Path(tmp) / "plan.json", Path(tmp) / "runs.json"
        inp.write_text(json.dumps(plan))
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--_child", str(inp), str(outp)])
        if proc.returncode != 0 or not outp.is_file():
            err = {"status": "error", "error": f"child process exited with {proc.returncode}", "times": []}
            return {loop: [err] for loop in plan["loops"]}
        return json.loads(outp.read_text())


# ---- 7. FLOPs ---------------------------------------------------------------------------------------------------
def _count(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


def count_flops(unet_cfg: dict, te_cfg: dict, vae_cfg: dict, resolution: int, methods=("lora", "full")) -> dict:
    """FLOPs per sample, counted with FlopCounterMode on the meta device (shapes only)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from peft import LoraConfig
    from transformers import CLIPTextConfig, CLIPTextModel
    factor = 2 ** (len(vae_cfg["block_out_channels"]) - 1)
    lat = resolution // factor
    seq = te_cfg.get("max_position_embeddings", 77)

    def make_unet():
        with torch.device("meta"):
            return UNet2DConditionModel.from_config(unet_cfg)

    def inputs():
        return (torch.randn(1, unet_cfg["in_channels"], lat, lat, device="meta"), torch.tensor([500], device="meta"),
                torch.randn(1, seq, unet_cfg["cross_attention_dim"], device="meta"))

    unet = make_unet()
    with torch.no_grad():
        fwd = _count(lambda: unet(*inputs()).sample)
    train = {}
    for m in set("full" if x == "dreambooth" else x for x in methods):
        u = make_unet()
        if m == "lora":
            u.requires_grad_(False)
            u.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
        else:
            u.requires_grad_(True)
        train[m] = _count(lambda: u(*inputs()).sample.float().pow(2).mean().backward())
    if "dreambooth" in methods:
        train["dreambooth"] = train["full"]
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(vae_cfg)
        te = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in te_cfg.items() if not k.startswith("_")}))
    with torch.no_grad():
        vae_enc = _count(lambda: vae.encode(torch.randn(1, 3, resolution, resolution, device="meta")).latent_dist.mean)
        te_fwd = _count(lambda: te(torch.zeros(1, seq, dtype=torch.long, device="meta"))[0])
    return {"latent_size": lat, "resolution": resolution, "unet_forward": fwd, "unet_train": train,
            "vae_encode": vae_enc, "text_encoder_forward": te_fwd,
            "method": "torch.utils.flop_counter.FlopCounterMode on the meta device, per sample (batch 1); "
                      "unet_train = forward + backward as the method trains (no checkpointing recompute)"}


def sd15_flop_check() -> dict:
    """The SD 1.5 UNet forward at 64x64 latents, batch 1, against the issue's 0.80 TFLOP (meta device: 0.803;
    real CPU tensors give 0.677 because FlopCounterMode does not count CPU's fused attention kernel)."""
    from diffusers import UNet2DConditionModel
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
    params = sum(p.numel() for p in unet.parameters())
    x = torch.randn(1, 4, 64, 64, device="meta")
    h = torch.randn(1, 77, 768, device="meta")
    with torch.no_grad():
        f = _count(lambda: unet(x, torch.tensor([500], device="meta"), h).sample)
    rel = f / 1e12 / SD15_UNET_FORWARD_TFLOP - 1
    return {"unet_params": params, "unet_forward_64x64_tflop": f / 1e12, "expected_tflop": SD15_UNET_FORWARD_TFLOP,
            "relative_difference": rel, "ok": abs(rel) < 0.05}


def _model_configs(model_dir: Path) -> tuple:
    def read(sub, name):
        return {k: v for k, v in json.loads((Path(model_dir) / sub / name).read_text()).items()
                if not k.startswith("_")}
    return read("unet", "config.json"), read("text_encoder", "config.json"), read("vae", "config.json")


# ---- 8. figures, preflight calibration, report --------------------------------------------------------------------
def device_info(peak_override=None) -> dict:
    if not torch.cuda.is_available():
        return {"kind": "cpu", "name": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                "torch_threads": torch.get_num_threads(), "peak_tflops": None,
                "peak_source": "n/a on a CPU: MFU not reported"}
    name = torch.cuda.get_device_name()
    peak, label = peak_override, "--peak-tflops"
    if peak is None:
        for pattern, tflops, lab in PEAK_TFLOPS:
            if re.search(pattern, name, re.IGNORECASE):
                peak, label = tflops, lab
                break
    props = torch.cuda.get_device_properties(0)
    return {"kind": "cuda", "name": name, "capability": ".".join(map(str, torch.cuda.get_device_capability())),
            "memory_gb": props.total_memory / 1e9, "peak_tflops": peak,
            "peak_source": f"{label}: {PEAK_SOURCE}" if peak else "unknown GPU: pass --peak-tflops for MFU",
            "cuda": torch.version.cuda, "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32, "cudnn_benchmark": torch.backends.cudnn.benchmark}


def probe_device(peak_override=None, subprocess_probe=False) -> dict:
    """device_info() plus the CUDA context size; in a subprocess when the cases run isolated, so that this
    (parent) process never creates a CUDA context of its own."""
    if subprocess_probe and torch.cuda.is_available():
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_probe"]
        if peak_override is not None:
            cmd += ["--peak-tflops", str(peak_override)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode == 0:
            return json.loads(proc.stdout.strip().splitlines()[-1])
        log(f"device probe failed ({proc.stderr.strip().splitlines()[-1:]}); probing in this process")
    dev = device_info(peak_override)
    dev["context_gb"] = cuda_context_gb()
    return dev


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {"python": platform.python_version()}
    for pkg in ("torch", "diffusers", "transformers", "accelerate", "peft", "sdkit", "xformers", "bitsandbytes"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    if out["sdkit"] is None:
        import sdkit
        out["sdkit"] = getattr(sdkit, "__version__", None)
    return out


def summarise_runs(runs: list, warmup: int, batch: int, samples: int, flops: dict, case: Case, loop: str,
                   peak_tflops) -> dict:
    ok = [r for r in runs if r["status"] == "ok" and len(r["times"]) > warmup]
    status = "ok" if ok else ("not run" if not runs else runs[-1]["status"])
    if not ok and status == "ok":
        status = "too few steps"
    out = {"status": status, "repeats": len(ok), "warmup_steps": warmup}
    if not ok:
        if runs and runs[-1].get("error"):
            out["error"] = runs[-1]["error"]
        return out
    meds = [statistics.median(r["times"][warmup:]) for r in ok]
    med = statistics.median(meds)
    out["seconds_per_step"] = {"min": min(meds), "median": med, "max": max(meds), "runs": meds,
                               "steps_timed": len(ok[0]["times"]) - warmup}
    out["images_per_s"] = batch / med
    out["images_per_s_range"] = [batch / max(meds), batch / min(meds)]
    unet_flops = flops["unet_train"][case.method] * samples
    vae_flops = 0 if (loop == "sdkit" and case.cache_latents) else flops["vae_encode"] * samples
    all_flops = unet_flops + vae_flops + flops["text_encoder_forward"] * samples
    out["unet_train_tflop_per_step"] = unet_flops / 1e12
    out["achieved_tflops"] = unet_flops / med / 1e12
    if peak_tflops:
        out["mfu"] = unet_flops / med / 1e12 / peak_tflops
        out["mfu_all"] = all_flops / med / 1e12 / peak_tflops
    mem_keys = ("peak_allocated_gb", "peak_reserved_gb", "baseline_allocated_gb", "peak_rss_gb", "baseline_rss_gb")
    for k in mem_keys:
        vals = [r[k] for r in ok if k in r]
        if vals:
            out[k] = max(vals)
    out["wall_s_per_run"] = [round(r.get("wall_s", float("nan")), 2) for r in runs]
    for k in ("hooks", "flags"):
        if k in ok[0]:
            out[k] = ok[0][k]
    return out


def preflight_compare(case: Case, env: dict, measured: dict, context_gb: float, models) -> dict:
    """sdkit.train.preflight.estimate(config) against this case's measured peak (sdkit's loop)."""
    from sdkit.train.preflight import ACT_CKPT_GB, ACT_FULL_GB, CONTEXT_GB, estimate
    cfg = sdkit_config(case, env, 1, "unused")
    est = estimate(cfg, models=models)
    out = {"vram_estimate_gb": est.vram_gb, "ram_estimate_gb": est.ram_gb, "parts": est.parts,
           "not_modelled": [k for k in ("compile", "channels_last") if getattr(case, k)]
           + (["adamw_fused (estimate assumes AdamW temporaries)"] if case.optimizer == "adamw_fused" else [])}
    if measured.get("status") != "ok":
        out["relative_error"] = None
        return out
    if "peak_reserved_gb" in measured:
        total = measured["peak_reserved_gb"] + context_gb
        out.update(measured_gb=total, measured_basis="peak reserved + CUDA context",
                   relative_error=est.vram_gb / total - 1,
                   relative_error_vs_allocated=(est.vram_gb - CONTEXT_GB) / measured["peak_allocated_gb"] - 1)
        # back-solve the activation constant A (GB per sample at 512 px, width 320, 16-bit) of preflight's formula
        act_measured = measured["peak_reserved_gb"] - (est.vram_gb - est.parts["activations"] - CONTEXT_GB)
        act_unit = est.parts["activations"] / (ACT_CKPT_GB if case.grad_ckpt else ACT_FULL_GB)
        out["implied_activation_constant_gb"] = act_measured / act_unit if act_unit else None
        out["preflight_activation_constant_gb"] = ACT_CKPT_GB if case.grad_ckpt else ACT_FULL_GB
    else:
        out.update(measured_gb=measured.get("peak_rss_gb"), measured_basis="peak RSS (CPU): RAM estimate",
                   relative_error=(est.ram_gb / measured["peak_rss_gb"] - 1) if measured.get("peak_rss_gb") else None)
    return out


def calibration_summary(cases: list, cuda: bool) -> dict:
    errs = [c["preflight"]["relative_error"] for c in cases
            if c.get("preflight", {}).get("relative_error") is not None]
    out = {"compared": "VRAM estimate vs peak reserved + CUDA context" if cuda else
           "RAM estimate vs peak RSS (CPU run: no VRAM to compare)", "n": len(errs)}
    if errs:
        out.update(median_abs_relative_error=statistics.median(abs(e) for e in errs),
                   max_abs_relative_error=max(abs(e) for e in errs),
                   median_relative_error=statistics.median(errs))
    if cuda:
        for ck, key in ((True, "ACT_CKPT_GB"), (False, "ACT_FULL_GB")):
            vals = [c["preflight"]["implied_activation_constant_gb"] for c in cases
                    if c.get("preflight", {}).get("implied_activation_constant_gb") is not None
                    and c["settings"]["grad_ckpt"] == ck and not c["preflight"]["not_modelled"]]
            if vals:
                out[f"suggested_{key}"] = {"median": statistics.median(vals), "n": len(vals),
                                           "min": min(vals), "max": max(vals)}
    return out


def goals(result: dict) -> dict:
    """The issue's targets, from this run's figures (None where the needed cases were not run)."""
    cases = result["cases"]
    by = {c["name"]: c for c in cases}
    ok = [c for c in cases if c["sdkit"].get("status") == "ok"]
    lora = [c for c in ok if c["settings"]["method"] == "lora"]
    g = {}
    ex = by.get("example-defaults-lora", {}).get("example", {})
    if lora and ex.get("status") == "ok":
        best = max(lora, key=lambda c: c["sdkit"]["images_per_s"])
        r = best["sdkit"]["images_per_s"] / ex["images_per_s"]
        g["lora_vs_example_defaults"] = {"best_sdkit_case": best["name"], "ratio": r, "goal": 2.0, "met": r >= 2.0}
    if lora and lora[0]["sdkit"].get("mfu") is not None:
        best = max(lora, key=lambda c: c["sdkit"]["mfu"])
        g["best_lora_mfu"] = {"case": best["name"], "mfu": best["sdkit"]["mfu"], "goal": 0.35,
                              "met": best["sdkit"]["mfu"] >= 0.35, "device": result["device"]["name"]}
    for name, limit in (("t4-lora", 5.0), ("t4-dreambooth", 9.5)):
        c = by.get(name)
        if c and c["sdkit"].get("status") == "ok" and "peak_allocated_gb" in c["sdkit"]:
            peak = c["sdkit"]["peak_allocated_gb"]
            g[f"{name}_peak_memory"] = {"peak_allocated_gb": peak, "peak_reserved_gb": c["sdkit"]["peak_reserved_gb"],
                                        "goal_gb": limit, "met": peak <= limit}
    return g


def markdown(result: dict) -> str:
    dev, v = result["device"], result["versions"]
    fc = result["flops"]["sd15_check"]
    cuda = dev["kind"] == "cuda"
    mem = "peak alloc / reserved GB" if cuda else "peak RSS GB"
    lines = [f"`{' '.join(result['command'])}` — {dev['name']}, {result['date']}; torch {v['torch']}, diffusers "
             f"{v['diffusers']}, peft {v['peft']}; {result['settings']['steps']} timed steps after "
             f"{result['settings']['warmup']} warm-up, {result['settings']['repeats']} interleaved repeats "
             f"(median; min–max over repeats); scale {result['scale']}, {result['resolution']} px.",
             "",
             f"| case | sdkit img/s | example img/s | sdkit / example | sdkit MFU | sdkit {mem} | example {mem} | "
             f"preflight est. (error) |",
             "|---|---|---|---|---|---|---|---|"]

    def ips(s):
        if s.get("status") != "ok":
            return s.get("status", "—")
        lo, hi = s["images_per_s_range"]
        return f"{s['images_per_s']:.3g} ({lo:.3g}–{hi:.3g})"

    def peak(s):
        if s.get("status") != "ok":
            return "—"
        if "peak_allocated_gb" in s:
            return f"{s['peak_allocated_gb']:.2f} / {s['peak_reserved_gb']:.2f}"
        return f"{s['peak_rss_gb']:.2f}" if "peak_rss_gb" in s else "—"

    for c in result["cases"]:
        if c.get("skipped"):
            lines.append(f"| {c['name']} | skipped: {c['skipped']} | | | | | | |")
            continue
        s, e = c["sdkit"], c["example"]
        ratio = f"**{c['ratio_sdkit_over_example']:.2f}**" if c.get("ratio_sdkit_over_example") else "—"
        mfu = f"{s['mfu'] * 100:.1f} %" if s.get("mfu") is not None else "n/a"
        p = c.get("preflight", {})
        pf = "—"
        if p.get("relative_error") is not None:
            est = p["vram_estimate_gb"] if cuda else p["ram_estimate_gb"]
            pf = f"{est:.2f} GB ({p['relative_error'] * 100:+.0f} %)"
        hooks = f" [hook: {', '.join(s['hooks'])}]" if s.get("hooks") else ""
        shared = f" (= {e['shared_with']})" if e.get("shared_with") else ""
        lines.append(f"| {c['name']}{hooks} | {ips(s)} | {ips(e)}{shared} | {ratio} | {mfu} | {peak(s)} | "
                     f"{peak(e)} | {pf} |")
    lines += ["", f"FLOPs (FlopCounterMode, meta device): SD 1.5 UNet forward at 64×64, batch 1 = "
                  f"{fc['unet_forward_64x64_tflop']:.3f} TFLOP (issue: {fc['expected_tflop']:.2f}; "
                  f"{'ok' if fc['ok'] else 'OFF'}). This model per sample: UNet forward "
                  f"{result['flops']['model']['unet_forward'] / 1e12:.4g} TFLOP, training "
                  + ", ".join(f"{m} {f / 1e12:.4g}" for m, f in result["flops"]["model"]["unet_train"].items())
                  + f" TFLOP; VAE encode {result['flops']['model']['vae_encode'] / 1e12:.4g} TFLOP."]
    if dev.get("peak_tflops"):
        lines.append(f"MFU = UNet training FLOPs / step time / {dev['peak_tflops']:g} TFLOP/s ({dev['peak_source']}).")
    cal = result["calibration"]
    if cal.get("n"):
        lines.append(f"Preflight ({cal['compared']}): median |error| {cal['median_abs_relative_error'] * 100:.0f} %, "
                     f"max {cal['max_abs_relative_error'] * 100:.0f} % over {cal['n']} cases.")
    for k, g in result["goals"].items():
        lines.append(f"Goal {k}: {json.dumps({a: (round(b, 3) if isinstance(b, float) else b) for a, b in g.items()})}")
    if result["sdkit_lacks"]:
        lines.append("sdkit has no option for: " + "; ".join(result["sdkit_lacks"].values()) + ".")
    return "\n".join(lines)


# ---- 9. main ------------------------------------------------------------------------------------------------------
def run(a) -> dict:
    cuda = torch.cuda.is_available()
    t_start = time.time()
    cases = cases_from_args(a)
    if a.scale == "sd15" and not cuda:
        log("warning: --scale sd15 on a CPU takes minutes per step; use --scale tiny for a smoke run")
    cache = Path(a.model_dir or Path(os.environ.get("SDKIT_CACHE", Path.home() / ".cache" / "sdkit"))
                 / f"gpu-harness-{a.scale}")
    model_dir = build_pipeline(a.scale, cache)
    unet_cfg, te_cfg, vae_cfg = _model_configs(model_dir)
    factor = 2 ** (len(vae_cfg["block_out_channels"]) - 1)
    resolution = a.resolution or unet_cfg["sample_size"] * factor
    isolate = cuda if a.isolate == "auto" else a.isolate == "on"
    dev = probe_device(a.peak_tflops, subprocess_probe=isolate)
    context_gb = dev["context_gb"]
    runnable = [c for c in cases if not skip_reason(c, dev)]
    n_images = a.n_images or max([8] + [c.batch for c in runnable])
    work = Path(tempfile.mkdtemp(prefix="gpu-harness-"))
    data = write_data(work / "data", n_images, a.image_size or resolution)
    env = {"model_dir": str(model_dir), "data": data, "resolution": resolution, "steps": a.steps,
           "repeats": a.repeats}
    flops = {"sd15_check": sd15_flop_check(),
             "model": count_flops(unet_cfg, te_cfg, vae_cfg, resolution,
                                  methods=sorted({c.method for c in cases}))}
    log(f"{len(cases)} cases ({len(cases) - len(runnable)} skipped) on {dev['name']}; model {model_dir}; "
        f"{resolution} px; isolate={isolate}")
    from sdkit.train.preflight import MetaModels
    models = MetaModels(str(model_dir))
    result = {
        "harness": "bench/gpu_harness.py", "harness_version": HARNESS_VERSION,
        "command": ["python", "bench/gpu_harness.py"] + sys.argv[1:],
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "device": dev, "versions": versions(),
        "scale": a.scale, "resolution": resolution, "model_dir": str(model_dir),
        "settings": {"steps": a.steps, "warmup": a.warmup, "repeats": a.repeats, "n_images": n_images,
                     "image_size": data["image_size"], "isolate": isolate, "loops": a.loops,
                     "sdkit_uses_num_workers": _sdkit_uses_num_workers()},
        "cuda_context_gb": context_gb, "flops": flops, "example_defaults": EXAMPLE_DEFAULTS,
        "mfu_definition": "UNet training FLOPs per step (FlopCounterMode, no recompute) / median s per step / "
                          "peak dense 16-bit tensor TFLOP/s; mfu_all adds the VAE encode and text encoder forwards",
        "cases": [], "sdkit_lacks": {}, "partial": True, "wall_s": None,
    }
    out_cases, lacks = result["cases"], result["sdkit_lacks"]
    example_done = {}   # example_key -> case name that measured it
    for i, case in enumerate(cases):
        entry = {"name": case.name, "role": case.role, "settings": case.settings()}
        reason = skip_reason(case, dev)
        if reason:
            entry.update(skipped=reason, sdkit={"status": "skipped"}, example={"status": "skipped"})
            out_cases.append(entry)
            log(f"case {i + 1}/{len(cases)} {case.name}: skipped ({reason})")
            continue
        warmup = a.warmup
        if case.cache_latents:   # every image in the cache before timing starts
            warmup = max(warmup, math.ceil(n_images / case.batch) + 1)
        loops = ["sdkit"] if "sdkit" in a.loops else []
        shared = example_done.get(case.example_key())
        if "example" in a.loops and shared is None:
            loops.append("example")
        log(f"case {i + 1}/{len(cases)} {case.name}: loops {loops}, warm-up {warmup}")
        plan = {"case": dataclasses.asdict(case), "env": env, "warmup": warmup, "loops": loops}
        runs = _measure_isolated(plan) if isolate else measure_plan(plan)
        samples = case.batch * (2 if case.method == "dreambooth" else 1)
        for loop in ("sdkit", "example"):
            if loop in runs:
                entry[loop] = summarise_runs(runs[loop], warmup, case.batch, samples, flops["model"], case, loop,
                                             dev["peak_tflops"])
                entry[loop]["raw_seconds_per_step"] = [r["times"] for r in runs[loop]]
        if "example" not in runs:
            if shared is not None:
                src = next(c for c in out_cases if c["name"] == shared)
                entry["example"] = dict({k: v for k, v in src["example"].items() if k != "raw_seconds_per_step"},
                                        shared_with=shared)
            else:
                entry["example"] = {"status": "not run"}
        else:
            example_done[case.example_key()] = case.name
        entry["example"].setdefault("flags", case.example_flags())
        entry.setdefault("sdkit", {"status": "not run"})
        s, e = entry["sdkit"], entry["example"]
        if s.get("status") == "ok" and e.get("status") == "ok":
            entry["ratio_sdkit_over_example"] = s["images_per_s"] / e["images_per_s"]
            entry["ratio_measured_in_same_run"] = True         # one harness session, same machine state
            entry["ratio_interleaved"] = "example" in runs     # False: the example run is shared with another case
        if s.get("status") == "ok":
            entry["preflight"] = preflight_compare(case, env, s, context_gb, models)
        for h in s.get("hooks", []):
            lacks[h] = SDKIT_LACKS[h]
        out_cases.append(entry)
        if a.json:   # after every case: a long GPU suite that stops keeps what it measured
            _finish(result, cuda, t_start)
            _write_json(a.json, result)
    shutil.rmtree(work, ignore_errors=True)
    result["partial"] = False
    return _finish(result, cuda, t_start)


def _sdkit_uses_num_workers() -> bool:
    """Whether this sdkit's loop loads batches in worker processes (older trees accepted and ignored num_workers)."""
    from sdkit.train.loop import Trainer
    return hasattr(Trainer, "_batches")


def _finish(result: dict, cuda: bool, t_start: float) -> dict:
    result["calibration"] = calibration_summary(result["cases"], cuda)
    result["goals"] = goals(result)
    result["wall_s"] = time.time() - t_start
    return result


def _write_json(path, result):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str))
    os.replace(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter,
                                 epilog="Suites: quick (3 fp32 cases, CPU-friendly), h100 (batch sweeps, attention, "
                                        "compile, channels-last, cached latents, fused/8-bit optimizers, example "
                                        "defaults), t4 (fp16 batch-1 memory goals). Runbook: bench/GPU_RUNBOOK.md")
    ap.add_argument("--scale", choices=["sd15", "tiny"], default="sd15",
                    help="sd15: SD 1.5 architecture, random init (default); tiny: sdkit.models.make_tiny (CPU smoke)")
    ap.add_argument("--suite", choices=["quick", "h100", "t4"], help="a named list of cases")
    ap.add_argument("--cases", action="append", metavar="SPEC",
                    help="cases as a product, e.g. 'method=lora,full precision=bf16 batch=1,8 compile=both "
                         "optimizer=adamw_fused'; repeatable; added to --suite")
    g = ap.add_argument_group("matrix (when neither --suite nor --cases is given)")
    g.add_argument("--methods", default="lora", help="lora,full,dreambooth")
    g.add_argument("--precisions", default="bf16", help="no,fp16,bf16")
    g.add_argument("--batches", default="1,4,16", help="batch sizes")
    g.add_argument("--attention", default="sdpa", help="sdpa,xformers")
    g.add_argument("--compile", nargs="?", const="on", default="off", help="torch.compile the UNet: on/off/both")
    g.add_argument("--channels-last", nargs="?", const="on", default="off", help="on/off/both")
    g.add_argument("--cache-latents", nargs="?", const="on", default="off", help="on/off/both")
    g.add_argument("--optimizers", default="adamw", help="adamw,adamw_fused,adamw8bit")
    g.add_argument("--grad-ckpt", nargs="?", const="on", default="off", help="gradient checkpointing: on/off/both")
    g.add_argument("--workers", default="0", help="data-loader worker processes, e.g. 0,4")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per run (after the warm-up)")
    ap.add_argument("--warmup", type=int, default=3, help="warm-up steps per run, not timed (cached-latents cases "
                                                          "warm up until every image is cached)")
    ap.add_argument("--repeats", type=int, help="interleaved repeats of each loop (default 3; 2 with --scale tiny)")
    ap.add_argument("--loops", default="sdkit,example", help="which loops to run")
    ap.add_argument("--resolution", type=int, help="pixels (default: the model's native: 512 for sd15)")
    ap.add_argument("--image-size", type=int, help="size of the training PNGs (default: the resolution)")
    ap.add_argument("--n-images", type=int, help="training images (default: max(8, largest batch))")
    ap.add_argument("--model-dir", help="where the pipeline is written (default: $SDKIT_CACHE or "
                                        "~/.cache/sdkit/gpu-harness-<scale>)")
    ap.add_argument("--peak-tflops", type=float, help="the GPU's dense 16-bit peak, when not in the built-in table")
    ap.add_argument("--isolate", choices=["auto", "on", "off"], default="auto",
                    help="each case in a fresh process (auto: on with CUDA)")
    ap.add_argument("--json", metavar="FILE", help="write every figure to FILE")
    ap.add_argument("--markdown", nargs="?", const="-", metavar="FILE",
                    help="print the markdown table (and write it to FILE)")
    ap.add_argument("--list", action="store_true", help="print the cases (and skip reasons) and exit")
    ap.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--_probe", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    a.loops = [x.strip() for x in a.loops.split(",") if x.strip()]
    if a.repeats is None:
        a.repeats = 2 if a.scale == "tiny" else 3

    if a._child:
        plan = json.loads(Path(a._child[0]).read_text())
        Path(a._child[1]).write_text(json.dumps(measure_plan(plan)))
        return 0
    if a._probe:
        dev = device_info(a.peak_tflops)
        dev["context_gb"] = cuda_context_gb()
        print(json.dumps(dev))
        return 0
    if a.list:
        dev = device_info(a.peak_tflops)
        for c in cases_from_args(a):
            r = skip_reason(c, dev)
            print(f"{c.name:<48} {'skip: ' + r if r else 'example: ' + c.example_flags()}")
        return 0
    result = run(a)
    if a.json:
        _write_json(a.json, result)
        log(f"wrote {a.json}")
    md = markdown(result)
    if a.markdown:
        print(md)
        if a.markdown != "-":
            Path(a.markdown).write_text(md + "\n")
    else:
        for c in result["cases"]:
            s, e = c["sdkit"], c["example"]
            print(f"{c['name']:<44} sdkit {s.get('images_per_s', float('nan')):8.2f} img/s   example "
                  f"{e.get('images_per_s', float('nan')):8.2f} img/s   ratio "
                  f"{c.get('ratio_sdkit_over_example', float('nan')):.2f}   {c.get('skipped', '')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
