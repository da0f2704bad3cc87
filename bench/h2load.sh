#!/usr/bin/env bash
# Servers measured by generators that are not the bottleneck — h2load (apt `nghttp2-client`,
# written in C) and, for HTTP/1.1 throughput, wrk; the generator's CPU is printed beside the
# server's on every row — against
#   - permd perm/v1 `Enforce`, a gRPC-framed protobuf body on permd's gRPC port, and the gRPC
#     floor (bench/grpc_floor.rs: bare tonic, same protos and runtime, a fixed answer);
#   - permd `POST /allowed` over h2c and over HTTP/1.1, and the HTTP floor (bench/floor.rs: bare
#     hyper, a fixed {"allow":true}) over the same two;
# on the 1M snapshot of bench/http.sh, with PICKS checks of its 1,024-check mix
# (bench/data/bodies.txt, bench/picks.rs): the same picks for every target.
# h2load sends one body per run, so its figures are PICKS runs, one per check, each timed by
# h2load (-D) after a warm-up on its connections (--warm-up-time): the connections' setup and
# first requests are outside the measured window. requests/s = all requests / all windows.
#
# 1. Throughput: HTTP/2 with CONNS connections × STREAMS concurrent streams, PICK_MS per pick;
#    HTTP/1.1 with wrk -t1 -cH1_CONNS (keep-alive, bench/allowed.lua rotating the picks) for
#    PICKS × PICK_MS rounded to seconds, after 1 s of warm-up: over HTTP/1.1 h2load --h1 spent
#    about a third more CPU per request than wrk here. ROUNDS rounds with the targets in turn
#    (permd and its floor back to back, which goes first alternating by round).
# 2. Light load: one connection, one request at a time (h2load -c1 -m1, --h1 for HTTP/1.1),
#    LIGHT_PICK_MS per pick, every request's duration from h2load's --log-file; p50 and p99 per
#    round, LIGHT_ROUNDS rounds interleaved the same way; medians over the rounds.
# Servers on CPU 0, the generator on CPU 1 (taskset). Before timing, every pick is sent once to
# /allowed over HTTP/1.1 and h2c and to Enforce, and the answers must agree. h2load sees only the
# HTTP status (gRPC errors travel in trailers), so around every Enforce run permd's
# permd_grpc_requests_total must show no error answer, at least as many OK as h2load counted,
# and no more calls CANCELLED or UNKNOWN (cut when h2load closes its connections at the end of
# its window) than were in flight.
# Lines `TABLE|h2|figure|measured|goal|met?` on stdout are for bench/run.sh (piece `h2`).
#
#   bash bench/h2load.sh
#   PICK_MS=100 LIGHT_PICK_MS=50 ROUNDS=1 LIGHT_ROUNDS=2 bash bench/h2load.sh    # a quick check
#
# Knobs: PICKS (16, of the 1,024), CONNS (16), STREAMS (8), H1_CONNS (CONNS), PICK_MS (400: the
# measured window per pick, so 6.4 s per target per round), ROUNDS (3), LIGHT_PICK_MS (200),
# LIGHT_ROUNDS (5), WARMUP_MS (100, before every window), BUILD (1: cargo build --release the
# binaries first; 0: use them as they are). About 5 minutes with the defaults.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
DATA=$ROOT/bench/data
CONNS=${CONNS:-16}
STREAMS=${STREAMS:-8}
H1_CONNS=${H1_CONNS:-$CONNS}
PICKS=${PICKS:-16}
ROUNDS=${ROUNDS:-3}
PICK_MS=${PICK_MS:-400}
LIGHT_PICK_MS=${LIGHT_PICK_MS:-200}
WARMUP_MS=${WARMUP_MS:-100}
LIGHT_ROUNDS=${LIGHT_ROUNDS:-5}
BUILD=${BUILD:-1}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
PERMD=$TARGET_DIR/release/permd
GRPC_FLOOR=$TARGET_DIR/release/examples/grpc_floor
HTTP_FLOOR=$TARGET_DIR/release/examples/floor
BODIES_BIN=$TARGET_DIR/release/examples/bodies
SNAPSHOT=$DATA/snapshot-1m.msgpack
BODY_FILE=$DATA/bodies.txt
CERBOS_BODY_FILE=$DATA/cerbos-bodies.txt

log() { printf '[h2load.sh] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

command -v h2load >/dev/null || die "h2load missing: apt-get install nghttp2-client"
command -v wrk >/dev/null || die "wrk missing: apt-get install wrk"
((PICKS >= 1 && PICKS <= 1024)) || die "PICKS must be 1..1024, not $PICKS"
((PICK_MS >= 10 && LIGHT_PICK_MS >= 10 && WARMUP_MS >= 10)) || die "PICK_MS, LIGHT_PICK_MS and WARMUP_MS are milliseconds, at least 10"
if [[ $BUILD == 1 ]]; then
  log "building release permd and the grpc_floor, floor and bodies examples"
  cargo build --release --quiet --bin permd --example grpc_floor --example floor --example bodies
fi

# --- data: the 1M snapshot and the mix, as bench/http.sh makes them --------------------------
mkdir -p "$DATA"
if [[ ! -s $SNAPSHOT ]]; then
  log "generating $SNAPSHOT (100k users, 1M assignments, 100k resources)"
  "$PERMD" snapshot generate --out "$SNAPSHOT" >&2
fi
if [[ ! -s $BODY_FILE || $BODY_FILE -ot $SNAPSHOT || $(wc -l <"$BODY_FILE") -ne 1024 ]]; then
  log "writing the 1,024 /allowed bodies (and the Cerbos bodies of the same checks) from the snapshot"
  "$BODIES_BIN" "$SNAPSHOT" "$BODY_FILE" 1024 "$CERBOS_BODY_FILE" >&2
fi

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 143' INT TERM

# PICKS evenly spaced lines of the mix (line 1, 1 + 1024/PICKS, ...), each as the /allowed JSON
# body (pick-I.json) and as the perm/v1 EnforceRequest of the same check, protobuf-encoded and
# gRPC-framed (pick-I.bin: flag 0, 4-byte big-endian length, message). The mapping is
# bench/grpc_load.rs's: tenant → org_id, user → user_id, type → res_type, key → res_id,
# action → act; empty fields are left out, as protobuf does.
python3 - "$BODY_FILE" "$PICKS" "$WORK" <<'EOF'
import json, struct, sys
path, k, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
lines = [l for l in open(path, encoding="utf-8").read().splitlines() if l.strip()]
def varint(n):
    b = bytearray()
    while True:
        if n < 0x80:
            b.append(n)
            return bytes(b)
        b.append((n & 0x7F) | 0x80)
        n >>= 7
with open(f"{out}/picks.txt", "w", encoding="utf-8") as all_picks:
    for i in range(k):
        line = lines[i * len(lines) // k]
        body = json.loads(line)
        r = body["resource"]
        fields = [(1, r.get("tenant", "")), (2, body["user"]), (4, r["type"]),
                  (6, r.get("key", "")), (7, body["action"])]
        msg = b"".join(bytes([(n << 3) | 2]) + varint(len(v.encode())) + v.encode() for n, v in fields if v)
        open(f"{out}/pick-{i}.bin", "wb").write(b"\x00" + struct.pack(">I", len(msg)) + msg)
        open(f"{out}/pick-{i}.json", "w", encoding="utf-8").write(line + "\n")
        all_picks.write(line + "\n")
EOF

# --- servers ---------------------------------------------------------------------------------
wait_for() { # wait_for SECONDS PID COMMAND...: until COMMAND succeeds, or fail
  local deadline=$((SECONDS + $1)) pid=$2
  shift 2
  until "$@"; do
    kill -0 "$pid" 2>/dev/null || return 1
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
}
listen_port() { # listen_port LOG KIND: the port of permd's `KIND listening` JSON log line
  sed -n "s/.*\"$2 listening\".*\"addr\":\"127\\.0\\.0\\.1:\\([0-9]*\\)\".*/\\1/p; s/.*\"addr\":\"127\\.0\\.0\\.1:\\([0-9]*\\)\".*\"$2 listening\".*/\\1/p" "$1" 2>/dev/null | head -n1
}
floor_port() { sed -n 's/^listening 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$1" 2>/dev/null | head -n1; }
have_ports() { [[ -n $(listen_port "$WORK/permd.log" http) && -n $(listen_port "$WORK/permd.log" grpc) ]]; }
have_floor() { [[ -n $(floor_port "$1") ]]; }
ready() { [[ $(curl -s -o /dev/null -w '%{http_code}' "$1/readyz") == 200 ]]; }

taskset -c 0 "$PERMD" serve --source "file://$SNAPSHOT" --http-addr 127.0.0.1:0 --grpc-addr 127.0.0.1:0 \
  --log-format json --log-level info --config /dev/null 2>"$WORK/permd.log" >/dev/null &
PERMD_PID=$!
PIDS+=("$PERMD_PID")
taskset -c 0 "$GRPC_FLOOR" 127.0.0.1:0 >"$WORK/grpc_floor.out" 2>&1 &
GRPC_FLOOR_PID=$!
PIDS+=("$GRPC_FLOOR_PID")
taskset -c 0 "$HTTP_FLOOR" --addr 127.0.0.1:0 >"$WORK/floor.out" 2>&1 &
HTTP_FLOOR_PID=$!
PIDS+=("$HTTP_FLOOR_PID")
wait_for 30 "$PERMD_PID" have_ports || { cat "$WORK/permd.log" >&2; die "permd did not start"; }
wait_for 30 "$GRPC_FLOOR_PID" have_floor "$WORK/grpc_floor.out" || { cat "$WORK/grpc_floor.out" >&2; die "grpc_floor did not start"; }
wait_for 30 "$HTTP_FLOOR_PID" have_floor "$WORK/floor.out" || { cat "$WORK/floor.out" >&2; die "floor did not start"; }
PERMD_HTTP=http://127.0.0.1:$(listen_port "$WORK/permd.log" http)
PERMD_GRPC=http://127.0.0.1:$(listen_port "$WORK/permd.log" grpc)
GRPC_FLOOR_URL=http://127.0.0.1:$(floor_port "$WORK/grpc_floor.out")
HTTP_FLOOR_URL=http://127.0.0.1:$(floor_port "$WORK/floor.out")
wait_for 300 "$PERMD_PID" ready "$PERMD_HTTP" || { tail -n 20 "$WORK/permd.log" >&2; die "permd not ready"; }
log "permd ready (http $PERMD_HTTP, grpc $PERMD_GRPC); tonic floor $GRPC_FLOOR_URL; HTTP floor $HTTP_FLOOR_URL"

# --- every pick once through each face: the answers must agree --------------------------------
ENFORCE=/perm.v1.PermService/Enforce
GRPC_H=(-H 'content-type: application/grpc' -H 'te: trailers')
JSON_H=(-H 'content-type: application/json')
# The decision of a gRPC answer (curl -i output: headers, the framed EnforceResponse, trailers):
# `allow`/`deny` when grpc-status is 0, else the status.
grpc_answer() {
  python3 -c '
import re, sys
raw = open(sys.argv[1], "rb").read()
m = re.search(rb"grpc-status: *([0-9]+)", raw)
if not m or m.group(1) != b"0":
    print("grpc-status", m.group(1).decode() if m else "missing"); sys.exit()
i = raw.find(b"\r\n\r\n") + 4
n = int.from_bytes(raw[i + 1:i + 5], "big"); msg = raw[i + 5:i + 5 + n]
ok = False
j = 0
while j < len(msg):
    key = msg[j]; j += 1
    if key >> 3 == 1 and key & 7 == 0: ok = msg[j] == 1; j += 1
    elif key & 7 == 2: j += 1 + msg[j]
    else: break
print("allow" if ok else "deny")' "$1"
}
allowed_answer() { grep -q '"allow":true' "$1" && echo allow || echo deny; }
declare -A SEEN
for ((i = 0; i < PICKS; i++)); do
  code=$(curl -s -o "$WORK/a1" -w '%{http_code}' "${JSON_H[@]}" --data-binary @"$WORK/pick-$i.json" "$PERMD_HTTP/allowed")
  [[ $code == 200 ]] || die "pick $i: /allowed (HTTP/1.1) answered $code: $(cat "$WORK/a1")"
  code=$(curl -s --http2-prior-knowledge -o "$WORK/a2" -w '%{http_code}' "${JSON_H[@]}" --data-binary @"$WORK/pick-$i.json" "$PERMD_HTTP/allowed")
  [[ $code == 200 ]] || die "pick $i: /allowed (h2c) answered $code: $(cat "$WORK/a2")"
  curl -s -i --http2-prior-knowledge "${GRPC_H[@]}" --data-binary @"$WORK/pick-$i.bin" "$PERMD_GRPC$ENFORCE" -o "$WORK/g"
  a1=$(allowed_answer "$WORK/a1") a2=$(allowed_answer "$WORK/a2") g=$(grpc_answer "$WORK/g")
  [[ $a1 == "$a2" && $a1 == "$g" ]] || die "pick $i ($(cat "$WORK/pick-$i.json")): /allowed HTTP/1.1 $a1, h2c $a2, Enforce $g"
  SEEN[$a1]=$((${SEEN[$a1]:-0} + 1))
done
curl -s -i --http2-prior-knowledge "${GRPC_H[@]}" --data-binary @"$WORK/pick-0.bin" "$GRPC_FLOOR_URL$ENFORCE" -o "$WORK/g"
[[ $(grpc_answer "$WORK/g") == allow ]] || die "the tonic floor did not answer Enforce: $(cat -v "$WORK/g")"
PICK_DESC="$PICKS picks of the 1,024-check mix (${SEEN[allow]:-0} allowed, ${SEEN[deny]:-0} denied; every one answered alike by /allowed over HTTP/1.1 and h2c and by Enforce)"
log "$PICK_DESC"

# --- targets ---------------------------------------------------------------------------------
TARGETS=(tonic-floor enforce http-floor-h2c allowed-h2c http-floor-h1 allowed-h1)
declare -A LABEL=(
  [tonic-floor]="tonic floor, Enforce"
  [enforce]="permd Enforce, gRPC"
  [http-floor-h2c]="HTTP floor, h2c"
  [allowed-h2c]="permd /allowed, h2c"
  [http-floor-h1]="HTTP floor, HTTP/1.1"
  [allowed-h1]="permd /allowed, HTTP/1.1"
)
# permd, then the floor it is measured against.
PAIRS=("enforce tonic-floor" "allowed-h2c http-floor-h2c" "allowed-h1 http-floor-h1")
server_pid() {
  case $1 in
    tonic-floor) echo "$GRPC_FLOOR_PID" ;;
    http-floor-*) echo "$HTTP_FLOOR_PID" ;;
    *) echo "$PERMD_PID" ;;
  esac
}
# ARGS = h2load's arguments for target $1 and pick $2, after -n/-c/-m.
target_args() {
  case $1 in
    tonic-floor) ARGS=("--data=$WORK/pick-$2.bin" "${GRPC_H[@]}" "$GRPC_FLOOR_URL$ENFORCE") ;;
    enforce) ARGS=("--data=$WORK/pick-$2.bin" "${GRPC_H[@]}" "$PERMD_GRPC$ENFORCE") ;;
    http-floor-h2c) ARGS=("--data=$WORK/pick-$2.json" "${JSON_H[@]}" "$HTTP_FLOOR_URL/allowed") ;;
    allowed-h2c) ARGS=("--data=$WORK/pick-$2.json" "${JSON_H[@]}" "$PERMD_HTTP/allowed") ;;
    http-floor-h1) ARGS=(--h1 "--data=$WORK/pick-$2.json" "${JSON_H[@]}" "$HTTP_FLOOR_URL/allowed") ;;
    allowed-h1) ARGS=(--h1 "--data=$WORK/pick-$2.json" "${JSON_H[@]}" "$PERMD_HTTP/allowed") ;;
  esac
}
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # utime + stime
HZ=$(getconf CLK_TCK)

# permd's Enforce calls so far by grpc-status, from /metrics: "OK CUT OTHER", where CUT are
# CANCELLED and UNKNOWN: what a call becomes when h2load closes its connection with the call in
# flight (h2load -D ends a window so: its request body cut, or its answer unread).
enforce_counts() {
  curl -sf "$PERMD_HTTP/metrics" >"$WORK/metrics" || die "permd /metrics did not answer"
  awk '/^permd_grpc_requests_total\{/ && /method="\/perm\.v1\.PermService\/Enforce"/ && match($0, /code="[A-Z_]*"/) {
      c = substr($0, RSTART + 6, RLENGTH - 7)
      if (c == "OK") ok += $NF; else if (c == "CANCELLED" || c == "UNKNOWN") cut += $NF; else other += $NF }
    END { printf "%.0f %.0f %.0f\n", ok, cut, other }' "$WORK/metrics"
}

# h2run TARGET PICK MS CONNS STREAMS [LOGFILE]: one pinned h2load run, WARMUP_MS then a window
# of MS; checks that every request of the window succeeded with a 2xx and prints
# "REQUESTS WINDOW_S GEN_CPU_S GEN_WALL_S" (the generator's CPU and wall time over the whole run).
h2run() {
  local t=$1 pick=$2 ms=$3 c=$4 m=$5 logf=${6:-} extra=() ARGS
  [[ -n $logf ]] && extra=(--log-file="$logf")
  target_args "$t" "$pick"
  local before=""
  [[ $t == enforce ]] && before=$(enforce_counts)
  local TIMEFORMAT='%3R %3U %3S' times
  times=$( { time taskset -c 1 h2load -t1 -c "$c" -m "$m" -D "${ms}ms" --warm-up-time="${WARMUP_MS}ms" \
    "${extra[@]}" "${ARGS[@]}" >"$WORK/h2load.out" 2>&1; } 2>&1 ) ||
    { cat "$WORK/h2load.out" >&2; die "${LABEL[$t]}: h2load failed"; }
  local n bad ok2xx
  n=$(sed -n 's/^requests: .* \([0-9]*\) succeeded.*/\1/p' "$WORK/h2load.out")
  bad=$(sed -n 's/^requests: .* \([0-9]*\) failed, \([0-9]*\) errored, \([0-9]*\) timeout.*/\1 \2 \3/p' "$WORK/h2load.out")
  ok2xx=$(sed -n 's/^status codes: \([0-9]*\) 2xx.*/\1/p' "$WORK/h2load.out")
  [[ -n $n && $n -gt 0 && $bad == "0 0 0" && $ok2xx == "$n" ]] ||
    { cat "$WORK/h2load.out" >&2; die "${LABEL[$t]}, pick $pick: ${n:-?} succeeded, ${ok2xx:-?} 2xx, failed/errored/timeout ${bad:-?}"; }
  if [[ -n $before ]]; then
    # No error answers, and no more calls cut than were in flight at the end.
    local ok0 cut0 other0 ok1 cut1 other1 after
    after=$(enforce_counts)
    read -r ok0 cut0 other0 <<<"$before"
    read -r ok1 cut1 other1 <<<"$after"
    ((other1 == other0)) || { grep '^permd_grpc_requests_total{' "$WORK/metrics" >&2; die "${LABEL[$t]}, pick $pick: permd answered $((other1 - other0)) calls with an error"; }
    ((cut1 - cut0 <= c * m)) || die "${LABEL[$t]}, pick $pick: $((cut1 - cut0)) calls cancelled or cut, more than the $((c * m)) in flight at the end"
    ((ok1 - ok0 >= n)) || die "${LABEL[$t]}, pick $pick: h2load counted $n answers, permd $((ok1 - ok0)) OK"
  fi
  awk -v n="$n" -v ms="$ms" -v t="$times" 'BEGIN { split(t, x, " "); printf "%d %.3f %.3f %.3f\n", n, ms / 1000, x[2] + x[3], x[1] }'
}

# Machine-wide busy and steal ticks (all CPUs), to tell what else used the machine meanwhile.
busy_steal() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $9 }' /proc/stat; }
now() { date +%s.%N; }
# other_pct B0 S0 T0 SERVER_S GEN_S: "other steal", the CPU used by anything but the server and
# h2load, and the hypervisor's steal, as % of the whole machine since busy_steal gave B0 S0 at T0.
other_pct() {
  local b1 s1
  read -r b1 s1 < <(busy_steal)
  awk -v b=$((b1 - $1)) -v st=$((s1 - $2)) -v t0="$3" -v t1="$(now)" -v srv="$4" -v gen="$5" -v hz="$HZ" -v n="$(nproc)" \
    'BEGIN { t = (t1 - t0) * n; o = 100 * (b / hz - srv - gen) / t; printf "%.0f %.0f", (o < 0 ? 0 : o), 100 * st / hz / t }'
}

# Throughput of target $1 over all picks: "requests window_s gen_cpu_s gen_wall_s server_cpu_s
# other_pct steal_pct" (server CPU over all the runs, warm-ups included, as the generator's).
# The HTTP/1.1 targets are driven by wrk instead (bench/allowed.lua rotating the picks on every
# connection, WRK_S seconds after a second of warm-up): h2load --h1 spent about a third more CPU
# per request here than wrk, and over HTTP/1.1 either costs about what the server does.
WRK_S=$(((PICKS * PICK_MS + 500) / 1000))
((WRK_S >= 1)) || WRK_S=1
wrk_run() { # wrk_run TARGET: "REQUESTS SECONDS GEN_CPU_S GEN_WALL_S", every answer a 2xx
  local t=$1 url=$PERMD_HTTP times
  [[ $t == http-floor-h1 ]] && url=$HTTP_FLOOR_URL
  local TIMEFORMAT='%3R %3U %3S'
  times=$( { time taskset -c 1 wrk -t1 -c"$H1_CONNS" -d"${WRK_S}s" -s bench/allowed.lua "$url" -- "$WORK/picks.txt" >"$WORK/wrk.out" 2>&1; } 2>&1 ) ||
    { cat "$WORK/wrk.out" >&2; die "${LABEL[$t]}: wrk failed"; }
  local res
  res=$(grep '^RESULT' "$WORK/wrk.out") || { cat "$WORK/wrk.out" >&2; die "${LABEL[$t]}: wrk gave no result"; }
  [[ $res == *" non2xx=0 connect_err=0 read_err=0 write_err=0 timeouts=0"* ]] || die "${LABEL[$t]}: $res"
  awk -v r="$res" -v t="$times" 'BEGIN { split(t, x, " "); match(r, /requests=[0-9]+/); n = substr(r, RSTART + 9, RLENGTH - 9)
    match(r, /seconds=[0-9.]+/); s = substr(r, RSTART + 8, RLENGTH - 8); printf "%d %.3f %.3f %.3f\n", n, s, x[2] + x[3], x[1] }'
}

throughput() {
  local t=$1 pid tk0 tk1 sums b0 s0 t0 srv
  pid=$(server_pid "$t")
  if [[ $t == *-h1 ]]; then
    local url=$PERMD_HTTP
    [[ $t == http-floor-h1 ]] && url=$HTTP_FLOOR_URL
    taskset -c 1 wrk -t1 -c"$H1_CONNS" -d1s -s bench/allowed.lua "$url" -- "$WORK/picks.txt" >/dev/null 2>&1
  fi
  read -r b0 s0 < <(busy_steal)
  t0=$(now)
  tk0=$(ticks "$pid")
  if [[ $t == *-h1 ]]; then
    sums=$(wrk_run "$t")
  else
    sums=$(for ((i = 0; i < PICKS; i++)); do h2run "$t" "$i" "$PICK_MS" "$CONNS" "$STREAMS"; done |
      awk '{ n += $1; s += $2; g += $3; w += $4 } END { printf "%d %.3f %.3f %.3f", n, s, g, w }')
  fi
  tk1=$(ticks "$pid")
  srv=$(awk -v d=$((tk1 - tk0)) -v hz="$HZ" 'BEGIN { printf "%.3f", d / hz }')
  echo "$sums $srv $(other_pct "$b0" "$s0" "$t0" "$srv" "$(cut -d' ' -f3 <<<"$sums")")"
}

# Light load of target $1 in round $2: every request's duration (µs) on one connection, one at
# a time; prints "p50_us p99_us samples other_pct steal_pct".
light() {
  local t=$1 r=$2 pid tk0 tk1 b0 s0 t0 gen=0 g
  pid=$(server_pid "$t")
  : >"$WORK/light-$t-$r.us"
  read -r b0 s0 < <(busy_steal)
  t0=$(now)
  tk0=$(ticks "$pid")
  for ((i = 0; i < PICKS; i++)); do
    rm -f "$WORK/light.log" # h2load appends to its log file
    g=$(h2run "$t" "$i" "$LIGHT_PICK_MS" 1 1 "$WORK/light.log")
    gen=$(awk -v a="$gen" -v b="$(cut -d' ' -f3 <<<"$g")" 'BEGIN { print a + b }')
    awk -F'\t' -v t="$t" '$2 < 200 || $2 > 299 { print "bad status " $2 " from " t > "/dev/stderr"; exit 1 } { print $3 }' \
      "$WORK/light.log" >>"$WORK/light-$t-$r.us"
  done
  tk1=$(ticks "$pid")
  # p50 and p99, nearest rank.
  echo "$(sort -n "$WORK/light-$t-$r.us" | awk '{ v[NR] = $1 } END {
    i50 = int(NR * 0.50); if (i50 < NR * 0.50) i50++
    i99 = int(NR * 0.99); if (i99 < NR * 0.99) i99++
    printf "%d %d %d\n", v[i50], v[i99], NR }') $(other_pct "$b0" "$s0" "$t0" "$(awk -v d=$((tk1 - tk0)) -v hz="$HZ" 'BEGIN { print d / hz }')" "$gen")"
}

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# The order of a round: each pair permd-then-floor in odd rounds, floor-then-permd in even ones.
round_order() {
  local p a b
  for p in "${PAIRS[@]}"; do
    read -r a b <<<"$p"
    if (($1 % 2)); then echo "$a $b"; else echo "$b $a"; fi
  done
}

# --- 1. throughput -----------------------------------------------------------------------------
log "throughput: $PICKS picks x ${PICK_MS} ms per target per round (after ${WARMUP_MS} ms each), HTTP/2 $CONNS connections x $STREAMS streams; HTTP/1.1 wrk -c$H1_CONNS ${WRK_S} s; $ROUNDS rounds"
declare -A TP # [target,round] = "requests window_s gen_cpu_s gen_wall_s server_cpu_s other_pct steal_pct"
for ((r = 1; r <= ROUNDS; r++)); do
  for t in $(round_order "$r"); do
    TP[$t,$r]=$(throughput "$t")
    read -r n s g w sc o st <<<"${TP[$t,$r]}"
    log "round $r ${LABEL[$t]}: $(awk -v n="$n" -v s="$s" -v g="$g" -v w="$w" -v sc="$sc" \
      'BEGIN { printf "%.0f requests/s, server %.0f%%, generator %.0f%%", n / s, 100 * sc / w, 100 * g / w }'), other ${o}%, steal ${st}%"
  done
done

# --- 2. light load -----------------------------------------------------------------------------
log "light load: one connection, one request at a time; $PICKS picks x ${LIGHT_PICK_MS} ms per target per round; $LIGHT_ROUNDS rounds"
declare -A LL # [target,round] = "p50_us p99_us samples other_pct steal_pct"
for ((r = 1; r <= LIGHT_ROUNDS; r++)); do
  for t in $(round_order "$r"); do
    LL[$t,$r]=$(light "$t" "$r")
    read -r p50 p99 k o st <<<"${LL[$t,$r]}"
    log "light round $r ${LABEL[$t]}: p50 ${p50} µs, p99 ${p99} µs ($k requests), other ${o}%, steal ${st}%"
  done
done

# Every Enforce permd answered, by grpc-status: OK, or cut by h2load's end of a window (each
# run checked in h2run); any other code fails.
COUNTS=$(enforce_counts)
read -r GRPC_OK GRPC_CUT GRPC_BAD <<<"$COUNTS"
((GRPC_OK > 0)) || die "permd /metrics counts no Enforce answered OK"
((GRPC_BAD == 0)) || { grep '^permd_grpc_requests_total{' "$WORK/metrics" >&2; die "permd answered $GRPC_BAD Enforce calls with an error"; }

# --- table -------------------------------------------------------------------------------------
tp_field() { # tp_field TARGET ROUND rps|srv_pct|gen_pct|cpu_per_k|noisy
  local n s g w sc o st
  read -r n s g w sc o st <<<"${TP[$1,$2]}"
  case $3 in
    noisy) ((o + st > 10)) && echo " !" || true ;;
    rps) awk -v n="$n" -v s="$s" 'BEGIN { printf "%.0f", n / s }' ;;
    srv_pct) awk -v sc="$sc" -v w="$w" 'BEGIN { printf "%.0f", 100 * sc / w }' ;;
    gen_pct) awk -v g="$g" -v w="$w" 'BEGIN { printf "%.0f", 100 * g / w }' ;;
    # The server's CPU per second over the runs / requests per second of the windows.
    cpu_per_k) awk -v sc="$sc" -v w="$w" -v n="$n" -v s="$s" 'BEGIN { printf "%.4f", 1000 * (sc / w) / (n / s) }' ;;
  esac
}
tp_median() { for ((r = 1; r <= ROUNDS; r++)); do tp_field "$1" "$r" "$2"; echo; done | median; }
ll_median() { # ll_median TARGET 1|2 (p50|p99)
  for ((r = 1; r <= LIGHT_ROUNDS; r++)); do cut -d' ' -f"$2" <<<"${LL[$1,$r]}"; done | median
}
yes_no() { awk "BEGIN { print ($1) ? \"yes\" : \"no\" }"; } # yes_no 'AWK EXPRESSION'
ll_noisy() { local o st; read -r _ _ _ o st <<<"${LL[$1,$2]}"; ((o + st > 10)) && echo " !" || true; }
# noisy_note KIND TARGET...: how many of the rounds of these targets shared the machine.
noisy_note() {
  local kind=$1 k=0 all=0 t r
  shift
  for t in "$@"; do
    if [[ $kind == tp ]]; then
      for ((r = 1; r <= ROUNDS; r++)); do all=$((all + 1)); [[ -n $(tp_field "$t" "$r" noisy) ]] && k=$((k + 1)); done
    else
      for ((r = 1; r <= LIGHT_ROUNDS; r++)); do all=$((all + 1)); [[ -n $(ll_noisy "$t" "$r") ]] && k=$((k + 1)); done
    fi
  done
  ((k == 0)) || echo "; $k of $all runs shared the machine (!)"
}

echo
echo "machine: $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1); load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "h2load $(h2load --version | sed -n 's/^h2load nghttp2\///p'); servers on CPU 0, h2load on CPU 1; permd on the 1M snapshot"
echo "checks: $PICK_DESC; each h2load figure is one run per pick, a window of the same length each"
echo "permd answered $GRPC_OK Enforce calls with grpc-status OK and none with an error; $GRPC_CUT were cut by h2load closing its connections at the end of a window (each run: no more than were in flight)"
echo
echo "throughput: HTTP/2 with h2load, $CONNS connections x $STREAMS streams, $PICKS picks x ${PICK_MS} ms per target per round, each after ${WARMUP_MS} ms"
echo "of warm-up; HTTP/1.1 with wrk -t1 -c$H1_CONNS, ${WRK_S} s rotating the picks after 1 s of warm-up"
echo "s(erver), g(enerator) = CPU used as % of one core over the generator's running time; CPU-s/1k = server CPU seconds per 1000"
echo "requests (the server's CPU per second over the runs / the windows' requests per second); ! = anything but the server"
echo "and the generator (other) plus the hypervisor's steal took more than 10% of the machine meanwhile: not to be trusted"
printf '%-26s%s\n' target "$(for ((r = 1; r <= ROUNDS; r++)); do printf '  %-38s' "round $r"; done)"
for t in "${TARGETS[@]}"; do
  printf '%-26s' "${LABEL[$t]}"
  for ((r = 1; r <= ROUNDS; r++)); do
    printf '  %-38s' "$(printf '%s/s s %s%% g %s%% %s%s' "$(tp_field "$t" "$r" rps)" "$(tp_field "$t" "$r" srv_pct)" \
      "$(tp_field "$t" "$r" gen_pct)" "$(tp_field "$t" "$r" cpu_per_k)" "$(tp_field "$t" "$r" noisy)")"
  done
  echo
done
echo
for t in "${TARGETS[@]}"; do
  rps=$(printf '%.0f' "$(tp_median "$t" rps)") gen=$(printf '%.0f' "$(tp_median "$t" gen_pct)")
  srv=$(printf '%.0f' "$(tp_median "$t" srv_pct)") cpk=$(printf '%.4f' "$(tp_median "$t" cpu_per_k)")
  bound=""
  ((gen >= 90)) && bound="; generator-bound (the generator at ${gen}% of its core): the client's figure, not the server's"
  c="$CONNS x $STREAMS, h2load"
  [[ $t == *-h1 ]] && c="$H1_CONNS connections, wrk"
  echo "${LABEL[$t]}: median $rps requests/s, server ${srv}%, generator ${gen}%, $cpk CPU-s/1k$bound"
  echo "TABLE|h2|${LABEL[$t]} ($c): requests/s, server / generator CPU, server CPU-s per 1000 (median of $ROUNDS rounds)|$rps, $srv% / $gen%, $cpk$bound$(noisy_note tp "$t")||"
done
ratio() { # ratio A B GOAL_MIN GOAL_TEXT: A / B requests/s by round and the median
  local rs=() med met=""
  for ((r = 1; r <= ROUNDS; r++)); do
    rs+=("$(awk -v a="$(tp_field "$1" "$r" rps)" -v b="$(tp_field "$2" "$r" rps)" 'BEGIN { printf "%.1f", 100 * a / b }')")
  done
  med=$(printf '%.1f' "$(printf '%s\n' "${rs[@]}" | median)")
  [[ -n $3 ]] && met=$(yes_no "$med >= $3")
  local gb="" x
  for x in "$1" "$2"; do
    (($(printf '%.0f' "$(tp_median "$x" gen_pct)") >= 90)) && gb="$gb; ${LABEL[$x]} generator-bound"
  done
  echo "${LABEL[$1]} / ${LABEL[$2]} requests/s by round: ${rs[*]} (%); median $med%"
  echo "TABLE|h2|${LABEL[$1]} / ${LABEL[$2]} requests/s (median of per-round ratios)|$med% (rounds ${rs[*]})$gb$(noisy_note tp "$1" "$2")|$4|$met"
}
ratio enforce tonic-floor 90 "≥ 90%"
ratio allowed-h2c http-floor-h2c "" ""
ratio allowed-h1 http-floor-h1 "" ""
ratio enforce allowed-h2c "" ""

echo
echo "light load: one connection, one request at a time (h2load -c1 -m1, HTTP/1.1 with --h1); $PICKS picks x ${LIGHT_PICK_MS} ms per target per round; µs from h2load's per-request log"
printf '%-26s%s\n' target "$(for ((r = 1; r <= LIGHT_ROUNDS; r++)); do printf '  %-24s' "round $r p50/p99 (n)"; done)"
for t in "${TARGETS[@]}"; do
  printf '%-26s' "${LABEL[$t]}"
  for ((r = 1; r <= LIGHT_ROUNDS; r++)); do
    read -r p50 p99 k _ <<<"${LL[$t,$r]}"
    printf '  %-24s' "$p50/$p99 µs ($k)$(ll_noisy "$t" "$r")"
  done
  echo
done
echo
for p in "${PAIRS[@]}"; do
  read -r a b <<<"$p"
  rs=()
  for ((r = 1; r <= LIGHT_ROUNDS; r++)); do
    rs+=("$(awk -v a="$(cut -d' ' -f2 <<<"${LL[$a,$r]}")" -v b="$(cut -d' ' -f2 <<<"${LL[$b,$r]}")" 'BEGIN { printf "%.2f", a / b }')")
  done
  med=$(printf '%.2f' "$(printf '%s\n' "${rs[@]}" | median)")
  a50=$(printf '%.0f' "$(ll_median "$a" 1)") a99=$(printf '%.0f' "$(ll_median "$a" 2)")
  b50=$(printf '%.0f' "$(ll_median "$b" 1)") b99=$(printf '%.0f' "$(ll_median "$b" 2)")
  echo "${LABEL[$a]}: p50 $a50 µs, p99 $a99 µs; ${LABEL[$b]}: p50 $b50 µs, p99 $b99 µs (medians of $LIGHT_ROUNDS rounds); p99 ratio by round ${rs[*]}, median ${med}x"
  echo "TABLE|h2|light load, one request at a time: ${LABEL[$a]} p99 / ${LABEL[$b]} p99 (median of per-round ratios)|${med}x (p50 $a50 / $b50 µs, p99 $a99 / $b99 µs; rounds ${rs[*]})$(noisy_note ll "$a" "$b")|≤ 1.2x|$(yes_no "$med <= 1.2")"
done
