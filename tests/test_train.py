"""The training loop: run directory, resume after kill -9, accumulation, frozen base weights, NaN, OOM, interrupt."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

import sdkit
from sdkit.train import Callback, TrainingError
from sdkit.train.loop import Trainer

from conftest import PYTHON, ROOT, kill_after_checkpoint, max_diff, trained


def cli(*args, **kw):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([PYTHON, "-m", "sdkit", *args], cwd=ROOT, env=env, capture_output=True, text=True, **kw)


def test_run_directory_layout(base_config):
    run = sdkit.train(base_config.replace(checkpoint_every=2, sample_every=2, tensorboard=True), progress=None)
    p = run.path
    assert (p / "config.yaml").is_file() and (p / "metrics.jsonl").is_file()
    assert any((p / "tb").iterdir())
    assert sorted(run.samples) == [0, 2, 4]                      # step-0 baseline first, then every 2
    assert all(len(v) == 2 for v in run.samples.values())        # 2 prompts (from captions) x 1 seed
    assert [c.name for c in run.checkpoints] == ["step_000002", "step_000004"]
    assert (p / "checkpoints" / "latest").read_text().strip() == "step_000004"
    assert [m["step"] for m in run.metrics] == [1, 2, 3, 4]
    assert run.recorded["num_processes"] == 1 and run.recorded["global_batch_size"] == 1
    # no pickle anywhere in a checkpoint: safetensors and json only
    assert {f.suffix for f in run.checkpoints[-1].iterdir()} == {".safetensors", ".json"}
    # the config a run saves reproduces it
    assert sdkit.TrainConfig.from_yaml(p / "config.yaml") == base_config.replace(
        checkpoint_every=2, sample_every=2, tensorboard=True)


def test_lora_leaves_every_base_weight_bit_identical(base_config):
    before = {k: v.clone() for k, v in sdkit.load_pipeline(base_config.model).unet.state_dict().items()}
    run = sdkit.train(base_config.replace(steps=3, lr=1e-2), progress=None)
    pipe = run.load_pipeline()
    after = pipe.unet.state_dict()
    lora = {k: v for k, v in after.items() if "lora" in k}
    assert lora, "LoRA layers should be present"
    base_keys = [k for k in after if "lora" not in k]
    for k in base_keys:
        orig = k.replace(".base_layer", "")
        assert torch.equal(after[k], before[orig]), k
    # ... and the adapters did move: lora_B starts at zero and is trained
    assert max(v.abs().max().item() for k, v in lora.items() if "lora_B" in k) > 0


def test_grad_accumulation_4x1_equals_batch_of_4(base_config):
    a = sdkit.train(base_config.replace(steps=2, batch_size=4, grad_accum=1, out=base_config.out + "_a"),
                    progress=None)
    b = sdkit.train(base_config.replace(steps=2, batch_size=1, grad_accum=4, out=base_config.out + "_b"),
                    progress=None)
    assert max_diff(trained(a.path, 2), trained(b.path, 2)) < 1e-5
    # and it is not trivially equal: a different seed gives different weights
    c = sdkit.train(base_config.replace(steps=2, batch_size=4, seed=1, out=base_config.out + "_c"), progress=None)
    assert max_diff(trained(a.path, 2), trained(c.path, 2)) > 1e-4


def test_data_loader_workers_give_the_same_run(base_config):
    """num_workers decodes batches in worker processes; every sample is seeded by its index, so the weights are
    those of the in-process run, also when resuming in the middle (the workers start at the resumed step)."""
    a = sdkit.train(base_config.replace(steps=3, batch_size=2, grad_accum=2, out=base_config.out + "_w0"),
                    progress=None)
    b = sdkit.train(base_config.replace(steps=3, batch_size=2, grad_accum=2, num_workers=2,
                                        out=base_config.out + "_w2"), progress=None)
    assert max_diff(trained(a.path, 3), trained(b.path, 3)) < 1e-6
    c = base_config.replace(steps=1, batch_size=2, grad_accum=2, num_workers=2, checkpoint_every=1,
                            out=base_config.out + "_w2r")
    sdkit.train(c, progress=None)
    r = sdkit.train(c.replace(steps=3, resume="latest"), progress=None)
    assert max_diff(trained(a.path, 3), trained(r.path, 3)) < 1e-5


def test_fused_adamw_and_channels_last_train_the_same_weights(base_config):
    """The speed options change kernels and memory layout, not the maths."""
    plain = sdkit.train(base_config.replace(steps=3, out=base_config.out + "_plain"), progress=None)
    fused = sdkit.train(base_config.replace(steps=3, optimizer="adamw_fused", out=base_config.out + "_fused"),
                        progress=None)
    nhwc = sdkit.train(base_config.replace(steps=3, channels_last=True, out=base_config.out + "_nhwc"),
                       progress=None)
    assert max_diff(trained(plain.path, 3), trained(fused.path, 3)) < 1e-5
    assert max_diff(trained(plain.path, 3), trained(nhwc.path, 3)) < 1e-4


def test_full_method_trains_the_unet_and_resumes_in_process(base_config):
    full = base_config.replace(method="full", steps=4, checkpoint_every=2, lr=1e-4, ema=True)
    straight = sdkit.train(full.replace(out=base_config.out + "_straight"), progress=None)
    # stop after step 2 through the stop event (as the dashboard's Stop button does), then resume
    stop = threading.Event()

    class StopAt2(Callback):
        def on_step_end(self, trainer, logs):
            if trainer.step == 2:
                stop.set()
    part = sdkit.train(full, callbacks=[StopAt2()], stop_event=stop, progress=None)
    assert part.stopped_early and part.final_step == 2
    assert sdkit.Run(part.path).stopped_early      # also when opened from disk later (sdkit show, notebooks)
    resumed = sdkit.train(full.replace(resume="latest"), progress=None)
    assert resumed.final_step == 4 and not sdkit.Run(resumed.path).stopped_early
    assert max_diff(trained(straight.path, 4), trained(resumed.path, 4)) <= 1e-5
    assert any(k.startswith("unet.conv_in") for k in trained(resumed.path, 4))


def test_kill_9_then_resume_latest_equals_uninterrupted(tiny_model, data8, tmp_path):
    common = ["train", "--model", str(tiny_model), "--data", str(data8), "--steps", "8", "--checkpoint-every", "4",
              "--resolution", "32", "--sample-steps", "2", "--no-tensorboard", "--lr", "1e-3"]
    straight = tmp_path / "straight"
    r = cli(*common, "--out", str(straight))
    assert r.returncode == 0, r.stderr
    killed = tmp_path / "killed"
    kill_after_checkpoint(common, killed, 4)
    assert not (killed / "checkpoints" / "step_000008").exists(), "the kill came too late to test anything"
    r = cli(*common, "--out", str(killed), "--resume", "latest")
    assert r.returncode == 0, r.stderr
    assert max_diff(trained(straight, 8), trained(killed, 8)) <= 1e-5
    # the resumed run's metrics cover every step once
    assert [m["step"] for m in sdkit.Run(killed).metrics] == list(range(1, 9))


def test_sigint_finishes_the_step_and_writes_a_checkpoint(tiny_model, data8, tmp_path):
    out = tmp_path / "interrupted"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([PYTHON, "-m", "sdkit", "train", "--model", str(tiny_model), "--data", str(data8),
                             "--steps", "400", "--resolution", "32", "--no-tensorboard", "--sample-steps", "2",
                             "--out", str(out)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.time() + 300
    while not (out / "metrics.jsonl").is_file() or '"loss"' not in (out / "metrics.jsonl").read_text():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, stdout
    run = sdkit.Run(out)
    assert 0 < run.final_step < 400
    assert run.latest_checkpoint.name == f"step_{run.final_step:06d}"
    assert "--resume latest" in stdout


class _Poison(Callback):
    """Turns one UNet weight into NaN after `step`, as a diverging run would."""
    def __init__(self, step):
        self.at = step

    def on_step_end(self, trainer, logs):
        if trainer.step == self.at:
            with torch.no_grad():
                p = next(p for p in trainer.accelerator.unwrap_model(trainer.unet).parameters())
                p.fill_(float("nan"))


def test_nan_loss_stops_with_diagnosis_and_keeps_last_good_checkpoint(base_config):
    cfg = base_config.replace(steps=6, checkpoint_every=2)
    with pytest.raises(TrainingError, match=r"loss became nan at step 3.*step_000002.*lr="):
        sdkit.train(cfg, callbacks=[_Poison(2)], progress=None)
    run = sdkit.Run(cfg.out)
    assert [c.name for c in run.checkpoints] == ["step_000002"]
    assert run.load_pipeline(run.latest_checkpoint) is not None   # still loadable


def test_out_of_memory_is_answered_with_settings_to_change(base_config):
    class OOM(Callback):
        def on_step_end(self, trainer, logs):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    with pytest.raises(TrainingError) as e:
        sdkit.train(base_config.replace(batch_size=2), callbacks=[OOM()], progress=None)
    msg = str(e.value)
    for tip in ("batch_size=1 with grad_accum=2", "gradient_checkpointing=True", "adamw8bit", "mixed_precision"):
        assert tip in msg


def test_bf16_on_cpu_trains(base_config):
    run = sdkit.train(base_config.replace(mixed_precision="bf16", steps=2), progress=None)
    assert run.final_step == 2 and all(torch.isfinite(torch.tensor(m["loss"])) for m in run.metrics)
    w = trained(run.path, 2)
    assert all(v.dtype == torch.float32 for v in w.values())     # master copies of trainable weights stay fp32


def test_missing_paths_are_named(base_config, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere/model"):
        sdkit.train(base_config.replace(model=str(tmp_path / "nowhere" / "model")), progress=None)
    with pytest.raises(ValueError, match="no_such_data"):
        sdkit.train(base_config.replace(data=str(tmp_path / "no_such_data")), progress=None)


def test_refuses_to_overwrite_a_run_without_resume(base_config):
    sdkit.train(base_config.replace(steps=1), progress=None)
    with pytest.raises(sdkit.ConfigError, match="--resume latest"):
        sdkit.train(base_config.replace(steps=1), progress=None)


def test_two_cpu_processes_equal_one_process_with_the_global_batch(tiny_model, data8, tmp_path):
    """accelerate launch --multi_gpu --num_processes 2 on a machine without GPUs: DDP over gloo. Two processes with
    batch 1 see the same samples as one process with batch 2, so the weights must agree."""
    common = ["--model", str(tiny_model), "--data", str(data8), "--steps", "3", "--checkpoint-every", "3",
              "--resolution", "32", "--sample-steps", "2", "--no-tensorboard", "--lr", "1e-3"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    two = tmp_path / "two"
    r = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                        "-m", "sdkit", "train", *common, "--out", str(two)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = sdkit.Run(two)
    assert run.recorded["num_processes"] == 2 and run.recorded["global_batch_size"] == 2
    assert run.latest_checkpoint.name == "step_000003"
    one = tmp_path / "one"
    r = cli("train", *common, "--batch-size", "2", "--out", str(one))
    assert r.returncode == 0, r.stderr
    assert max_diff(trained(two, 3), trained(one, 3)) < 1e-5


def test_save_every_k_from_step_y_and_keep_last_n(base_config):
    run = sdkit.train(base_config.replace(steps=8, checkpoint_every=2, checkpoint_start=4, keep_last=2,
                                          sample_at_start=False), progress=None)
    assert [c.name for c in run.checkpoints] == ["step_000006", "step_000008"]
    assert not run.samples.get(0)                                   # sample_at_start=False: no step-0 grid


def test_v_prediction_min_snr_noise_offset_and_text_encoder_lora(base_config):
    run = sdkit.train(base_config.replace(steps=2, prediction_type="v_prediction", snr_gamma=5.0, noise_offset=0.05,
                                          train_text_encoder=True, text_encoder_lr=1e-4, caption_dropout=0.5),
                      progress=None)
    assert all(m["loss"] == m["loss"] for m in run.metrics)         # finite, not NaN
    keys = trained(run.path, 2)
    assert any(k.startswith("text_encoder.") for k in keys) and any(k.startswith("unet.") for k in keys)


def test_cached_latents_give_the_same_training(base_config):
    """The cache stores each image's VAE posterior (mean, std); the per-sample noise is drawn as before, so a
    cached run is the same computation, only faster."""
    plain = sdkit.train(base_config.replace(steps=3, batch_size=4, out=base_config.out + "_plain"), progress=None)
    cached = sdkit.train(base_config.replace(steps=3, batch_size=4, cache_latents=True,
                                             out=base_config.out + "_cached"), progress=None)
    assert max_diff(trained(plain.path, 3), trained(cached.path, 3)) < 1e-5
    with pytest.raises(sdkit.ConfigError, match="cache_latents"):
        base_config.replace(cache_latents=True, random_flip=True).validate()


def test_make_tiny_cli_writes_a_pipeline_that_from_pretrained_loads(tmp_path):
    r = cli("make-tiny", str(tmp_path / "tiny"))
    assert r.returncode == 0, r.stderr
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(str(tmp_path / "tiny"))
    assert type(pipe.unet).__name__ == "UNet2DConditionModel" and type(pipe.vae).__name__ == "AutoencoderKL"
    assert type(pipe.text_encoder).__name__ == "CLIPTextModel"
    # the real CLIP tokenizer: 49,408 tokens, 77-token context, SD's ids
    assert len(pipe.tokenizer) == 49408 and pipe.tokenizer.model_max_length == 77
    assert pipe.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    image = pipe("a red square", num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 32, 32, 3)


def test_cli_errors_name_the_problem(tmp_path, data8):
    r = cli("train", "--model", str(tmp_path / "missing-model"), "--data", str(data8), "--steps", "1")
    assert r.returncode == 2 and "missing-model" in r.stderr and "Traceback" not in r.stderr
    r = cli("train", "--model", "tiny", "--data", str(data8), "--lr", "-3")
    assert r.returncode == 2 and r.stderr.startswith("error: lr:")
    (tmp_path / "bad.yaml").write_text("data: x\nlearnig_rate: 1\n")
    r = cli("train", "--config", str(tmp_path / "bad.yaml"))
    assert r.returncode == 2 and "learnig_rate" in r.stderr
