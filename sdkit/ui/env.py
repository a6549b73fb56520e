"""Environment check for notebook 00: GPU, memory, disk, library versions, and what they mean for a run."""
from __future__ import annotations

import importlib.metadata as md
import importlib.util
import os
import platform
import shutil

__all__ = ["environment", "environment_report"]

LIBRARIES = ("torch", "diffusers", "transformers", "accelerate", "peft", "ipywidgets", "ipykernel", "matplotlib")
OPTIONAL = ("xformers", "bitsandbytes")


def _version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def _ram_gb():
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) for line in f}
        return info["MemTotal"] / 2**20, info.get("MemAvailable", 0) / 2**20
    except (OSError, KeyError, ValueError):
        return None, None


def environment(path=".") -> dict:
    """Facts about this machine as a dict (no printing)."""
    import torch
    info = {"python": platform.python_version(), "platform": platform.platform(terse=True),
            "cpu_count": os.cpu_count()}
    info["cuda"] = torch.cuda.is_available()
    if info["cuda"]:
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_count=torch.cuda.device_count(), vram_gb=p.total_memory / 2**30,
                    compute_capability=f"{p.major}.{p.minor}", bf16=torch.cuda.is_bf16_supported(), fp16=True)
    else:
        info.update(gpu=None, gpu_count=0, vram_gb=None, compute_capability=None, bf16=True, fp16=False)
    info["ram_total_gb"], info["ram_available_gb"] = _ram_gb()
    du = shutil.disk_usage(path)
    info["disk_free_gb"] = du.free / 2**30
    info["versions"] = {name: _version(name) for name in LIBRARIES}
    info["optional"] = {name: importlib.util.find_spec(name) is not None for name in OPTIONAL}
    return info


def advice(info: dict) -> list:
    """What the facts mean for the config (mixed precision, memory savers, presets)."""
    out = []
    if not info["cuda"]:
        out.append("No CUDA GPU: train the mini pipeline (preset 'CPU quick'); mixed_precision 'no' or 'bf16'.")
    else:
        if not info["bf16"]:
            out.append(f"{info['gpu']} has no bf16: use mixed_precision='fp16' (preset 'T4 safe').")
        else:
            out.append(f"{info['gpu']} supports bf16: mixed_precision='bf16' is the safe fast choice.")
        if info["vram_gb"] and info["vram_gb"] < 20:
            out.append("Under 20 GB of VRAM: for SD 1.5 use LoRA, batch 1, gradient checkpointing (preset 'T4 safe').")
        if not info["optional"]["bitsandbytes"]:
            out.append("bitsandbytes is not installed: optimizer='adamw8bit' unavailable (pip install bitsandbytes).")
    if info["ram_available_gb"] is not None and info["ram_available_gb"] < 4:
        out.append(f"Only {info['ram_available_gb']:.1f} GB of RAM free: close other notebooks before loading SD 1.5.")
    if info["disk_free_gb"] < 5:
        out.append(f"Only {info['disk_free_gb']:.1f} GB of disk free: SD 1.5 needs ~5 GB, each checkpoint more.")
    return out


def _rows(info):
    gpu = (f"{info['gpu']} x{info['gpu_count']} · {info['vram_gb']:.1f} GB · sm{info['compute_capability']}"
           if info["cuda"] else "none (CPU only)")
    ram = (f"{info['ram_total_gb']:.1f} GB total, {info['ram_available_gb']:.1f} GB free"
           if info["ram_total_gb"] else "?")
    rows = [("GPU", gpu), ("bf16 / fp16", f"{'yes' if info['bf16'] else 'no'} / {'yes' if info['fp16'] else 'no'}"),
            ("RAM", ram), ("disk free", f"{info['disk_free_gb']:.1f} GB"), ("CPU cores", str(info["cpu_count"])),
            ("Python", f"{info['python']} · {info['platform']}")]
    rows += [(name, v or "not installed") for name, v in info["versions"].items()]
    rows += [(name, "installed" if ok else "not installed (optional)") for name, ok in info["optional"].items()]
    return rows


def environment_report(path=".", display=True) -> dict:
    """Print (or show as a table in a notebook) the environment and advice; return the facts as a dict."""
    info = environment(path)
    rows, tips = _rows(info), advice(info)
    if display:
        try:
            from IPython import get_ipython
            in_kernel = get_ipython() is not None
        except ImportError:
            in_kernel = False
        if in_kernel:
            import html

            from IPython.display import HTML
            from IPython.display import display as show
            body = "".join(f"<tr><td style='text-align:left'><b>{html.escape(k)}</b></td>"
                           f"<td style='text-align:left'>{html.escape(str(v))}</td></tr>" for k, v in rows)
            tip = "".join(f"<li>{html.escape(t)}</li>" for t in tips)
            show(HTML(f"<table>{body}</table><ul>{tip}</ul>"))
        else:
            width = max(len(k) for k, _ in rows)
            for k, v in rows:
                print(f"{k:<{width}}  {v}")
            for t in tips:
                print(f"- {t}")
    return info
