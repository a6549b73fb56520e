"""Hyper-parameter search: many real runs, one objective, optuna choosing what to try next.

    from sdkit.search import search, summary_table
    result = search("examples/search_lr.yaml")          # or a dict with the same keys
    print(summary_table(result))                       # one row per trial, the best marked
    pipe = result.best_run.load_pipeline(result.best["checkpoint"])

    python -m sdkit search examples/search_lr.yaml [--resume] [--trials N] [--out DIR]   (sdkit/cli/search.py)

A spec (docs/SEARCH.md) names the fixed settings (`base:`, TrainConfig fields), the searched ones (`space:`), a
sampler (grid | random | tpe), the objective and where held-out images are. Every trial is a normal sdkit run
directory, OUT/trial_000/, trained by the one training loop; a callback scores each checkpoint with the
deterministic validation loss on the trainer's current weights, reports it to optuna and, when the pruner says the
trial is behind, stops the run (which writes a checkpoint and ends).

OUT/search.yaml   the spec as read (a resume must match it)     OUT/study.db     optuna's SQLite storage
OUT/trial_NNN/    one run directory per trial                   OUT/summary.json every trial + the best, with its rule
OUT/summary.md    the same as a table                           OUT/search.png   objective per trial, vs each param

One module per concern: `space` (the searched fields: Param), `spec` (SearchSpec: reading and checking a spec),
`study` (the optuna study, trials, scoring and pruning: search, TrialCallback), `report` (SearchResult, the summary
table and the figure). optuna is imported only when a search starts, so `python -m sdkit --help` works without it.
"""
from .report import SearchResult, load_result, search_figure, summary_table
from .space import Param, SearchError
from .spec import OBJECTIVES, SAMPLERS, SPEC_KEYS, SearchSpec, load_spec
from .study import TrialCallback, search

__all__ = ["search", "SearchSpec", "SearchResult", "SearchError", "Param", "TrialCallback", "load_spec",
           "load_result", "summary_table", "search_figure", "SAMPLERS", "OBJECTIVES", "SPEC_KEYS"]
