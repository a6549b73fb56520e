#!/usr/bin/env bash
# Set up sdkit in ./.venv. Usage: bash scripts/setup.sh [--dev]
#   --dev  also the test requirements and the system browser for the browser test (apt, needs root)
# torch is installed only when the environment has none (Colab's own torch is never replaced).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  # 2.14.1 is the release this project is tested with (it installs from local disk on the course machines).
  python -m pip install -q "torch==2.14.1" || python -m pip install -q torch
fi
python -m pip install -q -r requirements.txt -e .
if [ "${1:-}" = "--dev" ]; then
  python -m pip install -q -r requirements-dev.txt
  if [ -f scripts/install_browser.sh ]; then bash scripts/install_browser.sh; fi
fi
python -c "import sdkit, torch; print(f'sdkit {sdkit.__version__} ready (torch {torch.__version__}) in .venv')"
