"""The data check, as `sdkit.lint` (the old name): it lives in `sdkit.data.lint`; use `sdkit.data.check`."""
from .data.lint import DATASET_SIZES, Report, check

__all__ = ["check", "Report", "DATASET_SIZES"]
