"""The README's main job, `python -m sdkit quickstart`, in quick mode: what a new user gets on disk."""
from __future__ import annotations

from pathlib import Path

import pytest

from sdkit.models import PRESETS
from sdkit.quickstart import quickstart

MINI = Path(PRESETS["mini"]["path"]())


@pytest.mark.skipif(not (MINI / "model_index.json").is_file(), reason="needs the shipped mini pipeline")
def test_quickstart_learns_the_word_then_trains_the_star_beside_a_regularization_set(tmp_path, capsys):
    run = quickstart(out=str(tmp_path / "quickstart"), quick=True)
    printed = capsys.readouterr().out
    # everything the README promises is on disk and printed
    for line in ("loss plot:", "final grid:", "checkpoints:"):
        assert line in printed
    assert (run.path / "loss.png").is_file() and Path(run.grid()).is_file() and run.checkpoints
    # the regularization set: base-model pictures of digit and shape prompts, each with its prompt as caption
    reg = tmp_path / "quickstart-regularization"
    pngs = sorted(reg.glob("class_*.png"))
    assert len(pngs) == 8
    captions = [p.with_suffix(".txt").read_text().strip() for p in pngs]
    assert all(c.endswith("background") and "sks" not in c for c in captions), captions
    # ... trained as prior preservation, and nothing else drawn into it (no empty-prompt class images)
    assert run.config.prior_preservation is True and Path(run.config.class_data) == reg
    assert len(list(reg.iterdir())) == 16
    # stage 1 gave `sks` a vector of its own: the LoRA trains on a copy of the mini pipeline where only that
    # embedding row differs (so prompts without `sks` encode exactly as before)
    base = tmp_path / "quickstart-base"
    assert Path(run.config.model) == base and (base / "model_index.json").is_file()
    from sdkit.models import load_pipeline
    mini, learned = load_pipeline("mini"), load_pipeline(str(base))
    sks = mini.tokenizer("sks", add_special_tokens=False).input_ids[0]
    before, after = (p.text_encoder.get_input_embeddings().weight.detach() for p in (mini, learned))
    changed = (before != after).any(dim=1).nonzero().flatten().tolist()
    assert changed == [sks]
    # a second quickstart reuses the word and the set and does not overwrite the first run
    again = quickstart(out=str(tmp_path / "quickstart"), quick=True)
    assert again.path != run.path and len(list(reg.glob("class_*.png"))) == 8
    assert "reusing" in capsys.readouterr().out and Path(again.config.model) == base


def test_regularization_prompts_cover_every_color_pair_and_glyph_kind_without_held_out_combinations():
    from collections import Counter

    from sdkit.mini.world import DIGIT_WORDS, SHAPES, canonical_prompts, color_pairs
    from sdkit.quickstart import regularization_prompts
    known = {p for p, _ in canonical_prompts(shapes=True)}
    prompts = regularization_prompts(112, seed=0)
    assert len(prompts) == 112 and len(set(prompts)) == 112 and set(prompts) <= known   # no held-out combination
    pairs = Counter((p.split()[1], p.split()[-2]) for p in prompts)
    assert set(pairs) == set(color_pairs()) and set(pairs.values()) == {2}               # each color pair twice
    kinds = Counter(p.split()[2] for p in prompts)
    assert set(kinds) == set(DIGIT_WORDS) | set(SHAPES) and min(kinds.values()) >= 4     # every digit and shape
    assert regularization_prompts(112, seed=0) == prompts != regularization_prompts(112, seed=1)
    assert regularization_prompts(8, seed=0) == prompts[:8]                              # a prefix: reusable sets


def test_word_pipeline_refuses_a_folder_it_did_not_make(tmp_path):
    from sdkit.quickstart import write_word_pipeline
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not made by write_word_pipeline"):
        write_word_pipeline("mini", tmp_path / "no-data", folder, steps=1)
    assert (folder / "notes.txt").read_text() == "keep me"
