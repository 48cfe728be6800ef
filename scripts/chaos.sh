#!/usr/bin/env bash
# Thin wrapper: run the chaos test with the project's Python. Every flag goes to scripts/chaos.py.
#   scripts/chaos.sh [--nodes 3|5] [--duration MIN] [--seed N] [--net netns|proxy|none] [--json PATH] ...
# PYTHON picks the interpreter (default: .venv/bin/python if present, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [[ -z $PY ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
exec "$PY" scripts/chaos.py "$@"
