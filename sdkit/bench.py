"""`python -m sdkit bench train [--quick] [--json F]`: sdkit's loop against a bare reference loop.

Both train the same LoRA on the same model, data, batch and optimizer, in one process, interleaved
(sdkit, bare, sdkit, bare, ...), so the ratio is measured under the same machine load. Per-step time is the median
over the steps after 2 warm-up steps (sdkit: from its metrics' wall-clock column; the bare loop: timed per step).
"""
from __future__ import annotations

import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from .config import TrainConfig
from .models import PRESETS
from .quickstart import write_shapes_folder
from .train.loop import Trainer

__all__ = ["bench_train"]


def _sdkit_seconds_per_step(model, data, steps, batch_size, resolution, out):
    cfg = TrainConfig(model=model, data=str(data), steps=steps, batch_size=batch_size, resolution=resolution,
                            out=str(out), tensorboard=False, sample_at_start=False, checkpoint_every=0,
                            lr=1e-4, lora_rank=4)
    trainer = Trainer(cfg, progress=None)  # the same Trainer the CLI and notebooks use
    # no final samples/checkpoint for the timing: keep only the observers
    trainer.callbacks = [c for c in trainer.callbacks if type(c).__name__ not in ("SampleCallback",
                                                                                   "CheckpointCallback")]
    run = trainer.fit()
    t = [m["time"] for m in run.metrics]
    per_step = [b - a for a, b in zip(t[2:], t[3:])]
    return statistics.median(per_step)


def bench_train(quick: bool = True, repeats: int = 3, json_path=None) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from bare_loop import bare_train  # bench/bare_loop.py: the reference loop, beside the package
    mini_ok = (Path(PRESETS["mini"]["path"]()) / "model_index.json").is_file()
    model = "tiny" if quick or not mini_ok else "mini"
    steps, batch = (12, 8) if quick else (40, 64)
    tmp = Path(tempfile.mkdtemp(prefix="sdkit-bench-"))
    data = write_shapes_folder(tmp / "data", n=32, size=32)
    ours, ref = [], []
    for r in range(repeats):
        ours.append(_sdkit_seconds_per_step(model, data, steps, batch, 32, tmp / f"run{r}"))
        ref.append(bare_train(model, str(data), steps, batch, 32)["seconds_per_step"])
    result = {
        "benchmark": "train loop overhead (LoRA, fp32)", "model": model, "batch_size": batch, "steps": steps,
        "repeats": repeats, "device": "cuda" if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "sdkit_steps_per_s": 1 / statistics.median(ours), "reference_steps_per_s": 1 / statistics.median(ref),
        "sdkit_seconds_per_step_runs": ours, "reference_seconds_per_step_runs": ref,
        "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
    }
    result["ratio_vs_reference"] = result["sdkit_steps_per_s"] / result["reference_steps_per_s"]
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=1))
    return result
