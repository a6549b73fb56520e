"""`python -m sdkit convert`: a pickle that would run code is refused (and really would have run), checkpoints are
unwrapped into .safetensors as they are, and a diffusers folder survives the trip to one SD file and back."""
import pathlib

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from sdkit.cli import main
from sdkit.convert import ConvertError, UnsafePickleError, convert


class Touch:
    """Unpickling this calls Path.touch(marker): a harmless stand-in for what a malicious pickle runs."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def test_pickle_that_runs_code_is_refused_and_runs_only_when_trusted(tmp_path, capsys):
    marker = tmp_path / "code_ran"
    ckpt, out = tmp_path / "evil.ckpt", tmp_path / "evil.safetensors"
    torch.save({"state_dict": {"w": torch.ones(2, 3)}, "payload": Touch(marker)}, ckpt)

    assert main(["convert", str(ckpt), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert not marker.exists(), "the refused convert ran the pickle's code"
    assert not out.exists()
    assert err.startswith("error: ") and str(ckpt) in err and "--trust-pickle" in err and "run any code" in err
    with pytest.raises(UnsafePickleError, match="trust"):
        convert(ckpt, out)
    assert not marker.exists()

    # the same file with the flag: the code runs (so the refusal above is what protected us) and a warning says so
    assert main(["convert", str(ckpt), "--out", str(out), "--trust-pickle"]) == 0
    captured = capsys.readouterr()
    assert marker.exists() and "warning" in captured.err
    assert list(load_file(str(out))) == ["w"] and "payload" in captured.out  # reported as skipped


def test_checkpoint_unwrapped_shared_storage_cloned_dtype_kept_or_cast(tmp_path):
    base = torch.randn(4, 4)
    state = {"a": base, "a_row": base[1], "tied": base, "ids": torch.arange(5), "nested": {"emb": torch.randn(3)}}
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": state, "global_step": 7, "epoch": 1}, ckpt)  # Lightning's layout; torch.save keeps
    out = tmp_path / "model.safetensors"                                    # the sharing safetensors refuses
    summary = convert(ckpt, out)
    got = load_file(str(out))
    assert sorted(got) == ["a", "a_row", "ids", "nested.emb", "tied"]
    assert torch.equal(got["a"], base) and torch.equal(got["a_row"], base[1]) and torch.equal(got["tied"], base)
    assert got["a"].dtype == torch.float32 and got["ids"].dtype == torch.int64
    assert summary.skipped == ["global_step", "epoch"]
    assert (summary.tensors, summary.parameters, summary.bytes) == (5, 16 + 4 + 16 + 5 + 3, out.stat().st_size)
    with safe_open(str(out), "pt") as f:
        assert f.metadata() == {"format": "pt", "converted_from": "model.ckpt"}

    half = convert(ckpt, tmp_path / "half.safetensors", dtype="fp16")
    got = load_file(str(half.out))
    assert got["a"].dtype == torch.float16 and got["ids"].dtype == torch.int64  # integers are never cast
    assert half.dtypes == {"fp16": 4, "int64": 1}


def test_tiny_pipeline_to_single_file_and_back_keeps_every_tensor(tiny_model, tmp_path, capsys):
    """folder -> one SD-layout file (fp32 kept) -> folder, and the same file as a Lightning .ckpt -> folder: the UNet,
    VAE and text encoder come back tensor for tensor. Offline: the configs come from the tiny folder."""
    from diffusers import StableDiffusionPipeline
    single = tmp_path / "tiny.safetensors"
    assert main(["convert", str(tiny_model), "--out", str(single)]) == 0
    assert "parameters" in capsys.readouterr().out
    with safe_open(str(single), "pt") as f:
        assert any(k.startswith("model.diffusion_model.") for k in f.keys())
    ref = StableDiffusionPipeline.from_pretrained(str(tiny_model))

    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": load_file(str(single)), "global_step": 3}, ckpt)
    for src, name in ((single, "from_safetensors"), (ckpt, "from_ckpt")):
        summary = convert(src, tmp_path / name, config_from=str(tiny_model))
        assert summary.dtypes == {"fp32": summary.tensors}
        back = StableDiffusionPipeline.from_pretrained(str(tmp_path / name))
        for part in ("unet", "vae", "text_encoder"):
            a, b = getattr(ref, part).state_dict(), getattr(back, part).state_dict()
            assert a.keys() == b.keys(), part
            assert all(torch.equal(a[k], b[k]) for k in a), part


def test_conversions_that_cannot_work_say_why(tiny_model, tmp_path):
    lora = tmp_path / "lora.safetensors"
    from safetensors.torch import save_file
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(lora))
    with pytest.raises(ConvertError, match="not a whole Stable Diffusion checkpoint"):
        convert(lora, tmp_path / "folder", config_from=str(tiny_model))
    with pytest.raises(ConvertError, match="never pickles"):
        convert(lora, tmp_path / "x.ckpt")
    with pytest.raises(ConvertError, match="diffusers folder already"):
        convert(tiny_model, tmp_path / "other-folder")
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConvertError, match="not a PyTorch checkpoint") as e:  # refused: not even a pickle
        convert(tmp_path / "broken.pt", tmp_path / "b.safetensors")
    assert "--trust-pickle" not in str(e.value)  # no advice to unpickle what is no pickle (issue 16)
    single = convert(tiny_model, tmp_path / "t.safetensors").out
    with pytest.raises(ConvertError, match="--config-from"):  # offline (conftest): the SD 1.5 default is unreachable
        convert(single, tmp_path / "needs-hub")
