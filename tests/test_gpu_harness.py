"""bench/gpu_harness.py: the SD 1.5 configs it builds, the FLOP count, its case lists, and a CPU smoke run of
both loops (sdkit's and the diffusers-example reproduction) on the tiny pipeline. No timing assertions."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import PYTHON, ROOT

HARNESS = ROOT / "bench" / "gpu_harness.py"


@pytest.fixture(scope="module")
def harness():
    spec = importlib.util.spec_from_file_location("gpu_harness", HARNESS)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_harness"] = mod   # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_sd15_configs_have_sd15_parameter_counts(harness):
    unet, te, vae = harness.build_sd15_models("meta")   # shapes only: nothing allocated
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(unet) == 859_520_964 == harness.SD15_PARAMS["unet"]
    assert count(te) == 123_060_480 == harness.SD15_PARAMS["text_encoder"]
    assert count(vae) == 83_653_863 == harness.SD15_PARAMS["vae"]
    # the values the issue names
    c = harness.SD15_UNET_CONFIG
    assert c["block_out_channels"] == [320, 640, 1280, 1280] and c["layers_per_block"] == 2
    assert c["cross_attention_dim"] == 768 and c["attention_head_dim"] == 8 and c["sample_size"] == 64
    assert harness.SD15_VAE_CONFIG["block_out_channels"] == [128, 256, 512, 512]
    t = harness.SD15_TEXT_ENCODER_CONFIG
    assert (t["hidden_size"], t["num_hidden_layers"], t["num_attention_heads"], t["intermediate_size"],
            t["max_position_embeddings"], t["vocab_size"]) == (768, 12, 12, 3072, 77, 49408)
    s = harness.SD15_SCHEDULER_CONFIG
    assert (s["beta_start"], s["beta_end"], s["beta_schedule"]) == (0.00085, 0.012, "scaled_linear")


def test_sd15_unet_forward_is_about_0_8_tflop(harness):
    check = harness.sd15_flop_check()
    assert check["unet_params"] == 859_520_964
    assert 0.76 < check["unet_forward_64x64_tflop"] < 0.84 and check["ok"]


def test_suites_list_and_skip_reasons(harness):
    for suite in ("quick", "h100", "t4"):
        cases = harness._suite(suite, "sd15")
        assert cases and len({c.name for c in cases}) == len(cases)
    t4 = {c.name: c for c in harness._suite("t4", "sd15")}
    assert t4["t4-lora"].precision == "fp16" and t4["t4-lora"].optimizer == "adamw8bit"
    assert t4["t4-lora"].grad_ckpt and t4["t4-lora"].cache_latents and t4["t4-lora"].batch == 1
    cuda = torch.cuda.is_available()
    if not cuda:
        assert "CUDA" in harness.skip_reason(t4["t4-lora"], {"kind": "cpu"})
    specs = harness.parse_case_spec("method=lora,full precision=bf16 batch=1,8 compile=both")
    assert len(specs) == 8 and {c.compile for c in specs} == {False, True}
    # cases the example script cannot tell apart share one example measurement
    a, b = harness.Case("lora", "bf16", 16), harness.Case("lora", "bf16", 16, cache_latents=True, compile=True)
    assert a.example_key() == b.example_key() and a.name != b.name
    assert "--train_batch_size=16 --mixed_precision=bf16" in a.example_flags()
    assert harness.EXAMPLE_DEFAULTS["lora"]["train_batch_size"] == 16
    assert harness.EXAMPLE_DEFAULTS["full"]["train_batch_size"] == 4


@pytest.mark.slow
def test_cpu_smoke_run_writes_both_loops(tmp_path):
    """The documented smoke command: --scale tiny --suite quick --steps 3 (about 30-60 s on 2 shared cores)."""
    out = tmp_path / "x.json"
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
               SDKIT_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([PYTHON, str(HARNESS), "--scale", "tiny", "--suite", "quick", "--steps", "3",
                           "--json", str(out), "--markdown"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    for key in ("harness", "command", "date", "device", "versions", "scale", "resolution", "settings", "flops",
                "example_defaults", "cases", "calibration", "goals", "sdkit_lacks", "mfu_definition"):
        assert key in r, key
    assert r["scale"] == "tiny" and r["settings"]["steps"] == 3 and r["partial"] is False
    assert r["versions"]["torch"] and r["versions"]["diffusers"] and r["device"]["name"]
    assert r["flops"]["sd15_check"]["ok"]
    m = r["flops"]["model"]
    assert m["unet_forward"] > 0 and m["vae_encode"] > 0 and m["text_encoder_forward"] > 0
    assert m["unet_train"]["lora"] > m["unet_forward"] and m["unet_train"]["full"] > m["unet_train"]["lora"]
    assert len(r["cases"]) == 3
    for c in r["cases"]:
        for loop in ("sdkit", "example"):
            s = c[loop]
            assert s["status"] == "ok", (c["name"], loop, s)
            assert s["images_per_s"] > 0 and s["seconds_per_step"]["min"] <= s["seconds_per_step"]["median"] \
                <= s["seconds_per_step"]["max"]
            assert s["unet_train_tflop_per_step"] > 0 and s["achieved_tflops"] > 0
            assert s.get("peak_rss_gb", s.get("peak_allocated_gb", 0)) > 0
        assert c["ratio_sdkit_over_example"] > 0
        assert c["preflight"]["relative_error"] is not None
        assert c["example"]["flags"].startswith("examples/")
    fused = next(c for c in r["cases"] if c["settings"]["optimizer"] == "adamw_fused")
    assert fused["sdkit"]["hooks"] == [] and r["sdkit_lacks"] == {}  # sdkit's own optimizer="adamw_fused"
    assert fused["example"]["shared_with"] == "lora-fp32-b2"
    assert r["calibration"]["n"] == 3
    assert "| case |" in proc.stdout and "sdkit / example" in proc.stdout
