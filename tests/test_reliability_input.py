"""Bad input (issue 16, docs/RELIABILITY.md "Bad input"): captions in any Unicode encoding or none, NaN/inf in the
config, exports and conversions a run or file cannot give, data-check bugs, file modes of .safetensors, and the one
rule across all of it: a user's mistake ends in one `error: ...` line and exit code 2, never a traceback."""
import contextlib
import os
import stat

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import sdkit
from sdkit.cli.app import main
from sdkit.config import ConfigError, TrainConfig, config_fields
from sdkit.data import read_caption, scan_folder
from sdkit.data.files import CaptionError, write_safetensors
from sdkit.data.lint import check
from sdkit.export import export
from sdkit.methods.kohya import kohya_name
from sdkit.models import load_pipeline

TEXT = "a red glyph, café"
ENCODINGS = {"utf-8": "utf-8", "utf-8 BOM": "utf-8-sig", "utf-16 LE BOM (Notepad 'Unicode')": "utf-16",
             "utf-16 BE BOM": ("utf-16-be", b"\xfe\xff"), "utf-32 BOM": "utf-32"}


def encoded(how) -> bytes:
    if isinstance(how, tuple):
        return how[1] + TEXT.encode(how[0])
    return TEXT.encode(how)


def picture(path, seed=0, flat=None):
    """A 32x32 PNG: random texture, or one flat color."""
    arr = np.full((32, 32, 3), flat, np.uint8) if flat is not None else \
        np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


@contextlib.contextmanager
def umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def last_line_error(capsys, *names):
    """stderr ends in one `error: ...` line (no traceback; a warning may come before it) naming each of `names`;
    returns that line."""
    text = capsys.readouterr().err.strip()
    assert "Traceback (most recent call last)" not in text, text
    err = text.splitlines()[-1]
    assert err.startswith("error: ") and all(line.startswith("warning: ") for line in text.splitlines()[:-1]), text
    for n in names:
        assert str(n) in err, (n, err)
    return err


# ---- 1. captions ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ENCODINGS)
def test_caption_decoded_by_its_byte_order_mark(name, tmp_path):
    p = tmp_path / "c.txt"
    p.write_bytes(encoded(ENCODINGS[name]))
    assert read_caption(p) == TEXT


@pytest.mark.parametrize("raw, why", [(TEXT.encode("utf-16-le"), "NUL bytes"),            # UTF-16 without a BOM
                                      (bytes(range(256)) * 2, "NUL bytes"),                 # a binary file
                                      (b"\x01\x02\x90\x9d\x81", "neither UTF-8"),           # not text, no NUL
                                      (b"\xff\xfea\x00b", "UTF-16 LE byte-order mark")])   # odd length after the mark
def test_caption_that_is_not_text_names_the_file_and_the_fix(raw, why, tmp_path):
    p = tmp_path / "bad.txt"
    p.write_bytes(raw)
    with pytest.raises(CaptionError, match=why) as e:
        read_caption(p)
    assert str(p) in str(e.value) and "save it as UTF-8" in str(e.value)


def test_data_check_and_training_skip_and_report_an_unreadable_caption(tmp_path, tiny_model, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        picture(data / f"img{i}.png", seed=i)
    (data / "img0.txt").write_bytes("a red glyph".encode("utf-16"))       # Windows Notepad "Unicode": read
    (data / "img1.txt").write_bytes("a blue glyph".encode("utf-16-le"))   # no BOM: NUL-laced, refused
    (data / "img2.txt").write_bytes("crème brûlée".encode("cp1252"))       # legacy Windows text: read, warned
    scan = scan_folder(data)
    assert dict((p.name, c) for p, c in scan.items) == {"img0.png": "a red glyph", "img2.png": "crème brûlée"}
    assert main(["data", "check", str(data), "--resolution", "32"]) == 0
    out = capsys.readouterr().out
    assert "img1.txt: not a caption sdkit can read" in out and "img1.png is" in out and "save it as UTF-8" in out
    assert "img2.txt: not UTF-8; read as Windows-1252" in out
    messages = []

    class Listen(sdkit.Callback):
        def on_message(self, trainer, level, text):
            messages.append(text)

    run = sdkit.train(TrainConfig(model=str(tiny_model), data=str(data), steps=1, resolution=32, sample_steps=1,
                                  sample_at_start=False, tensorboard=False, out=str(tmp_path / "run")),
                      callbacks=[Listen()], progress=None)
    assert any("img1.txt" in m and "save it as UTF-8" in m for m in messages), messages
    assert any("1 file(s) skipped, training on 2 images" in m for m in messages), messages
    assert run.checkpoints


# ---- 2. NaN / inf in the config -----------------------------------------------------------------------------
FLOAT_FIELDS = [s.name for s in config_fields(TrainConfig) if s.type is float]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_every_float_field_refuses_nan_and_inf(value):
    assert {"lr", "weight_decay", "max_grad_norm", "snr_gamma"} <= set(FLOAT_FIELDS)
    for name in FLOAT_FIELDS:
        with pytest.raises(ConfigError, match=rf"^{name}: got .*finite number") as e:
            TrainConfig(model="mini", data="x", **{name: value}).validate()
        assert "Fix:" in str(e.value)


@pytest.mark.parametrize("flag", ["--lr=nan", "--weight-decay=nan", "--max-grad-norm=nan", "--lr=inf"])
def test_nan_on_the_command_line_is_one_error_line(flag, data8, capsys):
    name = flag[2:].split("=")[0].replace("-", "_")
    assert main(["train", "--model", "mini", "--data", str(data8), flag]) == 2
    last_line_error(capsys, f"{name}: got", "finite")


# ---- 3 + 5. export: the formats a run has; LoHa/LoKr with the text encoder as LyCORIS; file modes ------------
def run_dir(tmp_path, name, **fields):
    """A run directory with only its config.yaml (no checkpoint yet)."""
    path = tmp_path / name
    path.mkdir()
    TrainConfig(model="mini", data="x", **fields).to_yaml(path / "config.yaml")
    return path


@pytest.mark.parametrize("method, fmt, expect", [("loha", "kohya", "exports as lycoris"),
                                                 ("full", "kohya", "exports as pipeline, single-file"),
                                                 ("full", "lycoris", "exports as pipeline, single-file"),
                                                 ("full", "embedding", "exports as pipeline, single-file")])
def test_export_in_a_format_the_run_lacks_names_its_formats(method, fmt, expect, tmp_path, capsys):
    run = run_dir(tmp_path, method, method=method)
    assert main(["export", str(run), "--format", fmt]) == 2
    err = last_line_error(capsys, run, expect, f"got '{fmt}'")
    assert "trains whole weights" not in err


def test_export_of_a_run_without_checkpoints_says_there_is_nothing_yet(tmp_path, capsys):
    run = run_dir(tmp_path, "fresh", method="lora")
    assert main(["export", str(run)]) == 2
    err = last_line_error(capsys, run, "no checkpoint yet", "nothing to export")
    assert "resume" not in err
    assert main(["export", str(run), "--checkpoint", "step_000005"]) == 2
    last_line_error(capsys, "step_000005", "none yet")


@pytest.mark.parametrize("method", ["loha", "lokr"])
def test_lycoris_export_with_the_text_encoder_and_file_modes(method, tiny_model, data8, tmp_path):
    """A LoHa/LoKr run that also trains the text encoder exports both parts as LyCORIS (A1111 names: lora_te_*
    for text-encoder modules that exist); every .safetensors sdkit writes gets 0o666 & ~umask, not 0600."""
    with umask(0o027):
        run = sdkit.train(TrainConfig(model=str(tiny_model), data=str(data8), method=method, steps=1,
                                      train_text_encoder=True, resolution=32, sample_steps=1, sample_at_start=False,
                                      tensorboard=False, out=str(tmp_path / method)), progress=None)
        path = export(run, "lycoris")
        pipe_dir = export(run, "pipeline", tmp_path / "pipe") if method == "loha" else None
    tensors = load_file(str(path))
    te = {k.split(".")[0] for k in tensors if k.startswith("lora_te_")}
    assert te and any(k.startswith("lora_unet_") for k in tensors)
    te_modules = {kohya_name(n, "text_encoder") for n, m in load_pipeline(str(tiny_model)).text_encoder.named_modules()
                  if isinstance(m, torch.nn.Linear)}
    assert te <= te_modules, sorted(te - te_modules)[:3]
    written = [path, *run.checkpoints[-1].glob("*.safetensors")]
    written += list(pipe_dir.rglob("*.safetensors")) if pipe_dir else []
    assert len(written) >= 3
    assert {p.name: oct(mode(p)) for p in written} == {p.name: oct(0o640) for p in written}


def test_write_safetensors_respects_the_umask(tmp_path):
    with umask(0o002):
        p = write_safetensors({"a": torch.zeros(2)}, tmp_path / "a.safetensors")
    assert mode(p) == 0o664


# ---- 4. convert of files that are not what their name says --------------------------------------------------
@pytest.mark.parametrize("name", ["model.ckpt", "model.bin", "model.pt", "model.safetensors", "empty.safetensors"])
@pytest.mark.parametrize("trust", [False, True])
def test_convert_of_random_bytes_is_one_line_naming_the_file(name, trust, tmp_path, capsys):
    src = tmp_path / name
    src.write_bytes(b"" if name.startswith("empty") else np.random.default_rng(1).bytes(4000))
    out = tmp_path / "out.safetensors"
    assert main(["convert", str(src), "--out", str(out)] + (["--trust-pickle"] if trust else [])) == 2
    err = last_line_error(capsys, src, "Fix:")
    assert "--trust-pickle" not in err or name.endswith(".safetensors")  # no advice to unpickle garbage
    assert not out.exists()


def test_convert_of_a_truncated_or_garbled_torch_file(tmp_path, capsys):
    good = tmp_path / "w.pt"
    torch.save({"w": torch.zeros(64)}, good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:300])
    assert main(["convert", str(cut), "--out", str(tmp_path / "o.safetensors")]) == 2
    last_line_error(capsys, cut, "damaged PyTorch checkpoint")
    garbled = tmp_path / "garbled.ckpt"
    garbled.write_bytes(b"\x80\x02" + np.random.default_rng(2).bytes(3000))  # a pickle mark, then noise
    assert main(["convert", str(garbled), "--out", str(tmp_path / "o.safetensors"), "--trust-pickle"]) == 2
    last_line_error(capsys, garbled, "torch.load cannot read it")


# ---- 5. data check bugs -----------------------------------------------------------------------------------------
def test_no_usable_image_line_comes_after_the_errors_it_refers_to(tmp_path):
    data = tmp_path / "broken"
    data.mkdir()
    (data / "a.png").write_bytes(b"not a png")
    (data / "b.jpg").write_bytes(b"")
    report = check(data, resolution=32)
    table = report.table()
    verdict = next(i for i, line in enumerate(table.splitlines()) if "no usable image" in line)
    errors = [i for i, line in enumerate(table.splitlines()) if line.strip().startswith("ERROR")]
    assert len(errors) == 3 and verdict == errors[-1], table
    last = next(p.message for p in report.problems if "no usable image" in p.message)
    assert "fix the 2 error(s) listed with this one" in last and "above" not in table


def test_flat_pictures_are_not_near_duplicates_but_textured_copies_are(tmp_path):
    data = tmp_path / "flat"
    data.mkdir()
    for name, color in [("red", (255, 0, 0)), ("blue", (0, 0, 255)), ("white", (255, 255, 255))]:
        picture(data / f"{name}.png", flat=color)
    picture(data / "tex.png", seed=3)
    noisy = np.asarray(Image.open(data / "tex.png")).astype(int) + np.random.default_rng(4).integers(-3, 4, (32, 32, 3))
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(data / "tex_b.png")
    report = check(data, resolution=32)
    near = [p.message for p in report.problems if "near duplicate" in p.message]
    assert len(near) == 1 and "tex" in near[0], near
    picture(data / "red_again.png", flat=(254, 1, 0))   # the same flat color: a copy after all
    near = [p.message for p in check(data, resolution=32).problems if "near duplicate" in p.message]
    assert len(near) == 2 and any("red" in m and "red_again" in m for m in near), near


# ---- 6. no traceback for a user's mistake; --debug / SDKIT_DEBUG show it --------------------------------------
def test_user_mistakes_through_the_cli_are_one_line_exit_2(tmp_path, data8, capsys):
    afile = tmp_path / "afile.txt"
    afile.write_text("hi")
    run = run_dir(tmp_path, "r", method="lora")
    cases = [(["data", "check", str(tmp_path / "nope")], "does not exist"),
             (["train", "--model", "mini", "--data", str(afile)], "is a file"),
             (["train", "--config", str(tmp_path / "none.yaml")], "does not exist"),
             (["show", str(tmp_path / "nope")], "not an sdkit run directory"),
             (["export", str(tmp_path / "nope")], "not an sdkit run directory"),
             (["export", str(run)], "nothing to export"),
             (["data", "check", str(data8), "--json", str(afile / "report.json")], "afile.txt"),  # an OSError
             (["convert", str(tmp_path / "nope.ckpt"), "--out", str(tmp_path / "o.safetensors")], "nope.ckpt")]
    for argv, says in cases:
        assert main(argv) == 2, argv
        last_line_error(capsys, says)
    assert main(["train", "--no-such-flag"]) == 2   # argparse: usage and the unknown flag, no traceback
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


def test_debug_shows_the_traceback_and_bugs_always_show_it(tmp_path, monkeypatch, capsys):
    nope = str(tmp_path / "nope")
    with pytest.raises(sdkit.data.DataError):
        main(["--debug", "data", "check", nope])
    with pytest.raises(sdkit.data.DataError):
        main(["data", "check", nope, "--debug"])
    monkeypatch.setenv("SDKIT_DEBUG", "1")
    with pytest.raises(sdkit.data.DataError):
        main(["data", "check", nope])
    monkeypatch.delenv("SDKIT_DEBUG")
    assert main(["data", "check", nope]) == 2
    capsys.readouterr()

    def bug(args):
        raise TypeError("a bug in sdkit")
    monkeypatch.setattr("sdkit.cli.data.check", lambda *a, **k: bug(None))
    with pytest.raises(TypeError):
        main(["data", "check", nope])
