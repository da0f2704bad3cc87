#!/usr/bin/env bash
# gRPC Enforce, a bare tonic Enforce (bench/grpc_floor.rs, the gRPC floor) and /allowed driven by h2load (apt `nghttp2-client`), a generator written in C
# that is not the bottleneck (its CPU is printed beside the server's): perm/v1 Enforce as a
# gRPC-framed body on the gRPC port, `/allowed` over h2c on the HTTP port, both HTTP/2 with
# CONNS connections × STREAMS concurrent streams, and `/allowed` over HTTP/1.1 with wrk for
# comparison. The same check each time (the 1M snapshot of bench/http.sh if present, else the
# example: alice writes the photo, an org role). Server on CPU 0, generator on CPU 1.
#
#   bash bench/h2load.sh    # needs target/release/permd and target/release/examples/grpc_floor
#   N=400000 CONNS=16 STREAMS=8 bash bench/h2load.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
N="${N:-300000}"
CONNS="${CONNS:-16}"
STREAMS="${STREAMS:-8}"
PERMD="${PERMD:-target/release/permd}"
FLOOR="${FLOOR:-target/release/examples/grpc_floor}"
command -v h2load >/dev/null || { echo "h2load missing: apt-get install nghttp2-client" >&2; exit 2; }
tmp=$(mktemp -d)
pid=
floor_pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  [ -n "$floor_pid" ] && kill "$floor_pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
http=$(free_port); grpc=$(free_port)
taskset -c 0 "$PERMD" serve --source config/example-snapshot.yaml --http-addr "127.0.0.1:$http" \
  --grpc-addr "127.0.0.1:$grpc" --log-level warn >"$tmp/permd.log" 2>&1 &
pid=$!
for _ in $(seq 100); do curl -sf "127.0.0.1:$http/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
floor=$(free_port)
taskset -c 0 "$FLOOR" "127.0.0.1:$floor" >"$tmp/floor.log" 2>&1 &
floor_pid=$!
for _ in $(seq 100); do grep -q listening "$tmp/floor.log" 2>/dev/null && break; sleep 0.1; done

# perm/v1 EnforceRequest {org_id: acme, user_id: alice, res_type: document, res_id: photo,
# act: write}, protobuf-encoded and framed (flag 0, 4-byte big-endian length).
python3 - "$tmp/enforce.bin" <<'EOF'
import struct, sys
fields = [(1, "acme"), (2, "alice"), (4, "document"), (6, "photo"), (7, "write")]
msg = b"".join(bytes([(n << 3) | 2, len(v)]) + v.encode() for n, v in fields)
open(sys.argv[1], "wb").write(b"\x00" + struct.pack(">I", len(msg)) + msg)
EOF
echo '{"user": "alice", "action": "write", "resource": {"type": "document", "key": "photo", "tenant": "acme"}}' >"$tmp/allowed.json"
curl -s -H content-type:application/json "127.0.0.1:$http/allowed" -d @"$tmp/allowed.json" | grep -q '"allow":true'

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
row() { # server pid, name, then the generator command
  local spid=$1 name=$2; shift 2
  local t0 t1 out rps gen_cpu secs
  t0=$(ticks "$spid")
  out=$( { /usr/bin/time -f 'GEN %U %S %e' taskset -c 1 "$@"; } 2>&1 )
  t1=$(ticks "$spid")
  secs=$(echo "$out" | awk '/^GEN/ {print $4}')
  gen_cpu=$(echo "$out" | awk '/^GEN/ {printf "%.0f", ($2 + $3) / $4 * 100}')
  rps=$(echo "$out" | awk '/finished in/ {for (i=1;i<=NF;i++) if ($i ~ /req\/s/) {print int($(i-1))}} /Requests\/sec/ {print int($2)}' | head -1)
  local errs
  errs=$(echo "$out" | awk '/requests:/ {for (i=1;i<=NF;i++) if ($i=="errored,") print $(i-1)}' | head -1)
  printf '| %s | %s | %s%% | %s%% | %s |\n' "$name" "$rps" \
    "$(python3 -c "print(round(($t1-$t0)/$hz/$secs*100))")" "$gen_cpu" "${errs:-0}"
}
echo "| target | requests/s | server CPU | generator CPU | errors |"
echo "|---|---|---|---|---|"
for _ in 1 2; do
  row "$floor_pid" "floor: bare tonic Enforce (h2load)" h2load -n "$N" -c "$CONNS" -m "$STREAMS" -t 1 \
    --data="$tmp/enforce.bin" -H 'content-type: application/grpc' -H 'te: trailers' \
    "http://127.0.0.1:$floor/perm.v1.PermService/Enforce"
  row "$pid" "Enforce, gRPC (h2load, $CONNS conns × $STREAMS streams)" h2load -n "$N" -c "$CONNS" -m "$STREAMS" -t 1 \
    --data="$tmp/enforce.bin" -H 'content-type: application/grpc' -H 'te: trailers' \
    "http://127.0.0.1:$grpc/perm.v1.PermService/Enforce"
  row "$pid" "/allowed, h2c (h2load, $CONNS conns × $STREAMS streams)" h2load -n "$N" -c "$CONNS" -m "$STREAMS" -t 1 \
    --data="$tmp/allowed.json" -H 'content-type: application/json' "http://127.0.0.1:$http/allowed"
  row "$pid" "/allowed, HTTP/1.1 (wrk, $CONNS conns)" wrk -t1 -c"$CONNS" -d6s -s bench/allowed.lua \
    "http://127.0.0.1:$http" -- "$tmp/allowed.json" /allowed
done
