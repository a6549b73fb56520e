"""`python -m sdkit`: the parser with every sub-command, and `main`, which runs one and turns errors into exit codes.

Exit codes: 0 done · 1 training stopped (NaN loss, out of memory, ...) · 2 a config, data, model or file error
(the message says which and the fix) · a command may return its own (preflight 3: does not fit; search 130: stopped).

Anything a user can cause (a bad flag, file, folder or format) ends in one line `error: ...` and exit code 2, never a
Python traceback; a traceback means a bug in sdkit. `--debug` (anywhere on the line) or SDKIT_DEBUG=1 shows the
traceback for everything.
"""
from __future__ import annotations

import argparse
import os
import sys

from safetensors import SafetensorError

from ..config import ConfigError
from ..convert import ConvertError, UnsafePickleError
from ..data.files import CaptionError
from ..data.scan import DataError
from ..export import ExportError
from ..hub import HubError
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

__all__ = ["build_parser", "main", "COMMANDS", "USER_ERRORS"]

# What a user's input can cause: each message names the file or field and the fix, so no traceback is shown.
USER_ERRORS = (ConfigError, DataError, CaptionError, ModelNotFound, ExportError, ConvertError, UnsafePickleError,
               HubError)

# The sub-commands, in the order `python -m sdkit --help` lists them.
COMMANDS = (add_train_command, add_make_tiny_command, add_show_command, add_quickstart_command, add_mini_command,
            add_bench_command, add_docs_command, add_data_commands, add_export_command, add_preflight_command,
            add_eval_commands, add_convert_command, add_push_command, add_search_command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sdkit", description="sdkit: train Stable Diffusion "
                                     "(LoRA, full) on one loop; see README.md.")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of any error (also: "
                        "SDKIT_DEBUG=1; --debug may stand anywhere on the line)")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("SDKIT_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse printed the usage and what is wrong with the flags (or --help)
        return e.code
    try:
        return args.func(args)
    except TrainingError as e:
        if debug:
            raise
        print(f"training stopped: {e}", file=sys.stderr)
        return 1
    except (*USER_ERRORS, OSError, SafetensorError) as e:
        # OSError: a path the user gave (missing, no permission, read-only, disk full) or a folder that is no model;
        # SafetensorError: a damaged weights file. Everything else (TypeError, KeyError, ...) is a bug: traceback.
        if debug:
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2


def _one_line(e: BaseException) -> str:
    """The message of a user error; an OSError's as "PATH: reason. Fix: ..."."""
    if isinstance(e, SafetensorError):
        return f"a .safetensors file cannot be read ({e}). Fix: re-download or re-create the file (a damaged " \
               f"or truncated copy looks like this); --debug shows which file."
    if isinstance(e, OSError) and e.filename is not None and str(e).startswith("["):
        # a bare OS message, "[Errno 13] Permission denied: 'x'": the path first, then the fix
        if isinstance(e, (FileExistsError, NotADirectoryError)):
            return f"{e.filename}: a file stands where a folder is needed ({e.strerror}). Fix: choose another path, " \
                   f"or move that file away."
        return f"{e.filename}: {e.strerror or e}. Fix: check the path, its permissions and the free disk space."
    return str(e)
