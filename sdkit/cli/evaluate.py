"""`python -m sdkit eval grid|metrics|diagnose RUN ...`.

    python -m sdkit eval grid RUN --prompts "a red seven on a blue background" --seeds 0 1 --out grid.png
    python -m sdkit eval grid RUN --prompts P --seeds 0 --checkpoints step_000020 step_000040 --scales 0 0.5 1
    python -m sdkit eval metrics RUN [--json F] [--reference DIR] [--val-data DIR] [--best-by val_loss]
    python -m sdkit eval diagnose RUN
"""
from __future__ import annotations

import json

from ..evaluate import table
from ..evaluate.diagnose import diagnose
from ..evaluate.grid import checkpoint_grid
from ..evaluate.run_metrics import evaluate_run
from ..run import Run

__all__ = ["add_eval_commands"]


def _cmd_grid(args):
    run = Run(args.run)
    g = checkpoint_grid(run, args.prompts, args.seeds, checkpoints=args.checkpoints, scales=args.scales,
                        steps=args.steps, guidance_scale=args.guidance, progress=print)
    paths = g.save(args.out, cell=args.cell, max_rows=args.max_rows)
    print(f"grid: {len(g.checkpoints)} checkpoints x {len(g.scales)} strengths (rows) x {len(g.prompts)} prompts x "
          f"{len(g.seeds)} seeds (columns)")
    print("written: " + ", ".join(str(p) for p in paths))
    print(g.legend())
    return 0


def _cmd_metrics(args):
    run = Run(args.run)
    report = evaluate_run(run, prompts=args.prompts, seeds=args.seeds, checkpoints=args.checkpoints,
                          control_prompts=args.control, reference=args.reference, val_data=args.val_data,
                          steps=args.steps, best_by=args.best_by, json_path=args.json)
    print(table(report))
    print(f"metrics: {report['path']}")
    b = report["best"]
    if b.get("checkpoint"):
        print(f"best: {b['checkpoint']} ({b['by']} {b['value']:.4f}; base model {b.get('base_value') or float('nan'):.4f})")
    return 0


def _cmd_diagnose(args):
    d = diagnose(args.run, metrics=json.loads(open(args.json).read()) if args.json else None)
    print(d)
    return 0


def add_eval_commands(sub):
    """Register `eval grid|metrics|diagnose` on the top-level subparsers."""
    p = sub.add_parser("eval", help="evaluate a run: grids across checkpoints, metrics + best checkpoint, diagnosis")
    ev = p.add_subparsers(dest="eval_command", required=True)

    g = ev.add_parser("grid", help="labeled grid: checkpoints (base model first) x LoRA strength x prompt x seed")
    g.add_argument("run")
    g.add_argument("--prompts", nargs="+", required=True)
    g.add_argument("--seeds", nargs="+", type=int, default=[0])
    g.add_argument("--checkpoints", nargs="+", default=["all"], help="all, latest, or names like step_000020")
    g.add_argument("--scales", nargs="+", type=float, default=[1.0], help="LoRA strengths, e.g. 0 0.5 1")
    g.add_argument("--steps", type=int, default=None, help="denoising steps (default: the run's sample_steps)")
    g.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the run's)")
    g.add_argument("--cell", type=int, default=96, help="pixels per picture in the PNG")
    g.add_argument("--max-rows", type=int, default=16, help="rows per PNG; more are tiled into OUT_part2.png ...")
    g.add_argument("--out", default="grid.png")
    g.set_defaults(func=_cmd_grid)

    m = ev.add_parser("metrics", help="metrics per checkpoint and the best one, as JSON (default RUN/eval/metrics.json)")
    m.add_argument("run")
    m.add_argument("--json", default=None, help="where to write the JSON")
    m.add_argument("--reference", default=None, help="folder of reference pictures for FID/KID (default: training)")
    m.add_argument("--val-data", default=None, help="held-out folder for the validation loss (default: a split of "
                                                    "the training folder)")
    m.add_argument("--prompts", nargs="+", default=None, help="default: the run's sample prompts")
    m.add_argument("--control", nargs="+", default=None, help="control prompts for bleeding")
    m.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3])
    m.add_argument("--checkpoints", nargs="+", default=["all"])
    m.add_argument("--steps", type=int, default=None, help="denoising steps (default: the run's sample_steps)")
    m.add_argument("--best-by", default="val_loss", choices=["val_loss", "clip_t", "judge_joint_acc"])
    m.set_defaults(func=_cmd_metrics)

    d = ev.add_parser("diagnose", help="read the loss curve (+ RUN/eval/metrics.json): pattern, evidence, advice")
    d.add_argument("run")
    d.add_argument("--json", default=None, help="metrics JSON (default RUN/eval/metrics.json when present)")
    d.set_defaults(func=_cmd_diagnose)
