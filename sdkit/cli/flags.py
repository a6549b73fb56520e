"""TrainConfig's fields as command-line flags: `--field-name`, with the field's help, type and allowed values."""
from __future__ import annotations

import argparse
import dataclasses
import typing

from ..config import TrainConfig

__all__ = ["add_config_flags", "config_from_args"]


def _none_or(kind):
    def parse(text):
        return None if text.lower() in ("none", "") else kind(text)
    parse.__name__ = kind.__name__
    return parse


def add_config_flags(parser: argparse.ArgumentParser, cls=TrainConfig):
    """One flag per config field: --field-name, with the field's help; defaults come from --config or the class."""
    hints = typing.get_type_hints(cls)
    groups = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata
        group = groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        hint = hints[f.name]
        optional = typing.get_origin(hint) is typing.Union
        if optional:
            hint = [a for a in typing.get_args(hint) if a is not type(None)][0]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{meta['help']} (default: {default!r})"
        kwargs = dict(dest=f.name, default=argparse.SUPPRESS, help=help_text)
        flag = "--" + f.name.replace("_", "-")
        if hint is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(hint) in (list, typing.List):
            group.add_argument(flag, nargs="*", type=typing.get_args(hint)[0], metavar="VALUE", **kwargs)
        else:
            choices = [c for c in (meta.get("choices") or []) if c is not None] or None
            group.add_argument(flag, type=_none_or(hint) if optional else hint, choices=choices,
                               metavar=f.name.upper() if not choices else None, **kwargs)
    return parser


def config_from_args(args, cls=TrainConfig):
    """The config of a parsed command line: --config's file (or the defaults), then the flags given."""
    base = cls.from_yaml(args.config) if getattr(args, "config", None) else cls()
    names = {f.name for f in dataclasses.fields(cls)}
    changes = {k: v for k, v in vars(args).items() if k in names}
    return dataclasses.replace(base, **changes)
