#!/usr/bin/env bash
# The auction example, end to end, one command: a real 3-node cluster (scripts/cluster.sh) whose
# nodes load examples/auction/agents.py; three bidders get budgets; lot-1 is auctioned; the node
# hosting the winner is killed -9; lot-2 is auctioned (the winner continues on another node with
# what it spent); the results retained on topic "auctions" are printed; everything is stopped.
#
#   examples/auction/run.sh     env: AUCTION_BASE_PORT (default 7400), AUCTION_DIR (default: a temp dir)
set -euo pipefail
cd "$(dirname "$0")/../.."
[[ -x .venv/bin/raftmesh ]] && export PATH="$PWD/.venv/bin:$PATH"
PY=$(command -v python3)
[[ -x .venv/bin/python ]] && PY=.venv/bin/python
DIR=${AUCTION_DIR:-$(mktemp -d -t raftmesh-auction-XXXXXX)}
OWN_DIR=$([[ -z ${AUCTION_DIR:-} ]] && echo 1 || echo 0)
cleanup() {
  scripts/cluster.sh down --dir "$DIR" >/dev/null || true
  if [[ $OWN_DIR == 1 ]]; then rm -rf "$DIR"; fi
}
trap cleanup EXIT

echo "== starting 3 nodes with the auction actors (data in $DIR)"
scripts/cluster.sh up 3 --dir "$DIR" --base-port "${AUCTION_BASE_PORT:-7400}" \
  --agents-module examples/auction/agents.py
source "$DIR/env"; export RAFTMESH_ADDRESSES

echo "== budgets (durable requests: each answers once the bidder's state is committed)"
for b in alice:120 bob:95 carol:150; do
  printf '   %-6s ' "${b%%:*}"
  raftmesh request "bidder/${b%%:*}" "{\"op\": \"budget\", \"max\": ${b##*:}}" --durable
done

auction() {  # auction LOT ITEM START STEP: a durable request to auctioneer/LOT; prints its result
  # (the first --timeout is each gRPC call's, the second the wait for the reply: a bidder whose
  # node died answers once its lease expired and it was activated elsewhere)
  raftmesh --timeout 120 request "auctioneer/$1" --durable --timeout 120 \
    "{\"op\": \"run\", \"item\": \"$2\", \"start\": $3, \"step\": $4, \"bidders\": [\"alice\", \"bob\", \"carol\"]}"
}
field() { "$PY" -c "import json,sys; print(json.load(sys.stdin)$1)"; }
summary() {  # summary RESULT_JSON: one line; each round as PRICE:the bidders still in
  "$PY" - "$1" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
sale = f"{r['winner']} wins at {r['price']}" if r["winner"] else "no sale"
rounds = " ".join(f"{x['price']}:{'+'.join(x['in']) or '-'}" for x in r["rounds"])
print(f"{r['lot']} ({r['item']}): {sale}; rounds {rounds}")
PY
}
node_of() {  # node_of ADDRESS: the node hosting that actor now ("" if none)
  raftmesh actors --prefix "$1" --json |
    "$PY" -c "import json,sys; print(next((a['node'] for a in json.load(sys.stdin)['activations'] if a['address'] == '$1'), ''))"
}

echo "== lot-1"
R1=$(auction lot-1 "a 1962 Stratocaster" 50 10)
echo "   $(summary "$R1")"
WINNER=$(field '["winner"]' <<<"$R1")
HOST=$(node_of "bidder/$WINNER")
echo "== bidder/$WINNER runs on $HOST: kill -9 $HOST"
scripts/cluster.sh kill "$HOST" --dir "$DIR"

echo "== lot-2 (bidder/$WINNER is activated again on another node once its lease expires, with its state)"
R2=$(auction lot-2 "a Vox AC30 amplifier" 40 10)
echo "   $(summary "$R2")"
echo "== bidder/$WINNER moved: $HOST -> $(node_of "bidder/$WINNER")"
raftmesh actors

echo "== the results retained on topic auctions (raftmesh subscribe auctions --from-start)"
raftmesh subscribe auctions --json --from-start --count 2 --wait-timeout 30
