"""Data: awkward and broken folders, the data check (Python and CLI), layouts, captions, buckets, split,
auto-captioning, the caption editor, and a LoRA run on a messy folder."""
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

import sdkit
from sdkit import data as C  # the caption rules and the captioner are re-exported by sdkit.data
from sdkit.data import (BucketBatchSampler, DataError, ImageCaptionDataset, assign_bucket, check, load_image,
                        make_buckets, scan_folder, train_val_split)
from sdkit.ui.captions import caption_editor

from conftest import PYTHON, ROOT, write_captioned_folder
from corpus import _pattern, build_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus") / "messy"
    expect = build_corpus(root)
    return root, expect


def rel(path, root):
    return os.path.relpath(path, root).replace(os.sep, "/")


def cli(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([PYTHON, "-m", "sdkit", *args], cwd=ROOT, env=env, capture_output=True, text=True)


# ---- reading every kind of file ---------------------------------------------------------------------------------
def test_every_valid_file_is_used_and_every_broken_one_reported(corpus):
    root, expect = corpus
    scan = scan_folder(root)
    used = {rel(p, root): c for p, c in scan.items}
    assert used == expect["good"]                                # captions: BOM/CRLF cleaned, file-name fallback
    errors = {rel(p.path, root): p.message for p in scan.problems if p.severity == "error"}
    assert set(errors) == set(expect["broken"])
    for name, words in expect["broken"].items():
        assert words in errors[name] and errors[name].startswith(name), errors[name]
    for p in scan.problems:                                      # noise is never mentioned, not even as info
        assert not any(n in rel(p.path, root) for n in ("ipynb_checkpoints", "__MACOSX", "DS_Store", "Thumbs",
                                                        ".hidden"))
    assert any(p.severity == "info" and p.path.endswith("notes.md") for p in scan.problems)
    assert any(p.severity == "warning" and "empty caption" in p.message for p in scan.problems)


def test_loading_converts_every_mode_and_applies_exif(corpus):
    root, expect = corpus
    for name in expect["good"]:
        im = load_image(root / name)
        assert im.mode == "RGB"
    assert load_image(root / expect["exif_rotated"]).size == (40, 48)   # stored 48x40, orientation 6
    # transparency is composited on the chosen background: a fully transparent pixel takes its color
    rgba = np.asarray(load_image(root / "rgba.png", background=(0, 255, 0)))
    assert tuple(rgba[0, 0]) == (0, 255, 0)
    assert np.asarray(load_image(root / "sixteen_bit.png")).max() > 200  # 16-bit scaled, not clipped to black


def test_dataset_gives_tensors_for_every_usable_file(corpus):
    root, _ = corpus
    ds = ImageCaptionDataset(scan_folder(root), 32, center_crop=False, random_flip=True)
    for i in range(len(ds)):
        x = ds[(i, 1000 + i)]["pixels"]
        assert x.shape == (3, 32, 32) and x.min() >= -1 and x.max() <= 1
    a, b = ds[(3, 7)]["pixels"], ds[(3, 7)]["pixels"]
    assert torch.equal(a, b)                                     # same seed, same crop and flip


def test_unreadable_file_is_reported(corpus, tmp_path, monkeypatch):
    root, expect = corpus
    if expect["unreadable_effective"]:
        assert "locked.png" in expect["broken"]
        return
    # Running as root: chmod 000 does not stop reads, so simulate the PermissionError the OS gives other users.
    import PIL.Image
    real_open = PIL.Image.open

    def fake_open(fp, *a, **k):
        if str(fp).endswith("locked.png"):
            raise PermissionError(13, "Permission denied", str(fp))
        return real_open(fp, *a, **k)
    monkeypatch.setattr(PIL.Image, "open", fake_open)
    errors = {rel(p.path, root): p.message for p in scan_folder(root).problems if p.severity == "error"}
    assert "permission denied" in errors["locked.png"]


def test_a_file_broken_after_the_scan_does_not_stop_training(tmp_path):
    folder = write_captioned_folder(tmp_path / "d", n=3, size=40)
    ds = ImageCaptionDataset(scan_folder(folder), 32)
    (folder / "img_01.png").write_bytes(b"gone")
    with pytest.warns(UserWarning, match="img_01.png"):
        out = ds[(1, 0)]
    assert out["pixels"].shape == (3, 32, 32) and out["caption"] != "a blue disc on a white background"


def test_no_usable_image_is_a_clear_error(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "b.jpg").write_text("hello")
    with pytest.raises(DataError, match="no usable image.*2 image.*could not be read"):
        scan_folder(tmp_path)
    report = check(tmp_path)
    assert not report.ok and report.count("error") == 3


# ---- data check -------------------------------------------------------------------------------------------------
def test_check_cli_exit_codes_and_json_schema(corpus, tmp_path):
    root, expect = corpus
    out = tmp_path / "report.json"
    r = cli("data", "check", str(root), "--json", str(out), "--resolution", "32")
    assert r.returncode == 0, r.stderr
    assert "OK: trainable" in r.stdout and "truncated.png" in r.stdout
    data = json.loads(out.read_text())
    assert set(data) == {"usable", "problems", "stats"}
    assert {rel(p, root) for p in data["usable"]} == set(expect["good"])
    for p in data["problems"]:
        assert set(p) == {"path", "severity", "message"} and p["severity"] in ("error", "warning", "info")
    assert data["stats"]["usable"] == len(expect["good"]) and data["stats"]["skipped"] == len(expect["broken"])
    # nothing usable: non-zero exit, the JSON still written
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_text("not a picture")
    r = cli("data", "check", str(bad), "--json", str(tmp_path / "bad.json"))
    assert r.returncode == 2 and "NOT TRAINABLE" in r.stdout
    assert json.loads((tmp_path / "bad.json").read_text())["usable"] == []
    assert cli("data", "check", str(tmp_path / "missing")).returncode == 2


def test_check_finds_long_captions_small_images_duplicates_and_missing_trigger(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    for k in range(6):  # six distinct pictures
        Image.fromarray(_pattern(64, 64, seed=k)).save(folder / f"img_{k:02d}.png")
        (folder / f"img_{k:02d}.txt").write_text(f"picture {k}")
    long_caption = ", ".join(["a very detailed red square"] * 16)
    (folder / "img_00.txt").write_text(long_caption)
    shutil.copy(folder / "img_01.png", folder / "img_01_copy.png")                       # exact duplicate
    im = Image.open(folder / "img_02.png").convert("RGB")
    im.save(folder / "img_02_again.jpg", quality=70)                                    # near duplicate
    Image.new("RGB", (300, 60), (9, 9, 9)).save(folder / "banner.png")                  # extreme aspect
    report = check(folder, resolution=128, trigger="sks", kind="subject")
    msgs = [p.message for p in report.problems]
    n = C.count_tokens(long_caption)
    assert n > 77
    assert f"img_00.png: caption has {n} CLIP tokens; CLIP reads 77" in " ".join(msgs)
    assert any("img_01_copy.png: exact duplicate of img_01.png" in m for m in msgs)
    assert any("img_02_again.jpg: near duplicate of img_02.png" in m for m in msgs)
    assert any("banner.png: aspect ratio 5.0:1" in m for m in msgs)
    assert any("img_03.png: 64x64 is below the training resolution 128" in m for m in msgs)
    assert sum("lacks the trigger 'sks'" in m for m in msgs) == 9
    assert report.stats["duplicates"] == 2
    assert "OK: trainable" in report.table() and report.grid().size[0] > 0
    # the distinct pictures of the shipped subject set are not flagged as near duplicates
    clean = check(ROOT / "data_samples" / "subject", resolution=32, trigger="sks", kind="subject")
    assert clean.count("warning") == 0 and clean.count("error") == 0


def test_tiny_set_warning_uses_the_kind(tmp_path):
    folder = write_captioned_folder(tmp_path / "d", n=3, size=40)
    assert any("only 3 usable" in p.message and "subject" in p.message
               for p in check(folder, resolution=32, kind="subject").problems)
    many = write_captioned_folder(tmp_path / "e", n=8, size=40)
    assert not any("usable image(s)" in p.message for p in check(many, resolution=32, kind="subject").problems)
    assert any("style" in p.message for p in check(many, resolution=32, kind="style").problems)


# ---- layouts ----------------------------------------------------------------------------------------------------
def test_kohya_folders_repeat_images_and_name_captions(tmp_path):
    a, b = tmp_path / "train" / "3_sks dog", tmp_path / "train" / "1_dog"
    write_captioned_folder(a, n=2, size=40)
    write_captioned_folder(b, n=2, size=40)
    (a / "img_01.txt").unlink()
    for f in b.glob("*.txt"):
        f.unlink()
    Image.new("RGB", (40, 40)).save(tmp_path / "train" / "stray.png")
    scan = scan_folder(tmp_path / "train")
    assert scan.layout == "kohya"
    caps = {rel(p, scan.root): c for p, c in scan.items}
    assert caps["3_sks dog/img_01.png"] == "sks dog" and caps["1_dog/img_00.png"] == "dog"
    assert caps["3_sks dog/img_00.png"].startswith("a red square")                  # a sidecar wins
    assert any("stray.png: not inside a <repeats>_<name> folder" in p.message for p in scan.problems)
    ds = ImageCaptionDataset(scan, 32)
    assert len(ds) == 3 * 2 + 1 * 2                                                  # an epoch honours repeats
    seen = [ds[(i, 0)]["caption"] for i in range(len(ds))]
    assert seen.count("sks dog") == 3 and seen == [ds.item(i)[1] for i in range(len(ds))]
    report = check(tmp_path / "train", resolution=32)
    assert report.stats["samples_per_epoch"] == 8 and report.stats["groups"] == {"3_sks dog": 6, "1_dog": 2}
    assert any("unbalanced" in p.message for p in report.problems)


def test_metadata_jsonl_and_csv(tmp_path):
    d = write_captioned_folder(tmp_path / "hf", n=3, size=40)
    for f in d.glob("*.txt"):
        f.unlink()
    rows = [{"file_name": f"img_{i:02d}.png", "text": f"caption number {i}"} for i in range(2)]
    (d / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    scan = scan_folder(d)
    caps = {p.name: c for p, c in scan.items}
    assert scan.layout == "metadata"
    assert caps == {"img_00.png": "caption number 0", "img_01.png": "caption number 1", "img_02.png": "img"}
    assert any("img_02.png: no row in metadata" in p.message for p in scan.problems)
    (d / "metadata.jsonl").unlink()
    (d / "metadata.csv").write_text("file_name,caption\nimg_02.png,\"from csv, with comma\"\n")
    assert {p.name: c for p, c in scan_folder(d).items}["img_02.png"] == "from csv, with comma"


# ---- captions ---------------------------------------------------------------------------------------------------
def test_caption_functions_are_deterministic_given_a_seed():
    cap = "red star, white background, small, centered, soft light"
    rng = lambda s: np.random.default_rng(s)  # noqa: E731
    assert C.shuffle_tags(cap, rng(1), keep_tokens=1) == C.shuffle_tags(cap, rng(1), keep_tokens=1)
    shuffles = {C.shuffle_tags(cap, rng(s), keep_tokens=1) for s in range(20)}
    assert len(shuffles) > 5 and all(s.startswith("red star, ") for s in shuffles)
    assert sorted(C.split_tags(C.shuffle_tags(cap, rng(3)))) == sorted(C.split_tags(cap))
    assert C.drop_tags(cap, rng(0), 0.0) == cap
    assert C.drop_tags(cap, rng(0), 1.0, keep_tokens=2) == "red star, white background"
    assert C.drop_tags(cap, rng(5), 0.5) == C.drop_tags(cap, rng(5), 0.5)
    assert [C.drop_caption(cap, rng(s), 0.3) == "" for s in range(50)].count(True) in range(5, 26)
    assert C.insert_trigger(cap, "sks") == "sks, " + cap
    assert C.insert_trigger("a sks star", "sks") == "a sks star"                     # not twice
    assert C.insert_trigger(cap, "sks", position="end").endswith(", sks")
    assert C.make_caption("single", "sks", "star") == "sks star"
    assert C.make_caption("multi", "sks", "star", ["red", "top left"]) == "sks star, red, top left"
    assert C.make_caption("sentence", "sks", "star", sentence="on a table") == "a picture of a sks star, on a table"
    policy = C.CaptionPolicy(trigger="sks", shuffle=True, tag_dropout=0.3)
    outs = [policy(cap, rng(s)) for s in range(30)]
    assert all(o.startswith("sks, ") for o in outs)                                  # the trigger stays in front
    assert outs == [policy(cap, rng(s)) for s in range(30)]


def test_dataset_caption_transform_depends_only_on_the_seed(tmp_path):
    folder = write_captioned_folder(tmp_path / "d", n=3, size=40)
    (folder / "img_02.txt").write_text("green, square, white background, small")
    policy = C.CaptionPolicy(trigger="sks", shuffle=True)
    ds = ImageCaptionDataset(scan_folder(folder), 32, caption_transform=policy)
    assert ds[(2, 99)]["caption"] == ds[(2, 99)]["caption"]
    assert len({ds[(2, s)]["caption"] for s in range(20)}) > 1


def test_color_jitter_warns_when_captions_name_colors(data8):
    ds = ImageCaptionDataset(scan_folder(data8), 32, color_jitter=0.2)
    assert "color_jitter" in ds.color_warning() and "red" in ds.color_warning()
    x = ds[(0, 1)]["pixels"]
    assert x.shape == (3, 32, 32) and x.min() >= -1 and x.max() <= 1
    assert any("color jitter" in p.message for p in check(data8, resolution=32, color_jitter=0.2).problems)


# ---- buckets, split ---------------------------------------------------------------------------------------------
def test_buckets_stay_in_bounds_and_never_upscale_when_asked(tmp_path):
    buckets = make_buckets(512, min_size=256, max_size=1024, step=64)
    assert (512, 512) in buckets and (1024, 256) in buckets
    for w, h in buckets:
        assert 256 <= w <= 1024 and 256 <= h <= 1024 and w % 64 == 0 and h % 64 == 0 and w * h <= 512 * 512
    sizes = [(4000, 3000), (3000, 4000), (1920, 1080), (600, 400), (300, 700), (512, 512), (2000, 500)]
    for s in sizes:
        b = assign_bucket(s, buckets)
        assert b in buckets
        assert abs(np.log(b[0] / b[1]) - np.log(s[0] / s[1])) < 0.35
        bn = assign_bucket(s, buckets, no_upscale=True, step=64, min_size=256)
        assert bn[0] <= s[0] and bn[1] <= s[1] and bn[0] % 64 == 0 and bn[1] % 64 == 0
        assert 256 <= min(bn) and bn[0] * bn[1] <= 512 * 512
    assert assign_bucket((600, 400), buckets, no_upscale=True) == (576, 384)       # the image's own size
    # the batch sampler: every index once per epoch, one bucket per batch, same order for the same seed
    bucket_of = [assign_bucket(s, buckets) for s in sizes * 3]
    sampler = BucketBatchSampler(bucket_of, batch_size=2, seed=0)
    batches = sampler.batches(epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(len(bucket_of)))
    assert all(len({bucket_of[i] for i in b}) == 1 for b in batches)
    assert batches == BucketBatchSampler(bucket_of, 2, seed=0).batches(0) != sampler.batches(1)
    # a dataset with buckets gives tensors of the bucket's size
    for k, (w, h) in enumerate([(96, 48), (48, 96), (64, 64)]):
        Image.new("RGB", (w, h), (k * 60, 100, 100)).save(tmp_path / f"{k}.png")
    ds = ImageCaptionDataset(scan_folder(tmp_path), 32, buckets=make_buckets(32, 16, 64, 8))
    for i in range(3):
        w, h = ds.bucket_of[i]
        assert ds[(i, 0)]["pixels"].shape == (3, h, w)
    assert ds.bucket_of[0][0] > ds.bucket_of[0][1] and ds.bucket_of[1][0] < ds.bucket_of[1][1]


def test_train_val_split_is_deterministic_and_disjoint(tmp_path):
    scan = scan_folder(write_captioned_folder(tmp_path / "d", n=8, size=40))
    tr, va = train_val_split(scan, 0.25, seed=0)
    tr2, va2 = train_val_split(scan, 0.25, seed=0)
    assert [p for p, _ in va.items] == [p for p, _ in va2.items] and len(va.items) == 2 and len(tr.items) == 6
    assert not {p for p, _ in tr.items} & {p for p, _ in va.items}
    assert len(train_val_split(scan, 0.01)[1].items) == 1                           # at least one
    assert [p for p, _ in train_val_split(scan, 0.25, seed=1)[1].items] != [p for p, _ in va.items]


# ---- auto-captioning and the editor -----------------------------------------------------------------------------
def test_tiny_captioner_writes_sidecars_and_keeps_existing(tmp_path):
    model = C.make_tiny_captioner(tmp_path / "tiny-blip")
    folder = write_captioned_folder(tmp_path / "d", n=3, size=40)
    (folder / "img_00.txt").unlink()
    (folder / "img_01.txt").unlink()
    cap = C.Captioner(str(model), max_new_tokens=5)
    result = C.caption_folder(folder, cap, trigger="sks")
    assert sorted(p.name for p in result["written"]) == ["img_00.txt", "img_01.txt"]
    assert [p.name for p in result["kept"]] == ["img_02.png"]
    text = (folder / "img_00.txt").read_text()
    assert text.startswith("sks") and len(text.split()) > 1
    assert (folder / "img_02.txt").read_text().startswith("a green square")           # never overwritten
    (folder / "img_02.txt").write_text("old")
    r = cli("data", "caption", str(folder), "--model", str(model), "--overwrite", "--max-new-tokens", "4")
    assert r.returncode == 0 and "wrote 3 caption file(s)" in r.stdout, r.stderr
    assert (folder / "img_02.txt").read_text() != "old"


def test_caption_editor_saves_edits(tmp_path):
    pytest.importorskip("ipywidgets")
    folder = write_captioned_folder(tmp_path / "d", n=2, size=40)
    editor = caption_editor(folder)
    box = editor.boxes[folder / "img_01.png"]
    box.value = "sks star,  edited "
    assert [p.name for p in editor.save()] == ["img_01.txt"]
    assert (folder / "img_01.txt").read_text().strip() == "sks star, edited"


# ---- training on a messy folder ---------------------------------------------------------------------------------
def test_lora_trains_on_the_messy_corpus(corpus, base_config):
    root, expect = corpus
    messages = []

    class Listen(sdkit.Callback):
        def on_message(self, trainer, level, text):
            messages.append(text)
    run = sdkit.train(base_config.replace(data=str(root), steps=3), callbacks=[Listen()], progress=None)
    assert run.final_step == 3
    assert any(f"{len(expect['broken'])} file(s) skipped, training on {len(expect['good'])} images" in m
               for m in messages)


def test_aspect_warning_knows_the_buckets(tmp_path):
    """With aspect-ratio buckets (the default) a 5:1 banner keeps 80% of itself in the 4:1 bucket: no warning; a 12:1
    one keeps 33% and the warning names the bucket limit as the fix. Square crops warn about both."""
    from sdkit.data.buckets import bucket_options
    for name, size in (("banner.png", (300, 60)), ("strip.png", (720, 60))):
        Image.fromarray(_pattern(size[1], size[0], seed=len(name))).save(tmp_path / name)
        (tmp_path / name).with_suffix(".txt").write_text("a banner")
    bucketed = [p.message for p in check(tmp_path, resolution=128,
                                         buckets=bucket_options(128)["buckets"]).problems if "aspect ratio" in p.message]
    square = [p.message for p in check(tmp_path, resolution=128).problems if "aspect ratio" in p.message]
    assert len(bucketed) == 1 and "strip.png" in bucketed[0] and "closest bucket keeps only 33%" in bucketed[0]
    assert "max_bucket_side" in bucketed[0]
    assert len(square) == 2 and all("a square crop keeps" in m and "bucketing=True" in m for m in square)
