"""The run directory under faults (docs/RELIABILITY.md, "Run directory and checkpoints"): one writer per directory,
honest resume, fallback past a damaged checkpoint, disk and permission faults as one clear line."""
import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import sdkit
from sdkit.checkpoint import clean_orphans, find_intact_checkpoint, verify_checkpoint
from sdkit.cli.app import main
from sdkit.train import Callback
from sdkit.train.checkpoint import RunDirError
from sdkit.train.lock import LOCK_NAME, STALE_AFTER_S, RunLock
from sdkit.train.loop import Trainer

from conftest import PYTHON, ROOT

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def cli_args(config, *extra):
    return ["train", "--model", config.model, "--data", config.data, "--resolution", "32", "--sample-steps", "2",
            "--no-tensorboard", "--lr", "1e-3", "--out", config.out, *extra]


def snapshot(folder: Path) -> dict:
    """Every file with its size and mtime (the lock's mtime aside: its holder refreshes it), and the lock's text."""
    files = {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != LOCK_NAME}
    lock = folder / LOCK_NAME
    return {**files, LOCK_NAME: lock.read_text() if lock.exists() else None}


@pytest.fixture(scope="module")
def run4(tiny_model, data8, tmp_path_factory):
    """A finished 4-step LoRA run with checkpoints at steps 2 and 4 (copied by the tests that damage it)."""
    out = tmp_path_factory.mktemp("reliability") / "run4"
    return sdkit.train(sdkit.TrainConfig(model=str(tiny_model), data=str(data8), steps=4, checkpoint_every=2,
                                         resolution=32, out=str(out), sample_steps=2, tensorboard=False, lr=1e-3,
                                         sample_at_start=False), progress=None)


def copy_run(run4, tmp_path) -> Path:
    return Path(shutil.copytree(run4.path, tmp_path / "copy"))


# ---- 1. one writer per run directory ----------------------------------------------------------------------------
def test_a_second_run_into_the_same_out_is_refused_at_once_and_writes_nothing(base_config, tmp_path):
    """Two real processes: A trains (held at step 2 by a gate file), B is the CLI started into the same --out."""
    gate = tmp_path / "gate"
    script = textwrap.dedent(f"""
        import os, time, sdkit
        from sdkit.train import Callback
        class Gate(Callback):
            def on_step_end(self, trainer, logs):
                if trainer.step == 2:
                    open({str(tmp_path / 'waiting')!r}, 'w').close()
                    while not os.path.exists({str(gate)!r}):
                        time.sleep(0.05)
        cfg = sdkit.TrainConfig.from_yaml({str(tmp_path / 'a.yaml')!r})
        sdkit.train(cfg, callbacks=[Gate()], progress=None)
    """)
    base_config.replace(seed=1, checkpoint_every=1, sample_at_start=False).to_yaml(tmp_path / "a.yaml")
    a = subprocess.Popen([PYTHON, "-c", script], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    try:
        deadline = time.time() + 240
        while not (tmp_path / "waiting").exists():
            assert a.poll() is None, a.stdout.read()
            assert time.time() < deadline
            time.sleep(0.05)
        out = Path(base_config.out)
        (out / "checkpoints" / ".tmp_step_000099").mkdir()  # a leftover only the lock holder may clean
        before = snapshot(out)
        t0 = time.time()
        b = subprocess.run([PYTHON, "-m", "sdkit", *cli_args(base_config, "--seed", "2", "--steps", "4")], cwd=ROOT,
                           env=ENV, capture_output=True, text=True, timeout=240)
        assert b.returncode == 2, b.stdout + b.stderr
        assert f"{out} is in use by another run: pid {a.pid} on this machine" in b.stderr
        assert "Traceback" not in b.stderr and "choose another --out" in b.stderr
        assert snapshot(out) == before                    # B wrote nothing, cleaned nothing
        assert time.time() - t0 < 120                     # refused at once, before loading any model
    finally:
        gate.touch()
        assert a.wait(timeout=240) == 0, a.stdout.read()
    run = sdkit.Run(out)
    assert run.config.seed == 1 and [m["step"] for m in run.metrics] == [1, 2, 3, 4]
    assert not (out / LOCK_NAME).exists()                 # released at the end


def test_a_killed_run_does_not_block_its_resume_and_a_live_one_does(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    (out / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": host}))
    RunLock.acquire(out).release()                        # a dead pid on this machine: stale, taken over
    assert not (out / LOCK_NAME).exists()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_NAME).write_text(json.dumps({"pid": live.pid, "host": host, "command": "sdkit train X"}))
        with pytest.raises(RunDirError, match=f"pid {live.pid} on this machine.*sdkit train X.*delete"):
            RunLock.acquire(out)
    finally:
        live.kill()
        live.wait()
    # another machine's lock: held while fresh, stale once it has not been refreshed for STALE_AFTER_S
    (out / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "colab-vm-gone"}))
    with pytest.raises(RunDirError, match="on host colab-vm-gone"):
        RunLock.acquire(out)
    old = time.time() - STALE_AFTER_S - 60
    os.utime(out / LOCK_NAME, (old, old))
    RunLock.acquire(out).release()


def test_a_trainer_of_this_process_that_is_not_training_hands_over_and_a_failed_start_leaves_nothing(base_config,
                                                                                                       tmp_path):
    Trainer(base_config.replace(steps=1), progress=None)  # set up, never trained (notebook 05 does this)
    run = sdkit.train(base_config.replace(steps=1), progress=None)
    assert run.final_step == 1 and not (run.path / LOCK_NAME).exists()
    bad = tmp_path / "never"
    with pytest.raises(ValueError, match="no_such_data"):
        sdkit.train(base_config.replace(out=str(bad), data=str(tmp_path / "no_such_data")), progress=None)
    assert not bad.exists()


# ---- 2. honest resume --------------------------------------------------------------------------------------------
def test_resume_applies_a_new_lr_and_records_it(run4, tmp_path):
    out = copy_run(run4, tmp_path)
    cfg = run4.config.replace(out=str(out), resume="latest", steps=6, lr=3e-3, checkpoint_every=0)
    run = sdkit.train(cfg, progress=None)
    lrs = {m["step"]: m["lr"] for m in run.metrics}
    assert lrs[2] == pytest.approx(1e-3) and lrs[5] == pytest.approx(3e-3) and lrs[6] == pytest.approx(3e-3)
    records = [json.loads(line) for line in (out / "resume.jsonl").read_text().splitlines()]
    changed = {r["field"]: (r["old"], r["new"]) for r in records}
    assert changed == {"lr": (1e-3, 3e-3), "steps": (4, 6), "checkpoint_every": (2, 0)}
    assert {r["step"] for r in records} == {4} and records[0]["checkpoint"] == "step_000004"
    assert run.config.lr == 3e-3                          # config.yaml + resume.jsonl: what each step used


@pytest.mark.parametrize("change, field", [({"lora_rank": 8}, "lora_rank"), ({"method": "full"}, "method"),
                                           ({"seed": 5, "resolution": 64}, "resolution")])
def test_resume_refuses_a_change_the_checkpoint_cannot_take(run4, tmp_path, change, field):
    out = copy_run(run4, tmp_path)
    before = snapshot(out)
    with pytest.raises(sdkit.ConfigError, match=f"{field} cannot change on resume.*Fix: resume with {field}="):
        sdkit.train(run4.config.replace(out=str(out), resume="latest", steps=6, **change), progress=None)
    assert snapshot(out) == before and not (out / LOCK_NAME).exists()


def test_cli_resume_with_another_method_is_one_line_and_exit_2(run4, tmp_path, capsys):
    out = copy_run(run4, tmp_path)
    args = ["train", "--config", str(out / "config.yaml"), "--out", str(out), "--resume", "latest",
            "--method", "full"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "method cannot change on resume" in err and "start a new run" in err and "Traceback" not in err


def test_cli_resume_without_config_continues_the_run_as_it_was(run4, tmp_path, capsys):
    """`--out RUN --resume latest` (what a stopped run prints) starts from RUN/config.yaml: only the flags given change,
    and the change is recorded."""
    out = copy_run(run4, tmp_path)
    assert main(["train", "--out", str(out), "--resume", "latest", "--steps", "6", "--no-tensorboard"]) == 0
    records = [json.loads(line) for line in (out / "resume.jsonl").read_text().splitlines()]
    assert [(r["field"], r["old"], r["new"]) for r in records] == [("steps", 4, 6)]
    assert sdkit.Run(out).final_step == 6


# ---- 3. damaged checkpoints --------------------------------------------------------------------------------------
def _truncate(path: Path, keep: float = 0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("damage", ["truncated trainable.safetensors", "empty optimizer.json",
                                    "truncated optimizer.safetensors", "no manifest, truncated trainable.safetensors"])
def test_resume_latest_falls_back_past_a_damaged_checkpoint(run4, tmp_path, damage):
    out = copy_run(run4, tmp_path)
    step4 = out / "checkpoints" / "step_000004"
    assert verify_checkpoint(step4) is None
    if damage.startswith("no manifest"):
        (step4 / "manifest.json").unlink()
    name = damage.split()[-1]
    if damage.startswith("empty"):
        (step4 / name).write_text("")
    else:
        _truncate(step4 / name)
    assert name in verify_checkpoint(step4) or "does not load" in verify_checkpoint(step4)
    found, damaged = find_intact_checkpoint(out)
    assert found.name == "step_000002" and [p.name for p, _ in damaged] == ["step_000004"]


def test_no_intact_checkpoint_left_is_refused_with_each_one_named(run4, tmp_path):
    out = copy_run(run4, tmp_path)
    for p in (out / "checkpoints").glob("step_*"):
        (p / "optimizer.json").write_text("")
    with pytest.raises(RunDirError, match="no intact checkpoint.*step_000004: optimizer.json has 0 bytes.*step_000002"):
        find_intact_checkpoint(out)


def test_checkpoints_written_before_manifests_are_accepted_when_they_load(run4, tmp_path):
    out = copy_run(run4, tmp_path)
    for p in (out / "checkpoints").glob("step_*"):
        (p / "manifest.json").unlink()
    assert find_intact_checkpoint(out) == (out / "checkpoints" / "step_000004", [])


def test_cli_resume_warns_resumes_from_the_intact_one_and_show_marks_the_damaged(run4, tmp_path, capsys):
    out = copy_run(run4, tmp_path)
    _truncate(out / "checkpoints" / "step_000004" / "trainable.safetensors")
    (out / "checkpoints" / ".tmp_step_000006").mkdir()               # a write killed half-way
    assert main(["show", str(out)]) == 0
    assert "step_000004 (DAMAGED: trainable.safetensors has" in capsys.readouterr().out
    assert main(["train", "--config", str(out / "config.yaml"), "--out", str(out), "--resume", "latest",
                 "--steps", "5", "--no-sample-at-start"]) == 0
    captured = capsys.readouterr()
    assert "step_000004 is damaged (trainable.safetensors has" in captured.out + captured.err
    assert "resuming from step_000002" in captured.out + captured.err
    assert not (out / "checkpoints" / ".tmp_step_000006").exists()
    assert [m["step"] for m in sdkit.Run(out).metrics] == [1, 2, 3, 4, 5]
    assert json.loads((out / "resume.jsonl").read_text().splitlines()[0])["step"] == 2
    assert verify_checkpoint(out / "checkpoints" / "step_000005") is None


def test_leftovers_of_an_interrupted_write_are_cleaned_or_put_back(run4, tmp_path):
    ckpts = copy_run(run4, tmp_path) / "checkpoints"
    os.replace(ckpts / "step_000004", ckpts / ".old_step_000004")   # a kill between the two renames of a rewrite
    shutil.copytree(ckpts / ".old_step_000004", ckpts / ".tmp_step_000004")
    shutil.copytree(ckpts / "step_000002", ckpts / ".old_step_000002")  # a kill after the second rename
    clean_orphans(ckpts)
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_000002", "step_000004"]
    assert verify_checkpoint(ckpts / "step_000004") is None


# ---- 4. disk and permission faults -------------------------------------------------------------------------------
def test_read_only_out_is_one_line_and_exit_2(base_config, tmp_path, monkeypatch, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: the file system's answer, simulated
        real_open = os.open

        def read_only(path, *a, **kw):
            if str(path).startswith(str(ro)):
                raise OSError(errno.EROFS, "Read-only file system", str(path))
            return real_open(path, *a, **kw)
        monkeypatch.setattr(os, "open", read_only)
    else:
        ro.chmod(0o555)
    assert main(cli_args(base_config.replace(out=str(ro)), "--steps", "1")) == 2
    err = capsys.readouterr().err
    assert f"cannot write to {ro}" in err and "Fix: choose a writable --out" in err and "Traceback" not in err
    ro.chmod(0o755)
    assert list(ro.iterdir()) == []


def test_a_full_disk_while_writing_a_checkpoint_leaves_the_older_ones_untouched(base_config, monkeypatch, capsys):
    import sdkit.checkpoint as ck
    writer = "write_safetensors" if hasattr(ck, "write_safetensors") else "save_file"  # what writes its tensors
    real = getattr(ck, writer)

    def full_at_step_4(tensors, filename, *a, **kw):
        if ".tmp_step_000004" in str(filename):
            Path(filename).write_bytes(b"\0" * 100)  # a partial file, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(filename))
        return real(tensors, filename, *a, **kw)
    monkeypatch.setattr(ck, writer, full_at_step_4)
    cfg = base_config.replace(checkpoint_every=2, sample_at_start=False)
    out = Path(cfg.out)
    assert main(cli_args(cfg, "--steps", "4", "--checkpoint-every", "2", "--no-sample-at-start")) == 2
    err = capsys.readouterr().err
    assert "no space left on the disk of" in err and "step_000004" in err and "needs about" in err
    assert "keep_last" in err and "Traceback" not in err
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_000002"]   # no .tmp_* left behind
    assert verify_checkpoint(ckpts / "step_000002") is None
    assert not (out / LOCK_NAME).exists()


def test_a_vanished_run_directory_is_one_line_and_exit_2(base_config, capsys):
    class Vanish(Callback):
        def on_step_end(self, trainer, logs):
            if trainer.step == 3:
                shutil.rmtree(trainer.run_dir)             # a lost Drive mount, a folder deleted by hand
    cfg = base_config.replace(checkpoint_every=2, sample_at_start=False)
    with pytest.raises(RunDirError, match="vanished or was replaced.*--resume latest"):
        sdkit.train(cfg, callbacks=[Vanish()], progress=None)
    assert not list(Path(cfg.out).rglob(".tmp_*"))
