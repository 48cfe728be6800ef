#!/usr/bin/env bash
# Start, stop and poke a local raftmesh cluster.
#
#   scripts/cluster.sh up N [--base-port P] [--dir DIR] [--unsafe-no-fsync] [--agents-module PATH|MODULE]...
#                       [--secure] [--no-metrics] [--no-dashboard]  start nodes n1..nN, wait for a leader
#   scripts/cluster.sh down [--dir DIR]                   stop every node (TERM, then KILL after 10 s)
#   scripts/cluster.sh status [--dir DIR]                 pids and cluster status
#   scripts/cluster.sh kill ID [--dir DIR]                kill -9 one node
#   scripts/cluster.sh restart ID [--wait] [--dir DIR]    start a stopped/killed node again
#
# Node nI listens for gRPC on P+I and for Raft on P+50+I (P defaults to 7100), and serves
# Prometheus metrics on http://127.0.0.1:P+100+I/metrics (DIR/env: RAFTMESH_METRICS) unless --no-metrics,
# and the web dashboard on http://127.0.0.1:P+200+I/ (DIR/env: RAFTMESH_DASHBOARD) unless --no-dashboard;
# with --secure it is https and token-only (--http-client-auth none: browsers need no client certificate).
# Data and logs live in DIR/nI (DIR defaults to ./.cluster); DIR/env holds RAFTMESH_ADDRESSES.
# `up` makes DIR/raft.secret (mode 0600, kept across runs): every node authenticates and
# encrypts Raft traffic with it. --unsafe-no-fsync and each --agents-module (a .py path is
# made absolute) are passed to every node, and kept by restart; a node that exits at start
# (e.g. a module that fails to import) fails `up` at once with its message.
# --secure, TLS: DIR/tls from `raftmesh certs init` (made once, kept across runs), every node
# serving and dialling its peers over mutual TLS, and RAFTMESH_CA/_CERT/_KEY in DIR/env.
# --secure, tokens: DIR/tokens.yaml with an admin token (kept in DIR/admin.token, 0600), every
# node started with --tokens-file, and RAFTMESH_TOKEN in DIR/env (mode 0600).
# restart returns once that node serves, or, while fewer than a majority of the nodes
# run, once it answers (saying the cluster has no quorum yet), so a crashed cluster can be
# restarted node by node; --wait waits for a ready cluster (every node serving) instead.
set -euo pipefail

usage() { sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
die() { echo "cluster.sh: $*" >&2; exit 1; }

[[ $# -ge 1 ]] || usage
CMD=$1; shift
ARG=""
DIR=./.cluster
BASE=7100
NODE_FLAGS=()
WAIT=0
SECURE=0
METRICS=1
DASHBOARD=1
while [[ $# -gt 0 ]]; do
  case $1 in
    --dir) DIR=$2; shift 2 ;;
    --wait) WAIT=1; shift ;;
    --base-port) BASE=$2; shift 2 ;;
    --unsafe-no-fsync) NODE_FLAGS+=(--unsafe-no-fsync); shift ;;
    --secure) SECURE=1; shift ;;
    --no-metrics) METRICS=0; shift ;;
    --no-dashboard) DASHBOARD=0; shift ;;
    --agents-module)
      [[ $# -ge 2 && -n $2 ]] || die "--agents-module needs a PATH or MODULE"
      m=$2
      # Nodes may be restarted from another directory: a file path is kept absolute.
      if [[ $m == *.py && $m != /* ]]; then m=$PWD/$m; fi
      NODE_FLAGS+=(--agents-module "$m"); shift 2 ;;
    -h|--help) usage ;;
    -*) die "unknown flag $1" ;;
    *) [[ -z $ARG ]] || die "unexpected argument $1"; ARG=$1; shift ;;
  esac
done

if command -v raftmesh >/dev/null 2>&1; then RM=(raftmesh); else RM=(python3 -m raftmesh.cli.main); fi
[[ -n ${RAFTMESH_BIN:-} ]] && read -r -a RM <<<"$RAFTMESH_BIN"

# The CLI calls below (health waits, status) reach the nodes with DIR/env's addresses and credentials.
load_env() { set -a; source "$DIR/env"; set +a; }

alive() { [[ -f $1/pid ]] && kill -0 "$(cat "$1/pid")" 2>/dev/null; }

start_node() {  # start_node ID
  local d=$DIR/$1
  alive "$d" && die "$1 is already running (pid $(cat "$d/pid"))"
  [[ -f $d/cmd ]] || die "no such node $1 in $DIR"
  local -a cmd
  mapfile -t cmd <"$d/cmd"
  setsid "${cmd[@]}" >>"$d/node.log" 2>&1 </dev/null &
  echo $! >"$d/pid"
}

wait_ready() {  # wait_ready ADDRS [IDS...]: until every node answers health SERVING; IDS just started
  local addrs=$1 deadline=$((SECONDS + ${CLUSTER_WAIT_S:-60})) id
  shift
  until "${RM[@]}" --addresses "$addrs" --timeout 2 health >/dev/null 2>&1; do
    for id in "$@"; do
      if ! alive "$DIR/$id"; then
        tail -n 5 "$DIR/$id/node.log" >&2
        die "$id exited at start; see $DIR/$id/node.log"
      fi
    done
    if (( SECONDS >= deadline )); then
      "${RM[@]}" --addresses "$addrs" --timeout 2 health >&2 || true
      die "cluster did not become ready within ${CLUSTER_WAIT_S:-60}s; see $DIR/n*/node.log"
    fi
    sleep 0.2
  done
}

health_of() {  # health_of ADDR: SERVING, NOT_SERVING or UNREACHABLE
  local out
  out=$("${RM[@]}" --addresses "$1" --timeout 2 health --json 2>/dev/null || true)
  case $out in
    *'"NOT_SERVING"'*) echo NOT_SERVING ;;
    *'"SERVING"'*) echo SERVING ;;
    *) echo UNREACHABLE ;;
  esac
}

wait_node() {  # wait_node ID ADDR STATES...: until the node's health is one of STATES
  local id=$1 addr=$2 deadline=$((SECONDS + ${CLUSTER_WAIT_S:-60})) h
  shift 2
  while true; do
    h=$(health_of "$addr")
    for want in "$@"; do [[ $h == "$want" ]] && return 0; done
    alive "$DIR/$id" || die "$id exited; see $DIR/$id/node.log"
    (( SECONDS < deadline )) || die "$id did not become $* within ${CLUSTER_WAIT_S:-60}s (it is $h); see $DIR/$id/node.log"
    sleep 0.2
  done
}

[[ $WAIT == 0 || $CMD == restart ]] || die "--wait is a flag of restart only"
[[ $SECURE == 0 || $CMD == up ]] || die "--secure is a flag of up (restart keeps what up was given)"
[[ $CMD == up || " ${NODE_FLAGS[*]-} " != *" --agents-module "* ]] ||
  die "--agents-module is a flag of up (restart keeps what up was given)"
[[ $CMD == up || $METRICS == 1 ]] || die "--no-metrics is a flag of up (restart keeps what up was given)"
[[ $CMD == up || $DASHBOARD == 1 ]] || die "--no-dashboard is a flag of up (restart keeps what up was given)"

case $CMD in
  up)
    N=${ARG:-3}
    [[ $N =~ ^[0-9]+$ && $N -ge 1 && $N -le 49 ]] || die "N must be 1..49"
    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd)
    peers=() addrs=() metrics=() boards=()
    scheme=http; (( SECURE )) && scheme=https
    for i in $(seq 1 "$N"); do
      peers+=("n$i=127.0.0.1:$((BASE + 50 + i))/127.0.0.1:$((BASE + i))")
      addrs+=("127.0.0.1:$((BASE + i))")
      metrics+=("http://127.0.0.1:$((BASE + 100 + i))/metrics")
      boards+=("$scheme://127.0.0.1:$((BASE + 200 + i))")
    done
    if [[ ! -s $DIR/raft.secret ]]; then
      (umask 077; od -An -vtx1 -N32 /dev/urandom | tr -d ' \n' >"$DIR/raft.secret")
    fi
    chmod 600 "$DIR/raft.secret"  # umask 077 covers a new file only, not one that was already there
    TLS=$DIR/tls
    if (( SECURE )); then  # --secure, TLS: the CA and certificates, made once like raft.secret
      if [[ ! -s $TLS/ca.pem ]]; then
        "${RM[@]}" certs init "$TLS" --nodes "$(seq -s, -f 'n%g' 1 "$N")" >/dev/null
      fi
      for i in $(seq 1 "$N"); do
        [[ -s $TLS/n$i.pem ]] || die "$TLS has no certificate for n$i (remove $TLS to make new ones)"
      done
    fi
    # --secure, tokens: an admin token made once (its hash in tokens.yaml), given to every node.
    if (( SECURE )); then
      if [[ ! -s $DIR/admin.token ]]; then
        (umask 077; "${RM[@]}" tokens add --file "$DIR/tokens.yaml" --subject admin --role admin >"$DIR/admin.token")
      fi
      NODE_FLAGS+=(--tokens-file "$DIR/tokens.yaml")
    fi
    PEERS=$(IFS=,; echo "${peers[*]}")
    ADDRS=$(IFS=,; echo "${addrs[*]}")
    # Every port free before any node starts: a node that cannot bind one would exit with a
    # message only in its log, or (Raft) keep retrying; another cluster on this machine is the
    # usual cause, so say how far apart base ports must be.
    ports=()
    for i in $(seq 1 "$N"); do
      alive "$DIR/n$i" && die "n$i is already running in $DIR (run: $0 down --dir $DIR)"
      ports+=("$((BASE + i)):n$i gRPC" "$((BASE + 50 + i)):n$i Raft")
      (( METRICS )) && ports+=("$((BASE + 100 + i)):n$i metrics")
      (( DASHBOARD )) && ports+=("$((BASE + 200 + i)):n$i dashboard")
    done
    taken=$(python3 - "${ports[@]}" <<'PY'
import socket, sys
for arg in sys.argv[1:]:
    port = int(arg.split(":", 1)[0])
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the nodes bind: TIME_WAIT is no conflict
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        print(arg.replace(":", " (", 1) + ")")
    finally:
        s.close()
PY
)
    [[ -z $taken ]] || die "port in use: $(echo "$taken" | paste -sd, - | sed 's/,/, /g'). Another cluster or program has it: stop it or pick --base-port P at least 250 away from other clusters' (a cluster uses P+I gRPC, P+50+I Raft, P+100+I metrics, P+200+I dashboard)"
    for i in $(seq 1 "$N"); do
      d=$DIR/n$i
      mkdir -p "$d"
      alive "$d" && die "n$i is already running in $DIR (run: $0 down --dir $DIR)"
      tls_flags=()
      if (( SECURE )); then tls_flags=(--tls-cert "$TLS/n$i.pem" --tls-key "$TLS/n$i-key.pem" --tls-ca "$TLS/ca.pem"); fi
      printf '%s\n' "${RM[@]}" node --id "n$i" --raft "127.0.0.1:$((BASE + 50 + i))" \
        --grpc "127.0.0.1:$((BASE + i))" --peers "$PEERS" --data-dir "$d/data" \
        --raft-secret-file "$DIR/raft.secret" ${NODE_FLAGS[@]+"${NODE_FLAGS[@]}"} \
        ${tls_flags[@]+"${tls_flags[@]}"} >"$d/cmd"
      (( METRICS )) && printf '%s\n' --metrics "127.0.0.1:$((BASE + 100 + i))" >>"$d/cmd"
      (( DASHBOARD )) && printf '%s\n' --http "127.0.0.1:$((BASE + 200 + i))" >>"$d/cmd"
      # --secure: tokens are on, so the dashboard asks browsers for the token, not a client certificate.
      (( DASHBOARD && SECURE )) && printf '%s\n' --http-client-auth none >>"$d/cmd"
      start_node "n$i"
    done
    (umask 077; echo "RAFTMESH_ADDRESSES=$ADDRS" >"$DIR/env")
    (( METRICS )) && echo "RAFTMESH_METRICS=$(IFS=,; echo "${metrics[*]}")" >>"$DIR/env"
    (( DASHBOARD )) && echo "RAFTMESH_DASHBOARD=$(IFS=,; echo "${boards[*]}")" >>"$DIR/env"
    if (( SECURE )); then
      printf 'RAFTMESH_CA=%q\nRAFTMESH_CERT=%q\nRAFTMESH_KEY=%q\n' \
        "$TLS/ca.pem" "$TLS/client.pem" "$TLS/client-key.pem" >>"$DIR/env"
      echo "RAFTMESH_TOKEN=$(cat "$DIR/admin.token")" >>"$DIR/env"
    fi
    load_env
    wait_ready "$ADDRS" $(seq -f 'n%g' 1 "$N")
    if (( SECURE )); then echo "admin token: $DIR/admin.token (mode 0600); $DIR/env sets RAFTMESH_TOKEN to it" >&2; fi
    echo "RAFTMESH_ADDRESSES=$ADDRS"
    if (( METRICS )); then echo "RAFTMESH_METRICS=$(IFS=,; echo "${metrics[*]}")"; fi
    if (( DASHBOARD )); then echo "RAFTMESH_DASHBOARD=$(IFS=,; echo "${boards[*]}")"; fi
    if (( DASHBOARD && SECURE )); then
      echo "the dashboards run with --http-client-auth none: a browser signs in with the token ($DIR/admin.token), no client certificate"
    fi
    ;;
  down)
    [[ -d $DIR ]] || exit 0
    pids=()
    for d in "$DIR"/n*/; do
      d=${d%/}
      if alive "$d"; then pid=$(cat "$d/pid"); kill -TERM "$pid" 2>/dev/null || true; pids+=("$pid"); fi
    done
    deadline=$((SECONDS + 10))
    for pid in "${pids[@]}"; do
      while kill -0 "$pid" 2>/dev/null && (( SECONDS < deadline )); do sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    done
    rm -f "$DIR"/n*/pid
    echo "stopped ${#pids[@]} node(s)"
    ;;
  status)
    for d in "$DIR"/n*/; do
      d=${d%/}; id=$(basename "$d")
      if alive "$d"; then echo "$id running (pid $(cat "$d/pid"))"; else echo "$id stopped"; fi
    done
    [[ -f $DIR/env ]] && { load_env; "${RM[@]}" status || true; }
    ;;
  kill)
    [[ -n $ARG ]] || die "usage: $0 kill ID"
    d=$DIR/$ARG
    alive "$d" || die "$ARG is not running"
    kill -KILL "$(cat "$d/pid")"
    while alive "$d"; do sleep 0.05; done
    rm -f "$d/pid"
    echo "killed $ARG"
    ;;
  restart)
    [[ -n $ARG ]] || die "usage: $0 restart ID"
    d=$DIR/$ARG
    if alive "$d"; then
      pid=$(cat "$d/pid"); kill -TERM "$pid"
      deadline=$((SECONDS + 10))
      while kill -0 "$pid" 2>/dev/null && (( SECONDS < deadline )); do sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
      while alive "$d"; do sleep 0.05; done  # start_node refuses a node that still runs
    fi
    start_node "$ARG"
    load_env
    if (( WAIT )); then
      wait_ready "$RAFTMESH_ADDRESSES"
      echo "restarted $ARG (pid $(cat "$d/pid")); the cluster is ready"
      exit 0
    fi
    total=0 running=0
    for nd in "$DIR"/n*/; do
      nd=${nd%/}
      [[ -f $nd/cmd ]] || continue
      total=$((total + 1))
      alive "$nd" && running=$((running + 1))
    done
    majority=$((total / 2 + 1))
    addr=$(grep -A1 -x -- --grpc "$d/cmd" | tail -n 1)
    if (( running < majority )); then
      # It cannot serve before a majority runs: that it answers is all there is to wait for.
      wait_node "$ARG" "$addr" SERVING NOT_SERVING
      echo "restarted $ARG (pid $(cat "$d/pid")); the cluster has no quorum yet: $running of $total" \
        "nodes running, a majority needs $majority (restart more nodes; restart --wait waits for a ready cluster)"
    else
      wait_node "$ARG" "$addr" SERVING
      echo "restarted $ARG (pid $(cat "$d/pid")); it serves ($running of $total nodes running)"
    fi
    ;;
  *) usage ;;
esac
