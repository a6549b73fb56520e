"""Config: YAML round trip, errors that name the field, unknown keys refused, CLI flags generated from fields."""
import dataclasses

import pytest

from sdkit import ConfigError, TrainConfig
from sdkit.cli import build_parser, config_from_args


def test_yaml_round_trip_keeps_every_field(tmp_path):
    cfg = TrainConfig(model="tiny", data="some/folder", steps=123, lr=3e-4, sample_prompts=["a", "b c"],
                      sample_seeds=[1, 2], snr_gamma=5.0, resolution=64, method="full")
    path = tmp_path / "c.yaml"
    cfg.to_yaml(path, extra={"num_processes": 2, "global_batch_size": 8})
    back = TrainConfig.from_yaml(path)
    assert back == cfg
    assert "num_processes: 2" in path.read_text()


def test_unknown_yaml_key_is_an_error_with_suggestion(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: x\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="unknown key 'learning_rate'"):
        TrainConfig.from_yaml(path)
    path.write_text("data: x\nstep: 10\n")
    with pytest.raises(ConfigError, match="Did you mean steps"):
        TrainConfig.from_yaml(path)


@pytest.mark.parametrize("changes, field", [
    ({"method": "lorra"}, "method"),
    ({"lr": -1.0}, "lr"),
    ({"steps": "ten"}, "steps"),
    ({"resolution": 100}, "resolution"),
    ({"data": ""}, "data"),
    ({"mixed_precision": "fp8"}, "mixed_precision"),
    ({"lr_warmup_steps": 50, "steps": 10}, "lr_warmup_steps"),
])
def test_validation_names_the_field_and_the_fix(changes, field):
    cfg = dataclasses.replace(TrainConfig(data="d"), **changes)
    with pytest.raises(ConfigError) as e:
        cfg.validate()
    assert str(e.value).startswith(field + ":")
    assert "Fix" in str(e.value) or "expected" in str(e.value)


def test_every_field_is_a_cli_flag_with_its_help():
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    flags = {a.dest: a for a in train._actions}
    for f in dataclasses.fields(TrainConfig):
        assert f.name in flags, f"no CLI flag for {f.name}"
        assert f.metadata["help"] in flags[f.name].help.replace("%%", "%")   # argparse's escape for a literal %


def test_flags_override_config_file(tmp_path):
    path = tmp_path / "c.yaml"
    TrainConfig(data="d", steps=50, lr=0.5).to_yaml(path)
    args = build_parser().parse_args(["train", "--config", str(path), "--steps", "7", "--no-center-crop",
                                      "--sample-prompts", "x y", "z", "--snr-gamma", "none"])
    cfg = config_from_args(args)
    assert (cfg.steps, cfg.lr, cfg.center_crop, cfg.sample_prompts, cfg.snr_gamma) == (7, 0.5, False, ["x y", "z"],
                                                                                      None)


def test_config_reference_in_docs_is_current():
    from conftest import ROOT
    from sdkit.docs import config_reference
    assert (ROOT / "docs" / "CONFIG.md").read_text() == config_reference(), \
        "docs/CONFIG.md is stale: run `python -m sdkit docs`"
