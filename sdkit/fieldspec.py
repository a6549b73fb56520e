"""The field table of a config dataclass: one FieldSpec row per field, read from the field's type and ``metadata``.

`sdkit.config.config_fields()` gives TrainConfig's table; the CLI flags, the notebook form, docs/CONFIG.md and the
search spec are generated from it, and `TrainConfig.validate()` checks every value with `FieldSpec.problem`. This is
the one place that unwraps ``Optional[...]`` and ``List[...]`` annotations and reads help/group/choices/min/max.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import typing

__all__ = ["FieldSpec", "fields_of"]


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """One config field as every generator needs it: `type` with Optional unwrapped (bool, int, float, str, or list,
    then `item_type` says of what), `optional` (None allowed: "empty" / "from the model"), `default` (a fresh copy),
    `choices` (allowed values, None among them when empty is allowed; evaluated when the table is built), `min`/`max`
    (numbers), `widget` ("path" for folders), `help` and `group`."""
    name: str
    type: type
    optional: bool
    is_list: bool
    item_type: typing.Optional[type]
    default: typing.Any
    help: str
    group: str
    choices: typing.Optional[tuple] = None
    min: typing.Any = None
    max: typing.Any = None
    widget: typing.Optional[str] = None

    @property
    def flag(self) -> str:
        """The command-line flag: --field-name."""
        return "--" + self.name.replace("_", "-")

    @property
    def type_name(self) -> str:
        """int, float, str, bool, list of str, ... with " or empty" for an Optional field."""
        name = f"list of {self.item_type.__name__}" if self.is_list else self.type.__name__
        return name + (" or empty" if self.optional else "")

    def problem(self, value) -> typing.Optional[str]:
        """None when `value` is allowed here; else the message: the field, what was expected and the fix."""
        if value is None and self.optional:
            return None
        if isinstance(value, float) and not math.isfinite(value) and self.type is float:
            # nan/inf pass every comparison with min/max and reach torch: one check for every float field
            fix = "or leave it empty (the default)" if self.default is None else f"e.g. the default {self.default!r}"
            return f"{self.name}: got {value!r}; expected a finite number (not nan or inf). Fix: give {self.name} " \
                   f"a number, {fix}."
        wrong = _type_problem(self.name, value, self.type, self.item_type)
        if wrong:
            return wrong
        if self.choices is not None and value not in self.choices:
            allowed = ", ".join(str(c) for c in self.choices if c is not None)
            return f"{self.name}: got {value!r}; expected one of {allowed}. Fix: set {self.name} to one of those."
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            lo, hi = self.min, self.max
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                return f"{self.name}: got {value}; expected a value between {lo} and {hi}. Fix: {self.help}"
        return None


@functools.lru_cache(maxsize=None)
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def fields_of(cls) -> tuple:
    """One FieldSpec per field of the dataclass `cls` (fields made with help/group metadata), in declaration order.
    Choices given as a function are called now."""
    specs = []
    for f in dataclasses.fields(cls):
        hint, optional = _hints(cls)[f.name], False
        if typing.get_origin(hint) is typing.Union:          # Optional[X]
            hint, optional = [a for a in typing.get_args(hint) if a is not type(None)][0], True
        is_list = typing.get_origin(hint) in (list, typing.List)
        meta = f.metadata
        choices = meta.get("choices")
        choices = tuple(choices() if callable(choices) else choices) if choices is not None else None
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        specs.append(FieldSpec(name=f.name, type=list if is_list else hint, optional=optional, is_list=is_list,
                               item_type=typing.get_args(hint)[0] if is_list else None, default=default,
                               help=meta["help"], group=meta["group"], choices=choices, min=meta.get("min"),
                               max=meta.get("max"), widget=meta.get("widget")))
    return tuple(specs)


def _type_problem(name, value, kind, item_type=None) -> typing.Optional[str]:
    """The message when `value` is not a `kind` (bool/int/float/str, or a list of `item_type`); else None."""
    if kind is list:
        if not isinstance(value, (list, tuple)):
            return f"{name}: got {value!r}; expected a list. Fix: {name}=[{value!r}]."
        return next((p for p in (_type_problem(name, v, item_type) for v in value) if p), None)
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, (str, os.PathLike)),
    }[kind](value)
    if ok and kind is float and not math.isfinite(value):  # a list item; single values are checked in problem()
        return f"{name}: got {value!r}; expected a finite number (not nan or inf). Fix: give {name} a number."
    if ok:
        return None
    return (f"{name}: got {value!r} ({type(value).__name__}); expected {kind.__name__}. "
            f"Fix: give {name} a {kind.__name__} value.")
