"""Checkpoint folders: the file format, written atomically, no pickle anywhere. (The trainer's side, what goes in
and how a run resumes from it, is sdkit.train.checkpoint.)

A checkpoint is a folder `checkpoints/step_XXXXXX/` holding
  trainable.safetensors   the trained weights (LoRA adapters, or the whole UNet for method full)
  optimizer.safetensors   optimizer tensors (Adam moments ...), with optimizer.json for the rest
  ema.safetensors         the EMA weights, when EMA is on
  state.json              step, learning-rate schedule, global batch (noise and data order are re-derived
                          from the seed and the global sample index, so no RNG state needs saving)
It is written to `.tmp_step_XXXXXX/`, flushed, then renamed; `checkpoints/latest` (a one-line text file) is replaced
atomically after the rename. A kill at any moment leaves either the old or the new checkpoint, never half of one.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

__all__ = ["step_name", "write_checkpoint", "read_checkpoint", "find_checkpoint", "list_checkpoints",
           "flatten_state", "unflatten_state"]


def step_name(step: int) -> str:
    return f"step_{step:06d}"


def _fsync_dir(path: Path):
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass  # not supported on every filesystem (e.g. some network mounts)


def flatten_state(state, prefix=""):
    """Split a nested state dict into ({name: tensor}, json-able rest with tensors replaced by '@name')."""
    tensors = {}

    def walk(obj, path):
        if isinstance(obj, torch.Tensor):
            tensors[path] = obj.detach().contiguous().cpu()
            return "@" + path
        if isinstance(obj, dict):
            return {"__dict__": [[_key(k), walk(v, f"{path}.{k}" if path else str(k))] for k, v in obj.items()]}
        if isinstance(obj, (list, tuple)):
            return [walk(v, f"{path}.{i}" if path else str(i)) for i, v in enumerate(obj)]
        return obj

    return tensors, walk(state, prefix)


def _key(k):
    return {"int": k} if isinstance(k, int) else k


def unflatten_state(tensors, skeleton):
    def walk(obj):
        if isinstance(obj, str) and obj.startswith("@") and obj[1:] in tensors:
            return tensors[obj[1:]]
        if isinstance(obj, dict) and "__dict__" in obj:
            return {(k["int"] if isinstance(k, dict) else k): walk(v) for k, v in obj["__dict__"]}
        if isinstance(obj, list):
            return [walk(v) for v in obj]
        return obj

    return walk(skeleton)


def write_checkpoint(ckpt_dir: Path, step: int, trainable: dict, optimizer_state: dict, state: dict,
                     ema_state: dict | None = None, keep_last: int = 0) -> Path:
    """Write checkpoints/step_XXXXXX atomically and point `latest` at it. Returns the final folder."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / step_name(step)
    tmp = ckpt_dir / (".tmp_" + step_name(step))
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    # 1. tensors and json into the temporary folder
    save_file({k: v.detach().contiguous().cpu() for k, v in trainable.items()}, tmp / "trainable.safetensors",
              metadata={"format": "pt", "step": str(step)})
    opt_tensors, opt_rest = flatten_state(optimizer_state)
    save_file(opt_tensors, tmp / "optimizer.safetensors")
    (tmp / "optimizer.json").write_text(json.dumps(opt_rest))
    if ema_state is not None:
        ema_tensors, ema_rest = flatten_state(ema_state)
        save_file(ema_tensors, tmp / "ema.safetensors")
        (tmp / "ema.json").write_text(json.dumps(ema_rest))
    (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=1))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(tmp)
    # 2. rename into place (replacing an older copy of the same step), then move the marker
    if final.exists():
        old = ckpt_dir / (".old_" + step_name(step))
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    _fsync_dir(ckpt_dir)
    marker_tmp = ckpt_dir / ".latest.tmp"
    marker_tmp.write_text(step_name(step) + "\n")
    os.replace(marker_tmp, ckpt_dir / "latest")
    _fsync_dir(ckpt_dir)
    # 3. keep-last-N
    if keep_last > 0:
        for old in list_checkpoints(ckpt_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(ckpt_dir: Path) -> list:
    """Complete checkpoints, oldest first (temporary folders are not checkpoints)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith("step_")
             and (p / "state.json").is_file() and (p / "trainable.safetensors").is_file()]
    return sorted(found, key=lambda p: p.name)


def find_checkpoint(run_dir: Path, which: str = "latest") -> Path:
    """'latest' → the checkpoint named by checkpoints/latest (or the newest complete one); else a folder path."""
    run_dir = Path(run_dir)
    if which != "latest":
        p = Path(which)
        if not p.is_absolute() and not p.exists():
            p = run_dir / "checkpoints" / which
        if not (p / "state.json").is_file():
            raise FileNotFoundError(f"resume: {p} is not a checkpoint folder (no state.json). Fix: use "
                                    f"--resume latest or a folder like {run_dir}/checkpoints/step_000100.")
        return p
    ckpt_dir = run_dir / "checkpoints"
    marker = ckpt_dir / "latest"
    if marker.is_file():
        p = ckpt_dir / marker.read_text().strip()
        if (p / "state.json").is_file():
            return p
    found = list_checkpoints(ckpt_dir)
    if not found:
        raise FileNotFoundError(f"resume latest: {ckpt_dir} holds no checkpoint yet. Fix: start the run without "
                                f"--resume, or point --out at the run you want to continue.")
    return found[-1]


def read_checkpoint(path: Path) -> dict:
    """Load a checkpoint folder (safetensors + json only: nothing is unpickled)."""
    path = Path(path)
    out = {"trainable": load_file(path / "trainable.safetensors"),
           "state": json.loads((path / "state.json").read_text())}
    out["optimizer"] = unflatten_state(load_file(path / "optimizer.safetensors"),
                                       json.loads((path / "optimizer.json").read_text()))
    if (path / "ema.safetensors").is_file():
        out["ema"] = unflatten_state(load_file(path / "ema.safetensors"), json.loads((path / "ema.json").read_text()))
    return out
