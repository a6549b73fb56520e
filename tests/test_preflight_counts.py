"""Preflight's trainable-parameter count is the method's own: it runs the method's setup on meta-device models and
counts what would train. For every method it equals the parameters that actually train in a real run (what the
checkpoint holds) — a T4 user is never told a 700-byte embedding does not fit."""
import pytest
from safetensors.torch import load_file

import sdkit
from sdkit.train.preflight import estimate, trainable_count

EXTRA = {"textual-inversion": dict(token="<sks>", init_token="square", lr=5e-3),
         "loha": dict(lora_targets="to_q,to_k,to_v,to_out.0,conv1"),
         "lokr": dict(lora_targets="to_q,to_k,to_v,to_out.0,conv1"),
         "locon": dict(), "dora": dict(train_text_encoder=True), "hypernetwork": dict(), "lora": dict()}


@pytest.mark.parametrize("method", list(EXTRA))
def test_preflight_counts_exactly_what_trains(method, base_config, tmp_path):
    cfg = base_config.replace(method=method, steps=1, sample_at_start=False, out=str(tmp_path / method),
                              **EXTRA[method]).validate()
    counted = trainable_count(cfg)
    run = sdkit.train(cfg, progress=None)
    trained = sum(t.numel() for t in load_file(str(run.latest_checkpoint / "trainable.safetensors")).values())
    assert counted["trained"] == trained, (method, counted["trained"], trained)
    assert counted["trained_base"] == 0                       # adapters, vectors, MLPs: no base weight trains
    assert estimate(cfg).params["trained"] == trained


def test_a_full_finetune_is_counted_as_base_weights(base_config):
    counted = trainable_count(base_config.replace(method="full"))
    assert counted["trained"] == counted["trained_base"] == counted["unet"]
