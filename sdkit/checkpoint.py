"""Checkpoint folders: the file format, written atomically, no pickle anywhere. (The trainer's side, what goes in
and how a run resumes from it, is sdkit.train.checkpoint.)

A checkpoint is a folder `checkpoints/step_XXXXXX/` holding
  trainable.safetensors   the trained weights (LoRA adapters, or the whole UNet for method full)
  optimizer.safetensors   optimizer tensors (Adam moments ...), with optimizer.json for the rest
  ema.safetensors         the EMA weights, when EMA is on
  state.json              step, learning-rate schedule, global batch (noise and data order are re-derived
                          from the seed and the global sample index, so no RNG state needs saving)
  manifest.json           size and sha256 of every other file, written last: `verify_checkpoint` tells an intact
                          checkpoint from a damaged one (a truncated copy, a disk error)
It is written to `.tmp_step_XXXXXX/`, flushed, then renamed; `checkpoints/latest` (a one-line text file) is replaced
atomically after the rename. A kill at any moment leaves either the old or the new checkpoint, never half of one.
A write that fails (full disk, read-only folder, a lost Drive mount) removes its temporary folder and raises a
RunDirError that names the path and the fix; the checkpoints already written are not touched.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from .config import ConfigError
from .data.files import write_safetensors

__all__ = ["step_name", "write_checkpoint", "read_checkpoint", "find_checkpoint", "list_checkpoints",
           "flatten_state", "unflatten_state", "verify_checkpoint", "find_intact_checkpoint", "clean_orphans",
           "RunDirError", "disk_error", "MANIFEST"]

MANIFEST = "manifest.json"


class RunDirError(ConfigError):
    """The run directory cannot be used (in use by another run, read-only, full, vanished, damaged). The message
    names the path and the fix; the CLI prints it and exits with code 2."""


def disk_error(path, err: OSError, needs: int | None = None) -> RunDirError:
    """A RunDirError for an OSError met while writing `path`: one line naming the path, the cause and the fix."""
    code, why = err.errno, err.strerror or str(err)
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        free = ""
        try:
            free = f", {_mb(shutil.disk_usage(_existing(path)).free)} free"
        except OSError:
            pass
        size = f"; a checkpoint of this run needs about {_mb(needs)}{free}" if needs else ""
        return RunDirError(f"out: no space left on the disk of {path}{size}. Fix: free some space, keep fewer "
                           f"checkpoints (keep_last=N), or choose an --out on a bigger disk, then --resume latest. "
                           f"The checkpoints already written are untouched.")
    if code in (errno.EROFS, errno.EACCES, errno.EPERM):
        return RunDirError(f"out: cannot write to {path} ({why}). Fix: choose a writable --out (on Colab, a folder "
                           f"under /content or a mounted Drive), or make the folder writable.")
    if code in (errno.ENOENT, errno.ENOTCONN, errno.EIO, getattr(errno, "ESTALE", -1), errno.ENODEV):
        return RunDirError(f"out: {path} vanished while the run was writing it ({why}); a Google Drive folder whose "
                           f"mount was lost looks like this. Fix: remount the drive (drive.mount(...)) or restore the "
                           f"folder, then continue with --resume latest.")
    return RunDirError(f"out: writing {path} failed ({why}). Fix: check the disk and the folder, then continue with "
                       f"--resume latest.")


def _mb(n: int) -> str:
    if n < 2**20:
        return f"{max(n, 1) / 2**10:.0f} kB"
    return f"{n / 2**20:.1f} MB" if n < 2**30 else f"{n / 2**30:.2f} GB"


def _existing(path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _write_files(tmp: Path, step, trainable, opt_tensors, opt_rest, ema, state):
    write_safetensors({k: v.detach().contiguous().cpu() for k, v in trainable.items()}, tmp / "trainable.safetensors",
                      metadata={"format": "pt", "step": str(step)})
    write_safetensors(opt_tensors, tmp / "optimizer.safetensors")
    (tmp / "optimizer.json").write_text(json.dumps(opt_rest))
    if ema is not None:
        write_safetensors(ema[0], tmp / "ema.safetensors")
        (tmp / "ema.json").write_text(json.dumps(ema[1]))
    (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=1))
    # the manifest last: sizes and hashes of everything above
    files = {f.name: {"size": f.stat().st_size, "sha256": _sha256(f)} for f in sorted(tmp.iterdir())}
    (tmp / MANIFEST).write_text(json.dumps({"format": 1, "step": step, "files": files}, indent=1))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(tmp)


def write_checkpoint(ckpt_dir: Path, step: int, trainable: dict, optimizer_state: dict, state: dict,
                     ema_state: dict | None = None, keep_last: int = 0) -> Path:
    """Write checkpoints/step_XXXXXX atomically and point `latest` at it. Returns the final folder.
    An OSError (full disk, read-only, vanished folder) removes the temporary folder and raises a RunDirError."""
    ckpt_dir = Path(ckpt_dir)
    final = ckpt_dir / step_name(step)
    tmp = ckpt_dir / (".tmp_" + step_name(step))
    opt_tensors, opt_rest = flatten_state(optimizer_state)
    ema = flatten_state(ema_state) if ema_state is not None else None
    needs = sum(t.numel() * t.element_size() for part in (trainable, opt_tensors, ema[0] if ema else {})
                for t in part.values())
    # 1. tensors and json into the temporary folder (its parent is not re-created: a vanished run stays vanished)
    try:
        ckpt_dir.mkdir(exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        _write_files(tmp, step, trainable, opt_tensors, opt_rest, ema, state)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise disk_error(final, e, needs) from None
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


def clean_orphans(ckpt_dir: Path) -> list:
    """Leftovers of a write a kill interrupted: `.tmp_step_*` (an unfinished write) is removed; `.old_step_*` (a
    kill between the two renames of a rewrite) is put back when its step is missing, else removed. Only the run
    that holds the directory's lock may call this. Returns what it did, one line each."""
    ckpt_dir = Path(ckpt_dir)
    done = []
    if not ckpt_dir.is_dir():
        return done
    for p in sorted(ckpt_dir.iterdir()):
        if p.name.startswith(".old_step_") and not (ckpt_dir / p.name[len(".old_"):]).exists():
            os.replace(p, ckpt_dir / p.name[len(".old_"):])
            done.append(f"restored {p.name[len('.old_'):]} from {p.name} (a rewrite interrupted between renames)")
        elif p.name.startswith((".tmp_step_", ".old_step_")) or p.name == ".latest.tmp":
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            done.append(f"removed {p.name} (left by an interrupted checkpoint write)")
    return done


def verify_checkpoint(path: Path, hashes: bool = True) -> str | None:
    """None when the checkpoint folder is intact, else what is wrong (one phrase). With a manifest: every file
    there with its size (and, with hashes=True, its sha256). Without one (written before manifests existed): it
    must load (checked only with hashes=True)."""
    path = Path(path)
    manifest = path / MANIFEST
    if not manifest.is_file():
        if not hashes:
            return None
        try:
            read_checkpoint(path)
        except Exception as e:  # noqa: BLE001 - any failure to load means damaged
            return f"it does not load ({type(e).__name__}: {str(e)[:120]})"
        return None
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError, OSError):
        return f"{MANIFEST} is unreadable"
    for name, info in files.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        size = f.stat().st_size
        if size != info["size"]:
            return f"{name} has {size} bytes, {MANIFEST} says {info['size']}"
        if hashes and _sha256(f) != info["sha256"]:
            return f"{name} does not match its sha256 in {MANIFEST}"
    return None


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


def find_intact_checkpoint(run_dir: Path, which: str = "latest") -> tuple:
    """(checkpoint folder to resume from, [(damaged folder, what is wrong), ...]). 'latest': the marker's
    checkpoint if intact, else the newest intact one (the damaged ones newer than it listed); a folder named
    explicitly must be intact. Raises RunDirError when nothing intact is left."""
    first = find_checkpoint(run_dir, which)
    problem = verify_checkpoint(first)
    if problem is None:
        return first, []
    damaged = [(first, problem)]
    if which != "latest":
        raise RunDirError(f"resume: checkpoint {first} is damaged ({problem}). Fix: resume from an older one "
                          f"(--resume latest picks the newest intact checkpoint), or start a new run.")
    for p in reversed(list_checkpoints(Path(run_dir) / "checkpoints")):
        if p.name == first.name:
            continue
        problem = verify_checkpoint(p)
        if problem is None:
            return p, [d for d in damaged if d[0].name > p.name]
        damaged.append((p, problem))
    names = "; ".join(f"{p.name}: {why}" for p, why in damaged)
    raise RunDirError(f"resume latest: no intact checkpoint in {Path(run_dir) / 'checkpoints'} ({names}). Fix: "
                      f"start a new run with another --out (or without --resume after moving this folder away).")


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
