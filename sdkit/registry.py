"""The method registry: method name -> where its class lives ("package.module:Class").

This is the one list of training methods. `TrainConfig.method` takes its choices from it, the CLI flag, the
notebook form and docs/CONFIG.md show them, and `sdkit.methods.method_class` loads the class on first use.
Adding a method is one file in `sdkit/methods/` plus one line here (or `register_method` for a method that lives
in your own code: a plugin, a test, a notebook cell). The registry sits at the bottom layer beside `config`, so
it names classes by their import path instead of importing them.
"""
from __future__ import annotations

import importlib

__all__ = ["METHODS", "method_names", "register_method", "method_class"]

METHODS: dict = {
    "lora": "sdkit.methods.lora:LoRAMethod",
    "full": "sdkit.methods.full:FullMethod",
    "dreambooth": "sdkit.methods.dreambooth:DreamBoothMethod",
    "textual-inversion": "sdkit.methods.textual_inversion:TextualInversionMethod",
    "loha": "sdkit.methods.lycoris:LoHaMethod",
    "lokr": "sdkit.methods.lycoris:LoKrMethod",
    "locon": "sdkit.methods.locon:LoConMethod",
    "hypernetwork": "sdkit.methods.hypernetwork:HypernetworkMethod",
    "dora": "sdkit.methods.dora:DoRAMethod",
}


def method_names() -> tuple:
    """The registered method names, in registration order (the order the form and --help show)."""
    return tuple(METHODS)


def register_method(name: str, target) -> None:
    """Register a method: `target` is a Method subclass or its "module:Class" path. Re-registering a name
    replaces it (so a notebook cell can be run twice)."""
    if not name or not isinstance(name, str):
        raise ValueError(f"method name: expected a non-empty string, got {name!r}")
    METHODS[name] = target


def method_class(name: str):
    """The class registered as `name`, imported on first use."""
    try:
        target = METHODS[name]
    except KeyError:
        raise KeyError(f"method {name!r} is not registered; registered: {', '.join(METHODS)}") from None
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        target = getattr(importlib.import_module(module), attr)
        METHODS[name] = target
    return target
