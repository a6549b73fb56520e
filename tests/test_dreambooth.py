"""DreamBooth: class images drawn once and reused, instance + class samples per micro-batch, the prior loss,
the same determinism as every other method, and the pre-flight memory estimate."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import sdkit
from sdkit.methods.prior import CLASS_OFFSET, with_control_prompts
from sdkit.train.loop import Trainer


def trained(run, step):
    return load_file(Path(run.path) / "checkpoints" / f"step_{step:06d}" / "trainable.safetensors")


def max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.fixture
def db_config(base_config):
    return base_config.replace(method="dreambooth", instance_prompt="a sks square", class_prompt="a square",
                               num_class_images=3, prior_loss_weight=0.5, lr=1e-4, sample_at_start=False)


def test_dreambooth_writes_n_class_images_and_reuses_them(db_config, tmp_path):
    run = sdkit.train(db_config.replace(steps=2), progress=None)
    images = sorted((run.path / "class_images").glob("*.png"))
    assert len(images) == 3
    assert (run.path / "class_images" / "class_00000.txt").read_text().strip() == "a square"
    before = {p.name: p.read_bytes() for p in images}
    # a second run pointed at that folder with N=5 draws only the 2 missing ones; the 3 present are untouched
    messages = []

    class Listen(sdkit.Callback):
        def on_message(self, trainer, level, text):
            messages.append(text)
    sdkit.train(db_config.replace(steps=1, num_class_images=5, class_data=str(run.path / "class_images"),
                                  out=str(tmp_path / "second")), callbacks=[Listen()], progress=None)
    after = sorted((run.path / "class_images").glob("*.png"))
    assert len(after) == 5 and all(before[n] == (run.path / "class_images" / n).read_bytes() for n in before)
    assert any("drawing 2 of 5" in m for m in messages)


def test_each_micro_batch_holds_instances_then_class_images(db_config):
    trainer = Trainer(db_config.replace(batch_size=2), progress=None)
    batch = trainer._micro_batch(0, 0)
    assert batch["pixels"].shape[0] == 4 and batch["n_instance"] == 2
    assert batch["captions"] == ["a sks square"] * 2 + ["a square"] * 2
    assert batch["g"] == [0, 1, CLASS_OFFSET, CLASS_OFFSET + 1]
    # loss = instance mean + prior_loss_weight x class mean
    per_sample = torch.tensor([1.0, 3.0, 10.0, 20.0])
    assert trainer.method.loss(per_sample, batch).item() == pytest.approx(2.0 + 0.5 * 15.0)
    # the default sample prompts show bleeding from step 0: concept, class word, unrelated prompts
    assert trainer.sample_prompts()[:2] == ["a sks square", "a square"] and len(trainer.sample_prompts()) >= 3


def test_prior_preservation_keeps_accumulation_and_cache_equalities(db_config):
    a = sdkit.train(db_config.replace(steps=2, batch_size=2, out=db_config.out + "_a"), progress=None)
    b = sdkit.train(db_config.replace(steps=2, batch_size=1, grad_accum=2, out=db_config.out + "_b",
                                      class_data=str(a.path / "class_images")), progress=None)
    c = sdkit.train(db_config.replace(steps=2, batch_size=2, cache_latents=True, out=db_config.out + "_c",
                                      class_data=str(a.path / "class_images")), progress=None)
    assert max_diff(trained(a, 2), trained(b, 2)) < 1e-5
    assert max_diff(trained(a, 2), trained(c, 2)) < 1e-5
    # the class half matters: without it the weights differ
    d = sdkit.train(db_config.replace(steps=2, batch_size=2, prior_preservation=False, out=db_config.out + "_d"),
                    progress=None)
    assert max_diff(trained(a, 2), trained(d, 2)) > 1e-6


def test_lora_dreambooth_trains_adapters_only_and_exports(db_config, tmp_path):
    from sdkit.export import export
    run = sdkit.train(db_config.replace(method="lora", prior_preservation=True, lr=1e-3, steps=2), progress=None)
    assert len(list((run.path / "class_images").glob("*.png"))) == 3
    assert all("lora_" in k for k in trained(run, 2))
    assert export(run, "kohya", tmp_path / "x.safetensors").is_file()


def test_dreambooth_flags_and_errors(db_config):
    from sdkit.cli import build_parser, config_from_args
    args = build_parser().parse_args(["train", "--method", "dreambooth", "--instance-prompt", "a sks glyph",
                                      "--class-prompt", "a glyph", "--num-class-images", "7",
                                      "--prior-loss-weight", "0.3", "--data", "x"])
    c = config_from_args(args)
    assert (c.method, c.instance_prompt, c.num_class_images, c.prior_loss_weight) == \
        ("dreambooth", "a sks glyph", 7, 0.3) and c.uses_prior_preservation()
    with pytest.raises(sdkit.ConfigError, match="class_prompt"):
        db_config.replace(class_prompt="").validate()
    assert with_control_prompts(["a sks glyph"], "glyph")[:2] == ["a sks glyph", "a glyph"]


def test_preflight_matches_the_published_t4_dreambooth_number():
    """Full-UNet DreamBooth, SD 1.5 512 px, batch 1, fp16, 8-bit Adam, gradient checkpointing, cached latents:
    9.92 GB measured on a T4 (ANCHORS.md); 11.17 GB without checkpointing; 15.79 GB without 8-bit Adam."""
    from sdkit.train.preflight import estimate, t4_preset
    sd15 = dict(model="sd15", data="x", method="dreambooth", class_prompt="a dog", resolution=512, batch_size=1,
                mixed_precision="fp16", cache_latents=True)
    for changes, published in [(dict(optimizer="adamw8bit", gradient_checkpointing=True), 9.92),
                               (dict(optimizer="adamw8bit", gradient_checkpointing=False), 11.17),
                               (dict(optimizer="adamw", gradient_checkpointing=True), 15.79)]:
        est = estimate(sdkit.TrainConfig(**sd15, **changes))
        assert abs(est.vram_gb - published) / published < 0.10, (changes, est.vram_gb, published)
    lora = estimate(sdkit.TrainConfig(**{**sd15, "method": "lora", "optimizer": "adamw"}))
    assert lora.vram_gb < 8
    assert t4_preset(bitsandbytes=False)["mixed_precision"] == "fp16"


def test_preflight_cli_warns_and_proposes_safer_settings(capsys):
    from sdkit.cli import main
    rc = main(["preflight", "--model", "sd15", "--method", "dreambooth", "--class-prompt", "a photo of a dog",
               "--data", "x", "--resolution", "512", "--budget-gb", "15"])
    text = capsys.readouterr().out
    assert rc == 3 and "WARNING: over the 15 GB" in text and "safer:" in text and "--mixed-precision fp16" in text
    assert main(["preflight", "--model", "sd15", "--method", "lora", "--data", "x", "--resolution", "512",
                 "--mixed-precision", "fp16"]) == 0


def test_training_on_a_gpu_warns_before_loading_when_the_config_will_not_fit():
    """What the loop says first on a GPU (sdkit.train.preflight.gpu_warning): SD 1.5 full DreamBooth in fp32 on a 15 GB
    T4 does not fit, and the warning names settings that do; a LoRA at 512 px fits and says nothing."""
    from sdkit.train.preflight import gpu_warning
    from sdkit import TrainConfig
    db = TrainConfig(model="sd15", method="dreambooth", class_prompt="a photo of a dog", resolution=512)
    text = gpu_warning(db, 15.0)
    assert text and "will probably run out of memory" in text and "Settings that fit" in text
    assert gpu_warning(TrainConfig(model="sd15", method="lora", resolution=512, mixed_precision="fp16"), 15.0) is None
    assert gpu_warning(TrainConfig(model="sdxl"), 15.0) is None   # no SDXL estimate: no false alarm
