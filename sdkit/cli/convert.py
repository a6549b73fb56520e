"""`python -m sdkit convert SRC --out OUT`: pickles -> .safetensors, diffusers folder <-> one SD file (sdkit.convert).

    python -m sdkit convert model.ckpt --out model.safetensors                  # refuses pickles that run code
    python -m sdkit convert lora.pt --out lora.safetensors --dtype fp16
    python -m sdkit convert runs/x/export/pipeline --out model.safetensors     # diffusers folder -> one SD file
    python -m sdkit convert model.safetensors --out model-diffusers --config-from mini   # one SD file -> folder
"""
from __future__ import annotations

from ..convert import DEFAULT_CONFIG_FROM, DTYPES, convert

__all__ = ["add_convert_command"]


def _cmd_convert(args):
    # ConvertError, UnsafePickleError, a missing file: sdkit.cli.app.main prints the message (exit code 2)
    summary = convert(args.src, args.out, dtype=args.dtype, trust_pickle=args.trust_pickle, config_from=args.config_from)
    print(summary.text())
    return 0


def add_convert_command(sub):
    """Add `convert` to the `python -m sdkit` sub-parsers."""
    p = sub.add_parser("convert", help="convert weights: .ckpt/.pt/.bin -> .safetensors (refuses code-running "
                                       "pickles), diffusers folder <-> one SD .safetensors")
    p.add_argument("src", help=".ckpt/.pt/.pth/.bin/.safetensors file, or a diffusers folder (or preset name)")
    p.add_argument("--out", required=True, help="NAME.safetensors, or a folder (for a diffusers pipeline)")
    p.add_argument("--dtype", choices=list(DTYPES), default=None,
                   help="cast floating tensors (default: keep the source's dtype)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="load a pickle that holds more than tensors: RUNS CODE IN THE FILE; only for trusted sources")
    p.add_argument("--config-from", default=DEFAULT_CONFIG_FROM,
                   help="single file -> folder: a pipeline of the same architecture to take configs, tokenizer and "
                        "scheduler from (preset, folder or Hub id; default sd15 = the SD 1.5 Hub mirror, which needs "
                        "the network; offline use mini or a local folder)")
    p.set_defaults(func=_cmd_convert)
