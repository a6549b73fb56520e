"""Generate docs/CONFIG.md from the config's field table (so the reference can never drift from the code)."""
from __future__ import annotations

from pathlib import Path

from .config import GROUPS, RECORDED_KEYS, config_fields

__all__ = ["config_reference", "write_config_reference"]


def _allowed(spec) -> str:
    if spec.choices:
        return ", ".join(str(c) for c in spec.choices if c is not None)
    return f"{spec.min} … {spec.max}" if spec.min is not None else ""


def config_reference() -> str:
    specs = config_fields()
    lines = ["# Config reference", "",
             "Generated from `sdkit.config.TrainConfig` by `python -m sdkit docs` — do not edit by hand.",
             "Every field is a CLI flag of `python -m sdkit train` (`field_name` → `--field-name`; booleans also "
             "`--no-field-name`), a key of a run's `config.yaml`, and a widget of the notebook form.", ""]
    for group in GROUPS:
        lines += [f"## {group}", "", "| field / flag | type | default | allowed | meaning |", "|---|---|---|---|---|"]
        for spec in specs:
            if spec.group == group:
                lines.append(f"| `{spec.name}` `{spec.flag}` | {spec.type_name} | `{spec.default!r}` | "
                             f"{_allowed(spec)} | {spec.help} |")
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
