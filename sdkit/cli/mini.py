"""`python -m sdkit make-tiny DIR`, `quickstart` and `mini build|eval`: the offline worlds sdkit ships."""
from __future__ import annotations

import json
from pathlib import Path

from ..mini.pipeline import build as build_mini
from ..mini.pipeline import evaluate as evaluate_mini
from ..models import make_tiny
from ..quickstart import quickstart

__all__ = ["add_make_tiny_command", "add_quickstart_command", "add_mini_command"]


def _cmd_make_tiny(args):
    path = make_tiny(args.dir, seed=args.seed)
    print(f"tiny pipeline written to {path}; load it with StableDiffusionPipeline.from_pretrained({str(path)!r})")
    return 0


def _cmd_quickstart(args):
    quickstart(out=args.out, steps=args.steps)
    return 0


def _cmd_mini(args):
    if args.action == "build":
        report = build_mini(root=args.root, steps=args.steps, quick=args.quick, skip_parts=args.skip_parts)
    else:
        report = {}
        for g in args.guidance:
            for s in args.steps_list:
                r = evaluate_mini(args.model, n_seen=args.n_seen, seeds=tuple(range(args.seeds)), steps=s,
                                  guidance=g)
                report[f"guidance={g},steps={s}"] = r
                print(f"guidance {g:>4}  steps {s:>3}  seen joint {r['seen']['joint_acc']:.3f} (digit "
                      f"{r['seen']['digit_acc']:.3f} fg {r['seen']['fg_acc']:.3f} bg {r['seen']['bg_acc']:.3f})  "
                      f"held-out joint {r['held_out']['joint_acc']:.3f} (digit {r['held_out']['digit_acc']:.3f} "
                      f"fg {r['held_out']['fg_acc']:.3f} bg {r['held_out']['bg_acc']:.3f})", flush=True)
    text = json.dumps(report, indent=1)
    if args.json:
        Path(args.json).write_text(text)
    print(text)
    return 0


def add_make_tiny_command(sub):
    p = sub.add_parser("make-tiny", help="write a tiny random SD pipeline (for tests) with save_pretrained")
    p.add_argument("dir")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_make_tiny)


def add_quickstart_command(sub):
    p = sub.add_parser("quickstart", help="the README's main job: a short real LoRA training, offline")
    p.add_argument("--out", default="runs/quickstart")
    p.add_argument("--steps", type=int, default=None)
    p.set_defaults(func=_cmd_quickstart)


def add_mini_command(sub):
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
