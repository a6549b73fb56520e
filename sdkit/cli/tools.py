"""`python -m sdkit bench train` (sdkit's loop against a bare reference loop) and `python -m sdkit docs`."""
from __future__ import annotations

import json

from ..bench import bench_train
from ..docs import write_config_reference

__all__ = ["add_bench_command", "add_docs_command"]


def _cmd_bench(args):
    result = bench_train(quick=args.quick, repeats=args.repeats, json_path=args.json)
    print(json.dumps(result, indent=1))
    print(f"sdkit {result['sdkit_steps_per_s']:.3f} steps/s vs reference {result['reference_steps_per_s']:.3f} "
          f"steps/s: ratio {result['ratio_vs_reference']:.3f}")
    return 0


def _cmd_docs(args):
    path = write_config_reference(args.out)
    print(f"wrote {path}")
    return 0


def add_bench_command(sub):
    p = sub.add_parser("bench", help="benchmarks: `bench train` = sdkit's loop vs a bare reference loop")
    p.add_argument("what", choices=["train"])
    p.add_argument("--quick", action="store_true", help="tiny pipeline, few steps (CPU, seconds)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="write the result here")
    p.set_defaults(func=_cmd_bench)


def add_docs_command(sub):
    p = sub.add_parser("docs", help="regenerate docs/CONFIG.md from the config dataclass")
    p.add_argument("--out", default="docs/CONFIG.md")
    p.set_defaults(func=_cmd_docs)
