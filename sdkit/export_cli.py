"""CLI: `python -m sdkit export RUN --format F --out PATH` and `python -m sdkit preflight --config ...`.

    python -m sdkit export runs/x --format kohya --out runs/x/export/x.safetensors   # A1111 / ComfyUI
    python -m sdkit export runs/x --format diffusers                                 # pipe.load_lora_weights
    python -m sdkit export runs/x --format pipeline --checkpoint step_000300         # full diffusers folder
    python -m sdkit preflight --config runs/x/config.yaml --budget-gb 15             # VRAM/RAM estimate
"""
from __future__ import annotations

__all__ = ["add_export_commands"]


def _cmd_export(args):
    from .export import export
    path = export(args.run, args.format, args.out, checkpoint=args.checkpoint)
    hint = {"diffusers": f"pipe.load_lora_weights({str(path)!r})",
            "kohya": "copy it to A1111's models/Lora or ComfyUI's models/loras; or pipe.load_lora_weights(...)",
            "pipeline": f"StableDiffusionPipeline.from_pretrained({str(path)!r})",
            "single-file": "copy it to A1111's models/Stable-diffusion or ComfyUI's models/checkpoints",
            "embedding": f"pipe.load_textual_inversion({str(path)!r}, token=...); A1111: models/../embeddings/",
            "lycoris": "copy it to A1111's models/Lora (1.5+ reads LoHa/LoKr) or ComfyUI's models/loras",
            "hypernetwork": "copy it to A1111's models/hypernetworks"}[args.format]
    print(f"wrote {path}\n  load: {hint}")
    return 0


def _cmd_preflight(args):
    from .cli import config_from_args
    from .preflight import preflight
    config = config_from_args(args)
    report = preflight(config, budget_gb=args.budget_gb, ram_budget_gb=args.ram_budget_gb)
    print(report.text())
    return 0 if report.fits else 3


def add_export_commands(sub):
    """Add `export` and `preflight` to the `python -m sdkit` sub-parsers."""
    from .cli import add_config_flags
    from .export import FORMATS
    p = sub.add_parser("export", help="export a run's weights: diffusers / kohya LoRA, pipeline folder, single file")
    p.add_argument("run", help="run directory (runs/NAME)")
    p.add_argument("--format", choices=FORMATS, default="kohya",
                   help="kohya: one file for A1111/ComfyUI (and diffusers); diffusers: a load_lora_weights folder; "
                        "pipeline: a full diffusers folder; single-file: one original-layout .safetensors")
    p.add_argument("--out", default=None, help="where to write (default: RUN/export/...)")
    p.add_argument("--checkpoint", default=None, help="step_XXXXXX or a checkpoint folder (default: latest)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("preflight", help="estimate GPU memory and RAM of a training config before it runs")
    p.add_argument("--config", help="YAML config (e.g. a run's config.yaml); flags given override it")
    p.add_argument("--budget-gb", type=float, default=15.0, help="GPU memory available (a T4 has ~15 GB usable)")
    p.add_argument("--ram-budget-gb", type=float, default=12.0, help="system RAM available (free Colab: ~12 GB)")
    add_config_flags(p)
    p.set_defaults(func=_cmd_preflight)
