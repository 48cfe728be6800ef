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
# The metrics tests run promtool and a real Prometheus (Debian's prometheus package). The package
# must not start a system-wide prometheus: policy-rc.d (exit 101) forbids starting services while
# it installs, and is removed afterwards unless it was there already.
if [[ $(id -u) == 0 ]] && ! command -v promtool >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  echo "== installing prometheus (promtool and a server for the metrics tests; its service is not started)"
  own_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && own_policy=1
  fi
  installed=0
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null && installed=1
  if (( own_policy )); then rm -f /usr/sbin/policy-rc.d; fi
  if (( ! installed )) && [[ -n ${RAFTMESH_REQUIRE_PROMETHEUS:-} ]]; then
    echo "could not install prometheus, and RAFTMESH_REQUIRE_PROMETHEUS is set" >&2
    exit 1
  fi
fi
if [[ -n ${RAFTMESH_REQUIRE_PROMETHEUS:-} ]] && ! { command -v promtool && command -v prometheus; } >/dev/null 2>&1; then
  echo "RAFTMESH_REQUIRE_PROMETHEUS is set but promtool or prometheus is missing (Debian: apt-get install prometheus)" >&2
  exit 1
fi
# The Node.js client's e2e test (examples/node-client) runs node and npm. Only a missing node is
# installed (Debian's nodejs and npm): a node already here (e.g. NodeSource's, which bundles npm)
# is left as it is.
if [[ $(id -u) == 0 ]] && ! command -v node >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  echo "== installing nodejs and npm (for the Node.js client example's test)"
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null \
    || echo "could not install nodejs and npm" >&2
fi
if [[ -n ${RAFTMESH_REQUIRE_NODE:-} ]] && ! { command -v node && command -v npm; } >/dev/null 2>&1; then
  echo "RAFTMESH_REQUIRE_NODE is set but node or npm is missing (Debian: apt-get install nodejs npm)" >&2
  exit 1
fi
# The dashboard's browser tests drive Debian's chromium with Playwright (no browser download).
if [[ $(id -u) == 0 ]] && ! [[ -x /usr/bin/chromium ]] && command -v apt-get >/dev/null 2>&1; then
  echo "== installing chromium (for the dashboard's browser tests)"
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null || true
fi
if [[ ${RAFTMESH_REQUIRE_BROWSER:-} == 1 ]] && ! [[ -x /usr/bin/chromium ]]; then
  echo "RAFTMESH_REQUIRE_BROWSER=1 but /usr/bin/chromium is missing (Debian: apt-get install chromium)" >&2
  exit 1
fi
[[ -x $VENV/bin/python ]] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e '.[test]'
echo "== ruff"; "$VENV/bin/ruff" check .
echo "== mypy"; "$VENV/bin/mypy"
echo "== pytest"; PATH="$PWD/$VENV/bin:$PATH" "$VENV/bin/pytest" -q "$@"
