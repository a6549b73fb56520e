"""The mini world: its data rules, and the shipped judge, mini CLIP and mini VAE doing their jobs."""
import re

import numpy as np
import pytest
import torch

from sdkit.mini import world

torch.set_num_threads(1)
COLOR_RE = "|".join(world.COLORS)
CANONICAL = re.compile(rf"^a ({COLOR_RE}) ([a-z]+) on a ({COLOR_RE}) background$")


# ---------------------------------------------------------------------------------------------
# world
# ---------------------------------------------------------------------------------------------
def test_dataset_is_deterministic_from_its_seed():
    a = world.build_dataset(seed=3, n=60)
    b = world.build_dataset(seed=3, n=60)
    c = world.build_dataset(seed=4, n=60)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]
    assert not np.array_equal(a[0], c[0])
    assert a[0].shape == (60, 32, 32, 3) and a[0].dtype == np.uint8


def test_held_out_combos_never_appear_in_training_yet_every_part_is_seen():
    held = world.held_out_combos()
    assert len(held) == 56                                      # 10 % of 10 x 56
    _, _, labels = world.build_dataset(seed=0, n=3000, split="train")
    seen = {world.label_key(lab) for lab in labels if "digit" in lab}
    assert not seen & held
    train = world.train_combos()
    for d in range(10):                                         # every digit in every fg and every bg color
        assert {f for dd, f, _ in train if dd == d} == set(world.COLORS)
        assert {b for dd, _, b in train if dd == d} == set(world.COLORS)
    _, _, hl = world.build_dataset(seed=0, n=200, split="heldout")
    assert all(world.label_key(lab) in held for lab in hl)


def test_val_and_heldout_splits_use_digits_the_world_never_trains_on():
    tx, _ = world.mnist_split("train")
    hx, _ = world.mnist_split("heldout")
    assert len(tx) == 4000 and len(hx) == 1000
    train_set = {g.tobytes() for g in tx}
    assert not any(g.tobytes() in train_set for g in hx)


def test_captions_follow_the_canonical_phrasing_and_match_the_label():
    _, caps, labels = world.build_dataset(seed=1, n=300, caption_style=0)
    for cap, lab in zip(caps, labels):
        m = CANONICAL.match(cap)
        assert m, cap
        word = world.DIGIT_WORDS[lab["digit"]] if "digit" in lab else lab["shape"]
        assert m.groups() == (lab["fg"], word, lab["bg"])
    assert world.caption(7, "red", "blue") == "a red seven on a blue background"
    assert world.caption("circle", "red", "blue") == "a red circle on a blue background"
    assert world.caption(7, "red", "blue", 1) == "the digit 7 in red on blue"
    _, mixed, _ = world.build_dataset(seed=1, n=400)
    share = np.mean([bool(CANONICAL.match(c)) for c in mixed])
    assert 0.5 < share < 0.75                                   # mostly canonical, some other phrasings
    with pytest.raises(ValueError, match="both 'red'"):
        world.caption(1, "red", "red")


def test_free_captions_put_the_colors_at_many_token_positions_and_made_up_words_teach_no_color():
    """The fix for the quickstart's lost background (issue 17): captions vary in length, so the background color word
    is seen far past the 7th token, as in `a red sks glyph on a white background` (the 8th)."""
    from sdkit.mini.clip import load_tokenizer

    tok = load_tokenizer()
    _, caps, labels = world.build_dataset(seed=2, n=600)
    bg_positions, lengths = set(), []
    for cap, lab in zip(caps, labels):
        ids = tok(cap).input_ids
        lengths.append(len(ids))
        bg_id = tok(lab["bg"], add_special_tokens=False).input_ids[0]
        assert bg_id in ids, cap                                # every caption names its background color
        bg_positions.add(len(ids) - 1 - ids[::-1].index(bg_id))
        words = re.findall(r"[a-z]+", cap)
        assert lab["fg"] in words and lab["bg"] in words
        others = set(words) & set(world.COLORS) - {lab["fg"], lab["bg"]}
        assert not others, cap                                  # no color word but the picture's own two
    assert max(lengths) >= 18 and min(lengths) <= 8
    assert len({p for p in bg_positions if p >= 8}) >= 6       # the background word at many positions past the 7th
    free = [world.caption(7, "red", "blue", 3, rng=np.random.default_rng(i)) for i in range(200)]
    assert len(set(free)) > 150                                 # many phrasings of one picture
    assert world.caption(7, "red", "blue", 3, rng=np.random.default_rng(5)) == free[5]   # rng decides it
    from sdkit.mini.phrases import made_up_word
    rng = np.random.default_rng(0)
    assert not {made_up_word(rng, world.WORDS) for _ in range(2000)} & world.WORDS


def test_canonical_prompts_cover_train_and_held_out_combos():
    train = list(world.canonical_prompts())
    held = list(world.canonical_prompts(held_out=True))
    assert len(train) == 504 and len(held) == 56
    assert {world.label_key(lab) for _, lab in held} == set(world.held_out_combos())
    assert all(CANONICAL.match(p) for p, _ in train + held)


def test_render_paints_palette_colors():
    gx, _ = world.mnist_split("heldout")
    img = world.render(gx[0], "red", "blue")
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    assert (img[0, 0] == world.PALETTE["blue"]).all()
    dist_to_red = np.abs(img.astype(int) - world.PALETTE["red"]).max(axis=-1)
    assert (dist_to_red <= 4).sum() > 20                        # solid ink pixels (MNIST cores are 250-255)
    sq = world.render("square", "yellow", "black")
    assert (sq[16, 16] == world.PALETTE["yellow"]).all() and (sq[0, 0] == world.PALETTE["black"]).all()


def test_export_folder_writes_pngs_with_caption_sidecars(tmp_path):
    from PIL import Image

    out = world.export_folder(tmp_path / "imgs", n=12, seed=5)
    images, caps, _ = world.build_dataset(seed=5, n=12)
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 12
    for i, p in enumerate(pngs):
        assert np.array_equal(np.asarray(Image.open(p)), images[i])
        assert p.with_suffix(".txt").read_text().strip() == caps[i]


# ---------------------------------------------------------------------------------------------
# judge
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def heldout_pictures():
    from sdkit.mini.judge import heldout_digit_set

    return heldout_digit_set(seed=1, shapes_per_class=25)      # 1,000 held-out real digits + 100 shapes


def test_shipped_judge_reads_held_out_real_digits_and_colors(heldout_pictures):
    from sdkit.mini.judge import Judge

    imgs, labels = heldout_pictures
    digits = [i for i, lab in enumerate(labels) if "digit" in lab]
    s = Judge.load().score(imgs[digits], [labels[i] for i in digits])
    assert s["n"] == 1000
    assert s["digit_acc"] >= 0.95
    assert s["fg_acc"] >= 0.98 and s["bg_acc"] >= 0.98
    shapes = [i for i, lab in enumerate(labels) if "shape" in lab]
    assert Judge.load().score(imgs[shapes], [labels[i] for i in shapes])["digit_acc"] >= 0.9


def test_random_judge_fails_the_accuracy_floor(heldout_pictures):
    from sdkit.mini.judge import Judge

    imgs, labels = heldout_pictures
    assert Judge.random(seed=0).score(imgs, labels)["digit_acc"] < 0.5


def test_judge_reads_pil_images_and_names_the_glyph():
    from PIL import Image

    from sdkit.mini.judge import Judge

    gx, gy = world.mnist_split("heldout")
    i = int(np.flatnonzero(gy == 3)[0])
    pil = Image.fromarray(world.render(gx[i], "orange", "yellow")).resize((64, 64))
    pred = Judge.load().predict([pil])[0]
    assert (pred["digit"], pred["fg"], pred["bg"]) == (3, "orange", "yellow")
    assert 0.5 < pred["digit_conf"] <= 1.0


def test_judge_load_names_what_is_missing(tmp_path):
    from sdkit.mini.judge import Judge

    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        Judge.load(tmp_path)


# ---------------------------------------------------------------------------------------------
# mini VAE
# ---------------------------------------------------------------------------------------------
def test_shipped_vae_reconstructs_and_has_a_sane_scaling_factor():
    from sdkit.mini.vae import decode, encode, load_vae, psnr

    vae = load_vae()
    images, _, _ = world.build_dataset(seed=11, n=96, split="val")
    z = encode(vae, images)
    assert z.shape == (96, 4, 8, 8)
    assert psnr(images, decode(vae, z)) > 24.0
    sf = vae.config.scaling_factor
    assert 0.05 < sf < 5.0
    assert 0.6 < encode(vae, images, sample=True).std().item() < 1.6     # scaled latents ~ unit variance


# ---------------------------------------------------------------------------------------------
# mini CLIP
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip_and_tok():
    from sdkit.mini.clip import load_clip, load_tokenizer

    return load_clip(), load_tokenizer()


def test_tokenizer_is_the_real_clip_tokenizer(clip_and_tok):
    from sdkit.mini.clip import tokenize

    _, tok = clip_and_tok
    ids = tokenize(tok, ["a red seven on a blue background"]).input_ids[0]
    assert ids.shape == (77,) and ids[0] == 49406 and 49407 in ids.tolist()
    assert tok.decode(ids[1:8]).strip() == "a red seven on a blue background"


def test_text_tower_distinguishes_captions(clip_and_tok):
    from sdkit.mini.clip import text_embeds

    model, tok = clip_and_tok
    caps = ["a red seven on a blue background", "a red one on a blue background",
            "a green seven on a blue background", "a red seven on a white background"]
    e = text_embeds(model, tok, caps)
    sims = e @ e.T
    assert (sims[0, 1:] < 0.95).all()                          # one changed word -> a different embedding
    enc = tok(caps, padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        h = model.text_model(input_ids=enc.input_ids).last_hidden_state
    assert (h[0] - h[1]).abs().max() > 0.1


def test_zero_shot_digit_retrieval_beats_chance(clip_and_tok):
    from sdkit.mini.clip import zero_shot

    model, tok = clip_and_tok
    images, _, labels = world.build_dataset(seed=12, n=300, split="val", shape_frac=0.0)
    s = zero_shot(model, tok, images, labels)
    assert s["digit_acc"] > 0.5                                # chance is 1/14
    assert s["fg_acc"] > 0.9 and s["bg_acc"] > 0.9             # chance is 1/8


def test_exported_text_encoder_matches_the_clip_text_tower(clip_and_tok, tmp_path):
    from transformers import CLIPTextModel

    from sdkit.mini.clip import CLIP_DIR, export_text_encoder

    model, tok = clip_and_tok
    out = export_text_encoder(CLIP_DIR, tmp_path / "text_encoder")
    text = CLIPTextModel.from_pretrained(str(out), dtype=torch.float32).eval()
    ids = tok(["a purple two on a white background"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        a = text(input_ids=ids).last_hidden_state
        b = model.text_model(input_ids=ids).last_hidden_state
    assert a.shape == (1, 77, model.config.text_config.hidden_size)
    assert torch.allclose(a, b, atol=1e-5)
