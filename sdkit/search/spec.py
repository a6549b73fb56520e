"""A search spec: the fixed settings (`base:`, TrainConfig fields), the searched ones (`space:`), a sampler
(grid | random | tpe), the objective and where held-out images are (docs/SEARCH.md). `SearchSpec.from_dict` checks
the shape; `validate()` checks it against TrainConfig, the model and the folders; `load_spec` reads any form.
"""
from __future__ import annotations

import dataclasses
import datetime
import itertools
import os
import typing
from pathlib import Path


from ..config import ConfigError, TrainConfig, read_yaml_mapping
from ..data.scan import DataError, scan_folder
from ..models import resolve_model
from .space import NOT_SEARCHABLE, Param, SearchError, coerce, unknown_key

__all__ = ["SearchSpec", "load_spec", "SAMPLERS", "OBJECTIVES", "SPEC_KEYS"]

SAMPLERS = ("grid", "random", "tpe")
# objective -> its natural direction. val_loss/x0_psnr: validation_loss() on val_data at every checkpoint.
OBJECTIVES = {"val_loss": "minimize", "x0_psnr": "maximize", "train_loss": "minimize"}
SPEC_KEYS = {
    "base": "TrainConfig fields shared by every trial (model, data, steps, checkpoint_every, ...)",
    "space": "the searched fields: name -> {type: float|int|categorical, ...} or {values: [...]}",
    "sampler": "grid (every combination of `values`), random, or tpe (Bayesian: optuna's TPESampler)",
    "trials": "number of trials (random/tpe; grid: at most the grid size, default all of it)",
    "seed": "seed of the sampler (base.seed is the training seed, shared by every trial)",
    "objective": "val_loss (default), x0_psnr, or train_loss (weaker: no held-out images)",
    "direction": "minimize or maximize (default: the objective's natural one)",
    "out": "search folder (default runs/search-<spec name>)",
    "val_data": "folder of held-out captioned images the trials never train on (needed for val_loss/x0_psnr)",
    "pruning": "true / false / {n_startup_trials: N, n_warmup_steps: S}: stop trials that fall behind (median)",
    "value_at": "best (a trial's value = its best checkpoint, the default) or last (its final checkpoint)",
    "startup_trials": "tpe: random trials before the model takes over (default: a third of trials, 2..10)",
}


@dataclasses.dataclass
class SearchSpec:
    """A parsed search spec. `SearchSpec.from_dict(d)` checks the shape; `validate()` checks it against
    TrainConfig and the folders. Keys and meaning: SPEC_KEYS (docs/SEARCH.md)."""
    base: dict
    space: dict                                # name -> Param, in the order written
    sampler: str = "tpe"
    trials: typing.Optional[int] = None
    seed: int = 0
    objective: str = "val_loss"
    direction: typing.Optional[str] = None
    out: typing.Optional[str] = None
    val_data: typing.Optional[str] = None
    pruning: typing.Optional[dict] = None      # MedianPruner arguments, or None (off)
    value_at: str = "best"
    startup_trials: typing.Optional[int] = None
    source: str = "spec"

    # ---- reading ---------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data, source: str = "spec") -> "SearchSpec":
        if not isinstance(data, dict):
            raise SearchError(f"{source}: expected a mapping with base: and space:, got {type(data).__name__}.")
        for key in data:
            if key not in SPEC_KEYS:
                raise unknown_key(source, key, SPEC_KEYS)
        sampler = data.get("sampler", "tpe")
        if sampler not in SAMPLERS:
            raise SearchError(f"sampler: got {sampler!r}; expected one of {', '.join(SAMPLERS)}. Fix: sampler: tpe "
                              f"(Bayesian), random, or grid.")
        base = data.get("base") or {}
        if not isinstance(base, dict):
            raise SearchError(f"base: got {type(base).__name__}; expected a mapping of TrainConfig fields.")
        for key in base:
            if key in NOT_SEARCHABLE:
                raise SearchError(f"base.{key}: set by the search ({NOT_SEARCHABLE[key]}). Fix: remove it from base"
                                  f"{'; set out: at the top level for the search folder' if key == 'out' else ''}.")
        base = {k: coerce(k, v) for k, v in base.items()}
        space = data.get("space")
        if not isinstance(space, dict) or not space:
            raise SearchError("space: nothing to search. Fix: add space: with at least one field, e.g.\n"
                              "space:\n  lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}")
        params = {name: Param.parse(str(name), d, sampler) for name, d in space.items()}
        both = [n for n in params if n in base]
        if both:
            raise SearchError(f"space.{both[0]}: also set in base. Fix: remove {both[0]} from base (the search "
                              f"chooses it).")
        objective = data.get("objective", "val_loss")
        if objective not in OBJECTIVES:
            raise SearchError(f"objective: got {objective!r}; expected one of {', '.join(OBJECTIVES)}. Fix: "
                              f"objective: val_loss.")
        direction = data.get("direction") or OBJECTIVES[objective]
        if direction not in ("minimize", "maximize"):
            raise SearchError(f"direction: got {direction!r}; expected minimize or maximize.")
        value_at = data.get("value_at", "best")
        if value_at not in ("best", "last"):
            raise SearchError(f"value_at: got {value_at!r}; expected best or last.")
        trials = data.get("trials")
        if trials is not None and (isinstance(trials, bool) or not isinstance(trials, int) or trials < 1):
            raise SearchError(f"trials: got {trials!r}; expected a positive integer. Fix: trials: 10.")
        if trials is None and sampler != "grid":
            raise SearchError(f"trials: missing; a {sampler} search needs a number of trials. Fix: trials: 10 (each "
                              f"trial is a full training run).")
        seed = data.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise SearchError(f"seed: got {seed!r}; expected a non-negative integer.")
        startup = data.get("startup_trials")
        if startup is not None and (isinstance(startup, bool) or not isinstance(startup, int) or startup < 0):
            raise SearchError(f"startup_trials: got {startup!r}; expected an integer >= 0.")
        pruning = _pruning(data.get("pruning", False), base)
        out = data.get("out")
        val_data = data.get("val_data")
        return cls(base=base, space=params, sampler=sampler, trials=trials, seed=seed, objective=objective,
                   direction=direction, out=None if out is None else os.fspath(out),
                   val_data=None if val_data is None else os.fspath(val_data), pruning=pruning, value_at=value_at,
                   startup_trials=startup, source=source)

    @classmethod
    def from_yaml(cls, path) -> "SearchSpec":
        path = Path(path)
        data = read_yaml_mapping(path, "search spec", "pass a YAML file with base: and space: (example: "
                                                      "examples/search_lr.yaml)", error=SearchError)
        spec = cls.from_dict(data, source=str(path))
        if spec.out is None:
            spec.out = f"runs/search-{path.stem}"
        return spec

    # ---- checking against TrainConfig and the folders ------------------------------------------------------------
    def validate(self) -> "SearchSpec":
        try:
            base = TrainConfig.from_dict(self.base, source="base")
            base.validate()
        except ConfigError as e:
            raise SearchError(f"base: {e}") from None
        for p in self.space.values():
            for value in p.points():
                try:
                    base.replace(**{p.name: value}).validate()
                except ConfigError as e:
                    raise SearchError(f"space.{p.name}: the value {value!r} makes an invalid run: {e}") from None
        if self.sampler == "grid":
            size = len(self.grid())
            if self.trials is not None and self.trials > size:
                raise SearchError(f"trials: {self.trials} is more than the grid's {size} points. Fix: remove trials "
                                  f"(a grid runs every point once) or list more values.")
        resolve_model(base.model)     # raises ModelNotFound naming the model when it is not there
        scan_folder(base.data, base.caption_ext, layout=base.data_layout)   # DataError naming a bad training folder
        if self.pruning is not None:
            ce = base.checkpoint_every
            if not ce or ce >= base.steps:
                raise SearchError(f"pruning: base.checkpoint_every is {ce}, so a trial is scored only at its end and "
                                  f"none can be stopped early. Fix: base.checkpoint_every: {max(1, base.steps // 5)} "
                                  f"(a score every fifth of the run), or pruning: false.")
        if self.objective in ("val_loss", "x0_psnr"):
            if not self.val_data:
                raise SearchError(f"val_data: objective {self.objective} needs held-out images. Fix: val_data: DIR, a "
                                  f"folder of captioned images the trials never train on (for the glyph example: "
                                  f"python -c \"from sdkit.mini.glyph import write_glyph_set; "
                                  f"write_glyph_set('runs/glyph-val', n=8, seed=1)\"), or objective: train_loss "
                                  f"(weaker: the training loss rewards memorizing the training images).")
            if Path(self.val_data).resolve() == Path(base.data).resolve():
                raise SearchError(f"val_data: {self.val_data} is the training folder, so the score would reward "
                                  f"memorizing it. Fix: a folder of other images of the same kind.")
            try:
                scan_folder(self.val_data)
            except DataError as e:
                raise SearchError(f"val_data: {e} A held-out folder for the glyph example: python -c \"from "
                                  f"sdkit.mini.glyph import write_glyph_set; write_glyph_set('runs/glyph-val', n=8, "
                                  f"seed=1)\"") from None
        return self

    # ---- using it ----------------------------------------------------------------------------------------------
    def grid(self) -> list:
        """Every combination of the params' values, in the order written (the last param varies fastest)."""
        names = list(self.space)
        return [dict(zip(names, combo)) for combo in itertools.product(*(self.space[n].choices for n in names))]

    def config_for(self, params: dict, run_dir) -> TrainConfig:
        return TrainConfig.from_dict({**self.base, **params, "out": str(run_dir)}, source="trial").validate()

    def n_trials(self) -> int:
        return self.trials if self.sampler != "grid" or self.trials else len(self.grid())

    def to_dict(self) -> dict:
        return {"base": dict(self.base), "space": {n: p.to_dict() for n, p in self.space.items()},
                "sampler": self.sampler, "trials": self.trials, "seed": self.seed, "objective": self.objective,
                "direction": self.direction, "out": self.out, "val_data": self.val_data, "pruning": self.pruning,
                "value_at": self.value_at, "startup_trials": self.startup_trials}


def _pruning(value, base):
    """pruning: false | true | {n_startup_trials, n_warmup_steps} -> MedianPruner arguments or None."""
    if value is False or value is None:
        return None
    steps = coerce("steps", base.get("steps", TrainConfig().steps))
    defaults = {"n_startup_trials": 2, "n_warmup_steps": int(steps) // 4 if isinstance(steps, int) else 0}
    if value is True:
        return defaults
    if not isinstance(value, dict):
        raise SearchError(f"pruning: got {value!r}; expected true, false or {{n_startup_trials: 2, "
                          f"n_warmup_steps: 50}}.")
    for key, v in value.items():
        if key not in defaults:
            raise unknown_key("pruning", key, defaults)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise SearchError(f"pruning.{key}: got {v!r}; expected an integer >= 0.")
    return {**defaults, **value}


def load_spec(spec, **overrides) -> SearchSpec:
    """A SearchSpec from a YAML path, a dict or a SearchSpec; `overrides` replace top-level keys (trials=3)."""
    if isinstance(spec, SearchSpec):
        data, source, default_out = spec.to_dict(), spec.source, spec.out
    elif isinstance(spec, dict):
        data, source, default_out = dict(spec), "spec", None
    else:
        path = Path(spec)
        parsed = SearchSpec.from_yaml(path)
        if not overrides:
            return parsed
        data, source, default_out = parsed.to_dict(), str(path), parsed.out
    data.update({k: v for k, v in overrides.items() if v is not None})
    result = SearchSpec.from_dict(data, source=source)
    if result.out is None:
        result.out = default_out or f"runs/search-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    return result
