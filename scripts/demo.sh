#!/usr/bin/env bash
# Fresh machine to a real cluster doing real work: install, start 3 nodes, run a fan-out/fan-in DAG,
# print the result, stop the nodes; then run the multi-agent example (examples/incident_triage) on a
# local cluster against the fake OpenAI-compatible server, the planner example (examples/planner) and
# the messaging example (examples/auction: actors that bid, a node killed between two lots).   scripts/demo.sh [DAG file, default examples/fanout.yaml]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
[[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q -e .
export PATH="$PWD/$VENV/bin:$PATH"
DIR=$(mktemp -d -t raftmesh-demo-XXXXXX)
cleanup() { scripts/cluster.sh down --dir "$DIR" >/dev/null; rm -rf "$DIR"; }
trap cleanup EXIT
echo "== starting 3 nodes (data in $DIR)"
scripts/cluster.sh up 3 --dir "$DIR" --base-port "${DEMO_BASE_PORT:-7300}"
source "$DIR/env"; export RAFTMESH_ADDRESSES
raftmesh status
echo "== running ${1:-examples/fanout.yaml}"
raftmesh submit "${1:-examples/fanout.yaml}" --wait
scripts/cluster.sh down --dir "$DIR" >/dev/null
echo "== multi-agent example: incident triage (http fetch, 3 llm analysts with tools, reviewer, writer)"
echo "   against the fake OpenAI-compatible server; README 'Built-in agents' shows how to use a real model"
"$VENV/bin/python" -m examples.incident_triage --nodes 3
echo "== planner example: the model's plan is checked, repaired once and spawned into the run"
"$VENV/bin/python" -m examples.planner --nodes 3
echo "== messaging example: an auction between actors; the winner's node is killed between two lots"
AUCTION_BASE_PORT=${DEMO_AUCTION_BASE_PORT:-7400} examples/auction/run.sh
