#!/usr/bin/env bash
# Drop-in bench: (1) Envoy ext_authz `Check` (gRPC, through the URL mapping rules) beside
# Permit's `POST /allowed` (HTTP/1.1 keep-alive) on the same checks, at light load (closed-loop
# callers, bench/authz_load.rs, which also prints its own CPU); (2) nginx + permd against nginx
# alone: the same GET through nginx to a trivial upstream (nginx's own `return 200`), once
# straight and once with `auth_request` to permd's `/auth_request` (examples/nginx/permd.conf's
# shape), wrk at light load; the difference of the percentiles is what asking permd adds.
#
#   bash bench/dropin.sh
#
# Knobs (environment): DURATION (10), WARMUP (2), CONNECTIONS (4), ROUNDS (3).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
DATA=$ROOT/bench/data
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-4}
ROUNDS=${ROUNDS:-3}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
PERMD=$TARGET_DIR/release/permd
LOAD=$TARGET_DIR/release/examples/authz_load
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}

log() { printf '[dropin.sh] %s\n' "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

log "building release permd and authz_load"
cargo build --release --quiet --bin permd --example authz_load
mkdir -p "$DATA"
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
cat config/example-snapshot.yaml bench/dropin-rules.yaml >"$WORK/snapshot.yaml"

HTTP_PORT=$(free_port)
GRPC_PORT=$(free_port)
"$PERMD" serve --config /dev/null --source "file://$WORK/snapshot.yaml" \
    --http-addr "127.0.0.1:$HTTP_PORT" --grpc-addr "127.0.0.1:$GRPC_PORT" --log-level warn &
for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$HTTP_PORT/readyz" >/dev/null && break
    sleep 0.1
done

echo "| what | requests/s | p50 µs | p99 µs | generator CPU s |"
echo "|---|---|---|---|---|"
for round in $(seq "$ROUNDS"); do
    for mode in envoy allowed; do
        addr=127.0.0.1:$([[ $mode == envoy ]] && echo "$GRPC_PORT" || echo "$HTTP_PORT")
        line=$("$LOAD" "$mode" "$addr" "$CONNECTIONS" "$DURATION" "$WARMUP" | grep '^RESULT')
        get() { sed -E "s/.* $1=([^ ]+).*/\1/" <<<"$line"; }
        name=$([[ $mode == envoy ]] && echo "ext_authz Check (gRPC)" || echo "POST /allowed (HTTP/1.1)")
        echo "| $name, round $round | $(get rps) | $(get p50_us) | $(get p99_us) | $(get client_cpu_s) |"
        [[ $(get errors) == 0 ]] || log "errors in $line"
    done
done

if [[ ! -x $NGINX ]]; then
    log "no nginx; skipping the nginx part"
    exit 0
fi
UP=$(free_port)
ALONE=$(free_port)
WITH=$(free_port)
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<CONF
daemon off;
master_process off;
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    upstream app { server 127.0.0.1:$UP; keepalive 16; }
    upstream permd { server 127.0.0.1:$HTTP_PORT; keepalive 16; }
    server { listen 127.0.0.1:$UP; location / { return 200 "ok\n"; } }
    server {
        listen 127.0.0.1:$ALONE;
        location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
    server {
        listen 127.0.0.1:$WITH;
        location = /_permd_auth {
            internal;
            proxy_pass http://permd/auth_request;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-Method \$request_method;
            proxy_set_header X-Original-URI \$request_uri;
        }
        location / {
            auth_request /_permd_auth;
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
CONF
"$NGINX" -p "$WORK/nginx" -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf" &
for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$ALONE/" >/dev/null && break
    sleep 0.1
done
code=$(curl -s -o /dev/null -w '%{http_code}' -H 'X-User-Id: bob' "http://127.0.0.1:$WITH/documents/photo")
[[ $code == 200 ]] || { log "auth_request setup answers $code"; exit 1; }

echo
echo "| nginx, GET /documents/photo (bob, allowed) | requests/s | p50 µs | p99 µs |"
echo "|---|---|---|---|"
us() { awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); print v+0} else if (v ~ /ms$/) {sub(/ms$/,"",v); print v*1000} else {sub(/s$/,"",v); print v*1000000}}'; }
for round in $(seq "$ROUNDS"); do
    for target in alone with; do
        port=$([[ $target == alone ]] && echo "$ALONE" || echo "$WITH")
        out=$(wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -H 'X-User-Id: bob' "http://127.0.0.1:$port/documents/photo")
        rps=$(awk '/^Requests\/sec/ {print int($2)}' <<<"$out")
        p50=$(awk '$1 == "50%" {print $2}' <<<"$out" | us)
        p99=$(awk '$1 == "99%" {print $2}' <<<"$out" | us)
        non=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
        [[ -z $non ]] || log "non-2xx answers: $non"
        name=$([[ $target == alone ]] && echo "nginx alone" || echo "nginx + auth_request to permd")
        echo "| $name, round $round | $rps | $p50 | $p99 |"
    done
done
