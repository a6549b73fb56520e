"""Command line: `python -m sdkit COMMAND ...`, one module per command family; library modules hold no argparse.

    python -m sdkit make-tiny DIR
    python -m sdkit train --model mini --data DIR --method lora --steps 300 --out runs/x [--resume latest]
    python -m sdkit train --config runs/x/config.yaml --steps 600 --resume latest
    python -m sdkit show RUN                 # writes RUN/loss.png and prints a summary
    python -m sdkit quickstart               # the README's main job
    accelerate launch --multi_gpu --num_processes 2 -m sdkit train ...   # data-parallel (GPUs, or CPUs over gloo)

app.py builds the parser and runs a command; flags.py turns TrainConfig's fields into flags; train.py (train, show),
mini.py (make-tiny, quickstart, mini), tools.py (bench, docs), data.py, export.py (export, preflight),
evaluate.py (eval), convert.py, hub.py (push) and search.py each add their sub-commands.
"""
from .app import build_parser, main
from .flags import add_config_flags, config_from_args

__all__ = ["main", "build_parser", "add_config_flags", "config_from_args"]
