"""The searched fields of a spec's `space:`: each a float/int range (optionally log-scale), categorical choices, or a
grid's listed values, checked against the config's field table (`sdkit.config.config_fields`).

    Param.parse("lr", {"type": "float", "low": 1.0e-5, "high": 1.0e-3, "log": True}, sampler="tpe")
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import typing

from ..config import ConfigError, config_fields

__all__ = ["SearchError", "Param", "NOT_SEARCHABLE", "coerce", "unknown_key", "field_names"]

NOT_SEARCHABLE = {"out": "each trial's run directory is OUT/trial_NNN", "resume": "use --resume on the search"}


class SearchError(ConfigError):
    """A search spec is wrong, or a search folder cannot be used. The message names the key and the fix."""


def field_names() -> list:
    """TrainConfig's field names, in declaration order."""
    return [s.name for s in config_fields()]


def coerce(name, value):
    """YAML reads 1e-4 (no dot) as text: turn numeric text into a number for the int/float fields."""
    kind = next((s.type for s in config_fields() if s.name == name), None)
    if isinstance(value, str) and kind in (int, float):
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if kind is int and number.is_integer() and "." not in value else number
    return value


def unknown_key(where, key, known):
    """The SearchError for a key that is not one of `known`, with the closest known keys."""
    close = difflib.get_close_matches(str(key), list(known), n=2)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    return SearchError(f"{where}: unknown key {key!r}.{hint} Fix: remove it or use one of: {', '.join(known)}.")


@dataclasses.dataclass
class Param:
    """One searched field: a float/int range (optionally log-scale), categorical choices, or grid values."""
    name: str
    type: str                                  # float | int | categorical
    low: typing.Any = None
    high: typing.Any = None
    log: bool = False
    step: typing.Any = None
    choices: list = None                       # categorical choices, or a grid's values
    listed: bool = False                       # written as values: [...] (kept that way in search.yaml)

    @classmethod
    def parse(cls, name, d, sampler) -> "Param":
        where = f"space.{name}"
        example = "{type: float, low: 1.0e-5, high: 1.0e-3, log: true}"
        names = field_names()
        if name not in names:
            close = difflib.get_close_matches(name, names, n=2)
            hint = f" Did you mean {' or '.join(close)}?" if close else ""
            raise SearchError(f"{where}: {name!r} is not a TrainConfig field.{hint} Fix: search fields listed in "
                              f"docs/CONFIG.md.")
        if name in NOT_SEARCHABLE:
            raise SearchError(f"{where}: {name} cannot be searched ({NOT_SEARCHABLE[name]}). Fix: remove it.")
        if not isinstance(d, dict):
            raise SearchError(f"{where}: got {d!r}; expected a mapping like {example} or {{values: [...]}} (grid).")
        for key in d:
            if key not in ("type", "low", "high", "log", "step", "choices", "values"):
                raise unknown_key(where, key, ["type", "low", "high", "log", "step", "choices", "values"])
        # 1a. values: the grid's points (and, for random/tpe, categorical choices)
        if "values" in d:
            if set(d) - {"values"}:
                raise SearchError(f"{where}: give either values: [...] or type/low/high, not both. Fix: keep one.")
            return cls(name, "categorical", choices=_choices(where + ".values", name, d["values"]), listed=True)
        kind = d.get("type")
        if sampler == "grid" and kind != "categorical":
            raise SearchError(f"{where}: a grid search needs the points listed. Fix: {name}: {{values: [a, b, c]}} "
                              f"(e.g. lr: {{values: [1.0e-5, 1.0e-4, 1.0e-3]}}).")
        if kind is None:
            raise SearchError(f"{where}: no type. Fix: add type: float (or int, categorical), e.g. {name}: {example}.")
        if kind == "categorical":
            if "choices" not in d:
                raise SearchError(f"{where}: categorical needs choices. Fix: {name}: {{type: categorical, choices: "
                                  f"[a, b]}}.")
            return cls(name, "categorical", choices=_choices(where + ".choices", name, d["choices"]))
        if kind not in ("float", "int"):
            raise SearchError(f"{where}: type {kind!r} is unknown. Fix: type: float, int or categorical.")
        # 1b. numeric ranges
        for key in ("low", "high"):
            if key not in d:
                raise SearchError(f"{where}: {kind} needs low and high. Fix: {name}: {example}.")
        num = float if kind == "float" else int
        low, high = _number(where + ".low", d["low"], num), _number(where + ".high", d["high"], num)
        step = None if d.get("step") is None else _number(where + ".step", d["step"], num)
        log = d.get("log", False)
        if not isinstance(log, bool):
            raise SearchError(f"{where}.log: got {log!r}; expected true or false.")
        if low > high:
            raise SearchError(f"{where}: low ({low}) is above high ({high}). Fix: swap them.")
        if low == high:
            raise SearchError(f"{where}: low equals high ({low}): nothing to search. Fix: put {name}: {low} in base.")
        if log and low <= 0:
            raise SearchError(f"{where}: log: true needs low > 0 (got {low}). Fix: a positive low (e.g. 1.0e-6), "
                              f"or log: false.")
        if step is not None and (step <= 0 or log):
            raise SearchError(f"{where}.step: got {step}{' with log: true' if log else ''}; expected a positive "
                              f"step on a linear scale. Fix: remove step, or log: false.")
        if kind == "int" and step is None:
            step = 1
        return cls(name, kind, low=low, high=high, log=log, step=step)

    def points(self) -> list:
        """Values that must all make a valid config: the ends of a range, every choice."""
        return list(self.choices) if self.type == "categorical" else [self.low, self.high]

    def suggest(self, trial):
        if self.type == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(self.name, self.low, self.high, log=self.log, step=self.step)
        return trial.suggest_categorical(self.name, self.choices)

    def to_dict(self) -> dict:
        if self.type == "categorical":
            return {"values": list(self.choices)} if self.listed else {"type": "categorical",
                                                                       "choices": list(self.choices)}
        d = {"type": self.type, "low": self.low, "high": self.high, "log": self.log}
        if self.step is not None and not (self.type == "int" and self.step == 1):
            d["step"] = self.step
        return d


def _number(where, value, num):
    if isinstance(value, str):                 # YAML reads 1e-4 (no dot) as text
        with contextlib.suppress(ValueError):
            value = float(value)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (num is int and float(value) != int(value)):
        raise SearchError(f"{where}: got {value!r}; expected {'an integer' if num is int else 'a number'}.")
    return num(value)


def _choices(where, name, values):
    if not isinstance(values, (list, tuple)) or not values:
        raise SearchError(f"{where}: got {values!r}; expected a non-empty list. Fix: {where.split('.')[-1]}: [a, b].")
    out = [coerce(name, v) for v in values]
    for v in out:
        if not (v is None or isinstance(v, (bool, int, float, str))):
            raise SearchError(f"{where}: {v!r} is not a number, text, true/false or null; expected plain values.")
    if len(set(map(repr, out))) != len(out):
        raise SearchError(f"{where}: {values!r} lists a value twice. Fix: list each value once.")
    return out
