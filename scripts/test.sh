#!/usr/bin/env bash
# The test command: a fresh virtualenv, the project with its test extras, then lint, types and tests.
#   scripts/test.sh [pytest args...]      (VENV=path to choose the virtualenv, default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
# Network-namespace tests need root, iproute2 and nftables; without them they skip with a reason.
if [[ $(id -u) == 0 ]] && ! command -v nft >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  echo "== installing nftables (for the network-partition tests)"
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables iproute2 >/dev/null
fi
[[ -x $VENV/bin/python ]] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e '.[test]'
echo "== ruff"; "$VENV/bin/ruff" check .
echo "== mypy"; "$VENV/bin/mypy"
echo "== pytest"; PATH="$PWD/$VENV/bin:$PATH" "$VENV/bin/pytest" -q "$@"
