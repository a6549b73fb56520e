"""Command line: `python -m sdkit COMMAND ...`. Training flags are generated from TrainConfig's fields.

    python -m sdkit make-tiny DIR
    python -m sdkit train --model mini --data DIR --method lora --steps 300 --out runs/x [--resume latest]
    python -m sdkit train --config runs/x/config.yaml --steps 600 --resume latest
    python -m sdkit show RUN                 # writes RUN/loss.png and prints a summary
    python -m sdkit quickstart               # the README's main job
    accelerate launch --multi_gpu --num_processes 2 -m sdkit train ...   # data-parallel (GPUs, or CPUs over gloo)
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import typing

from .config import ConfigError, TrainConfig
from .data_cli import add_data_commands
from .evaluate.cli import add_eval_commands

__all__ = ["main", "add_config_flags", "config_from_args"]


def _none_or(kind):
    def parse(text):
        return None if text.lower() in ("none", "") else kind(text)
    parse.__name__ = kind.__name__
    return parse


def add_config_flags(parser: argparse.ArgumentParser, cls=TrainConfig):
    """One flag per config field: --field-name, with the field's help; defaults come from --config or the class."""
    hints = typing.get_type_hints(cls)
    groups = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata
        group = groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        hint = hints[f.name]
        optional = typing.get_origin(hint) is typing.Union
        if optional:
            hint = [a for a in typing.get_args(hint) if a is not type(None)][0]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{meta['help']} (default: {default!r})"
        kwargs = dict(dest=f.name, default=argparse.SUPPRESS, help=help_text)
        flag = "--" + f.name.replace("_", "-")
        if hint is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(hint) in (list, typing.List):
            group.add_argument(flag, nargs="*", type=typing.get_args(hint)[0], metavar="VALUE", **kwargs)
        else:
            choices = [c for c in (meta.get("choices") or []) if c is not None] or None
            group.add_argument(flag, type=_none_or(hint) if optional else hint, choices=choices,
                               metavar=f.name.upper() if not choices else None, **kwargs)
    return parser


def config_from_args(args, cls=TrainConfig):
    base = cls.from_yaml(args.config) if getattr(args, "config", None) else cls()
    names = {f.name for f in dataclasses.fields(cls)}
    changes = {k: v for k, v in vars(args).items() if k in names}
    return dataclasses.replace(base, **changes)


def _cmd_train(args):
    import os
    from . import train
    config = config_from_args(args)
    run = train(config, progress="bar" if sys.stderr.isatty() else "print")
    if int(os.environ.get("RANK", "0")) == 0:
        from .plot import save_loss_plot
        plot = save_loss_plot(run)
        print(f"run directory: {run.path}")
        print(f"  samples:     {run.path / 'samples'} (grid at {run.grid()})")
        print(f"  loss plot:   {plot}")
        print(f"  checkpoints: {', '.join(p.name for p in run.checkpoints) or 'none'}")
        if run.stopped_early:
            print(f"stopped early at step {run.final_step}: continue with --out {run.path} --resume latest")
    return 0


def _cmd_make_tiny(args):
    from .models import make_tiny
    path = make_tiny(args.dir, seed=args.seed)
    print(f"tiny pipeline written to {path}; load it with StableDiffusionPipeline.from_pretrained({str(path)!r})")
    return 0


def _cmd_show(args):
    from .plot import save_loss_plot
    from .run import Run
    run = Run(args.run)
    plot = save_loss_plot(run)
    m = run.metrics
    print(f"{run.path}: {len(m)} logged steps, last step {run.final_step}, "
          f"loss {m[-1]['loss']:.4f}" if m else f"{run.path}: no steps logged yet")
    print(f"loss plot: {plot}")
    for step, paths in run.samples.items():
        print(f"samples at step {step}: {len(paths)} images ({run.grid(step)})")
    print("checkpoints: " + (", ".join(p.name for p in run.checkpoints) or "none"))
    if run.stopped_early and run.checkpoints:
        print(f"stopped at step {run.final_step} of {run.config.steps}: continue with "
              f"python -m sdkit train --config {run.path / 'config.yaml'} --out {run.path} --resume latest")
    return 0


def _cmd_quickstart(args):
    from .quickstart import quickstart
    quickstart(out=args.out, steps=args.steps)
    return 0


def _cmd_docs(args):
    from .docs import write_config_reference
    path = write_config_reference(args.out)
    print(f"wrote {path}")
    return 0


def _cmd_mini(args):
    import json
    from .mini import pipeline
    if args.action == "build":
        report = pipeline.build(root=args.root, steps=args.steps, quick=args.quick, skip_parts=args.skip_parts)
    else:
        report = {}
        for g in args.guidance:
            for s in args.steps_list:
                r = pipeline.evaluate(args.model, n_seen=args.n_seen, seeds=tuple(range(args.seeds)), steps=s,
                                      guidance=g)
                report[f"guidance={g},steps={s}"] = r
                print(f"guidance {g:>4}  steps {s:>3}  seen joint {r['seen']['joint_acc']:.3f} (digit "
                      f"{r['seen']['digit_acc']:.3f} fg {r['seen']['fg_acc']:.3f} bg {r['seen']['bg_acc']:.3f})  "
                      f"held-out joint {r['held_out']['joint_acc']:.3f} (digit {r['held_out']['digit_acc']:.3f} "
                      f"fg {r['held_out']['fg_acc']:.3f} bg {r['held_out']['bg_acc']:.3f})", flush=True)
    text = json.dumps(report, indent=1)
    if args.json:
        from pathlib import Path
        Path(args.json).write_text(text)
    print(text)
    return 0


def _cmd_bench(args):
    import json
    from .bench import bench_train
    result = bench_train(quick=args.quick, repeats=args.repeats, json_path=args.json)
    print(json.dumps(result, indent=1))
    print(f"sdkit {result['sdkit_steps_per_s']:.3f} steps/s vs reference {result['reference_steps_per_s']:.3f} "
          f"steps/s: ratio {result['ratio_vs_reference']:.3f}")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m sdkit", description="sdkit: train Stable Diffusion "
                                     "(LoRA, full) on one loop; see README.md.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model (flags = config fields; see docs/CONFIG.md)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", help="YAML config (e.g. a run's config.yaml); flags given override it")
    add_config_flags(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("make-tiny", help="write a tiny random SD pipeline (for tests) with save_pretrained")
    p.add_argument("dir")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_make_tiny)

    p = sub.add_parser("show", help="summarise a run directory and write RUN/loss.png")
    p.add_argument("run")
    p.set_defaults(func=_cmd_show)

    p = sub.add_parser("quickstart", help="the README's main job: a short real LoRA training, offline")
    p.add_argument("--out", default="runs/quickstart")
    p.add_argument("--steps", type=int, default=None)
    p.set_defaults(func=_cmd_quickstart)

    p = sub.add_parser("mini", help="the mini world: build it from nothing, or evaluate a pipeline with the judge")
    p.add_argument("action", choices=["build", "eval"])
    p.add_argument("--root", default="data_samples", help="build: where the parts and mini-sd are written")
    p.add_argument("--steps", type=int, default=None, help="build: UNet training steps (default: the recipe's)")
    p.add_argument("--quick", action="store_true", help="build: a few steps of each stage (seconds; for tests)")
    p.add_argument("--skip-parts", action="store_true", help="build: reuse judge/CLIP/VAE already in --root")
    p.add_argument("--model", default="mini", help="eval: pipeline preset or folder")
    p.add_argument("--n-seen", type=int, default=120, help="eval: seen combinations sampled (of 504)")
    p.add_argument("--seeds", type=int, default=4, help="eval: images per prompt (seeds 0..N-1)")
    p.add_argument("--guidance", type=float, nargs="+", default=[5.0], help="eval: guidance scales to sweep")
    p.add_argument("--steps-list", type=int, nargs="+", default=[25], help="eval: DDIM step counts to sweep")
    p.add_argument("--json", help="write the report here")
    p.set_defaults(func=_cmd_mini)

    p = sub.add_parser("bench", help="benchmarks: `bench train` = sdkit's loop vs a bare reference loop")
    p.add_argument("what", choices=["train"])
    p.add_argument("--quick", action="store_true", help="tiny pipeline, few steps (CPU, seconds)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="write the result here")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("docs", help="regenerate docs/CONFIG.md from the config dataclass")
    p.add_argument("--out", default="docs/CONFIG.md")
    p.set_defaults(func=_cmd_docs)
    add_data_commands(sub)  # python -m sdkit data check|caption|samples (sdkit/data_cli.py)
    from .export_cli import add_export_commands
    add_export_commands(sub)  # python -m sdkit export|preflight (sdkit/export_cli.py)
    add_eval_commands(sub)  # python -m sdkit eval grid|metrics|diagnose (sdkit/evaluate/cli.py)
    from .convert import add_convert_command; add_convert_command(sub)  # python -m sdkit convert (sdkit/convert.py)
    from .hub import add_push_command; add_push_command(sub)  # python -m sdkit push (sdkit/hub.py)
    from .hpsearch import add_search_command; add_search_command(sub)  # python -m sdkit search (sdkit/hpsearch.py)
    return parser


def main(argv=None) -> int:
    from .data import DataError
    from .models import ModelNotFound
    from .train import TrainingError
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DataError, ModelNotFound, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingError as e:
        print(f"training stopped: {e}", file=sys.stderr)
        return 1
