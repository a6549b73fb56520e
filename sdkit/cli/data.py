"""`python -m sdkit data ...`: check a data folder, caption it, build the sample sets.

    python -m sdkit data check DIR [--json REPORT] [--resolution R] [--caption-ext .txt] [--trigger sks]
                                   [--batch-size B] [--no-bucketing] [--bucket-step S] [--bucket-no-upscale]
    python -m sdkit data caption DIR [--model Salesforce/blip-image-captioning-base] [--overwrite] [--trigger sks]
    python -m sdkit data samples [--out data_samples]

`data check` prints a table and exits 0 when the folder is trainable (warnings allowed), 2 when nothing is usable.
"""
from __future__ import annotations

from ..data.buckets import bucket_options, bucket_rows, format_bucket_table
from ..data.captioner import DEFAULT_CAPTIONER, Captioner, caption_folder
from ..data.dataset import ImageCaptionDataset
from ..data.lint import check
from ..data_samples_build import build_all

__all__ = ["add_data_commands"]


def _cmd_check(args):
    buckets = {} if args.no_bucketing else bucket_options(args.resolution, args.bucket_step,
                                                           args.min_bucket_side, args.max_bucket_side)
    report = check(args.dir, resolution=args.resolution, caption_ext=args.caption_ext, trigger=args.trigger or "",
                   kind=args.kind, layout=args.layout, buckets=buckets.get("buckets"))
    print(report.table(show_info=not args.quiet))
    if report.ok and report.scan is not None:  # the bucket table training will use (and record in buckets.json)
        ds = ImageCaptionDataset(report.scan, args.resolution, bucket_no_upscale=args.bucket_no_upscale, **buckets)
        report.stats["buckets"] = bucket_rows(ds)
        print("\n" + format_bucket_table(report.stats["buckets"], args.batch_size))
    if args.json:
        report.to_json(args.json)
        print(f"report written to {args.json}")
    return 0 if report.ok else 2


def _cmd_caption(args):
    captioner = Captioner(args.model, max_new_tokens=args.max_new_tokens, prompt=args.prompt)
    result = caption_folder(args.dir, captioner, caption_ext=args.caption_ext, overwrite=args.overwrite,
                            trigger=args.trigger or "")
    print(f"wrote {len(result['written'])} caption file(s); kept {len(result['kept'])} existing "
          f"(--overwrite replaces them)")
    return 0


def _cmd_samples(args):
    for path in build_all(args.out):
        print(f"wrote {path}")
    return 0


def add_data_commands(sub):
    """Add `data check|caption|samples` to the subparsers `sub` of `python -m sdkit`."""
    data = sub.add_parser("data", help="check, caption and build datasets (see docs/DATA.md)")
    dsub = data.add_subparsers(dest="data_command", required=True)

    p = dsub.add_parser("check", help="lint a data folder: broken files, sizes, captions, duplicates; "
                                      "exit 0 when trainable")
    p.add_argument("dir")
    p.add_argument("--json", metavar="REPORT", help="also write the report as JSON to this file")
    p.add_argument("--resolution", type=int, default=512, help="training resolution (default: 512)")
    p.add_argument("--caption-ext", default=".txt", help="caption file extension (default: .txt)")
    p.add_argument("--trigger", default="", help="a token every caption should contain (e.g. sks)")
    p.add_argument("--kind", choices=["subject", "style"], default=None, help="for dataset-size advice")
    p.add_argument("--layout", choices=["auto", "folder", "metadata", "kohya"], default="auto")
    p.add_argument("--quiet", action="store_true", help="hide info rows")
    p.add_argument("--batch-size", type=int, default=1, help="warn about buckets with fewer pictures (default: 1)")
    p.add_argument("--no-bucketing", action="store_true", help="as training with bucketing=False: one square size")
    p.add_argument("--bucket-step", type=int, default=None, help="as training's bucket_step (default: resolution/8)")
    p.add_argument("--min-bucket-side", type=int, default=None, help="default: resolution/2")
    p.add_argument("--max-bucket-side", type=int, default=None, help="default: 2 x resolution")
    p.add_argument("--bucket-no-upscale", action="store_true", help="as training's bucket_no_upscale")
    p.set_defaults(func=_cmd_check)

    p = dsub.add_parser("caption", help="write sidecar captions with an image-captioning model")
    p.add_argument("dir")
    p.add_argument("--model", default=DEFAULT_CAPTIONER, help=f"Hub id or local folder (default: {DEFAULT_CAPTIONER})")
    p.add_argument("--caption-ext", default=".txt")
    p.add_argument("--overwrite", action="store_true", help="replace existing caption files")
    p.add_argument("--trigger", default="", help="put this token in front of every caption")
    p.add_argument("--prompt", default=None, help="conditional captioning prefix, e.g. 'a drawing of'")
    p.add_argument("--max-new-tokens", type=int, default=30)
    p.set_defaults(func=_cmd_caption)

    p = dsub.add_parser("samples", help="rebuild data_samples/subject and data_samples/style (procedural)")
    p.add_argument("--out", default=None, help="data_samples folder (default: the one beside the package)")
    p.set_defaults(func=_cmd_samples)
    return data
