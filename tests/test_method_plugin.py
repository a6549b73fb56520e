"""A method is one file: a throwaway method written outside sdkit (tests/plugins/bitfit.py) and registered with one
line trains on the loop, exports in its own format and as a pipeline, is counted by preflight, is accepted by the CLI
flag and offered by the notebook form — with no change anywhere in sdkit."""
import pytest
from safetensors.torch import load_file

import sdkit
from sdkit.cli import main
from sdkit.export import export
from sdkit.registry import METHODS, method_names, register_method
from sdkit.train.preflight import trainable_count


@pytest.fixture
def bitfit():
    register_method("bitfit", "plugins.bitfit:BitFitMethod")
    yield "bitfit"
    METHODS.pop("bitfit", None)


def test_a_method_from_one_file_runs_through_everything(bitfit, base_config, tmp_path):
    assert "bitfit" in method_names()
    cfg = base_config.replace(method="bitfit", steps=2, lr=1e-2, sample_at_start=False).validate()

    # preflight counts what the method's own setup makes trainable (on meta-device models)
    counted = trainable_count(cfg)
    # the loop trains it: the checkpoint holds exactly the biases, and they moved
    run = sdkit.train(cfg, progress=None)
    state = load_file(str(run.latest_checkpoint / "trainable.safetensors"))
    assert state and all(k.startswith("unet.") and k.endswith(".bias") for k in state)
    assert counted["trained"] == sum(t.numel() for t in state.values()) and counted["trained_base"] > 0
    base = sdkit.load_pipeline(cfg.model).unet.state_dict()
    assert any((state[k].float() - base[k[len("unet."):]].float()).abs().max() > 0 for k in state)

    # export: its own default format, and a pipeline through the base class's merge
    path = export(run)
    assert path.name.endswith("-biases.safetensors") and set(load_file(str(path))) == set(state)
    folder = export(run, "pipeline", tmp_path / "pipe")
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    k = next(iter(state))[len("unet."):]
    assert (pipe.unet.state_dict()[k].float() - state["unet." + k].float()).abs().max() < 1e-6

    # the CLI flag accepts it, and a run trains from the command line
    out = tmp_path / "cli"
    rc = main(["train", "--model", cfg.model, "--data", cfg.data, "--method", "bitfit", "--steps", "1",
               "--resolution", str(cfg.resolution or 32), "--out", str(out), "--no-tensorboard",
               "--no-sample-at-start"])
    assert rc == 0 and (out / "checkpoints").is_dir()

    # the form offers it and builds its config
    from sdkit.ui.form import ConfigForm
    form = ConfigForm(cfg)
    values = [o[1] if isinstance(o, tuple) else o for o in form["method"].options]  # (label, value) pairs
    assert "bitfit" in values
    form["method"].value = "bitfit"
    assert form.valid and form.config.method == "bitfit"


def test_an_unregistered_method_is_a_clear_config_error(base_config):
    with pytest.raises(sdkit.ConfigError, match="method"):
        base_config.replace(method="bitfit").validate()
