"""The one call at the top of every notebook: `NB = sdkit.ui.setup_notebook()`.

A notebook's first code cell only gets sdkit installed where it is missing (Colab: clone the course, `pip install -e`,
Colab's torch kept) and then calls `setup_notebook`, which does the rest the same way locally and on Colab:

- installs the notebook's optional extras on Colab when they are missing (`pip=("imagehash", "ipywidgets")`);
- moves to the repository root, so `data_samples/` and `runs/` resolve (from `notebooks/` locally, into the clone on
  Colab); notebook 00 keeps its folder (`chdir=False`);
- on Colab with `drive=True`, mounts Google Drive and puts runs there, so they survive a disconnect;
- reads the quick-mode switch (`SDKIT_QUICK=1`: every notebook finishes in about a minute on a CPU, for CI);
- prints one line (sdkit version, device, quick mode, working directory, where runs go) and returns the facts.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..version import __version__

__all__ = ["NotebookSetup", "setup_notebook", "checkout_root", "in_colab", "install_missing", "DRIVE_RUNS"]

DRIVE_RUNS = "/content/drive/MyDrive/sdkit-runs"   # where runs go on Colab with drive=True


@dataclass(frozen=True)
class NotebookSetup:
    """What a notebook needs to know about where it runs (returned by `setup_notebook`)."""
    quick: bool        # SDKIT_QUICK=1: everything small (CI, classrooms)
    device: str        # "cuda" or "cpu"
    in_colab: bool
    root: Path         # the working directory after setup (the repository root unless chdir=False)
    runs: str          # where this notebook's runs go: "runs" (relative) or a folder on Google Drive
    started: float = field(default_factory=time.time)   # when setup ran (time.time())

    def elapsed(self) -> str:
        """Wall time since setup, e.g. "12.4 min": the last cell of every notebook prints it, so the time a
        notebook's header quotes is one the notebook itself measures."""
        return f"{(time.time() - self.started) / 60:.1f} min"

    def peak_memory(self) -> str:
        """Peak memory of this kernel so far, e.g. "peak RAM 1.2 GB, peak VRAM 3.1 GB" (RAM on Linux and macOS,
        VRAM when CUDA is in use): what a notebook's budget table quotes, measured by the notebook."""
        parts = []
        try:
            import resource  # not on Windows
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**30 if sys.platform == "darwin" else 2**20)
            parts.append(f"peak RAM {peak:.1f} GB")
        except ImportError:
            pass
        torch = sys.modules.get("torch")  # only if the notebook imported it: setup must not pull in torch
        if torch is not None and torch.cuda.is_available():
            parts.append(f"peak VRAM {torch.cuda.max_memory_allocated() / 2**30:.1f} GB")
        return ", ".join(parts) or "peak memory not available here"


def in_colab() -> bool:
    return "google.colab" in sys.modules


def checkout_root() -> Path | None:
    """The repository checkout this sdkit was imported from (an editable install or PYTHONPATH), else None."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "sdkit").is_dir() else None


def install_missing(names) -> list:
    """pip-install those of `names` (module = distribution name) that cannot be imported; return what was installed.

    Never upgrades what is there (Colab's torch and ipywidgets stay as they are)."""
    missing = [name for name in names if importlib.util.find_spec(name) is None]
    if missing:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)
        importlib.invalidate_caches()
    return missing


def _device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def setup_notebook(chdir: bool = True, drive: bool = False, pip=(), runs: str = "runs",
                   verbose: bool = True) -> NotebookSetup:
    """Set up a course notebook here or on Colab; return a `NotebookSetup` (quick, device, in_colab, root, runs).

    chdir: move to the repository root (locally only when started from `notebooks/`, as Jupyter and VS Code do;
        on Colab into the clone). pip: extras this notebook needs, installed on Colab only when missing.
    drive: on Colab, mount Google Drive and keep runs in `DRIVE_RUNS` (ignored elsewhere). runs: the runs folder.
    """
    colab = in_colab()
    # 1. extras: Colab has most of them; locally they come with requirements(-dev).txt
    if colab and pip:
        install_missing(pip)
    # 2. working directory: the repository root, where data_samples/ and runs/ are
    if chdir:
        root = checkout_root()
        if colab and root is not None:
            os.chdir(root)
        elif Path.cwd().name == "notebooks":
            os.chdir("..")
    # 3. where runs go
    if colab and drive:
        from google.colab import drive as google_drive
        google_drive.mount("/content/drive")
        runs = DRIVE_RUNS
    quick = os.environ.get("SDKIT_QUICK") == "1"
    setup = NotebookSetup(quick=quick, device=_device(), in_colab=colab, root=Path.cwd(), runs=runs)
    if verbose:
        print(f"sdkit {__version__} · device: {setup.device} · " + ("quick mode · " if quick else "")
              + f"working directory: {setup.root} · runs go to {runs}/")
    return setup
