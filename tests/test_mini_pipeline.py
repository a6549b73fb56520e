"""The shipped mini pipeline: loads like any SD pipeline, and draws what prompts say (a quality floor a broken
pipeline fails). And `python -m sdkit mini build --quick` rebuilds every part from nothing."""
import json
import os
import subprocess

import numpy as np
import pytest
import torch

import sdkit
from sdkit.mini import pipeline as mp
from sdkit.mini import world
from sdkit.mini.judge import Judge

from conftest import PYTHON, ROOT

MINI = ROOT / "data_samples" / "mini-sd"


def _quick_score(pipe, n_prompts=24, seeds=(0, 1)):
    prompts = list(world.canonical_prompts(held_out=False))
    rng = np.random.default_rng(1)
    pick = [prompts[i] for i in rng.choice(len(prompts), n_prompts, replace=False)]
    images = mp.generate_for(pipe, [p for p, _ in pick], seeds, steps=10, guidance=5.0)
    return Judge.load().score(images, [lab for _, lab in pick for _ in seeds])


def test_mini_loads_with_from_pretrained_and_by_preset():
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(str(MINI))
    assert pipe.tokenizer.model_max_length == 77 and len(pipe.tokenizer) == 49408
    assert sdkit.load_pipeline("mini").unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    # a plain from_pretrained pipeline draws (every part in one dtype)
    assert pipe("a red seven on a blue background", num_inference_steps=2, output_type="np").images.shape == \
        (1, 32, 32, 3)
    size = sum(f.stat().st_size for f in MINI.rglob("*") if f.is_file())
    assert size < 30e6, f"mini-sd is {size / 1e6:.1f} MB; the budget is 30 MB"


def test_shipped_mini_pipeline_draws_what_the_prompt_says():
    torch.manual_seed(0)
    pipe = sdkit.load_pipeline("mini").to(torch.float32)
    score = _quick_score(pipe)
    assert score["joint_acc"] >= 0.7, score
    # the same check fails for a pipeline whose UNet has random weights
    from diffusers import UNet2DConditionModel
    pipe.unet = UNet2DConditionModel(**mp.UNET_CONFIG)
    assert _quick_score(pipe, n_prompts=8)["joint_acc"] < 0.2


def test_mini_build_quick_rebuilds_everything_from_nothing(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SDKIT_CACHE": str(tmp_path / "cache")}
    r = subprocess.run([PYTHON, "-m", "sdkit", "mini", "build", "--quick", "--root", str(tmp_path / "ds")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    for stage in ("judge", "clip", "vae", "UNet"):
        assert stage in r.stdout
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(str(tmp_path / "ds" / "mini-sd"))
    assert pipe("a red seven on a blue background", num_inference_steps=2, output_type="np").images.shape == \
        (1, 32, 32, 3)
