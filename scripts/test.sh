#!/usr/bin/env bash
# The test command: a fresh virtualenv, the project with its test extras, then lint, types and tests.
#   scripts/test.sh [pytest args...]      (VENV=path to choose the virtualenv, default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
[[ -x $VENV/bin/python ]] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e '.[test]'
echo "== ruff"; "$VENV/bin/ruff" check .
echo "== mypy"; "$VENV/bin/mypy"
echo "== pytest"; PATH="$PWD/$VENV/bin:$PATH" "$VENV/bin/pytest" -q "$@"
