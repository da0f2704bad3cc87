#!/usr/bin/env bash
# Conditions over HTTP: permd `POST /allowed` with an unconditional allow (alice writes the
# photo: an org role) and a conditional one (bob writes the notes: the owner rule
# `resource.attributes.owner == user.key` against the stored owner), and Cerbos 0.55 deciding
# the same owner rule as a CEL condition (bench/cerbos/conditions/document.yaml, the owner
# handed to it in the request). Each server is pinned to CPU 0, wrk to CPU 1.
#
# Per target: requests/s with 16 keep-alive connections, p99 at light load (1 connection),
# and the server's CPU-seconds per 1,000 checks (from /proc/PID/stat) beside wrk's.
#
#   bash bench/conditions.sh            # needs target/release/permd (cargo build --release)
#   DURATION=10s ROUNDS=3 bash bench/conditions.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DURATION="${DURATION:-8s}"
ROUNDS="${ROUNDS:-2}"
PERMD="${PERMD:-target/release/permd}"
CERBOS_VERSION=0.55.0
CERBOS_NPM=bench/data/cerbos-npm
CERBOS="$CERBOS_NPM/node_modules/@cerbos/cerbos-linux-x64/cerbos-linux-x64"
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

if [ ! -x "$CERBOS" ]; then
  npm install --silent --no-audit --no-fund --prefix "$CERBOS_NPM" "@cerbos/cerbos-linux-x64@$CERBOS_VERSION" >&2
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

http=$(free_port); grpc=$(free_port); admin=$(free_port)
taskset -c 0 "$PERMD" serve --source config/example-snapshot.yaml --http-addr "127.0.0.1:$http" \
  --grpc-addr "127.0.0.1:$grpc" --log-level warn >"$tmp/permd.log" 2>&1 &
pids+=($!); permd_pid=$!
cport=$(free_port)
CERBOS_NO_TELEMETRY=1 taskset -c 0 "$CERBOS" server --config=bench/cerbos/config.yaml \
  --set=server.httpListenAddr="127.0.0.1:$cport" --set=server.grpcListenAddr="unix:$tmp/cerbos.sock" \
  --set=storage.disk.directory="$PWD/bench/cerbos/conditions" --debug-listen-addr= --log-level=warn \
  >"$tmp/cerbos.log" 2>&1 &
pids+=($!); cerbos_pid=$!
for _ in $(seq 100); do
  curl -sf "127.0.0.1:$http/readyz" >/dev/null 2>&1 && curl -sf "127.0.0.1:$cport/_cerbos/health" >/dev/null 2>&1 && break
  sleep 0.1
done

echo '{"user": "alice", "action": "write", "resource": "document:photo"}' >"$tmp/plain.txt"
echo '{"user": "bob", "action": "write", "resource": "document:notes"}' >"$tmp/cond.txt"
echo '{"requestId":"c","principal":{"id":"bob","roles":["user"],"attr":{}},"resources":[{"resource":{"kind":"document","id":"notes","attr":{"owner":"bob"}},"actions":["write"]}]}' >"$tmp/cerbos.txt"
# Each must allow before anything is timed.
curl -s -H content-type:application/json "127.0.0.1:$http/allowed" -d @"$tmp/plain.txt" | grep -q '"allow":true'
curl -s -H content-type:application/json "127.0.0.1:$http/allowed" -d @"$tmp/cond.txt" | grep -q '"reason":"attribute_rule"'
curl -s -H content-type:application/json "127.0.0.1:$cport/api/check/resources" -d @"$tmp/cerbos.txt" | grep -q 'EFFECT_ALLOW'

hz=$(getconf CLK_TCK)
run() { # name pid port path bodies
  local name=$1 pid=$2 port=$3 path=$4 bodies=$5
  local t0 w0 out t1 reqs rps cpu p99light
  t0=$(ticks "$pid")
  out=$(taskset -c 1 wrk -t1 -c16 -d"$DURATION" -s bench/allowed.lua "http://127.0.0.1:$port" -- "$bodies" "$path" 2>&1)
  t1=$(ticks "$pid")
  reqs=$(echo "$out" | sed -n 's/.*RESULT requests=\([0-9]*\).*/\1/p')
  rps=$(echo "$out" | sed -n 's/.* rps=\([0-9]*\).*/\1/p')
  cpu=$(python3 -c "print(f'{($t1-$t0)/$hz/$reqs*1000:.4f}')")
  p99light=$(taskset -c 1 wrk -t1 -c1 -d3s -s bench/allowed.lua "http://127.0.0.1:$port" -- "$bodies" "$path" 2>&1 |
    sed -n 's/.* p99_us=\([0-9]*\).*/\1/p')
  printf '| %s | %s | %s µs | %s |\n' "$name" "$rps" "$p99light" "$cpu"
}
echo "| target | requests/s (16 conns) | p99, 1 conn | server CPU-s / 1000 |"
echo "|---|---|---|---|"
for _ in $(seq "$ROUNDS"); do
  run "permd /allowed, unconditional" "$permd_pid" "$http" /allowed "$tmp/plain.txt"
  run "permd /allowed, owner rule" "$permd_pid" "$http" /allowed "$tmp/cond.txt"
  run "Cerbos, owner condition" "$cerbos_pid" "$cport" /api/check/resources "$tmp/cerbos.txt"
done
