"""Running a search: one normal sdkit run per trial, trained by the one training loop, optuna choosing what to try.

A TrialCallback scores each checkpoint with the deterministic validation loss on the trainer's current weights,
reports it to optuna and, when the pruner says the trial is behind, stops the run (which writes a checkpoint and
ends). After every trial OUT/summary.json and OUT/summary.md are rewritten; OUT/search.png at the end.
optuna is imported only when a search starts, so `python -m sdkit --help` works without it.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import yaml

from ..checkpoint import step_name
from ..config import TrainConfig
from ..evaluate.metrics import load_folder
from ..plot import figure_png
from ..train.callbacks import Callback, write_metrics
from ..train.loop import TrainingError, train
from .report import SearchResult, fmt_value, search_figure, summary_table
from .spec import SearchSpec, load_spec
from .space import SearchError

__all__ = ["search", "TrialCallback"]


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
        write_metrics(trainer, {"step": step, "event": "search_score", **numbers, "time": time.time()})
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


# ---- the search loop ----------------------------------------------------------------------------------------------
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
        shown = ", ".join(f"{k}={fmt_value(v)}" for k, v in params.items())
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
        say(f"best: trial {result.best['number']} ({', '.join(f'{k}={fmt_value(v)}' for k, v in result.best['params'].items())})"
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


# ---- results after every trial -------------------------------------------------------------------------------------
def _collect(study, spec: SearchSpec) -> SearchResult:
    from optuna.trial import TrialState
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
        (out / "search.png").write_bytes(figure_png(search_figure(result)))
    return result
