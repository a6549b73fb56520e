"""TrainConfig's fields as command-line flags: `--field-name`, with the field's help, type and allowed values.

The flags come from the one field table, `sdkit.config.config_fields()`; `--method` takes the registry's names as
they are when the parser is built, and its help shows each method's one-line summary (its class docstring).
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..config import TrainConfig, config_fields
from ..registry import method_class

__all__ = ["add_config_flags", "config_from_args", "method_summary"]


def method_summary(name: str) -> str:
    """The first line of a registered method's class docstring."""
    doc = (method_class(name).__doc__ or "").strip()
    return doc.splitlines()[0].strip() if doc else ""


def _none_or(kind):
    def parse(text):
        return None if text.lower() in ("none", "") else kind(text)
    parse.__name__ = kind.__name__
    return parse


def _help(spec) -> str:
    text = spec.help
    if spec.name == "method":
        text += " Methods: " + " | ".join(f"{name}: {method_summary(name).rstrip('.')}" for name in spec.choices) + "."
    # argparse %-formats help strings: a literal % (as in "~20-30% slower") must be written %%
    return f"{text} (default: {spec.default!r})".replace("%", "%%")


def add_config_flags(parser: argparse.ArgumentParser, cls=TrainConfig):
    """One flag per config field: --field-name, with the field's help; defaults come from --config or the class."""
    groups = {}
    for spec in config_fields(cls):
        group = groups.setdefault(spec.group, parser.add_argument_group(spec.group))
        kwargs = dict(dest=spec.name, default=argparse.SUPPRESS, help=_help(spec))
        if spec.type is bool:
            group.add_argument(spec.flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif spec.is_list:
            group.add_argument(spec.flag, nargs="*", type=spec.item_type, metavar="VALUE", **kwargs)
        else:
            choices = [c for c in (spec.choices or []) if c is not None] or None
            group.add_argument(spec.flag, type=_none_or(spec.type) if spec.optional else spec.type, choices=choices,
                               metavar=spec.name.upper() if not choices else None, **kwargs)
    return parser


def config_from_args(args, cls=TrainConfig):
    """The config of a parsed command line: --config's file (or the defaults), then the flags given. Resuming a run
    (`--out RUN --resume latest`) without --config starts from RUN/config.yaml, so only the flags given change."""
    path = getattr(args, "config", None)
    if not path and getattr(args, "resume", None) and getattr(args, "out", None):
        path = Path(args.out) / "config.yaml"
        path = path if path.is_file() else None
    base = cls.from_yaml(path) if path else cls()
    names = {f.name for f in dataclasses.fields(cls)}
    changes = {k: v for k, v in vars(args).items() if k in names}
    return dataclasses.replace(base, **changes)
