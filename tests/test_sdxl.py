"""SDXL on the one loop (issue #11): the tiny SDXL pipeline loads with plain diffusers, a LoRA trains on both text
encoders' conditioning with the size/crop time ids of each image, resumes exactly, LoRA DreamBooth draws its class
images with the SDXL pipeline, and the diffusers / kohya exports draw the trained image in a fresh SDXL pipeline."""
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import sdkit
from sdkit.config import ConfigError
from sdkit.data import ImageCaptionDataset, scan_folder
from sdkit.export import export, lora_modules
from sdkit.models import load_pipeline, native_resolution, resolve_model
from sdkit.sample import generate
from sdkit.families import batch_time_ids
from sdkit.rng import sample_seed
from sdkit.train.loop import Trainer

PROMPT = "a red square on a white background"


def trained(run, step):
    return load_file(Path(run.path) / "checkpoints" / f"step_{step:06d}" / "trainable.safetensors")


def draw(pipe, prompt=PROMPT):
    """One 32 px image, 4 Euler steps, seed 0 -> float array in [0, 1]."""
    im = generate(pipe, [prompt], [0], steps=4, guidance_scale=5.0, height=32, width=32)[0]
    return np.asarray(im, dtype=np.float32) / 255.0


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory) -> Path:
    from sdkit.models import make_tiny_sdxl
    return make_tiny_sdxl(tmp_path_factory.mktemp("models") / "tiny-sdxl")


@pytest.fixture
def xl_config(tiny_sdxl, data8, tmp_path):
    return sdkit.TrainConfig(model=str(tiny_sdxl), data=str(data8), steps=3, resolution=32, out=str(tmp_path / "run"),
                             sample_steps=2, tensorboard=False, lr=1e-3)


@pytest.fixture(scope="module")
def xl_run(tiny_sdxl, data8, tmp_path_factory):
    """3 LoRA steps on the tiny SDXL, checkpoints at 2 and 3 (lr high enough that the LoRA shows in an image)."""
    config = sdkit.TrainConfig(model=str(tiny_sdxl), data=str(data8), steps=3, resolution=32, sample_steps=2,
                               out=str(tmp_path_factory.mktemp("xl") / "lora"), tensorboard=False, lr=2e-2,
                               checkpoint_every=2, lora_rank=4, lora_alpha=2.0)
    return sdkit.train(config, progress=None)


def test_tiny_sdxl_is_a_plain_diffusers_sdxl_pipeline(tiny_sdxl, tmp_path, monkeypatch):
    from diffusers import StableDiffusionXLPipeline
    index = json.loads((tiny_sdxl / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    cfg = pipe.unet.config
    assert cfg.addition_embed_type == "text_time"
    # context = both encoders side by side; added embedding = 6 time ids x time dim + pooled projection
    assert cfg.cross_attention_dim == pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    assert cfg.projection_class_embeddings_input_dim == 6 * cfg.addition_time_embed_dim + \
        pipe.text_encoder_2.config.projection_dim
    assert pipe.tokenizer_2.pad_token == "!" and pipe.tokenizer.pad_token == "<|endoftext|>"
    # sdkit's loader picks the SDXL class from model_index.json; native size = 2 x 16
    ours = load_pipeline(str(tiny_sdxl))
    assert type(ours).__name__ == "StableDiffusionXLPipeline" and native_resolution(ours) == 32
    # the tiny-sdxl preset is made into the cache on first use
    monkeypatch.setenv("SDKIT_CACHE", str(tmp_path))
    assert Path(resolve_model("tiny-sdxl"), "model_index.json").is_file()


def test_sdxl_conditioning_equals_the_pipelines_and_time_ids_record_size_and_crop(xl_config, tmp_path):
    # non-square pictures, random crops and flips: every sample has its own original size and crop
    folder = tmp_path / "wide"
    folder.mkdir()
    for i, (w, h) in enumerate([(96, 64), (64, 80), (48, 48)]):
        Image.new("RGB", (w, h), (200, 30 * i, 30)).save(folder / f"im{i}.png")
        (folder / f"im{i}.txt").write_text(f"picture {i}")
    # square random crops of three shapes in one batch (bucketing=False; with buckets: tests/test_buckets.py)
    config = xl_config.replace(data=str(folder), center_crop=False, random_flip=True, batch_size=3, bucketing=False)
    trainer = Trainer(config, progress=None)
    batch = trainer._micro_batch(0, 0)

    # text: the same (context, pooled) as StableDiffusionXLPipeline.encode_prompt
    with torch.no_grad():
        hidden, pooled = trainer.encode_text(batch["captions"])
        ref, _, ref_pooled, _ = trainer.pipeline().encode_prompt(batch["captions"], device="cpu",
                                                                 do_classifier_free_guidance=False)
    assert hidden.shape == (3, 77, 64) and torch.equal(hidden, ref) and torch.equal(pooled, ref_pooled)

    # the time ids the UNet receives = (original h, w, crop top, left, target h, w) of each sample
    seen = []
    unet = trainer.accelerator.unwrap_model(trainer.unet)
    handle = unet.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["added_cond_kwargs"]["time_ids"]),
                                            with_kwargs=True)
    with torch.no_grad():
        trainer.compute_loss(batch)
    handle.remove()
    expect = []
    for i, g in zip(batch["index"], batch["g"]):
        item = trainer.dataset[(i, sample_seed(config.seed, g))]
        path = trainer.dataset.item(i)[0]
        w, h = Image.open(path).size
        assert item["original_size"] == (h, w) and item["target_size"] == (32, 32)
        top, left = item["crop_top_left"]
        short = min(w, h)
        assert 0 <= top <= round(h * 32 / short) - 32 and 0 <= left <= round(w * 32 / short) - 32
        expect.append([*item["original_size"], *item["crop_top_left"], *item["target_size"]])
    assert seen[0].tolist() == expect
    assert {tuple(e[:2]) for e in expect} == {(64, 96), (80, 64), (48, 48)}
    assert any(e[2] or e[3] for e in expect), "no sample was cropped off-center: the crop is not being tested"


def test_sdxl_lora_trains_writes_samples_and_checkpoints_and_keeps_base_weights(xl_run, tiny_sdxl):
    p = xl_run.path
    assert [c.name for c in xl_run.checkpoints] == ["step_000002", "step_000003"]
    assert sorted(xl_run.samples) == [0, 3] and all(len(v) == 2 for v in xl_run.samples.values())
    assert (p / "samples" / "step_000003" / "grid.png").is_file()
    base = load_pipeline(str(tiny_sdxl))
    pipe = xl_run.load_pipeline()
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    before, after = base.unet.state_dict(), pipe.unet.state_dict()
    for k, v in after.items():
        if "lora" not in k:
            assert torch.equal(v, before[k.replace(".base_layer", "")]), k
    lora_b = [v for k, v in after.items() if "lora_B" in k]
    assert lora_b and max(v.abs().max().item() for v in lora_b) > 0        # adapters moved (B starts at 0)
    for name in ("text_encoder", "text_encoder_2", "vae"):               # frozen parts untouched
        a, b = getattr(base, name).state_dict(), getattr(pipe, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_sdxl_resume_equals_uninterrupted(xl_config):
    cfg = xl_config.replace(steps=4, checkpoint_every=2, sample_at_start=False)
    straight = sdkit.train(cfg.replace(out=cfg.out + "_straight"), progress=None)
    stop = threading.Event()

    class StopAt2(sdkit.Callback):
        def on_step_end(self, trainer, logs):
            if trainer.step == 2:
                stop.set()
    part = sdkit.train(cfg, callbacks=[StopAt2()], stop_event=stop, progress=None)
    assert part.stopped_early and part.final_step == 2
    resumed = sdkit.train(cfg.replace(resume="latest"), progress=None)
    a, b = trained(straight, 4), trained(resumed, 4)
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5


def test_sdxl_lora_dreambooth_draws_class_images_with_the_sdxl_pipeline(xl_config):
    config = xl_config.replace(steps=2, instance_prompt="a sks square", class_prompt="a square", num_class_images=2,
                               prior_preservation=True, sample_at_start=False)
    trainer = Trainer(config, progress=None)
    batch = trainer._micro_batch(0, 0)
    assert batch["captions"] == ["a sks square", "a square"]
    # class images are drawn at the training size: whole pictures, no crop
    assert batch_time_ids(trainer, batch)[1].tolist() == [32, 32, 0, 0, 32, 32]
    run = trainer.fit()
    images = sorted((run.path / "class_images").glob("*.png"))
    assert len(images) == 2 and Image.open(images[0]).size == (32, 32)
    assert set(trained(run, 2)) and all(k.startswith("unet.") and "lora" in k for k in trained(run, 2))


@pytest.fixture(scope="module")
def xl_trained(xl_run):
    """(image, number of LoRA modules) of the trained run's own pipeline."""
    pipe = xl_run.load_pipeline()
    return draw(pipe), len(lora_modules(pipe.unet))


@pytest.mark.parametrize("fmt", ["diffusers", "kohya"])
def test_sdxl_lora_export_loads_in_a_fresh_sdxl_pipeline_and_draws_the_trained_image(fmt, xl_run, xl_trained,
                                                                                   tiny_sdxl, tmp_path):
    trained_image, n_modules = xl_trained
    path = export(xl_run, fmt, tmp_path / ("lora" if fmt == "diffusers" else "lora.safetensors"))
    pipe = load_pipeline(str(tiny_sdxl))
    base = draw(pipe)
    pipe.load_lora_weights(str(path))
    assert len(lora_modules(pipe.unet)) == n_modules
    image = draw(pipe)
    assert np.abs(image - trained_image).max() < (1.5 / 255 if fmt == "diffusers" else 0.02)
    assert np.abs(image - base).max() > 0.05, "the LoRA changed nothing: the test would pass on an empty file"


def test_sdxl_refuses_what_it_does_not_do_yet(xl_config):
    with pytest.raises(ConfigError, match="train_text_encoder.*not supported yet for SDXL.*train_text_encoder=False"):
        Trainer(xl_config.replace(train_text_encoder=True), progress=None)
    # which methods train on SDXL is the method class's own `supports_sdxl`, not a list kept elsewhere
    with pytest.raises(ConfigError, match="method: 'hypernetwork' is not supported yet for SDXL.*Fix: method='lora'"):
        Trainer(xl_config.replace(method="hypernetwork"), progress=None)


def test_dataset_geometry_without_pixels_equals_the_loaded_sample(data8):
    ds = ImageCaptionDataset(scan_folder(str(data8)), 40, center_crop=False, random_flip=True)
    for i in range(len(ds)):
        for seed in (1, 2, 3):
            item = ds[(i, seed)]
            assert ds.geometry(i, seed) == {k: item[k] for k in ("original_size", "crop_top_left", "target_size")}
    # old keys unchanged (SD 1.x training reads pixels, caption, index)
    assert {"pixels", "caption", "index"} <= set(ds[(0, 1)])


def test_sdxl_checkpoint_grid_swaps_lora_checkpoints(xl_run):
    from sdkit.evaluate.grid import checkpoint_grid
    grid = checkpoint_grid(xl_run, [PROMPT], seeds=(0,), steps=2)
    assert grid.checkpoints == ["step_000000", "step_000002", "step_000003"]
    base, last = (np.asarray(grid.cells[(n, 1.0, PROMPT, 0)], dtype=np.float32) for n in ("step_000000", "step_000003"))
    assert base.shape == (32, 32, 3) and np.abs(base - last).max() > 0   # base model vs trained LoRA
