"""`python -m sdkit train ...` (flags = TrainConfig's fields) and `python -m sdkit show RUN`."""
from __future__ import annotations

import argparse
import os
import sys

from ..checkpoint import verify_checkpoint
from ..plot import save_loss_plot
from ..run import Run
from ..train.loop import train
from .flags import add_config_flags, config_from_args

__all__ = ["add_train_command", "add_show_command"]


def _cmd_train(args):
    config = config_from_args(args)
    run = train(config, progress="bar" if sys.stderr.isatty() else "print")
    if int(os.environ.get("RANK", "0")) == 0:
        plot = save_loss_plot(run)
        print(f"run directory: {run.path}")
        print(f"  samples:     {run.path / 'samples'} (grid at {run.grid()})")
        print(f"  loss plot:   {plot}")
        print(f"  checkpoints: {', '.join(p.name for p in run.checkpoints) or 'none'}")
        if run.stopped_early:
            print(f"stopped early at step {run.final_step}: continue with --out {run.path} --resume latest")
    return 0


def _cmd_show(args):
    run = Run(args.run)
    plot = save_loss_plot(run)
    m = run.metrics
    print(f"{run.path}: {len(m)} logged steps, last step {run.final_step}, "
          f"loss {m[-1]['loss']:.4f}" if m else f"{run.path}: no steps logged yet")
    print(f"loss plot: {plot}")
    for step, paths in run.samples.items():
        print(f"samples at step {step}: {len(paths)} images ({run.grid(step)})")
    # each checkpoint checked against its manifest (sizes; with --verify also the sha256 of every file)
    marks = []
    for p in run.checkpoints:
        problem = verify_checkpoint(p, hashes=args.verify)
        marks.append(f"{p.name} (DAMAGED: {problem})" if problem else p.name)
    print("checkpoints: " + (", ".join(marks) or "none"))
    if run.stopped_early and run.checkpoints:
        print(f"stopped at step {run.final_step} of {run.config.steps}: continue with "
              f"python -m sdkit train --config {run.path / 'config.yaml'} --out {run.path} --resume latest")
    return 0


def add_train_command(sub):
    p = sub.add_parser("train", help="train a model (flags = config fields; see docs/CONFIG.md)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", help="YAML config (e.g. a run's config.yaml); flags given override it")
    add_config_flags(p)
    p.set_defaults(func=_cmd_train)


def add_show_command(sub):
    p = sub.add_parser("show", help="summarize a run directory and write RUN/loss.png; damaged checkpoints are "
                       "marked")
    p.add_argument("run")
    p.add_argument("--verify", action="store_true", help="check every checkpoint file's sha256 too (reads them all; "
                   "without it, sizes against each checkpoint's manifest)")
    p.set_defaults(func=_cmd_show)
