"""Training methods: one file each, everything that differs about a method on its class (sdkit/methods/base.py
lists what that is). The registry of names is sdkit/registry.py; `make_method(config)` builds the one a config
names. See docs/ARCHITECTURE.md for how to add one (sdkit/methods/dora.py is the worked example)."""
from .base import (PIPELINE_EXPORTS, ExportInfo, Method, PeftAdapterMethod, make_method, method_class,
                   method_names, split_prefix, with_prior_preservation)

__all__ = ["Method", "PeftAdapterMethod", "ExportInfo", "PIPELINE_EXPORTS", "make_method", "method_class",
           "method_names", "split_prefix", "with_prior_preservation"]
