"""`python -m sdkit export RUN --format F --out PATH` and `python -m sdkit preflight --config ...`.

    python -m sdkit export runs/x --format kohya --out runs/x/export/x.safetensors   # A1111 / ComfyUI
    python -m sdkit export runs/x --format diffusers                                 # pipe.load_lora_weights
    python -m sdkit export runs/x --format pipeline --checkpoint step_000300         # full diffusers folder
    python -m sdkit preflight --config runs/x/config.yaml --budget-gb 15             # VRAM/RAM estimate
"""
from __future__ import annotations

from ..export import export, formats_of
from ..registry import method_class, method_names
from ..train.preflight import preflight
from .flags import add_config_flags, config_from_args

__all__ = ["add_export_command", "add_preflight_command"]

# format -> how to load what was written
LOAD_HINTS = {
    "diffusers": "pipe.load_lora_weights({path!r})",
    "kohya": "copy it to A1111's models/Lora or ComfyUI's models/loras; or pipe.load_lora_weights(...)",
    "pipeline": "StableDiffusionPipeline.from_pretrained({path!r})",
    "single-file": "copy it to A1111's models/Stable-diffusion or ComfyUI's models/checkpoints",
    "embedding": "pipe.load_textual_inversion({path!r}, token=...); A1111: models/../embeddings/",
    "lycoris": "copy it to A1111's models/Lora (1.5+ reads LoHa/LoKr) or ComfyUI's models/loras",
    "hypernetwork": "copy it to A1111's models/hypernetworks",
}


def export_formats() -> list:
    """Every format some registered method exports as, in registry order (each method says which are its own)."""
    formats = {}
    for name in method_names():
        formats.update(dict.fromkeys(method_class(name).export_formats))
    return list(formats)


def _cmd_export(args):
    path = export(args.run, args.format, args.out, checkpoint=args.checkpoint)  # ExportError: main says it
    fmt = args.format or next(iter(formats_of(args.run)))
    hint = LOAD_HINTS.get(fmt, "see docs/EXPORT.md").format(path=str(path))
    print(f"wrote {path}\n  load: {hint}")
    return 0


def _cmd_preflight(args):
    config = config_from_args(args)
    report = preflight(config, budget_gb=args.budget_gb, ram_budget_gb=args.ram_budget_gb)
    print(report.text())
    return 0 if report.fits else 3


def add_export_command(sub):
    """Add `export` to the `python -m sdkit` sub-parsers."""
    p = sub.add_parser("export", help="export a run's weights: diffusers / kohya LoRA, pipeline folder, single file")
    p.add_argument("run", help="run directory (runs/NAME)")
    p.add_argument("--format", choices=export_formats(), default=None,
                   help="kohya: one file for A1111/ComfyUI (and diffusers); diffusers: a load_lora_weights folder; "
                        "pipeline: a full diffusers folder; single-file: one original-layout .safetensors "
                        "(default: the method's first format, e.g. kohya for lora)")
    p.add_argument("--out", default=None, help="where to write (default: RUN/export/...)")
    p.add_argument("--checkpoint", default=None, help="step_XXXXXX or a checkpoint folder (default: latest)")
    p.set_defaults(func=_cmd_export)


def add_preflight_command(sub):
    """Add `preflight` to the `python -m sdkit` sub-parsers."""
    p = sub.add_parser("preflight", help="estimate GPU memory and RAM of a training config before it runs")
    p.add_argument("--config", help="YAML config (e.g. a run's config.yaml); flags given override it")
    p.add_argument("--budget-gb", type=float, default=15.0, help="GPU memory available (a T4 has ~15 GB usable)")
    p.add_argument("--ram-budget-gb", type=float, default=12.0, help="system RAM available (free Colab: ~12 GB)")
    add_config_flags(p)
    p.set_defaults(func=_cmd_preflight)
