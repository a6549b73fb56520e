"""Evaluation: grids across checkpoints, metrics with injectable feature extractors, loss-curve diagnostics.

    from sdkit.evaluate import checkpoint_grid, evaluate_run, diagnose
    checkpoint_grid(run, prompts, seeds=[0, 1], scales=[0, 0.5, 1]).save("grid.png")
    report = evaluate_run(run)          # RUN/eval/metrics.json: numbers per checkpoint + "best"
    print(diagnose(run))                # still improving / down-then-up / overtraining / diverging, with evidence

Command line: python -m sdkit eval grid|metrics|diagnose RUN ...  (sdkit/cli/evaluate.py). See docs/EVALUATION.md.
"""
from .diagnose import Diagnosis, diagnose, diagnose_series, smooth
from .grid import CheckpointSwitcher, Grid, checkpoint_grid, grid_browser, select_checkpoints, xyz_grid
from .metrics import (Extractors, FeatureModule, fid_kid, hub_extractors, inception_score, mini_extractors, psnr,
                      validation_loss, vae_reconstruction)
from .run_metrics import evaluate_run, pick_best

__all__ = ["checkpoint_grid", "xyz_grid", "grid_browser", "Grid", "CheckpointSwitcher", "select_checkpoints",
           "evaluate_run", "validation_loss", "vae_reconstruction", "fid_kid", "inception_score", "psnr",
           "Extractors", "FeatureModule", "mini_extractors", "hub_extractors", "pick_best",
           "diagnose", "diagnose_series", "Diagnosis", "smooth", "table"]


def table(report: dict, keys=("val_loss", "x0_psnr", "clip_t", "clip_i", "diversity", "memorization", "bleeding",
                              "fid", "kid", "judge_joint_acc")) -> str:
    """A plain-text table of evaluate_run's numbers: one row per checkpoint, the best marked with *."""
    rows = report["checkpoints"]
    keys = [k for k in keys if any(k in m for m in rows.values())]
    best = (report.get("best") or {}).get("checkpoint")
    lines = ["checkpoint    " + " ".join(f"{k:>15}" for k in keys)]
    for name, m in rows.items():
        mark = "*" if name == best else " "
        lines.append(f"{name}{mark} " + " ".join(f"{m.get(k, float('nan')):>15.4f}" for k in keys))
    if best:
        lines.append(f"* best: {best} — {report['best']['rule']}")
    return "\n".join(lines)
