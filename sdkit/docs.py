"""Generate docs/CONFIG.md from the TrainConfig dataclass (so the reference can never drift from the code)."""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

from .config import GROUPS, RECORDED_KEYS, TrainConfig

__all__ = ["config_reference", "write_config_reference"]


def _type_name(hint) -> str:
    if typing.get_origin(hint) is typing.Union:
        inner = [a for a in typing.get_args(hint) if a is not type(None)][0]
        return _type_name(inner) + " or empty"
    if typing.get_origin(hint) in (list, typing.List):
        return f"list of {_type_name(typing.get_args(hint)[0])}"
    return hint.__name__


def config_reference() -> str:
    hints = typing.get_type_hints(TrainConfig)
    lines = ["# Config reference", "",
             "Generated from `sdkit.config.TrainConfig` by `python -m sdkit docs` — do not edit by hand.",
             "Every field is a CLI flag of `python -m sdkit train` (`field_name` → `--field-name`; booleans also "
             "`--no-field-name`), a key of a run's `config.yaml`, and a widget of the notebook form.", ""]
    for group in GROUPS:
        lines += [f"## {group}", "", "| field / flag | type | default | allowed | meaning |", "|---|---|---|---|---|"]
        for f in dataclasses.fields(TrainConfig):
            m = f.metadata
            if m["group"] != group:
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            allowed = ", ".join(str(c) for c in m["choices"] if c is not None) if m.get("choices") else (
                f"{m['min']} … {m['max']}" if m.get("min") is not None else "")
            lines.append(f"| `{f.name}` `--{f.name.replace('_', '-')}` | {_type_name(hints[f.name])} | "
                         f"`{default!r}` | {allowed} | {m['help']} |")
        lines.append("")
    lines += ["## recorded by the run (read-only)", "", "A run's `config.yaml` also records these; they are accepted "
              "and ignored when the file is read back with `--config`.", ""]
    lines += [f"- `{k}`: {v}" for k, v in RECORDED_KEYS.items()]
    return "\n".join(lines) + "\n"


def write_config_reference(path="docs/CONFIG.md") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config_reference(), encoding="utf-8")
    return path
