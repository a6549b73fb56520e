"""The README's main job, `python -m sdkit quickstart`, in quick mode: what a new user gets on disk."""
from __future__ import annotations

from pathlib import Path

import pytest

from sdkit.models import PRESETS
from sdkit.quickstart import quickstart

MINI = Path(PRESETS["mini"]["path"]())


@pytest.mark.skipif(not (MINI / "model_index.json").is_file(), reason="needs the shipped mini pipeline")
def test_quickstart_trains_the_star_beside_a_regularization_set_and_writes_everything(tmp_path, capsys):
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
    # a second quickstart reuses the set and does not overwrite the first run
    again = quickstart(out=str(tmp_path / "quickstart"), quick=True)
    assert again.path != run.path and len(list(reg.glob("class_*.png"))) == 8


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
