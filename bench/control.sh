#!/usr/bin/env bash
# The control plane's figures (bench/README.md, "Control plane"): a release `permd control` on a
# local PostgreSQL with fsync on (the server's defaults), driven by `bench/control.rs`:
#   writes    16 writers of single-op batches for 20 s: writes/s, p50/p99
#   fanout    500 delta streams on one replica, 200 writes/s for 20 s: commit -> last stream
#   snapshot  a project of 1M assignments (permd snapshot generate), 50 concurrent requests
# Each line is followed by the CPU seconds of the server and of PostgreSQL over the run; the
# load generator prints its own.
#   bash bench/control.sh [writes|fanout|snapshot|all]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
what=${1:-all}

bindir=${PERMD_PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
[ -x "$bindir/initdb" ] || { echo "install Debian's postgresql package" >&2; exit 1; }
# PERMD_BENCH_PREBUILT=1 runs the binaries already in target/release as they are.
[ -n "${PERMD_BENCH_PREBUILT:-}" ] || cargo build --release --quiet --bin permd --example control_bench
permd=$PWD/target/release/permd
load=$PWD/target/release/examples/control_bench

dir=$(mktemp -d /tmp/permd-bench-control.XXXXXX)
chmod 755 "$dir"
as_pg=()
if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"; as_pg=(runuser -u postgres --); fi
port=$((20000 + RANDOM % 20000))
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    "${as_pg[@]}" "$bindir/pg_ctl" -D "$dir/data" stop -m fast >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT
"${as_pg[@]}" "$bindir/initdb" -D "$dir/data" -U permd -A trust -E UTF8 >/dev/null
"${as_pg[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/pg.log" -w \
    -o "-p $port -c listen_addresses=127.0.0.1 -k $dir -c max_connections=300" start >/dev/null
"$bindir/createdb" -h 127.0.0.1 -p "$port" -U permd permd
export PERMD_CONTROL_DATABASE="postgres://permd@127.0.0.1:$port/permd"

# CPU seconds (user + system) of a process and its threads.
cpu() { awk '{print ($14 + $15) / 100}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# CPU seconds of every postgres process now (backends come and go; this sums the live ones).
pgcpu() {
    local t=0
    for p in $(pgrep -f "postgres" || true); do t=$(awk -v t="$t" '{print t + ($14 + $15) / 100}' "/proc/$p/stat" 2>/dev/null || echo "$t"); done
    echo "$t"
}

"$permd" control --http-addr 127.0.0.1:17780 --grpc-addr 127.0.0.1:17790 --rate-limit-hour 0 --rate-limit-minute 0 \
    --pool-size 32 --log-level warn &
server=$!
pids+=($server)
for _ in $(seq 100); do curl -sf 127.0.0.1:17780/readyz >/dev/null && break; sleep 0.1; done
export PERMD_API_KEY=$("$permd" control keys create --org bench --project writes 2>/dev/null | tail -n 1)
url=http://127.0.0.1:17780

run() {
    local s0 p0
    s0=$(cpu "$server"); p0=$(pgcpu)
    "$load" --url "$url" "$@"
    echo "  server cpu $(awk -v a="$s0" -v b="$(cpu "$server")" 'BEGIN{printf "%.2f", b-a}') s, postgres cpu (live backends) $(awk -v a="$p0" -v b="$(pgcpu)" 'BEGIN{printf "%.2f", b-a}') s"
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), PostgreSQL $("$bindir/postgres" --version | awk '{print $3}'), fsync $(psql -h 127.0.0.1 -p "$port" -U permd -Atc 'show fsync' permd), synchronous_commit $(psql -h 127.0.0.1 -p "$port" -U permd -Atc 'show synchronous_commit' permd)"
case $what in writes|all) run --scenario writes --writers 16 --seconds 20 ;; esac
case $what in fanout|all) run --scenario fanout --streams 500 --rate 200 --seconds 20 ;; esac
case $what in snapshot|all)
    export PERMD_API_KEY=$("$permd" control keys create --org bench --project big 2>/dev/null | tail -n 1)
    "$permd" snapshot generate --users 100000 --assignments 1000000 --resources 100000 --out "$dir/big.json" >/dev/null
    python3 - "$dir/big.json" >"$dir/ops.json" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
kinds = [("orgs", "org"), ("resource_types", "resource_type"), ("roles", "role"), ("users", "user"),
         ("resources", "resource"), ("role_assignments", "role_assignment"), ("role_grants", "role_grant"),
         ("menus", "menu")]
print(json.dumps({"ops": [{"op": "upsert", "kind": k, "value": v} for f, k in kinds for v in doc.get(f, [])]}))
PY
    # One batch of the whole document, written past the default body limit by a second replica.
    "$permd" control --http-addr 127.0.0.1:17781 --grpc-addr 127.0.0.1:17791 --rate-limit-hour 0 --rate-limit-minute 0 \
        --max-body-bytes 1000000000 --log-level warn &
    pids+=($!)
    for _ in $(seq 100); do curl -sf 127.0.0.1:17781/readyz >/dev/null && break; sleep 0.1; done
    start=$(date +%s.%N)
    curl -sf -H "authorization: Bearer $PERMD_API_KEY" -H content-type:application/json \
        127.0.0.1:17781/v1/batches --data-binary @"$dir/ops.json" >/dev/null
    echo "loaded 1M assignments as one batch in $(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s"
    # One request on the replica that wrote the batch (nothing cached there): a cold read alone.
    "$load" --url http://127.0.0.1:17781 --scenario snapshot --concurrent 1
    e0=$(curl -s 127.0.0.1:17780/metrics | awk '/^permd_control_snapshot_encodes_total/{print $2}')
    run --scenario snapshot --concurrent 50
    e1=$(curl -s 127.0.0.1:17780/metrics | awk '/^permd_control_snapshot_encodes_total/{print $2}')
    echo "  encodes for the 50 requests: $((e1 - e0))"
    ;;
esac
