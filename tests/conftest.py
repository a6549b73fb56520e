"""Shared fixtures: a tiny random SD pipeline (make-tiny) and a folder of 8 captioned PNGs."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def trained(run, step):
    """The trainable tensors of `run` (a Run or its folder) at checkpoint `step`."""
    return load_file(Path(getattr(run, "path", run)) / "checkpoints" / f"step_{step:06d}" / "trainable.safetensors")


def max_diff(a, b):
    """Largest absolute difference between two state dicts with the same keys."""
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def kill_after_checkpoint(cli_args, out: Path, step: int, timeout: float = 300):
    """Start `python -m sdkit <cli_args> --out out` and kill -9 it as soon as checkpoint `step` exists."""
    proc = subprocess.Popen([PYTHON, "-m", "sdkit", *cli_args, "--out", str(out)], cwd=ROOT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not (Path(out) / "checkpoints" / f"step_{step:06d}").is_dir():
        assert proc.poll() is None, f"run ended before its step-{step} checkpoint"
        assert time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def write_captioned_folder(folder: Path, n: int = 8, size: int = 64) -> Path:
    """n PNGs (a colored square or disc on white) with .txt captions naming color and shape."""
    from sdkit.quickstart import write_shapes_folder
    return write_shapes_folder(folder, n=n, size=size, prefix="img")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from sdkit.models import make_tiny
    return make_tiny(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def data8(tmp_path_factory) -> Path:
    return write_captioned_folder(tmp_path_factory.mktemp("data") / "squares", n=8, size=64)


@pytest.fixture
def base_config(tiny_model, data8, tmp_path):
    """A fast run: 32 px, no TensorBoard, samples with 2 denoising steps."""
    from sdkit import TrainConfig
    return TrainConfig(model=str(tiny_model), data=str(data8), steps=4, resolution=32, out=str(tmp_path / "run"),
                       sample_steps=2, tensorboard=False, lr=1e-3)
