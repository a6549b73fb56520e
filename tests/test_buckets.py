"""Aspect-ratio buckets in the training loop (issue 18), on the tiny pipeline with a mixed glyph folder (square,
portrait 1:2, landscape 2:1 and panorama 3:1 pictures: four buckets at 32 px): every micro-batch is one bucket and
each epoch trains every picture; all-square data trains exactly as without buckets; kill -9 + resume, cached latents
and 2 processes x batch 1 vs 1 x batch 2 give the same batches; accumulation over micro-batches of different buckets
averages their losses; SDXL's time ids carry each picture's size and its bucket's crop; the run records its bucket
table, `sdkit data check` prints it, and samples and grids can be drawn at a non-square size."""
import json
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

import sdkit
from sdkit.cli.app import main as cli_main
from sdkit.data import ImageCaptionDataset, scan_folder
from sdkit.data.buckets import bucket_options, kept_fraction
from sdkit.families import batch_time_ids, class_geometry
from sdkit.mini.glyph import write_mixed_glyph_set
from sdkit.rng import epoch_permutation, sample_seed
from sdkit.train.batches import BatchPlan
from sdkit.train.loop import Trainer

from conftest import kill_after_checkpoint, max_diff, trained

BUCKETS = [(24, 40), (32, 32), (40, 24), (48, 16)]  # at 32 px: portrait, square, landscape, panorama


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """8 glyph pictures, 2 of each shape: 32x32, 32x64, 64x32, 96x32."""
    return write_mixed_glyph_set(tmp_path_factory.mktemp("data") / "mixed", n=8)


def plan(dataset, batch_size, processes=1, index=0, accum=1, seed=0):
    return BatchPlan(dataset, seed, batch_size, batch_size * processes * accum, processes, index, accum)


def test_every_micro_batch_is_one_bucket_and_every_epoch_trains_every_picture(mixed):
    ds = ImageCaptionDataset(scan_folder(mixed), 32, **bucket_options(32))
    assert sorted(set(ds.bucket_of)) == BUCKETS
    n, p = len(ds), plan(ds, 2)
    stream = []
    for step in range(40):                                            # 80 samples = 10 epochs
        gs, idx = p.samples(step, 0)
        assert len({ds.bucket_of[i] for i in idx}) == 1               # one bucket per micro-batch
        stream += zip(gs, idx)
    # the per-sample seeded order stays: sample g reads the picture of its epoch's permutation (so each epoch trains
    # every picture once), it only waits for its bucket's batch to fill (fewer than buckets x width samples)
    assert all(i == epoch_permutation(0, g // n, n)[g % n] for g, i in stream)
    seen = {g for g, _ in stream}
    assert len(seen) == 80 and set(range(80 - len(BUCKETS) * 2)) <= seen <= set(range(80 + len(BUCKETS) * 2))
    # what it guarantees: the same batch_size x processes gives the same micro-batches, so 2 processes x batch 1 see
    # what 1 process x batch 2 sees, and grad_accum only groups them into optimizer steps
    one, acc = plan(ds, 2), plan(ds, 2, accum=2)
    two = [plan(ds, 1, processes=2, index=k) for k in (0, 1)]
    for k in range(20):
        a = one.samples(k, 0)
        assert a == tuple(x + y for x, y in zip(two[0].samples(k, 0), two[1].samples(k, 0)))
        assert a == acc.samples(k // 2, k % 2)
    # one bucket (bucketing off, or every picture square): the plain order, g = step x batch + k
    flat = plan(ImageCaptionDataset(scan_folder(mixed), 32), 2)
    assert flat.bucket_of is None and flat.samples(3, 0)[0] == [6, 7]


def test_square_pictures_train_exactly_as_without_buckets(data8):
    """On by default (docs/DATA.md says why): all-square data is one bucket, so the batches are today's, pixel for
    pixel (every determinism test in test_train.py runs on square data with the default, end to end)."""
    assert sdkit.TrainConfig().bucketing
    scan = scan_folder(data8)
    on, off = ImageCaptionDataset(scan, 32, **bucket_options(32)), ImageCaptionDataset(scan, 32)
    assert set(on.bucket_of) == {(32, 32)}
    a, b = plan(on, 2, accum=2), plan(off, 2, accum=2)
    for step in range(6):
        for micro in (0, 1):
            assert a.samples(step, micro) == b.samples(step, micro)
            ga, ia = a.samples(step, micro)
            assert torch.equal(a.load(ga, ia)["pixels"], b.load(ga, ia)["pixels"])


def test_mixed_folder_trains_whole_pictures_records_buckets_and_draws_non_square_samples(mixed, base_config, capsys):
    config = base_config.replace(data=str(mixed), steps=3, batch_size=2, sample_width=40, sample_height=24)
    trainer = Trainer(config, progress=None)
    ds = trainer.dataset
    shapes = set()
    for step in range(8):
        batch = trainer._micro_batch(step, 0)
        w, h = ds.bucket_of[batch["index"][0]]
        assert batch["pixels"].shape == (2, 3, h, w)                   # the bucket's size, stacked: one bucket
        shapes.add((w, h))
    assert len(shapes) >= 3
    # a portrait picture trains whole: 32x64 -> bucket 24x40 keeps 83% of it; a square crop would keep 50%
    portrait = next(i for i in range(len(ds)) if ds.bucket_of[i] == (24, 40))
    assert Image.open(ds.item(portrait)[0]).size == (32, 64)
    assert ds[(portrait, 0)]["pixels"].shape == (3, 40, 24)
    assert kept_fraction((32, 64), (24, 40)) > 0.83 > 0.5 == kept_fraction((32, 64), (32, 32))
    run = trainer.fit()
    # the run directory records the bucket table; `sdkit data check` prints the same one before training
    table = json.loads((run.path / "buckets.json").read_text())
    assert [(r["width"], r["height"], r["pictures"]) for r in table["buckets"]] == [b + (2,) for b in BUCKETS]
    assert table["bucketing"] and table["step"] == 8 and table["micro_batch"] == 2
    assert cli_main(["data", "check", str(mixed), "--resolution", "32", "--batch-size", "3"]) == 0
    out = capsys.readouterr().out
    for w, h in BUCKETS:
        assert f"{w} x {h}" in out
    assert "bucket 24x40 holds 2 picture(s), fewer than batch_size 3" in out
    # samples and the evaluation grid at a non-square size (sample_width x sample_height)
    assert {Image.open(p).size for p in run.samples[3]} == {(40, 24)}
    from sdkit.evaluate.grid import checkpoint_grid
    grid = checkpoint_grid(run, ["a red sks glyph on a white background"], seeds=(0,), checkpoints="latest", steps=2,
                           include_base=False, height=48, width=24)
    assert {im.size for im in grid.cells.values()} == {(24, 48)}


def test_kill_9_then_resume_with_buckets_equals_uninterrupted(tiny_model, mixed, tmp_path):
    flags = ["--model", str(tiny_model), "--data", str(mixed), "--steps", "8", "--checkpoint-every", "4",
             "--resolution", "32", "--sample-steps", "2", "--no-tensorboard", "--lr", "1e-3", "--batch-size", "2"]
    config = sdkit.TrainConfig(model=str(tiny_model), data=str(mixed), steps=8, checkpoint_every=4, resolution=32,
                               sample_steps=2, tensorboard=False, lr=1e-3, batch_size=2)
    straight = sdkit.train(config.replace(out=str(tmp_path / "straight")), progress=None)
    killed = tmp_path / "killed"
    kill_after_checkpoint(["train", *flags], killed, 4)
    assert not (killed / "checkpoints" / "step_000008").exists(), "the kill came too late to test anything"
    resumed = sdkit.train(config.replace(out=str(killed), resume="latest"), progress=None)
    assert max_diff(trained(straight, 8), trained(resumed, 8)) <= 1e-5
    assert [m["step"] for m in resumed.metrics] == list(range(1, 9))
    # another micro-batch width would regroup the buckets into other batches: refused, with the fix
    with pytest.raises(sdkit.ConfigError, match="batch_size"):
        sdkit.train(config.replace(out=str(killed), resume="latest", steps=10, batch_size=1, grad_accum=2),
                    progress=None)


def test_cached_latents_per_bucket_size_and_workers_give_the_same_training(mixed, base_config):
    config = base_config.replace(data=str(mixed), steps=3, batch_size=2, sample_at_start=False)
    plain = sdkit.train(config.replace(out=base_config.out + "_plain"), progress=None)
    cached = sdkit.train(config.replace(cache_latents=True, out=base_config.out + "_cached"), progress=None)
    assert max_diff(trained(plain, 3), trained(cached, 3)) < 1e-5
    workers = sdkit.train(config.replace(num_workers=2, out=base_config.out + "_workers"), progress=None)
    assert max_diff(trained(plain, 3), trained(workers, 3)) < 1e-6


def test_accumulating_micro_batches_of_different_buckets_averages_their_losses(mixed, base_config):
    ds = ImageCaptionDataset(scan_folder(mixed), 32, **bucket_options(32))
    seed = next(s for s in range(20) if len({ds.bucket_of[plan(ds, 1, accum=2, seed=s).samples(0, m)[1][0]]
                                              for m in (0, 1)}) == 2)
    config = base_config.replace(data=str(mixed), steps=1, batch_size=1, grad_accum=2, max_grad_norm=0.0, seed=seed,
                                 sample_at_start=False)
    trainer = Trainer(config, progress=None)
    batches = [trainer._micro_batch(0, m) for m in (0, 1)]
    assert batches[0]["pixels"].shape != batches[1]["pixels"].shape  # two buckets in one optimizer step
    for batch in batches:                                  # the reference: the mean of the two micro-batch losses
        (trainer.compute_loss(batch)[0] / 2).backward()
    expect = [p.grad.clone() for p in trainer.trainable]
    trainer.optimizer.zero_grad(set_to_none=True)
    seen, step = [], trainer.optimizer.step

    def spy(*args, **kwargs):                              # the gradients the loop steps with
        seen.append([p.grad.clone() for p in trainer.trainable])
        return step(*args, **kwargs)
    trainer.optimizer.step = spy
    trainer.fit()
    assert len(seen) == 2                                  # called per micro-batch; accelerate steps on the last
    assert max((a - b).abs().max().item() for a, b in zip(seen[-1], expect)) < 1e-7
    assert max((a - b).abs().max().item() for a, b in zip(seen[0], expect)) > 1e-6  # the second one counted


def test_sdxl_time_ids_carry_the_original_size_and_the_crop_of_the_bucket(mixed, tmp_path):
    ds = ImageCaptionDataset(scan_folder(mixed), 32, **bucket_options(32))
    trainer = SimpleNamespace(config=SimpleNamespace(seed=0), resolution=32, dataset=ds,
                              accelerator=SimpleNamespace(device="cpu"))
    rows = {}
    for i in range(len(ds)):
        ids = batch_time_ids(trainer, {"index": [i], "g": [5]})[0].tolist()   # as the loop builds them
        item = ds[(i, sample_seed(0, 5))]                                     # the pixels' own geometry
        assert ids == [*item["original_size"], *item["crop_top_left"], *item["target_size"]]
        rows[ds.bucket_of[i]] = ids
    # (orig h, w, crop top, left, target h, w): a 32x64 portrait resized to 24x48 and cut to its 24x40 bucket
    assert rows[(24, 40)] == [64, 32, 4, 0, 40, 24]
    assert rows[(40, 24)] == [32, 64, 0, 4, 24, 40]
    assert rows[(48, 16)] == [32, 96, 0, 0, 16, 48] and rows[(32, 32)] == [32, 32, 0, 0, 32, 32]
    # a DreamBooth class image beside a portrait micro-batch is cut to the same bucket
    Image.new("RGB", (32, 32)).save(tmp_path / "class.png")
    assert class_geometry(tmp_path / "class.png", (24, 40)) == {"original_size": (32, 32), "crop_top_left": (0, 8),
                                                                "target_size": (40, 24)}


def test_prior_preservation_class_images_join_the_micro_batch_bucket(mixed, base_config):
    config = base_config.replace(data=str(mixed), steps=2, batch_size=2, prior_preservation=True,
                                 class_prompt="a glyph", num_class_images=2, sample_at_start=False)
    trainer = Trainer(config, progress=None)
    batch = trainer._micro_batch(0, 0)
    w, h = trainer.dataset.bucket_of[batch["index"][0]]
    assert batch["pixels"].shape == (4, 3, h, w)                     # 2 instance + 2 class samples, one bucket
    assert all(k[2] == (w, h) for k in batch["index"][2:])
    assert trainer.fit().final_step == 2
