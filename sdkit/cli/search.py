"""`python -m sdkit search SPEC.yaml [--resume] [--trials N] [--out DIR]`: a hyper-parameter search (docs/SEARCH.md).

Exit codes: 0 done · 2 a spec, data, model or file error · 130 stopped (Ctrl-C; continue with --resume).
"""
from __future__ import annotations

import sys

from ..config import ConfigError
from ..data.scan import DataError
from ..search.report import summary_table
from ..search.study import search
from ..models import ModelNotFound

__all__ = ["add_search_command"]


def _cmd_search(args) -> int:
    try:
        result = search(args.spec, resume=args.resume, trials=args.trials, out=args.out,
                        train_progress="bar" if sys.stderr.isatty() else None)
    except (ConfigError, DataError, ModelNotFound, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print()
    print(summary_table(result, markdown=False))
    return 130 if result.interrupted else 0


def add_search_command(sub):
    """Add `search` to the `python -m sdkit` sub-parsers."""
    p = sub.add_parser("search", help="hyper-parameter search: one full run per trial, scored on held-out images "
                                      "(docs/SEARCH.md)")
    p.add_argument("spec", help="search spec YAML (base:, space:, sampler:, trials:, val_data:, ...)")
    p.add_argument("--resume", action="store_true", help="continue the search in the spec's out folder")
    p.add_argument("--trials", type=int, default=None, help="override the spec's trials")
    p.add_argument("--out", default=None, help="override the spec's out folder")
    p.set_defaults(func=_cmd_search)
