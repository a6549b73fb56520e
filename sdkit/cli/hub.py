"""`python -m sdkit push RUN --repo user/name`: exported weights, sample grid and model card to the Hub (sdkit.hub).

    python -m sdkit push runs/glyph --repo you/glyph-lora --dry-run /tmp/upload   # write the folder, send nothing
    python -m sdkit push runs/glyph --repo you/glyph-lora --private               # create the repo and upload
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..hub import DEFAULT_LICENSE, HubError, push
from ..models import ModelNotFound
from ..registry import method_class, method_names
from .export import export_formats

__all__ = ["add_push_command"]


def _cmd_push(args):
    try:
        written = push(args.run, args.repo, formats=args.format, private=args.private, dry_run=args.dry_run,
                       checkpoint=args.checkpoint, license=args.license, base_model=args.base_model)
    except (HubError, ModelNotFound, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if written["url"] is None:
        root = Path(args.dry_run)
        files = sorted(p for p in root.rglob("*") if p.is_file())
        print(f"dry run: upload folder written to {root} (nothing sent): {len(files)} files, "
              f"{sum(p.stat().st_size for p in files) / 2 ** 20:.1f} MiB")
        for p in files[:20]:
            print(f"  {p.relative_to(root)}  ({p.stat().st_size:,} bytes)")
    else:
        print(f"pushed to {written['url']}" + (" (private)" if args.private else ""))
    return 0


def _default_formats_text() -> str:
    """"lora diffusers,kohya; full pipeline; ..." from each registered method's `hub_formats`."""
    return "; ".join(f"{name} {','.join(method_class(name).hub_formats)}" for name in method_names())


def add_push_command(sub):
    """Add `push` to the `python -m sdkit` sub-parsers."""
    p = sub.add_parser("push", help="push a run to the Hugging Face Hub: exported weights, sample grid, model card "
                                    "(token from HF_TOKEN)")
    p.add_argument("run", help="run directory (runs/NAME)")
    p.add_argument("--repo", required=True, help="Hub model id, user/name (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--format", default=None,
                   help=f"export format(s), comma-separated ({', '.join(export_formats())}). Default by method: "
                        f"{_default_formats_text()}")
    p.add_argument("--checkpoint", default=None, help="step_XXXXXX or a checkpoint folder (default: latest)")
    p.add_argument("--license", default=None, help=f"license in the card (default: {DEFAULT_LICENSE} for SD 1.x)")
    p.add_argument("--base-model", default=None,
                   help="Hub id of the base model for the card (default: from the run's config when it is a Hub id)")
    p.add_argument("--dry-run", metavar="DIR", default=None,
                   help="write the upload folder (weights, grid.png, README.md) to DIR and stop: nothing is sent")
    p.set_defaults(func=_cmd_push)
