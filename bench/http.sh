#!/usr/bin/env bash
# HTTP bench: permd `POST /allowed` on the generated 1M-assignment snapshot against the floor
# (bench/floor.rs: hyper answering a fixed {"allow":true}), same wrk load, same run, loopback;
# and Cerbos
# (npm @cerbos/cerbos-linux-x64, bench/cerbos/: the generator's RBAC as resource policies)
# answering the same checks on `POST /api/check/resources`, the roles handed over in each body.
#
#   bash bench/http.sh
#
# Builds release permd and the floor/bodies examples, generates bench/data/snapshot-1m.msgpack
# if absent, writes 1024 realistic /allowed bodies, starts both servers on 127.0.0.1:0, runs
# wrk (-t1 -c32 -d10s pinned, -t2 unpinned, keep-alive, bench/allowed.lua) against each in turn, prints a table
# (requests/s, p50, p99, server CPU per 1000 requests, permd/floor, permd VmRSS), kills both.
#
# Knobs (environment): DURATION (10s), WARMUP (2s), THREADS (load generator threads: 1 when
# pinned, one per core it has; 2 unpinned), CONNECTIONS (32),
# ROUNDS (3: every target in turn, three times, to see the noise), BODIES (1024),
# PIN (1: server on core 0, wrk on core 1 with taskset; 0: no pinning),
# TARGETS ("floor permd cerbos"; grpc = perm/v1 Enforce on the permd target's gRPC port with
# bench/grpc_load.rs, a tonic client counting every grpc-status, and the same checks — not in
# the default: that client saturates its core before the server does, so its figure is the
# client's; bench/h2load.sh measures Enforce with h2load; cerbos = Cerbos (CERBOS_VERSION below) installed with npm into
# bench/data/cerbos-npm if absent, checked against permd on every body once before timing;
# also: permd-nometrics = `--metrics false`, permd-log1pct = the
# decision log on at 1% sampling into a file; `TARGETS="floor permd permd-nometrics
# permd-log1pct"` is the observability comparison of bench/README.md; permd-malloc = permd with
# jemalloc's settings overridden by `_RJEM_MALLOC_CONF=$PERMD_MALLOC_CONF`, to compare allocator
# settings side by side; the security comparison of bench/README.md: permd-auth = a bearer key
# file and every request carrying `Authorization: Bearer`, permd-tls = TLS (rustls, a P-256
# certificate made with openssl) with keep-alive, permd-auth-flood = the permd-auth server
# answering the same good requests while a second wrk (-t1 -c$FLOOD_CONNECTIONS, on wrk's core)
# sends requests with a wrong key for the whole run, cerbos-tls = Cerbos over TLS with the same
# certificate; `TARGETS="permd permd-auth permd-tls permd-auth-flood cerbos-tls"`).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
DATA=$ROOT/bench/data
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNECTIONS=${CONNECTIONS:-32}
PIN=${PIN:-1}
# Two load threads on wrk's one pinned core time-slice it: a thread waiting for its turn holds
# its connections' responses for a scheduler slice, and that, not the server, was the p99
# (4-5 ms for the bare floor with two threads, 0.2-0.4 ms with one, same requests/s).
THREADS=${THREADS:-$([[ $PIN == 1 ]] && echo 1 || echo 2)}
BODIES=${BODIES:-1024}
ROUNDS=${ROUNDS:-3}
read -r -a TARGETS <<<"${TARGETS:-floor permd cerbos}"
SNAPSHOT=$DATA/snapshot-1m.msgpack
BODY_FILE=$DATA/bodies.txt
CERBOS_BODY_FILE=$DATA/cerbos-bodies.txt
CERBOS_VERSION=0.55.0
CERBOS_NPM=$DATA/cerbos-npm
CERBOS=$CERBOS_NPM/node_modules/@cerbos/cerbos-linux-x64/cerbos-linux-x64
FLOOD_CONNECTIONS=${FLOOD_CONNECTIONS:-32}
# The bench's client key: long and random like a real one (never a secret: a throwaway).
AUTH_KEY=bench_$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
PERMD=$TARGET_DIR/release/permd
FLOOR=$TARGET_DIR/release/examples/floor
BODIES_BIN=$TARGET_DIR/release/examples/bodies
GRPC_LOAD=$TARGET_DIR/release/examples/grpc_load
CERBOS_AGREE=$TARGET_DIR/release/examples/cerbos_agree

log() { printf '[http.sh] %s\n' "$*" >&2; }
has() { [[ " ${TARGETS[*]} " == *" $1 "* ]]; }

# --- (a) build -------------------------------------------------------------------------------
log "building release permd and the floor/bodies examples"
cargo build --release --quiet --bin permd --example floor --example bodies --example grpc_load --example cerbos_agree

if ! command -v wrk >/dev/null 2>&1; then
  log "wrk missing: installing with apt-get"
  apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi

# Cerbos: the npm package holds the static linux-x64 binary; nothing else is downloaded.
if { has cerbos || has cerbos-tls; } && ! { [[ -x $CERBOS ]] && "$CERBOS" --version 2>/dev/null | grep -qx "$CERBOS_VERSION"; }; then
  log "installing @cerbos/cerbos-linux-x64@$CERBOS_VERSION with npm into $CERBOS_NPM"
  mkdir -p "$CERBOS_NPM"
  npm install --silent --no-audit --no-fund --prefix "$CERBOS_NPM" "@cerbos/cerbos-linux-x64@$CERBOS_VERSION" >&2
fi

# --- (b) data ----------------------------------------------------------------------------------
mkdir -p "$DATA"
if [[ ! -s $SNAPSHOT ]]; then
  log "generating $SNAPSHOT (100k users, 1M assignments, 100k resources)"
  "$PERMD" snapshot generate --out "$SNAPSHOT" >&2
fi
if [[ ! -s $BODY_FILE || $BODY_FILE -ot $SNAPSHOT || $(wc -l <"$BODY_FILE") -ne $BODIES ||
  ! -s $CERBOS_BODY_FILE || $CERBOS_BODY_FILE -ot $BODY_FILE || $CERBOS_BODY_FILE -ot $BODIES_BIN ]]; then
  log "writing $BODIES /allowed bodies and the Cerbos bodies of the same checks from the snapshot"
  "$BODIES_BIN" "$SNAPSHOT" "$BODY_FILE" "$BODIES" "$CERBOS_BODY_FILE" >&2
fi

# --- (c) servers -------------------------------------------------------------------------------
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

if [[ $PIN == 1 ]]; then
  SERVER_PIN=(taskset -c 0)
  WRK_PIN=(taskset -c 1)
else
  SERVER_PIN=()
  WRK_PIN=()
fi

wait_for() { # wait_for SECONDS PID COMMAND...: until COMMAND succeeds, or fail
  local deadline=$((SECONDS + $1)) pid=$2
  shift 2
  until "$@"; do
    if ! kill -0 "$pid" 2>/dev/null; then return 1; fi
    if ((SECONDS >= deadline)); then return 1; fi
    sleep 0.1
  done
}
listen_port() { # listen_port LOG KIND: the port of the `KIND listening` log line (none while LOG is not there yet)
  sed -n "s/.*\"$2 listening\".*\"addr\":\"127\\.0\\.0\\.1:\\([0-9]*\\)\".*/\\1/p; s/.*\"addr\":\"127\\.0\\.0\\.1:\\([0-9]*\\)\".*\"$2 listening\".*/\\1/p" "$1" 2>/dev/null | head -n1
}
permd_port() { listen_port "$WORK/$1.log" http; }
floor_port() { sed -n 's/^listening 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$WORK/floor.out" | head -n1; }
have_permd_port() { [[ -n $(permd_port "$1") ]]; }
have_floor_port() { [[ -n $(floor_port) ]]; }
ready() { [[ $(curl -sk -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $AUTH_KEY" "$1/readyz") == 200 ]]; }
# Cerbos says nothing of the port behind 127.0.0.1:0; its only TCP listener (gRPC is on a unix
# socket, the gops debug listener is off) is read from ss.
cerbos_port() { ss -ltnpH 2>/dev/null | sed -n "s/.* 127\.0\.0\.1:\([0-9]*\) .*pid=${PID[${CERBOS_NAME:-cerbos}]},.*/\1/p" | head -n1; }
have_cerbos_port() { [[ -n $(cerbos_port) ]]; }
cerbos_ready() { [[ $(curl -sk -o /dev/null -w '%{http_code}' "$1/_cerbos/health") == 200 ]]; }

# The security targets' key file and certificate.
printf '# bench keys\n%s\n' "$AUTH_KEY" >"$WORK/keys"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost \
  -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" -keyout "$WORK/tls.key" -out "$WORK/tls.crt" 2>/dev/null

declare -A URL PID
start_target() { # start_target NAME: starts it, fills URL[NAME] and PID[NAME]
  local name=$1 extra=() env=() scheme=http
  case $name in
    permd-auth-flood)
      has permd-auth || { log "the permd-auth-flood target needs the permd-auth target"; exit 1; }
      PID[$name]=${PID[permd-auth]}
      URL[$name]=${URL[permd-auth]}
      return ;;
    floor)
      "${SERVER_PIN[@]}" "$FLOOR" --addr 127.0.0.1:0 >"$WORK/floor.out" 2>"$WORK/floor.err" &
      PID[$name]=$!
      PIDS+=("$!")
      wait_for 30 "${PID[$name]}" have_floor_port || { log "floor did not start:"; cat "$WORK/floor.err" >&2; exit 1; }
      URL[$name]=http://127.0.0.1:$(floor_port)
      return ;;
    grpc)
      has permd || { log "the grpc target needs the permd target"; exit 1; }
      PID[$name]=${PID[permd]}
      URL[$name]=127.0.0.1:$(listen_port "$WORK/permd.log" grpc)
      return ;;
    cerbos | cerbos-tls)
      local tls=()
      [[ $name == cerbos-tls ]] && tls=(--set=server.tls.cert="$WORK/tls.crt" --set=server.tls.key="$WORK/tls.key") && scheme=https
      CERBOS_NO_TELEMETRY=1 "${SERVER_PIN[@]}" "$CERBOS" server --config="$ROOT/bench/cerbos/config.yaml" "${tls[@]}" \
        --debug-listen-addr= --log-level=warn --set=server.httpListenAddr=127.0.0.1:0 \
        --set=server.grpcListenAddr="unix:$WORK/cerbos-grpc.sock" \
        --set=storage.disk.directory="$ROOT/bench/cerbos/policies" >"$WORK/cerbos.log" 2>&1 &
      PID[$name]=$!
      PIDS+=("$!")
      local started=$SECONDS
      wait_for 30 "${PID[$name]}" have_cerbos_port || { log "cerbos did not start:"; cat "$WORK/cerbos.log" >&2; exit 1; }
      URL[$name]=$scheme://127.0.0.1:$(cerbos_port)
      wait_for 60 "${PID[$name]}" cerbos_ready "${URL[$name]}" || { log "cerbos not ready:"; tail -n 20 "$WORK/cerbos.log" >&2; exit 1; }
      log "cerbos $("$CERBOS" --version | head -n1) ready at ${URL[$name]} after $((SECONDS - started))s"
      return ;;
    permd) ;;
    permd-nometrics) extra=(--metrics false) ;;
    permd-log1pct) extra=(--decision-log "$WORK/decisions.jsonl" --decision-log-sample-rate 0.01) ;;
    permd-malloc) env=("_RJEM_MALLOC_CONF=${PERMD_MALLOC_CONF:?permd-malloc needs PERMD_MALLOC_CONF}") ;;
    permd-auth) extra=(--auth-keys-file "$WORK/keys") ;;
    permd-tls) extra=(--tls-cert "$WORK/tls.crt" --tls-key "$WORK/tls.key"); scheme=https ;;
    *) log "unknown target $name"; exit 1 ;;
  esac
  # JSON logs, so the bound port can be read without ANSI colors in the way.
  env "${env[@]}" "${SERVER_PIN[@]}" "$PERMD" serve --source "file://$SNAPSHOT" --http-addr 127.0.0.1:0 --grpc-addr 127.0.0.1:0 \
    --log-format json --log-level info --config /dev/null "${extra[@]}" 2>"$WORK/$name.log" >/dev/null &
  PID[$name]=$!
  PIDS+=("$!")
  local started=$SECONDS
  wait_for 30 "${PID[$name]}" have_permd_port "$name" || { log "$name did not start:"; cat "$WORK/$name.log" >&2; exit 1; }
  URL[$name]=$scheme://127.0.0.1:$(permd_port "$name")
  wait_for 300 "${PID[$name]}" ready "${URL[$name]}" || { log "$name not ready:"; tail -n 20 "$WORK/$name.log" >&2; exit 1; }
  log "$name ready at ${URL[$name]} after $((SECONDS - started))s"
}
for t in "${TARGETS[@]}"; do CERBOS_NAME=$t start_target "$t"; done

# One body through each, so a broken setup fails here and not as a table of errors.
probe=$(head -n1 "$BODY_FILE")
for t in "${TARGETS[@]}"; do
  [[ $t == grpc || $t == cerbos || $t == cerbos-tls ]] && continue
  code=$(curl -sk -o "$WORK/probe" -w '%{http_code}' -H "Authorization: Bearer $AUTH_KEY" -H 'content-type: application/json' -d "$probe" "${URL[$t]}/allowed")
  [[ $code == 200 ]] || { log "$t: /allowed answered $code: $(cat "$WORK/probe")"; exit 1; }
done
# Cerbos: every body once to it and to permd, counting the checks where both decide alike.
if has cerbos; then
  if has permd; then
    log "agreement check: each of the $(wc -l <"$CERBOS_BODY_FILE") checks once to permd /allowed and to Cerbos"
    AGREEMENT=$("$CERBOS_AGREE" "${URL[permd]}" "${URL[cerbos]}" "$BODY_FILE" "$CERBOS_BODY_FILE") ||
      { log "agreement check failed: $AGREEMENT"; exit 1; }
    printf '%s\n' "$AGREEMENT" >&2
  else
    code=$(curl -s -o "$WORK/probe" -w '%{http_code}' -H 'content-type: application/json' -d "$(head -n1 "$CERBOS_BODY_FILE")" "${URL[cerbos]}/api/check/resources")
    [[ $code == 200 ]] || { log "cerbos: /api/check/resources answered $code: $(cat "$WORK/probe")"; exit 1; }
  fi
fi

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # utime + stime; comm has no spaces here
CLK_TCK=$(getconf CLK_TCK)
PERMD_PID=${PID[permd]:-}
RSS_READY_KB=$([[ -n $PERMD_PID ]] && rss_kb "$PERMD_PID" || echo 0)

# --- (d) load ----------------------------------------------------------------------------------
# Machine-wide busy and steal ticks (all CPUs), to tell a quiet run from one that shared the
# machine with something else (a build, the hypervisor's other guests).
busy_steal() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $9 }' /proc/stat; }

load() { # load NAME URL DURATION: wrk with the /allowed bodies, or (NAME grpc) grpc_load with the same checks
  if [[ $1 == grpc ]]; then
    "${WRK_PIN[@]}" "$GRPC_LOAD" "$2" "$BODY_FILE" "$CONNECTIONS" "${3%s}" 0 "$THREADS"
  elif [[ $1 == permd-auth ]]; then
    PERMD_BENCH_KEY=$AUTH_KEY "${WRK_PIN[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$3" -s bench/allowed.lua "$2" -- "$BODY_FILE"
  elif [[ $1 == permd-auth-flood ]]; then
    # The flood: a wrong key (all but its last character right) for as long as the good load.
    local secs=${3%s}
    PERMD_BENCH_KEY=${AUTH_KEY%?}x "${WRK_PIN[@]}" wrk -t1 -c"$FLOOD_CONNECTIONS" -d"$((secs + 1))s" -s bench/allowed.lua "$2" -- "$BODY_FILE" >"$WORK/flood.wrk" 2>&1 &
    local flood=$!
    PERMD_BENCH_KEY=$AUTH_KEY "${WRK_PIN[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$3" -s bench/allowed.lua "$2" -- "$BODY_FILE"
    wait "$flood"
    sed -n 's/^RESULT requests=\([0-9]*\) .* non2xx=\([0-9]*\) .*/flood: \1 bad-key requests, \2 refused/p' "$WORK/flood.wrk" >&2
  elif [[ $1 == cerbos || $1 == cerbos-tls ]]; then
    "${WRK_PIN[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$3" -s bench/allowed.lua "$2" -- "$CERBOS_BODY_FILE" /api/check/resources
  else
    "${WRK_PIN[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$3" -s bench/allowed.lua "$2" -- "$BODY_FILE"
  fi
}

run_wrk() { # run_wrk NAME URL PID -> "NAME RESULT ... ticks=N other_pct=P steal_pct=S"
  local name=$1 url=$2 pid=$3
  load "$name" "$url" "$WARMUP" >/dev/null
  local before after b0 s0 b1 s1 wrk_cpu t0 t1
  before=$(cpu_ticks "$pid")
  read -r b0 s0 < <(busy_steal)
  t0=$(date +%s.%N)
  TIMEFORMAT='%3U %3S'
  wrk_cpu=$( { time load "$name" "$url" "$DURATION" >"$WORK/$name.wrk" 2>"$WORK/$name.err"; } 2>&1 )
  t1=$(date +%s.%N)
  read -r b1 s1 < <(busy_steal)
  after=$(cpu_ticks "$pid")
  local result
  result=$(grep '^RESULT' "$WORK/$name.wrk") || {
    log "wrk gave no result for $name:"
    cat "$WORK/$name.wrk" "$WORK/$name.err" >&2
    exit 1
  }
  # Busy time of everything but this server and wrk, and steal, as % of the machine.
  local other steal
  other=$(awk -v b=$((b1 - b0)) -v srv=$((after - before)) -v w="$wrk_cpu" -v hz="$CLK_TCK" -v t="$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')" -v n="$(nproc)" \
    'BEGIN { split(w, x, " "); printf "%.0f", 100 * (b / hz - srv / hz - x[1] - x[2]) / (t * n) }')
  steal=$(awk -v s=$((s1 - s0)) -v hz="$CLK_TCK" -v t="$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')" -v n="$(nproc)" \
    'BEGIN { printf "%.0f", 100 * (s / hz) / (t * n) }')
  local wrk_pct srv_pct
  wrk_pct=$(awk -v w="$wrk_cpu" -v a="$t0" -v b="$t1" 'BEGIN { split(w, x, " "); printf "%.0f", 100 * (x[1] + x[2]) / (b - a) }')
  srv_pct=$(awk -v s=$((after - before)) -v hz="$CLK_TCK" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", 100 * (s / hz) / (b - a) }')
  echo "$name $result ticks=$((after - before)) srv_pct=$srv_pct wrk_pct=$wrk_pct other_pct=$other steal_pct=$steal"
}

PIN_DESC=$([[ $PIN == 1 ]] && echo 'server core 0, wrk core 1 (taskset)' || echo none)
log "wrk -t$THREADS -c$CONNECTIONS -d$DURATION (warm-up $WARMUP) x $ROUNDS rounds of: ${TARGETS[*]}; pinning: $PIN_DESC"
RESULTS=()
for round in $(seq 1 "$ROUNDS"); do
  for t in "${TARGETS[@]}"; do
    RESULTS+=("$(run_wrk "$t" "${URL[$t]}" "${PID[$t]}") round=$round")
  done
done
RSS_AFTER_KB=$([[ -n $PERMD_PID ]] && rss_kb "$PERMD_PID" || echo 0)
CERBOS_RSS_KB=$(has cerbos && rss_kb "${PID[cerbos]}" || echo 0)

# --- (e) table ---------------------------------------------------------------------------------
field() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<"$1"; }
cpu_per_k() { awk -v t="$(field "$1" ticks)" -v hz="$CLK_TCK" -v n="$(field "$1" requests)" 'BEGIN { printf "%.4f\n", (t / hz) / n * 1000 }'; }
row() { # row LABEL RESULT; a round that shared the machine (other + steal > 10%) gets a `!`
  local noisy=""
  (($(field "$2" other_pct) + $(field "$2" steal_pct) > 10)) && noisy=" !"
  printf '%-20s %11.0f %7.0fµs %7.0fµs %7.0fµs %7s %9s %6s%% %6s%% %6s%% %6s%%%s\n' "$1" "$(field "$2" rps)" \
    "$(field "$2" p50_us)" "$(field "$2" p99_us)" "$(field "$2" max_us)" "$(field "$2" non2xx)" \
    "$(cpu_per_k "$2")" "$(field "$2" srv_pct)" "$(field "$2" wrk_pct)" "$(field "$2" other_pct)" \
    "$(field "$2" steal_pct)" "$noisy"
}
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo
echo "machine: $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1), $(awk '/^MemTotal:/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
echo "load: wrk -t$THREADS -c$CONNECTIONS -d$DURATION keep-alive, $(wc -l <"$BODY_FILE") rotating /allowed bodies, $ROUNDS rounds; pinning: $PIN_DESC"
AGREEMENT=${AGREEMENT:-agreement not checked (no permd target)}
has cerbos && echo "cerbos: $("$CERBOS" --version | head -n1), POST /api/check/resources with the same checks (roles in the body); ${AGREEMENT%%$'\n'*}"
echo "CPU-s/1k = server utime+stime per 1000 requests; server, wrk = their CPU use (100% = one core);"
echo "other = CPU used by anything but the server and wrk, steal = hypervisor steal, both % of the whole machine;"
echo "! = other + steal > 10%: that round shared the machine and its figures are not to be trusted"
echo
printf '%-20s %11s %9s %9s %9s %7s %9s %7s %7s %7s %7s\n' target requests/s p50 p99 max non-2xx CPU-s/1k server wrk other steal
for r in "${RESULTS[@]}"; do row "${r%% *} #$(field "$r" round)" "$r"; done
echo
# The grpc target's figures are its tonic client's (at its core's limit before the server), so
# the table says so; bench/h2load.sh (run.sh piece h2) has Enforce's.
table_name() { if [[ $1 == grpc ]]; then echo "grpc (tonic load generator: the client's figure, see h2)"; else echo "$1"; fi; }
declare -A MEDIAN_RPS
for name in "${TARGETS[@]}"; do
  sel=()
  for r in "${RESULTS[@]}"; do [[ ${r%% *} == "$name" ]] && sel+=("$r"); done
  MEDIAN_RPS[$name]=$(for r in "${sel[@]}"; do field "$r" rps; done | median)
  printf '%s median of %d rounds: %.0f requests/s, p50 %.0fµs, p99 %.0fµs, %s CPU-s per 1000 requests\n' "$name" "${#sel[@]}" \
    "${MEDIAN_RPS[$name]}" \
    "$(for r in "${sel[@]}"; do field "$r" p50_us; done | median)" \
    "$(for r in "${sel[@]}"; do field "$r" p99_us; done | median)" \
    "$(for r in "${sel[@]}"; do cpu_per_k "$r"; done | median)"
  # For bench/run.sh's final table.
  printf 'TABLE|http|%s: requests/s, p50, p99, server CPU-s per 1000 (median of %d rounds)|%.0f, %.0f µs, %.0f µs, %s||\n' "$(table_name "$name")" "${#sel[@]}" \
    "${MEDIAN_RPS[$name]}" \
    "$(for r in "${sel[@]}"; do field "$r" p50_us; done | median)" \
    "$(for r in "${sel[@]}"; do field "$r" p99_us; done | median)" \
    "$(for r in "${sel[@]}"; do cpu_per_k "$r"; done | median)"
done
# Ratios per round (each round runs every target back to back), then their median.
ratio() { # ratio A B: A/B requests/s by round, and the median
  local rs=() ra rb
  for round in $(seq 1 "$ROUNDS"); do
    for r in "${RESULTS[@]}"; do
      [[ $(field "$r" round) == "$round" ]] || continue
      [[ ${r%% *} == "$1" ]] && ra=$(field "$r" rps)
      [[ ${r%% *} == "$2" ]] && rb=$(field "$r" rps)
    done
    rs+=("$(awk -v a="$ra" -v b="$rb" 'BEGIN { printf "%.1f", 100 * a / b }')")
  done
  local med
  med=$(printf '%s\n' "${rs[@]}" | median)
  echo "$1/$2 requests/s by round: ${rs[*]} (%); median $med%${3:-}"
  # For bench/run.sh: ratio A B NOTE [MIN GOAL]: met when the median is at least MIN.
  local met=""
  [[ -n ${4:-} ]] && met=$(awk -v m="$med" -v t="$4" 'BEGIN { print (m >= t) ? "yes" : "no" }')
  echo "TABLE|http|$(table_name "$1") / $(table_name "$2") requests/s (median of per-round ratios)|$med% (rounds ${rs[*]})|${5:-}|$met"
}
has permd && has floor && ratio permd floor " (target >= 60%)" 60 "≥ 60%"
has grpc && has permd && ratio grpc permd " (gRPC Enforce vs HTTP /allowed)"
has permd && has permd-nometrics && ratio permd permd-nometrics " (metrics on vs off; target >= 95%)" 95 "≥ 95%"
has permd-log1pct && has permd && ratio permd-log1pct permd " (decision log at 1% vs off; target >= 90%)" 90 "≥ 90%"
has permd-log1pct && has permd-nometrics && ratio permd-log1pct permd-nometrics " (decision log at 1% and metrics vs neither)"
has permd-auth && has permd && ratio permd-auth permd " (bearer key on every request vs none; target >= 95%)" 95 "≥ 95%"
has permd-tls && has permd && ratio permd-tls permd " (TLS with keep-alive vs plain HTTP)"
has permd-auth-flood && has permd-auth && ratio permd-auth-flood permd-auth " (good requests under a bad-key flood vs alone; the flood shares wrk's core)"
has permd-tls && has cerbos-tls && ratio permd-tls cerbos-tls " (both over TLS)"
has permd-malloc && has permd && ratio permd-malloc permd " (permd with _RJEM_MALLOC_CONF=$PERMD_MALLOC_CONF vs as built)"
# permd against Cerbos, by round and the median: throughput permd/cerbos, and how many times
# Cerbos's p99 and CPU per check are permd's (the goals: >= 10x, p99 <= 1/10, CPU <= 1/15).
versus() { # versus A B
  local rps=() p99=() cpu=() ra rb pa pb ca cb
  for round in $(seq 1 "$ROUNDS"); do
    for r in "${RESULTS[@]}"; do
      [[ $(field "$r" round) == "$round" ]] || continue
      if [[ ${r%% *} == "$1" ]]; then ra=$(field "$r" rps); pa=$(field "$r" p99_us); ca=$(cpu_per_k "$r"); fi
      if [[ ${r%% *} == "$2" ]]; then rb=$(field "$r" rps); pb=$(field "$r" p99_us); cb=$(cpu_per_k "$r"); fi
    done
    rps+=("$(awk -v a="$ra" -v b="$rb" 'BEGIN { printf "%.1f", a / b }')")
    p99+=("$(awk -v a="$pa" -v b="$pb" 'BEGIN { printf "%.1f", b / a }')")
    cpu+=("$(awk -v a="$ca" -v b="$cb" 'BEGIN { printf "%.1f", b / a }')")
  done
  local m
  met() { awk -v m="$1" -v g="$2" 'BEGIN { print (m >= g) ? "met" : "not met" }'; }
  yes_no() { awk -v m="$1" -v g="$2" 'BEGIN { print (m >= g) ? "yes" : "no" }'; }
  m=$(printf '%s\n' "${rps[@]}" | median)
  echo "$1/$2 requests/s by round: ${rps[*]} (x); median ${m}x (goal >= 10x: $(met "$m" 10))"
  echo "TABLE|http|$1 / $2 requests/s (median of per-round ratios)|${m}x (rounds ${rps[*]})|≥ 10x|$(yes_no "$m" 10)"
  m=$(printf '%s\n' "${p99[@]}" | median)
  echo "$1 p99 = 1/N of $2's, N by round: ${p99[*]}; median 1/$m (goal <= 1/10: $(met "$m" 10))"
  echo "TABLE|http|$1 p99 as a fraction of $2's (median of per-round ratios)|1/$m (rounds ${p99[*]})|≤ 1/10|$(yes_no "$m" 10)"
  m=$(printf '%s\n' "${cpu[@]}" | median)
  echo "$1 server CPU per check = 1/N of $2's, N by round: ${cpu[*]}; median 1/$m (goal <= 1/15: $(met "$m" 15))"
  echo "TABLE|http|$1 server CPU per check as a fraction of $2's (median of per-round ratios)|1/$m (rounds ${cpu[*]})|≤ 1/15|$(yes_no "$m" 15)"
}
has permd && has cerbos && versus permd cerbos
has cerbos && awk -v a="$CERBOS_RSS_KB" 'BEGIN { printf "cerbos VmRSS after the run: %.0f MiB\n", a/1024 }'
[[ -n $PERMD_PID ]] && awk -v a="$RSS_READY_KB" -v b="$RSS_AFTER_KB" \
  'BEGIN { printf "permd VmRSS with the 1M snapshot: %.0f MiB ready, %.0f MiB after the run (target <= 300 MB)\n", a/1024, b/1024
          printf "TABLE|http|permd VmRSS with the 1M snapshot, after the run|%.0f MiB|≤ 300 MB|%s\n", b/1024, (b * 1024 <= 300e6) ? "yes" : "no" }'
