"""Convert weights between files: pickled checkpoints -> .safetensors, diffusers folder <-> one SD file.

    python -m sdkit convert model.ckpt --out model.safetensors                  # refuses pickles that run code
    python -m sdkit convert lora.pt --out lora.safetensors --dtype fp16
    python -m sdkit convert runs/x/export/pipeline --out model.safetensors     # diffusers folder -> one SD file
    python -m sdkit convert model.safetensors --out model-diffusers --config-from mini   # one SD file -> folder

| SRC                                   | --out         | what happens                                                 |
|---------------------------------------|---------------|--------------------------------------------------------------|
| .ckpt / .pt / .pth / .bin (a pickle)  | .safetensors  | tensors unwrapped from state_dict/model, written as they are |
| .safetensors                          | .safetensors  | rewritten (with --dtype: cast)                               |
| diffusers folder (or preset name)     | .safetensors  | original SD (LDM) layout, `sdkit.export.save_single_file`    |
| .safetensors / .ckpt in the SD layout | a folder      | `StableDiffusionPipeline.from_single_file`, save_pretrained  |

Why pickles are refused: a .ckpt/.pt/.bin is a Python pickle, and unpickling can call any function the file names
(`os.system`, ...). `torch.load(weights_only=True)` only rebuilds tensors and plain containers and raises on anything
else; then we stop, and only `--trust-pickle` (for files from a source you trust) loads the file the unsafe way.
A .safetensors file is a JSON header plus raw bytes: reading it runs nothing.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import sys
import tempfile
import zipfile
from collections import Counter
from pathlib import Path

import torch
from safetensors import SafetensorError

from .data.files import respect_umask, write_safetensors
from .export import save_single_file
from .models import load_pipeline, resolve_model

__all__ = ["UnsafePickleError", "ConvertError", "Summary", "DTYPES", "PICKLE_SUFFIXES", "load_checkpoint",
           "unwrap_tensors", "save_safetensors", "folder_to_single_file", "single_file_to_folder", "convert"]

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
_NAMES = {v: k for k, v in DTYPES.items()}
_SAFETENSORS_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}
LDM_UNET_PREFIX = "model.diffusion_model."
DEFAULT_CONFIG_FROM = "sd15"  # the SD 1.5 Hub mirror: right on Colab; offline pass --config-from mini or a folder


class UnsafePickleError(ValueError):
    """The file needs full unpickling (it names Python objects, so loading it could run code): refused."""


class ConvertError(ValueError):
    """A conversion that cannot be done as asked (wrong kind of file, unknown layout, ...)."""


@dataclasses.dataclass
class Summary:
    """What a conversion wrote."""
    src: Path
    out: Path
    kind: str                       # "state dict", "folder -> single file", "single file -> folder"
    tensors: int
    parameters: int
    dtypes: dict                    # dtype name -> number of tensors
    bytes: int                      # bytes written (file size, or the folder's total)
    skipped: list = dataclasses.field(default_factory=list)  # entries that are not tensors, by dotted name

    def text(self) -> str:
        dt = ", ".join(f"{k} x{v}" for k, v in sorted(self.dtypes.items()))
        lines = [f"wrote {self.out} ({self.kind})",
                 f"  tensors:    {self.tensors:,}", f"  parameters: {self.parameters:,}",
                 f"  dtypes:     {dt or '-'}", f"  bytes:      {self.bytes:,} ({self.bytes / 2 ** 20:.1f} MiB)"]
        if self.skipped:
            shown = ", ".join(self.skipped[:12]) + (f", ... ({len(self.skipped)} in all)" if len(self.skipped) > 12
                                                     else "")
            lines.append(f"  skipped (not tensors): {shown}")
        else:
            lines.append("  skipped (not tensors): none")
        return "\n".join(lines)


def _dtype_name(dtype) -> str:
    return _NAMES.get(dtype, str(dtype).replace("torch.", ""))


# ---- 1. loading a pickled checkpoint without running it -------------------------------------------------------
def load_checkpoint(path, trust_pickle: bool = False):
    """`torch.load` a .ckpt/.pt/.pth/.bin the safe way (weights_only=True); refuse when it needs more.

    Raises UnsafePickleError (naming the file and the object the unpickler refused) unless `trust_pickle`, which
    loads with weights_only=False after a warning on stderr: that runs whatever code the file carries."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file. Fix: check the path.")
    mmap = zipfile.is_zipfile(path)  # torch's zip format can be memory-mapped: a 4 GB .ckpt without 4 GB of RAM
    with open(path, "rb") as f:
        head = f.read(2)
    if not mmap and (len(head) < 2 or head[0] != 0x80 or head[1] > 5):
        # torch.save writes a zip archive (PK...) or, before torch 1.6, a pickle (protocol mark 0x80 0x02..0x05)
        what = "a damaged PyTorch checkpoint (a zip archive cut short: a truncated download?" if head == b"PK" else \
            f"not a PyTorch checkpoint (neither a zip archive nor a pickle: it starts with {head.hex() or 'nothing'}"
        raise ConvertError(f"{path}: {what}; {path.stat().st_size} bytes). Nothing was loaded. Fix: re-download it, "
                           f"or check that it is the weights file and not e.g. an HTML page.")
    if trust_pickle:
        print(f"warning: loading {path.name} with full unpickling (--trust-pickle): any code inside it runs now, "
              f"with your permissions. Do this only for files from a source you trust.", file=sys.stderr)
        try:
            return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
        except Exception as e:  # noqa: BLE001 - a damaged file fails anywhere inside the unpickler
            raise _unreadable(path, e) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        # torch names what it refused, e.g. "Unsupported global: GLOBAL getattr was not an allowed global ..."
        lines = [line.strip() for line in str(e).splitlines()]
        refused = next((line.split("Unsupported global: ")[1].split(" was not")[0] for line in lines
                        if "Unsupported global: " in line), None)
        if refused:
            what = f"holds Python objects besides tensors ({refused})"
        else:
            detail = next((line for line in lines if line.startswith(("WeightsUnpickler", "Unsupported"))), "")
            what = (f"could not be read as plain tensors{f' ({detail[:120]})' if detail else ''}: either it is not a "
                    f"PyTorch checkpoint (damaged, or another kind of file) or it needs full unpickling")
        raise UnsafePickleError(
            f"{path}: refused. This file is a Python pickle that {what}. Loading it fully would run any code "
            f"embedded in it, with your permissions (a pickle can call any function: delete files, install "
            f"malware). Nothing was loaded. Fix: if the file comes from a source you trust, run again with "
            f"--trust-pickle; otherwise get a .safetensors version of it (most model pages offer one).") from None
    except Exception as e:  # noqa: BLE001 - a damaged file fails anywhere inside the unpickler (IndexError, ...)
        raise _unreadable(path, e) from None


def _unreadable(path, e) -> "ConvertError":
    return ConvertError(f"{path}: torch.load cannot read it ({e.__class__.__name__}: "
                        f"{str(e).splitlines()[0][:200] if str(e) else ''}). Expected a PyTorch checkpoint "
                        f"(.ckpt/.pt/.pth/.bin written by torch.save). Fix: check the file is complete "
                        f"(re-download it) and is a PyTorch file.")


def _bad_safetensors(path, e) -> "ConvertError":
    return ConvertError(f"{path}: not a readable .safetensors file ({str(e).splitlines()[0][:200]}; "
                        f"{Path(path).stat().st_size} bytes). Nothing was written. Fix: re-download it (a "
                        f"truncated download looks like this), or check that it is a .safetensors weights file.")


def unwrap_tensors(obj) -> tuple:
    """A loaded checkpoint -> ({name: tensor}, [skipped names]).

    SD .ckpt files keep the weights under "state_dict" (Lightning), others under "model"; those are unwrapped and
    their siblings (global_step, epoch, optimizer_states, callbacks, ...) skipped. Nested dicts and lists of
    tensors are flattened with dotted names (A1111 embeddings: string_to_param.*). Anything else is skipped."""
    skipped = []
    for _ in range(4):  # {"model": {"state_dict": {...}}} and the like
        if isinstance(obj, torch.nn.Module):
            obj = obj.state_dict()
        if not isinstance(obj, dict):
            break
        key = next((k for k in ("state_dict", "model") if isinstance(obj.get(k), (dict, torch.nn.Module))), None)
        if key is None:
            break
        skipped += [str(k) for k in obj if k != key]
        obj = obj[key]
    tensors = {}

    def walk(value, name):
        if isinstance(value, torch.Tensor):
            tensors[name] = value
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{name}.{k}" if name else str(k))
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, (torch.Tensor, dict)) for v in value):
            for i, v in enumerate(value):
                walk(v, f"{name}.{i}" if name else str(i))
        else:
            skipped.append(name or "<top level>")

    walk(obj, "")
    return tensors, skipped


# ---- 2. writing .safetensors --------------------------------------------------------------------------------
def save_safetensors(tensors: dict, out, metadata: dict, dtype=None) -> dict:
    """Write `tensors` to `out`: floating tensors cast to `dtype` (None: kept), all contiguous, and tensors that
    share memory cloned (safetensors refuses shared storage; torch.load keeps the sharing torch.save saw).
    Returns the tensors as written."""
    ready, seen = {}, set()
    for name, t in tensors.items():
        t = t.detach()
        if dtype is not None and t.is_floating_point() and t.dtype != dtype:
            t = t.to(dtype)
        t = t.contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen or t.numel() == 0:
            t = t.clone()  # a view into storage another tensor already uses (tied weights, slices)
        else:
            seen.add(ptr)
        ready[name] = t
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(ready, out, metadata={k: str(v) for k, v in metadata.items()})
    return ready


def _summary(src, out, kind, stats, skipped) -> Summary:
    """stats: [(numel, dtype name)] per tensor written."""
    out = Path(out)
    size = out.stat().st_size if out.is_file() else sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return Summary(src=Path(src), out=out, kind=kind, tensors=len(stats), parameters=sum(n for n, _ in stats),
                   dtypes=dict(Counter(d for _, d in stats)), bytes=size, skipped=list(skipped))


def _stats(tensors: dict) -> list:
    return [(t.numel(), _dtype_name(t.dtype)) for t in tensors.values()]


def _file_stats(path) -> list:
    """_stats of a .safetensors file read from its header only (no tensor loaded)."""
    import math
    from safetensors import safe_open
    names = {"F16": "fp16", "BF16": "bf16", "F32": "fp32"}
    with safe_open(str(path), "pt") as fh:
        return [(math.prod(fh.get_slice(k).get_shape()), names.get(fh.get_slice(k).get_dtype(),
                                                                    fh.get_slice(k).get_dtype().lower()))
                for k in fh.keys()]


def _read_state_dict(src: Path, trust_pickle: bool) -> tuple:
    """({name: tensor}, skipped) from a .safetensors or a pickled checkpoint."""
    if src.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(src)), []
        except SafetensorError as e:
            raise _bad_safetensors(src, e) from None
    if src.suffix.lower() in PICKLE_SUFFIXES:
        return unwrap_tensors(load_checkpoint(src, trust_pickle))
    raise ConvertError(f"{src}: unknown kind of file ({src.suffix or 'no extension'}). Expected a .safetensors, "
                       f"{'/'.join(PICKLE_SUFFIXES)} file or a diffusers folder. Fix: check the path.")


# ---- 3. diffusers folder <-> one file in the original SD layout -------------------------------------------
def _stored_dtype(folder: Path):
    """dtype of the first floating tensor in the folder's unet/*.safetensors (None when there is none to read)."""
    from safetensors import safe_open
    for f in sorted(Path(folder, "unet").glob("*.safetensors")):
        with safe_open(str(f), "pt") as fh:
            for k in fh.keys():
                dt = _SAFETENSORS_DTYPES.get(fh.get_slice(k).get_dtype())
                if dt is not None:
                    return dt
    return None


def folder_to_single_file(src, out, dtype=None) -> Summary:
    """A diffusers pipeline folder (or preset name) -> one .safetensors in the original SD layout."""
    target = resolve_model(str(src))
    dtype = dtype or (_stored_dtype(Path(target)) if Path(target).is_dir() else None) or torch.float32
    pipe = load_pipeline(target)
    save_single_file(pipe, out, dtype=dtype)
    return _summary(src, out, "diffusers folder -> single file (SD layout)", _file_stats(out), [])


def single_file_to_folder(src, out, config_from=DEFAULT_CONFIG_FROM, dtype=None, trust_pickle=False) -> Summary:
    """One SD-layout checkpoint (.safetensors, or a pickle after the safety check) -> a diffusers folder.

    `config_from`: a pipeline of the same architecture whose configs, tokenizer and scheduler are used (a preset,
    a local folder, or a Hub id such as the SD 1.5 default, which needs the network)."""
    from diffusers import StableDiffusionPipeline
    src, out = Path(src), Path(out)
    if src.suffix == ".safetensors":  # keys and dtypes from the header: no second copy of a 4 GB file in memory
        from safetensors import safe_open
        try:
            with safe_open(str(src), "pt") as fh:
                keys = list(fh.keys())
                floats = [_SAFETENSORS_DTYPES[d] for d in (fh.get_slice(k).get_dtype() for k in keys)
                          if d in _SAFETENSORS_DTYPES]
        except SafetensorError as e:
            raise _bad_safetensors(src, e) from None
        tensors, skipped = None, []
    else:
        tensors, skipped = _read_state_dict(src, trust_pickle)
        keys, floats = list(tensors), [t.dtype for t in tensors.values() if t.is_floating_point()]
    if not any(k.startswith(LDM_UNET_PREFIX) for k in keys):
        raise ConvertError(f"{src}: not a whole Stable Diffusion checkpoint (no {LDM_UNET_PREFIX}* keys; "
                           f"{len(keys)} tensors, e.g. {keys[0] if keys else '-'}). Expected an original-layout "
                           f"SD 1.x checkpoint. Fix: for a LoRA, embedding or other partial file, convert it to a "
                           f".safetensors file instead (--out NAME.safetensors).")
    dtype = dtype or (Counter(floats).most_common(1)[0][0] if floats else torch.float32)
    config = resolve_model(config_from)
    local = Path(config).exists()
    with tempfile.TemporaryDirectory() as tmp:
        path = src
        if src.suffix != ".safetensors":  # hand diffusers tensors we already loaded safely, never the pickle
            path = Path(tmp) / (src.stem + ".safetensors")
            save_safetensors(tensors, path, {"format": "pt", "converted_from": src.name})
        del tensors
        try:
            pipe = StableDiffusionPipeline.from_single_file(
                str(path), config=config, torch_dtype=dtype, safety_checker=None, requires_safety_checker=False,
                local_files_only=local)
        except OSError as e:  # offline and the config is a Hub id, or a folder that is not a pipeline
            raise ConvertError(f"--config-from {config_from}: could not read the pipeline configs from {config!r} "
                               f"({e.__class__.__name__}: {str(e).splitlines()[0][:200]}). Fix: offline, pass a "
                               f"local diffusers folder of the same architecture or a preset (--config-from mini); "
                               f"on Colab the default ({DEFAULT_CONFIG_FROM}) downloads SD 1.5's configs.") from None
    pipe.save_pretrained(out, safe_serialization=True)
    respect_umask(out)
    written = [s for part in (pipe.unet, pipe.vae, pipe.text_encoder) for s in _stats(part.state_dict())]
    return _summary(src, out, f"single file -> diffusers folder (configs from {config_from})", written, skipped)


# ---- 4. the one entry point -----------------------------------------------------------------------------------
def convert(src, out, dtype=None, trust_pickle: bool = False, config_from: str = DEFAULT_CONFIG_FROM) -> Summary:
    """Convert `src` to `out`, choosing the conversion from what they are (see the module's table)."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ConvertError(f"--dtype: {dtype!r}; expected one of {', '.join(DTYPES)}.")
        dtype = DTYPES[dtype]
    src_text, out = os.fspath(src), Path(out)
    src = Path(src_text).expanduser()
    to_file = out.suffix == ".safetensors"
    if out.suffix.lower() in PICKLE_SUFFIXES:
        raise ConvertError(f"--out {out}: sdkit writes .safetensors files or diffusers folders, never pickles "
                           f"(a pickle is what this command exists to get rid of). Fix: --out {out.with_suffix('')}"
                           f".safetensors.")
    if src.is_dir() or (not src.exists() and not src.suffix):  # a folder, a preset name or a Hub id
        if not to_file:
            raise ConvertError(f"--out {out}: {src_text} is a diffusers folder already. Fix: --out NAME.safetensors "
                               f"for one file in the original SD layout (A1111, ComfyUI).")
        return folder_to_single_file(src_text, out, dtype)
    if not src.is_file():
        raise FileNotFoundError(f"{src}: no such file or folder. Fix: check the path.")
    if not to_file:
        return single_file_to_folder(src, out, config_from, dtype, trust_pickle)
    tensors, skipped = _read_state_dict(src, trust_pickle)
    if not tensors:
        raise ConvertError(f"{src}: no tensors found (entries: {', '.join(skipped[:10]) or 'none'}). Expected a "
                           f"state dict. Fix: check it is a weights file, not e.g. a training log.")
    written = save_safetensors(tensors, out, {"format": "pt", "converted_from": src.name}, dtype)
    return _summary(src, out, "state dict -> .safetensors", _stats(written), skipped)
