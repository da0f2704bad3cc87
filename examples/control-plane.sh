#!/usr/bin/env bash
# One command for a local control plane and a sidecar following it:
#
#   bash examples/control-plane.sh
#
# It starts a throwaway PostgreSQL (initdb into a temp dir, Debian's `postgresql` binaries; as
# the `postgres` user when run as root), `permd control` on 127.0.0.1:7780, creates a key for
# org `local`, project `app`, loads config/example-snapshot.yaml into it as one batch, and runs
# `permd serve` following it on 127.0.0.1:7766 (gRPC 7767). Ctrl-C stops everything and removes
# the database. Ports: PERMD_CONTROL_PORT, PERMD_PORT, PG_PORT override them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

control_port=${PERMD_CONTROL_PORT:-7780}
sidecar_port=${PERMD_PORT:-7766}
pg_port=${PG_PORT:-55432}

bindir=${PERMD_PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
if [ ! -x "$bindir/initdb" ]; then
    echo "PostgreSQL server binaries not found: install Debian's postgresql package (apt-get install postgresql)" >&2
    exit 1
fi

cargo build --release --quiet
permd=$PWD/target/release/permd

dir=$(mktemp -d /tmp/permd-control.XXXXXX)
chmod 755 "$dir"
as_pg=()
if [ "$(id -u)" = 0 ]; then
    chown postgres: "$dir"
    as_pg=(runuser -u postgres --)
fi
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    "${as_pg[@]}" "$bindir/pg_ctl" -D "$dir/data" stop -m fast >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT

echo "== PostgreSQL on 127.0.0.1:$pg_port ($dir)"
"${as_pg[@]}" "$bindir/initdb" -D "$dir/data" -U permd -A trust -E UTF8 >/dev/null
"${as_pg[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/pg.log" -w \
    -o "-p $pg_port -c listen_addresses=127.0.0.1 -k $dir" start >/dev/null
"$bindir/createdb" -h 127.0.0.1 -p "$pg_port" -U permd permd
export PERMD_CONTROL_DATABASE="postgres://permd@127.0.0.1:$pg_port/permd"

echo "== permd control on 127.0.0.1:$control_port"
key=$("$permd" control keys create --org local --project app 2>/dev/null | tail -n 1)
"$permd" control --http-addr "127.0.0.1:$control_port" &
pids+=($!)
for _ in $(seq 50); do
    curl -sf "127.0.0.1:$control_port/readyz" >/dev/null && break
    sleep 0.1
done

echo "== loading config/example-snapshot.yaml as one batch"
"$permd" snapshot convert config/example-snapshot.yaml "$dir/example.json" >/dev/null
python3 - "$dir/example.json" >"$dir/ops.json" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
kinds = [("orgs", "org"), ("resource_types", "resource_type"), ("roles", "role"), ("users", "user"),
         ("resources", "resource"), ("role_assignments", "role_assignment"), ("role_grants", "role_grant"),
         ("menus", "menu")]
print(json.dumps({"ops": [{"op": "upsert", "kind": k, "value": v} for f, k in kinds for v in doc.get(f, [])]}))
PY
curl -sf -H "authorization: Bearer $key" -H content-type:application/json \
    "127.0.0.1:$control_port/v1/batches" --data-binary @"$dir/ops.json"
echo

cat <<EOF

Control plane: http://127.0.0.1:$control_port   key (project local/app): $key
Write:  curl -s -H 'authorization: Bearer $key' -H content-type:application/json 127.0.0.1:$control_port/v1/batches \\
          -d '{"ops": [{"op": "upsert", "kind": "role_assignment", "value": {"user": "dave", "role": "viewer", "org": "acme"}}]}'
Check:  curl -s -H content-type:application/json 127.0.0.1:$sidecar_port/allowed \\
          -d '{"user": "dave", "action": "read", "resource": "document:photo"}'

== permd serve on 127.0.0.1:$sidecar_port, following the control plane (Ctrl-C stops all)
EOF
PERMD_API_KEY=$key "$permd" serve --config /dev/null --source "http://127.0.0.1:$control_port" \
    --http-addr "127.0.0.1:$sidecar_port" --grpc-addr "127.0.0.1:$((sidecar_port + 1))"
