"""Hyper-parameter search: many real runs, one objective, optuna choosing what to try next.

    from sdkit.hpsearch import search, summary_table
    result = search("examples/search_lr.yaml")          # or a dict with the same keys
    print(summary_table(result))                       # one row per trial, the best marked
    pipe = result.best_run.load_pipeline(result.best["checkpoint"])

    python -m sdkit search examples/search_lr.yaml [--resume] [--trials N] [--out DIR]

A spec (docs/SEARCH.md) names the fixed settings (`base:`, TrainConfig fields), the searched ones (`space:`), a
sampler (grid | random | tpe), the objective and where held-out images are. Every trial is a normal sdkit run
directory, OUT/trial_000/, trained by the one training loop; a callback scores each checkpoint with the
deterministic validation loss (sdkit.evaluate.validation_loss) on the trainer's current weights, reports it to
optuna and, when the pruner says the trial is behind, stops the run (which writes a checkpoint and ends).

OUT/search.yaml   the spec as read (a resume must match it)     OUT/study.db     optuna's SQLite storage
OUT/trial_NNN/    one run directory per trial                   OUT/summary.json every trial + the best, with its rule
OUT/summary.md    the same as a table                           OUT/search.png   objective per trial, vs each param

optuna is imported only when a search starts, so `python -m sdkit --help` works without it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import difflib
import itertools
import json
import math
import os
import sys
import time
import typing
from pathlib import Path

import yaml

from .config import ConfigError, TrainConfig
from .train.callbacks import Callback, MetricsCallback

__all__ = ["search", "SearchSpec", "SearchResult", "SearchError", "Param", "TrialCallback", "load_spec",
           "load_result", "summary_table", "search_figure", "add_search_command"]

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
NOT_SEARCHABLE = {"out": "each trial's run directory is OUT/trial_NNN", "resume": "use --resume on the search"}


class SearchError(ConfigError):
    """A search spec is wrong, or a search folder cannot be used. The message names the key and the fix."""


# ---- 1. the spec -------------------------------------------------------------------------------------------------
_HINTS = typing.get_type_hints(TrainConfig)
_FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]


def _field_type(name):
    """int / float / str / bool / list for a TrainConfig field (Optional unwrapped)."""
    hint = _HINTS[name]
    if typing.get_origin(hint) is typing.Union:
        hint = [a for a in typing.get_args(hint) if a is not type(None)][0]
    return typing.get_origin(hint) or hint


def _coerce(name, value):
    """YAML reads 1e-4 (no dot) as text: turn numeric text into a number for the int/float fields."""
    kind = _field_type(name) if name in _HINTS else None
    if isinstance(value, str) and kind in (int, float):
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if kind is int and number.is_integer() and "." not in value else number
    return value


def _unknown(where, key, known):
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
        if name not in _FIELDS:
            close = difflib.get_close_matches(name, _FIELDS, n=2)
            hint = f" Did you mean {' or '.join(close)}?" if close else ""
            raise SearchError(f"{where}: {name!r} is not a TrainConfig field.{hint} Fix: search fields listed in "
                              f"docs/CONFIG.md.")
        if name in NOT_SEARCHABLE:
            raise SearchError(f"{where}: {name} cannot be searched ({NOT_SEARCHABLE[name]}). Fix: remove it.")
        if not isinstance(d, dict):
            raise SearchError(f"{where}: got {d!r}; expected a mapping like {example} or {{values: [...]}} (grid).")
        for key in d:
            if key not in ("type", "low", "high", "log", "step", "choices", "values"):
                raise _unknown(where, key, ["type", "low", "high", "log", "step", "choices", "values"])
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
    out = [_coerce(name, v) for v in values]
    for v in out:
        if not (v is None or isinstance(v, (bool, int, float, str))):
            raise SearchError(f"{where}: {v!r} is not a number, text, true/false or null; expected plain values.")
    if len(set(map(repr, out))) != len(out):
        raise SearchError(f"{where}: {values!r} lists a value twice. Fix: list each value once.")
    return out


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
                raise _unknown(source, key, SPEC_KEYS)
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
        base = {k: _coerce(k, v) for k, v in base.items()}
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
        if not path.is_file():
            raise SearchError(f"search spec {path} does not exist. Fix: pass a YAML file with base: and space: "
                              f"(example: examples/search_lr.yaml).")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise SearchError(f"{path}: not valid YAML ({e}).") from None
        spec = cls.from_dict(data, source=str(path))
        if spec.out is None:
            spec.out = f"runs/search-{path.stem}"
        return spec

    # ---- checking against TrainConfig and the folders ------------------------------------------------------------
    def validate(self) -> "SearchSpec":
        from .data import DataError, scan_folder
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
        from .models import resolve_model
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
                                  f"(weaker: the training loss rewards memorising the training images).")
            if Path(self.val_data).resolve() == Path(base.data).resolve():
                raise SearchError(f"val_data: {self.val_data} is the training folder, so the score would reward "
                                  f"memorising it. Fix: a folder of other images of the same kind.")
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
    steps = _coerce("steps", base.get("steps", TrainConfig().steps))
    defaults = {"n_startup_trials": 2, "n_warmup_steps": int(steps) // 4 if isinstance(steps, int) else 0}
    if value is True:
        return defaults
    if not isinstance(value, dict):
        raise SearchError(f"pruning: got {value!r}; expected true, false or {{n_startup_trials: 2, "
                          f"n_warmup_steps: 50}}.")
    for key, v in value.items():
        if key not in defaults:
            raise _unknown("pruning", key, defaults)
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


# ---- 2. scoring a trial: a callback on the training loop ------------------------------------------------------------
class TrialCallback(Callback):
    """Scores every checkpoint of one trial, reports the score to optuna (trial.report) and, when the pruner says
    the trial is behind the others at this step, stops the run through the trainer's stop flag: the loop then
    ends cleanly with that checkpoint written. Holds no training logic.

    val: (images, captions) of the held-out set, or None for objective train_loss."""

    def __init__(self, trial, objective: str = "val_loss", val=None, pruning: bool = False, baseline: bool = False,
                 say=print):
        self.trial, self.objective, self.val, self.pruning = trial, objective, val, pruning
        self.want_baseline, self.say = baseline, say or (lambda *a: None)
        self.history, self.losses = [], []
        self.baseline, self.pruned_at = None, None

    def on_train_start(self, trainer):
        if self.want_baseline and self.val is not None and trainer.step == 0:
            self.baseline = self.score(trainer)          # the base model: what training has to beat

    def on_log(self, trainer, logs):
        self.losses.append(logs["loss"])

    def on_message(self, trainer, level, text):
        if level != "info":
            self.say(f"    [{level}] {text}")

    def on_checkpoint(self, trainer, step, path):
        numbers = self.score(trainer)
        self.history.append({"step": step, **numbers})
        MetricsCallback._write(trainer, {"step": step, "event": "search_score", **numbers, "time": time.time()})
        value = numbers[self.objective]
        self.say(f"    step {step:>6}: {self.objective} {value:.5f}")
        if not math.isfinite(value):
            return
        self.trial.report(value, step)
        if self.pruning and step < trainer.config.steps and self.trial.should_prune():
            self.pruned_at = step
            trainer.stop.event.set()                    # the loop stops before the next step; checkpoint kept
            self.say(f"    pruned at step {step}: behind the median of earlier trials at this step")

    def score(self, trainer) -> dict:
        """{objective: value, ...} with the trainer's current weights (EMA weights when the run keeps them)."""
        if self.objective == "train_loss":
            return {"train_loss": _tail_mean(self.losses)}
        images, captions = self.val
        out = trainer.validation_loss(images, captions, x0_psnr=self.objective == "x0_psnr")
        return {k: v for k, v in out.items() if k in ("val_loss", "x0_psnr")}


def _tail_mean(losses, fraction: float = 0.2) -> float:
    """Mean of the last `fraction` of the logged losses (at least one): objective train_loss."""
    if not losses:
        return float("nan")
    k = max(1, math.ceil(len(losses) * fraction))
    return float(sum(losses[-k:]) / k)


# ---- 3. the search loop ------------------------------------------------------------------------------------------
def _import_optuna():
    try:
        import optuna
    except ImportError:
        raise SearchError("optuna is not installed; the search uses its samplers and pruner. Fix: "
                          "pip install 'optuna>=3.0' (it is in requirements.txt).") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _sampler(optuna, spec: SearchSpec, n_before: int):
    # A resumed random/tpe search reseeds with seed + trials so far, so it does not replay the first draws.
    seed = spec.seed + n_before
    if spec.sampler == "tpe":
        startup = spec.startup_trials if spec.startup_trials is not None else min(10, max(2, spec.n_trials() // 3))
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)
    # random, and grid: a grid's points are enqueued one by one (study.enqueue_trial), so the sampler never draws.
    return optuna.samplers.RandomSampler(seed=seed)


def _key(params: dict) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in params.items()))


def search(spec, *, resume: bool = False, progress=print, train_progress=None, **overrides) -> "SearchResult":
    """Run (or, with resume=True, continue) a search; return a SearchResult (summary.json's content).

    spec: a YAML path, a dict, or a SearchSpec; overrides replace top-level keys (trials=3, out="runs/s").
    progress: where the search's lines go (None: silent); train_progress: each trial's own display ("bar",
    "print" or None, as in sdkit.train).
    Every trial is a full training run in OUT/trial_NNN/. Ctrl-C stops the current trial with a checkpoint and
    ends the search; `resume=True` continues it (the interrupted trial is run again as a new trial)."""
    from .evaluate.metrics import load_folder
    from .train import TrainingError, train
    say = progress or (lambda *a: None)
    spec = load_spec(spec, **overrides).validate()
    optuna = _import_optuna()
    from optuna.trial import TrialState

    # 3a. the search folder: new, or the same spec resumed
    out = Path(spec.out)
    db, spec_file = out / "study.db", out / "search.yaml"
    record = spec.to_dict()
    if resume:
        if not db.is_file():
            raise SearchError(f"resume: {out} holds no search (no study.db). Fix: run without --resume to start it.")
        old = yaml.safe_load(spec_file.read_text(encoding="utf-8")) if spec_file.is_file() else {}
        changed = [k for k in record if k not in ("trials", "out") and old.get(k) != record[k]]
        if changed:
            raise SearchError(f"resume: the spec differs from {spec_file} in {', '.join(changed)}; a search's trials "
                              f"are only comparable under one spec. Fix: resume with that spec (trials may grow), "
                              f"or start a new search with another out.")
    elif out.exists() and any(out.iterdir()):
        raise SearchError(f"out: {out} is not empty{' (it holds a search)' if db.is_file() else ''}. Fix: resume it "
                          f"(--resume / resume=True) or choose a new out.")
    out.mkdir(parents=True, exist_ok=True)
    spec_file.write_text("# sdkit search spec as read; `python -m sdkit search THIS_FILE --resume` continues it.\n"
                         + yaml.safe_dump(record, sort_keys=False), encoding="utf-8")
    pruner = optuna.pruners.MedianPruner(**spec.pruning) if spec.pruning else optuna.pruners.NopPruner()
    storage = optuna.storages.RDBStorage(f"sqlite:///{db.resolve()}")
    study = optuna.create_study(storage=storage, study_name="sdkit-search", direction=spec.direction, pruner=pruner,
                                load_if_exists=resume)
    study.sampler = _sampler(optuna, spec, len(study.trials))
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):    # killed without a word: interrupted
        storage.set_trial_user_attr(t._trial_id, "interrupted", True)
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)

    val = load_folder(spec.val_data) if spec.objective != "train_loss" else None
    grid = spec.grid() if spec.sampler == "grid" else None
    total = spec.n_trials()
    say(f"search: {spec.sampler}, {total} trials of {spec.base.get('steps', TrainConfig().steps)} steps, "
        f"{spec.objective} ({spec.direction}), out {out}")

    def counted():   # finished trials that count toward `trials` (interrupted ones are run again)
        return [t for t in study.get_trials(deepcopy=False)
                if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
                or (t.state == TrialState.FAIL and not t.user_attrs.get("interrupted"))]

    # 3b. one trial after another
    interrupted = False
    while True:
        done = counted()
        if grid is not None:
            seen = {_key(t.params) for t in done}
            todo = [p for p in grid if _key(p) not in seen]
            if not todo or len(done) >= total:
                break
            study.enqueue_trial(todo[0])
        elif len(done) >= total:
            break
        trial = study.ask()
        params = {name: p.suggest(trial) for name, p in spec.space.items()}
        run_dir = out / f"trial_{trial.number:03d}"
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in params.items())
        say(f"trial {trial.number} ({len(done) + 1}/{total}): {shown}")
        trial.set_user_attr("run", run_dir.name)
        callback = TrialCallback(trial, spec.objective, val, pruning=spec.pruning is not None,
                                 baseline="baseline" not in study.user_attrs, say=say)
        t0 = time.time()
        try:
            run = train(spec.config_for(params, run_dir), callbacks=[callback], progress=train_progress)
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            study.tell(trial, state=TrialState.FAIL)
            _write_outputs(study, spec)
            say(f"search interrupted during trial {trial.number}; continue with --resume (resume=True).")
            raise
        except TrainingError as e:                     # NaN loss, out of memory: this trial fails, the search goes on
            trial.set_user_attr("error", str(e))
            trial.set_user_attr("seconds", round(time.time() - t0, 2))
            study.tell(trial, state=TrialState.FAIL)
            say(f"  failed: {e}")
            _write_outputs(study, spec, plot=False)
            continue
        except Exception as e:                         # anything else ends the search; a resume runs this trial again
            trial.set_user_attr("error", f"{type(e).__name__}: {e}")
            trial.set_user_attr("interrupted", True)
            study.tell(trial, state=TrialState.FAIL)
            _write_outputs(study, spec)
            raise
        if callback.baseline is not None:
            study.set_user_attr("baseline", callback.baseline)
        history = callback.history
        trial.set_user_attr("history", history)
        trial.set_user_attr("last_step", run.final_step)
        trial.set_user_attr("seconds", round(time.time() - t0, 2))
        value, best_step = _trial_value(history, spec)
        trial.set_user_attr("best_step", best_step)
        if callback.pruned_at is not None:
            trial.set_user_attr("value", value)
            study.tell(trial, state=TrialState.PRUNED)
            say(f"  pruned at step {callback.pruned_at} ({time.time() - t0:.1f} s)")
        elif run.stopped_early:                        # Ctrl-C (first press): the run stopped with a checkpoint
            trial.set_user_attr("interrupted", True)
            study.tell(trial, state=TrialState.FAIL)
            interrupted = True
            say(f"search stopped during trial {trial.number}; continue with --resume (resume=True).")
            break
        elif value is None or not math.isfinite(value):
            trial.set_user_attr("error", f"no finite {spec.objective} was measured")
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, value)
            say(f"  {spec.objective} {value:.5f} at step {best_step} ({time.time() - t0:.1f} s)")
        _write_outputs(study, spec, plot=False)
    result = _write_outputs(study, spec)
    result.interrupted = interrupted
    if result.best:
        say(f"best: trial {result.best['number']} ({', '.join(f'{k}={_fmt(v)}' for k, v in result.best['params'].items())})"
            f" {spec.objective} {result.best['value']:.5f} at step {result.best['best_step']}; {result.rule}")
    say(f"summary: {out / 'summary.md'}  plot: {out / 'search.png'}")
    return result


def _trial_value(history, spec):
    """(value, step) of a trial: its best checkpoint (value_at best) or its last one."""
    rows = [h for h in history if isinstance(h.get(spec.objective), (int, float)) and math.isfinite(h[spec.objective])]
    if not rows:
        return None, None
    if spec.value_at == "last" or spec.objective == "train_loss":
        row = rows[-1]
    else:
        pick = min if spec.direction == "minimize" else max
        row = pick(rows, key=lambda h: h[spec.objective])
    return float(row[spec.objective]), int(row["step"])


def _fmt(v):
    return f"{v:.3g}" if isinstance(v, float) else str(v)


# ---- 4. results: summary.json, summary.md, search.png ------------------------------------------------------------------
@dataclasses.dataclass
class SearchResult:
    """What a search found. `trials`: one dict per trial (number, params, value, state, run, best_step, history,
    seconds, error); `best`: the best trial (+ checkpoint path), chosen by `rule`; `baseline`: the base model."""
    path: Path
    spec: dict
    objective: str
    direction: str
    trials: list
    best: typing.Optional[dict]
    rule: str
    baseline: typing.Optional[dict] = None
    interrupted: bool = False

    @property
    def best_run(self):
        """The best trial's run directory as a Run (load_pipeline(checkpoint) gives its weights)."""
        from .run import Run
        return Run(self.path / self.best["run"]) if self.best else None

    def table(self) -> str:
        return summary_table(self)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["path"] = str(self.path)
        return d

    def __repr__(self):
        best = f"trial {self.best['number']} {self.objective}={self.best['value']:.5f}" if self.best else "none"
        return f"SearchResult({str(self.path)!r}, trials={len(self.trials)}, best={best})"


def _collect(study, spec: SearchSpec) -> SearchResult:
    from optuna.trial import TrialState
    from .train.checkpoint import step_name
    out = Path(spec.out)
    rows = []
    for t in study.get_trials(deepcopy=False):
        state = t.state.name.lower()
        if t.state == TrialState.FAIL and t.user_attrs.get("interrupted"):
            state = "interrupted"
        value = t.value if t.state == TrialState.COMPLETE else t.user_attrs.get("value")
        rows.append({"number": t.number, "params": dict(t.params), "value": value, "state": state,
                     "run": t.user_attrs.get("run", f"trial_{t.number:03d}"), "best_step": t.user_attrs.get("best_step"),
                     "last_step": t.user_attrs.get("last_step"), "seconds": t.user_attrs.get("seconds"),
                     "error": t.user_attrs.get("error"), "history": t.user_attrs.get("history", [])})
    steps = TrainConfig.from_dict(spec.base, source="base").steps
    word = "lowest" if spec.direction == "minimize" else "highest"
    at = "at its best checkpoint" if spec.value_at == "best" and spec.objective != "train_loss" else "at its last step"
    rule = (f"{word} {spec.objective} (each trial scored {at}) among the trials that ran all {steps} steps; pruned, "
            f"failed and interrupted trials are not eligible")
    eligible = [r for r in rows if r["state"] == "complete" and r["value"] is not None and math.isfinite(r["value"])]
    best = None
    if eligible:
        sign = 1 if spec.direction == "minimize" else -1
        best = dict(min(eligible, key=lambda r: (sign * r["value"], r["number"])))
        best.pop("history")
        best["checkpoint"] = str(out / best["run"] / "checkpoints" / step_name(best["best_step"]))
    return SearchResult(path=out, spec=spec.to_dict(), objective=spec.objective, direction=spec.direction,
                        trials=rows, best=best, rule=rule, baseline=study.user_attrs.get("baseline"))


def _write_outputs(study, spec: SearchSpec, plot: bool = True) -> SearchResult:
    """summary.json and summary.md (after every trial), search.png (at the end, or when `plot`)."""
    result = _collect(study, spec)
    out = result.path
    (out / "summary.json").write_text(json.dumps(result.to_dict(), indent=1), encoding="utf-8")
    (out / "summary.md").write_text(f"# Search {out.name}\n\n{summary_table(result, markdown=True)}\n", encoding="utf-8")
    if plot:
        from .plot import figure_png
        (out / "search.png").write_bytes(figure_png(search_figure(result)))
    return result


def load_result(path) -> SearchResult:
    """A SearchResult read back from a search folder (or its summary.json)."""
    path = Path(path)
    file = path / "summary.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no search summary there. Fix: pass a search folder (runs/search-NAME).")
    d = json.loads(file.read_text(encoding="utf-8"))
    d["path"] = Path(d["path"])
    return SearchResult(**d)


def summary_table(result, markdown: bool = False) -> str:
    """One row per trial (state, params, objective, best step, run), the best marked with *, then its rule.
    `result`: a SearchResult, its dict, or a search folder."""
    if isinstance(result, (str, os.PathLike)):
        result = load_result(result)
    if isinstance(result, dict):
        result = SearchResult(**{**result, "path": Path(result["path"])})
    names = list(result.spec["space"])
    obj = result.objective
    head = ["trial", "state", *names, obj, "best step", "seconds", "run"]
    best = result.best["number"] if result.best else None
    lines = []
    for r in result.trials:
        value = "" if r["value"] is None else f"{r['value']:.5f}"
        cells = [f"{r['number']}{' *' if r['number'] == best else ''}", r["state"],
                 *[_fmt(r["params"].get(n, "")) for n in names], value, "" if not value else str(r["best_step"]),
                 "" if r["seconds"] is None else f"{r['seconds']:.0f}", r["run"]]
        lines.append(cells)
    if markdown:
        text = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        text += ["| " + " | ".join(c) + " |" for c in lines]
    else:
        widths = [max(len(h), *(len(c[i]) for c in lines)) if lines else len(h) for i, h in enumerate(head)]
        text = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
        text += ["  ".join(c.ljust(w) for c, w in zip(cells, widths)) for cells in lines]
    text.append("")
    if result.baseline and obj in result.baseline:
        text.append(f"base model (step 0, before training): {obj} {result.baseline[obj]:.5f}")
    if result.best:
        b = result.best
        text.append(f"* best: trial {b['number']} ({', '.join(f'{k}={_fmt(v)}' for k, v in b['params'].items())}), "
                    f"{obj} {b['value']:.5f} at step {b['best_step']}; checkpoint {b['checkpoint']}")
        text.append(f"  rule: {result.rule}")
    else:
        text.append(f"no best trial yet ({result.rule})")
    return "\n".join(text)


def search_figure(result, fig=None):
    """A Figure: the objective per trial with the best-so-far line, then the objective against each param."""
    from matplotlib.figure import Figure
    names = list(result.spec["space"])
    n = 1 + len(names)
    fig = fig or Figure(figsize=(3.6 * n, 3.2), dpi=100)
    fig.clear()
    obj, minimize = result.objective, result.direction == "minimize"
    scored = [r for r in result.trials if r["value"] is not None and r["state"] in ("complete", "pruned")]
    done = [r for r in scored if r["state"] == "complete"]
    pruned = [r for r in scored if r["state"] == "pruned"]
    # panel 1: objective per trial, best so far
    from matplotlib.ticker import MaxNLocator
    ax = fig.add_subplot(1, n, 1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.scatter([r["number"] for r in done], [r["value"] for r in done], color="tab:blue", label="complete", zorder=3)
    if pruned:
        ax.scatter([r["number"] for r in pruned], [r["value"] for r in pruned], color="tab:gray", marker="x",
                   label="pruned (value when stopped)", zorder=3)
    best, xs, ys = None, [], []
    for r in sorted(done, key=lambda r: r["number"]):
        if best is None or (r["value"] < best if minimize else r["value"] > best):
            best = r["value"]
        xs.append(r["number"]), ys.append(best)
    if xs:
        last = max(r["number"] for r in result.trials)
        ax.step(xs + [last], ys + [ys[-1]], where="post", color="tab:orange", lw=2, label="best so far")
    if result.baseline and obj in result.baseline:
        ax.axhline(result.baseline[obj], color="tab:red", ls=":", lw=1, label="base model")
    ax.set_xlabel("trial")
    ax.set_ylabel(obj)
    ax.set_title(f"{obj} per trial")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    # panels 2..: objective against each param (log axis where the param was searched on a log scale)
    for i, name in enumerate(names, start=2):
        ax = fig.add_subplot(1, n, i)
        p = result.spec["space"][name]
        listed = p.get("values", p.get("choices"))
        numeric = listed is None or all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in listed)
        x = (lambda v: v) if numeric else str
        if not numeric:                         # categories in the order written, each on the axis
            ax.scatter([str(v) for v in listed], [math.nan] * len(listed))
        for rows, style in ((done, dict(color="tab:blue")), (pruned, dict(color="tab:gray", marker="x"))):
            pts = [(x(r["params"][name]), r["value"]) for r in rows if name in r["params"]]
            if pts:
                ax.scatter(*zip(*pts), zorder=3, **style)
        spread = listed and numeric and min(listed) > 0 and max(listed) / min(listed) >= 100
        if p.get("log") or spread:              # a log-scale range, or listed values over two decades or more
            ax.set_xscale("log")
        if result.best:
            ax.scatter([x(result.best["params"].get(name))], [result.best["value"]], s=120,
                       facecolors="none", edgecolors="tab:orange", lw=2, zorder=4, label="best")
            ax.legend(fontsize=7)
        ax.set_xlabel(name)
        ax.set_ylabel(obj)
        ax.set_title(f"{obj} vs {name}")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# ---- 5. command line -----------------------------------------------------------------------------------------------
def add_search_command(sub):
    """`python -m sdkit search SPEC.yaml [--resume] [--trials N] [--out DIR]` (called by sdkit.cli)."""
    p = sub.add_parser("search", help="hyper-parameter search: one full run per trial, scored on held-out images "
                                      "(docs/SEARCH.md)")
    p.add_argument("spec", help="search spec YAML (base:, space:, sampler:, trials:, val_data:, ...)")
    p.add_argument("--resume", action="store_true", help="continue the search in the spec's out folder")
    p.add_argument("--trials", type=int, default=None, help="override the spec's trials")
    p.add_argument("--out", default=None, help="override the spec's out folder")
    p.set_defaults(func=_cmd_search)


def _cmd_search(args) -> int:
    from .data import DataError
    from .models import ModelNotFound
    try:
        result = search(args.spec, resume=args.resume, trials=args.trials, out=args.out,
                        train_progress="bar" if sys.stderr.isatty() else None)
    except (ConfigError, DataError, ModelNotFound, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print()
    print(summary_table(result, markdown=False))
    return 130 if result.interrupted else 0
