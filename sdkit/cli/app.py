"""`python -m sdkit`: the parser with every sub-command, and `main`, which runs one and turns errors into exit codes.

Exit codes: 0 done · 1 training stopped (NaN loss, out of memory, ...) · 2 a config, data, model or file error
(the message says which and the fix) · a command may return its own (preflight 3: does not fit; search 130: stopped).
"""
from __future__ import annotations

import argparse
import sys

from ..config import ConfigError
from ..data.scan import DataError
from ..models import ModelNotFound
from ..train.loop import TrainingError
from .convert import add_convert_command
from .data import add_data_commands
from .evaluate import add_eval_commands
from .export import add_export_command, add_preflight_command
from .hub import add_push_command
from .mini import add_make_tiny_command, add_mini_command, add_quickstart_command
from .search import add_search_command
from .tools import add_bench_command, add_docs_command
from .train import add_show_command, add_train_command

__all__ = ["build_parser", "main", "COMMANDS"]

# The sub-commands, in the order `python -m sdkit --help` lists them.
COMMANDS = (add_train_command, add_make_tiny_command, add_show_command, add_quickstart_command, add_mini_command,
            add_bench_command, add_docs_command, add_data_commands, add_export_command, add_preflight_command,
            add_eval_commands, add_convert_command, add_push_command, add_search_command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sdkit", description="sdkit: train Stable Diffusion "
                                     "(LoRA, full) on one loop; see README.md.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DataError, ModelNotFound, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingError as e:
        print(f"training stopped: {e}", file=sys.stderr)
        return 1
