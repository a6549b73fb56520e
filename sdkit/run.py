"""A run directory, read back: config, metrics, samples, checkpoints. The run directory is the only state a run has.

runs/NAME/config.yaml     resolved config (enough to reproduce), plus num_processes and global_batch_size
runs/NAME/metrics.jsonl   one JSON object per logged step / event
runs/NAME/tb/             TensorBoard events
runs/NAME/samples/        step_XXXXXX/p{prompt}_s{seed}.png + grid.png, step 0 first
runs/NAME/checkpoints/    step_XXXXXX/ (trainable.safetensors + optimizer + state.json), `latest` marker
runs/NAME/export/         final artifacts

`pipeline_from_checkpoint` (also `Run.load_pipeline`) puts a run's trained weights back onto its base pipeline.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from .checkpoint import find_checkpoint, list_checkpoints, read_checkpoint
from .config import TrainConfig
from .methods.base import make_method
from .models import load_pipeline

__all__ = ["Run", "pipeline_from_checkpoint"]


class Run:
    """Everything a finished (or stopped, or still running) run wrote. `Run(path)` opens any run directory."""

    def __init__(self, path, stopped_early: bool | None = None):
        self.path = Path(path)
        if not (self.path / "config.yaml").is_file():
            raise FileNotFoundError(f"{self.path} is not an sdkit run directory (no config.yaml).")
        self._stopped_early = stopped_early

    @property
    def stopped_early(self) -> bool:
        """True when the run ended before its configured steps (Stop, Ctrl-C, a crash): read from the files when
        the Run was opened from disk, so `--resume latest` can be suggested for any run directory."""
        if self._stopped_early is not None:
            return self._stopped_early
        return self.final_step < self.config.steps

    @stopped_early.setter
    def stopped_early(self, value: bool):
        self._stopped_early = value

    def __repr__(self):
        return f"Run({str(self.path)!r}, step={self.final_step}, checkpoints={len(self.checkpoints)})"

    @property
    def config(self):
        return TrainConfig.from_yaml(self.path / "config.yaml")

    @property
    def recorded(self) -> dict:
        """The whole config.yaml, recorded keys (num_processes, global_batch_size, ...) included."""
        return yaml.safe_load((self.path / "config.yaml").read_text())

    @property
    def events(self) -> list:
        p = self.path / "metrics.jsonl"
        if not p.is_file():
            return []
        out = []
        for line in p.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a line cut by a kill: ignore it
        return out

    @property
    def metrics(self) -> list:
        """Logged training steps (dicts with step, loss, lr, ...), in order; a resumed run's repeats dropped."""
        by_step = {}
        for e in self.events:
            if "event" not in e and "loss" in e:
                by_step[e["step"]] = e
        return [by_step[s] for s in sorted(by_step)]

    @property
    def validation(self) -> list:
        """Validation-split losses at each checkpoint ({step, val_loss, val_loss_per_t, val_n}), in step order."""
        by_step = {e["step"]: e for e in self.events if e.get("event") == "validation"}
        return [by_step[s] for s in sorted(by_step)]

    @property
    def samples(self) -> dict:
        """{step: [png paths]} for every sample folder, step 0 first (grids excluded)."""
        root = self.path / "samples"
        out = {}
        if root.is_dir():
            for d in sorted(root.glob("step_*")):
                out[int(d.name[5:])] = sorted(p for p in d.glob("*.png") if p.name != "grid.png")
        return out

    def grid(self, step=None):
        """Path of the sample grid at `step` (default: the newest)."""
        steps = sorted(self.samples)
        if not steps:
            return None
        step = steps[-1] if step is None else step
        return self.path / "samples" / f"step_{step:06d}" / "grid.png"

    @property
    def checkpoints(self) -> list:
        return list_checkpoints(self.path / "checkpoints")

    @property
    def latest_checkpoint(self):
        try:
            return find_checkpoint(self.path, "latest")
        except FileNotFoundError:
            return None

    @property
    def final_step(self) -> int:
        m = self.metrics
        return m[-1]["step"] if m else 0

    def load_pipeline(self, checkpoint=None, device="cpu"):
        """The base pipeline with this run's trained weights (from `checkpoint`, default the latest) applied."""
        return pipeline_from_checkpoint(self, checkpoint, device=device)


def pipeline_from_checkpoint(run, checkpoint=None, device="cpu", use_ema=True):
    """Base pipeline + the trained weights of `run` at `checkpoint` (folder, step_XXXXXX, or None: latest).

    A run trained with `ema` gives its EMA weights (what its samples showed) unless use_ema=False."""
    run = run if isinstance(run, Run) else Run(run)
    config = run.config
    path = find_checkpoint(run.path, checkpoint or "latest")
    pipe = load_pipeline(config.model, revision=config.revision)
    method = make_method(config)
    method.prepare_pipeline(pipe)
    groups = method.setup(pipe.unet, pipe.text_encoder)
    method.load_state_dict(pipe.unet, pipe.text_encoder, load_file(Path(path) / "trainable.safetensors"))
    if use_ema and config.ema and (Path(path) / "ema.safetensors").is_file():
        # EMAModel keeps one shadow tensor per trainable parameter, in the optimizer's parameter order
        shadow = read_checkpoint(path)["ema"]["shadow_params"]
        params = [p for g in groups for p in g["params"]]
        if len(shadow) != len(params):
            raise ValueError(f"{path}: EMA holds {len(shadow)} tensors, the method has {len(params)} parameters.")
        with torch.no_grad():
            for p, s in zip(params, shadow):
                p.copy_(s.to(p.dtype))
    pipe.unet.eval(), pipe.text_encoder.eval()
    return pipe.to(device)
