"""Hyper-parameter search: trials are real runs scored on held-out images, the best is the best, a grid is the whole
grid (also across a resume), pruning stops a trial that is behind, bad specs name the key and the fix, and the
command line runs a search end to end."""
import json
import math
import subprocess

import pytest
import yaml

from conftest import PYTHON, ROOT, write_captioned_folder
from sdkit import Run
from sdkit.cli import main
from sdkit.evaluate.metrics import load_folder, validation_loss
from sdkit.search import SearchError, load_result, load_spec, search, summary_table

pytest.importorskip("optuna")


@pytest.fixture(scope="module")
def val4(tmp_path_factory):
    """4 held-out captioned images (drawn at another size than the training folder's)."""
    return write_captioned_folder(tmp_path_factory.mktemp("val") / "held_out", n=4, size=48)


@pytest.fixture
def spec(tiny_model, data8, val4, tmp_path):
    """A fast search: 4-step trials at 32 px, scored every 2 steps, no samples or TensorBoard."""
    return {"base": {"model": str(tiny_model), "data": str(data8), "steps": 4, "resolution": 32,
                     "checkpoint_every": 2, "tensorboard": False, "sample_at_start": False, "sample_steps": 2,
                     "sample_prompts": ["a red square on a white background"]},
            "space": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
            "sampler": "random", "trials": 3, "seed": 0, "val_data": str(val4), "out": str(tmp_path / "search")}


def test_random_search_scores_real_runs_and_picks_the_min(spec, val4):
    result = search(spec, progress=None)
    out = result.path
    summary = json.loads((out / "summary.json").read_text())
    trials = summary["trials"]
    assert [t["number"] for t in trials] == [0, 1, 2] and all(t["state"] == "complete" for t in trials)
    assert len({t["params"]["lr"] for t in trials}) == 3 and all(1e-4 <= t["params"]["lr"] <= 1e-2 for t in trials)
    for t in trials:   # every trial is an ordinary run directory trained with its own lr
        run = Run(out / t["run"])
        assert run.config.lr == t["params"]["lr"] and run.final_step == 4
        assert [p.name for p in run.checkpoints] == ["step_000002", "step_000004"]
        assert [h["step"] for h in t["history"]] == [2, 4] and math.isfinite(t["value"])
    values = [t["value"] for t in trials]
    assert summary["best"]["value"] == min(values) and summary["best"]["number"] == values.index(min(values))
    assert summary["rule"].startswith("lowest val_loss")
    # the score is the deterministic validation loss of that checkpoint's weights, recomputed from disk
    best = summary["best"]
    pipe = Run(out / best["run"]).load_pipeline(f"step_{best['best_step']:06d}")
    images, captions = load_folder(val4)
    again = validation_loss(pipe, images, captions, resolution=32, x0_psnr=False)["val_loss"]
    assert again == pytest.approx(best["value"], rel=1e-5)
    assert (out / "search.png").stat().st_size > 0 and "| 0" in (out / "summary.md").read_text()
    table = summary_table(out)    # a notebook's view, read back from the folder
    assert f"* best: trial {best['number']}" in table and load_result(out).best == result.best


def test_grid_is_the_whole_grid_once_also_across_a_resume(spec):
    spec = {**spec, "sampler": "grid", "trials": None,
            "space": {"lr": {"values": [1e-3, 3e-3]}, "lora_rank": {"values": [2, 4]}}}
    spec["base"] = {**spec["base"], "steps": 2, "checkpoint_every": 0}    # scored once, at the end
    first = search(spec, trials=2, progress=None)      # stop half-way ...
    assert len(first.trials) == 2
    with pytest.raises(SearchError, match="not empty.*resume"):
        search(spec, progress=None)                      # ... a new search may not overwrite it
    result = search(spec, resume=True, progress=None)    # ... and continue: only the missing points run
    points = [(t["params"]["lr"], t["params"]["lora_rank"]) for t in result.trials]
    assert sorted(points) == [(1e-3, 2), (1e-3, 4), (3e-3, 2), (3e-3, 4)]
    for t in result.trials:
        cfg = Run(result.path / t["run"]).config
        assert (cfg.lr, cfg.lora_rank) == (t["params"]["lr"], t["params"]["lora_rank"])


def test_pruning_stops_a_trial_that_is_behind(spec):
    """Trial 0 (lr 1e-3) sets the median; trial 1 (lr 0.5) is worse at its first checkpoint and is stopped there."""
    spec = {**spec, "sampler": "grid", "trials": None, "space": {"lr": {"values": [1e-3, 0.5]}},
            "pruning": {"n_startup_trials": 1, "n_warmup_steps": 0}}
    spec["base"] = {**spec["base"], "steps": 6}
    result = search(spec, progress=None)
    good, bad = result.trials
    assert good["state"] == "complete" and [h["step"] for h in good["history"]] == [2, 4, 6]
    assert bad["state"] == "pruned" and bad["value"] > good["history"][0]["val_loss"]
    run = Run(result.path / bad["run"])
    assert run.final_step == 2 and [p.name for p in run.checkpoints] == ["step_000002"]   # stopped, not run out
    assert result.best["number"] == good["number"]                                          # pruned: not eligible


@pytest.mark.parametrize("change, message", [
    ({"space": {"lrr": {"type": "float", "low": 1e-5, "high": 1e-3}}}, "space.lrr: 'lrr' is not a TrainConfig field. "
                                                                       "Did you mean lr"),
    ({"space": {"lr": {"type": "float", "low": 1e-3, "high": 1e-5}}}, "space.lr: low .* is above high"),
    ({"space": {"lr": {"type": "float", "low": 0, "high": 1e-3, "log": True}}}, "log: true needs low > 0"),
    ({"space": {"method": {"type": "categorical", "choices": []}}}, "space.method.choices: .*non-empty list"),
    ({"space": {"method": {"type": "categorical", "choices": ["lora", "lorra"]}}}, "space.method: the value 'lorra'"),
    ({"space": {"lr": {"type": "float", "low": 1e-4, "high": 2.0}}}, "space.lr: the value 2.0 makes an invalid run"),
    ({"sampler": "grid"}, "space.lr: a grid search needs the points listed. Fix: lr: {values"),
    ({"sampler": "bayes"}, "sampler: got 'bayes'"),
    ({"trails": 3}, "unknown key 'trails'. Did you mean trials"),
    ({"trials": None}, "trials: missing"),
    ({"val_data": None}, "val_data: objective val_loss needs held-out images.*objective: train_loss"),
    ({"pruning": True, "base_checkpoint_every": 0}, "pruning: base.checkpoint_every is 0"),
    ({"base_out": "x"}, "base.out: set by the search"),
    ({"base_lr": 1e-3}, "space.lr: also set in base"),
])
def test_bad_spec_names_the_key_and_the_fix(spec, change, message):
    spec = {**spec, **{k: v for k, v in change.items() if not k.startswith("base_")}}
    spec["base"] = {**spec["base"], **{k[5:]: v for k, v in change.items() if k.startswith("base_")}}
    with pytest.raises(SearchError, match=message):
        load_spec(spec).validate()


def test_yaml_numbers_without_a_dot_are_numbers(tmp_path, spec):
    path = tmp_path / "s.yaml"
    text = yaml.safe_dump(spec).replace("0.0001", "1e-4")     # YAML 1.1 reads 1e-4 as text
    path.write_text(text)
    assert "1e-4" in text and load_spec(path).space["lr"].low == 1e-4


def test_command_line_search_end_to_end(spec, tmp_path, capsys):
    spec = {**spec, "trials": 2, "objective": "train_loss", "val_data": None}   # the weaker, image-free objective
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    p = subprocess.run([PYTHON, "-m", "sdkit", "search", str(path)], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    summary = json.loads((tmp_path / "search" / "summary.json").read_text())
    assert len(summary["trials"]) == 2 and "* best: trial" in p.stdout
    for t in summary["trials"]:   # train_loss = mean of the last 20% of the logged losses
        losses = [m["loss"] for m in Run(tmp_path / "search" / t["run"]).metrics]
        assert t["value"] == pytest.approx(losses[-1])   # 4 logged steps: the last 20% is the last one
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**spec, "space": {"lr": {"type": "float", "low": 1, "high": 0.1}}}))
    assert main(["search", str(bad)]) == 2
    assert capsys.readouterr().err.startswith("error: space.lr: low (1.0) is above high (0.1). Fix: swap them.")
