#!/usr/bin/env bash
# The one command of the performance issue: builds release once, then on this machine, in one
# run, loopback only:
#   1. bash bench/http.sh           HTTP /allowed beside the floor and Cerbos (and whatever TARGETS names)
#   2. bash bench/h2load.sh         gRPC Enforce and /allowed (h2c, HTTP/1.1) beside their floors
#                                   under h2load: throughput and light-load p99
#   3. examples/scale               build, load, RSS, bytes per assignment at SCALE_SIZES (and permd serve's)
#   4. examples/casbin_sizes        casbin-rs enforce vs decide, decide flatness at CASBIN_SIZES
#   5. examples/sync_bench          delta visibility, absorption, warm start
# and prints one table at the end from the `TABLE|section|figure|measured|goal|met` lines each
# piece writes to stdout, with the figure of the previous recorded run (bench/recorded.tsv, or
# RECORDED=FILE) beside each one. Every piece's full output is kept in bench/data/run-<time>/,
# and the table as table.tsv there (in recorded.tsv's format: copying it records the run).
#
#   bash bench/run.sh                      (on a shared machine: nice -n 19 bash bench/run.sh)
#   PIECES="scale casbin" bash bench/run.sh
#
# Knobs: PIECES ("http h2 scale casbin sync"), TARGETS (passed through to http.sh; unset = its
# default), SCALE_SIZES (1m,tail2m,10m), CASBIN_SIZES (1k,100k,1m), per-piece time limits in seconds
# HTTP_TIMEOUT (900), H2_TIMEOUT (900), SCALE_TIMEOUT (1200), CASBIN_TIMEOUT (900), SYNC_TIMEOUT
# (600), RECORDED (bench/recorded.tsv); the knobs of http.sh (DURATION, ROUNDS, ...), h2load.sh
# (PICK_MS, LIGHT_PICK_MS, LIGHT_ROUNDS, PICKS, ...; its ROUNDS is H2_ROUNDS here, as http.sh has ROUNDS),
# casbin (BATCHES, CASBIN_MAX) and sync_bench (SAMPLES, SECONDS, CLIENTS) go through the
# environment as they are.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
read -r -a PIECES <<<"${PIECES:-http h2 scale casbin sync}"
RECORDED=${RECORDED:-$ROOT/bench/recorded.tsv}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
EX=$TARGET_DIR/release/examples
OUT=$ROOT/bench/data/run-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"

log() { printf '[run.sh] %s\n' "$*" >&2; }

started=$SECONDS
log "building release permd and the bench examples (once)"
cargo build --release --quiet --bin permd --example floor --example bodies --example grpc_load \
  --example grpc_floor --example scale --example casbin_sizes --example sync_bench
BUILD_S=$((SECONDS - started))

declare -A TOOK STATUS
piece() { # piece NAME TIMEOUT COMMAND...: runs it bounded, output to $OUT/NAME.out and the terminal
  local name=$1 limit=$2 t0=$SECONDS rc=0
  shift 2
  log "$name: $* (limit ${limit}s)"
  timeout --kill-after=30 "$limit" "$@" 2> >(tee "$OUT/$name.err" >&2) | tee "$OUT/$name.out" || rc=$?
  TOOK[$name]=$((SECONDS - t0))
  case $rc in
    0) STATUS[$name]=ok ;;
    124 | 137) STATUS[$name]="timed out after ${limit}s" ;;
    *) STATUS[$name]="failed (exit $rc; see $OUT/$name.err)" ;;
  esac
  log "$name: ${STATUS[$name]} in ${TOOK[$name]}s"
}

for p in "${PIECES[@]}"; do
  case $p in
    http) piece http "${HTTP_TIMEOUT:-900}" bash bench/http.sh ;;
    h2) piece h2 "${H2_TIMEOUT:-900}" env BUILD=0 ROUNDS="${H2_ROUNDS:-3}" bash bench/h2load.sh ;;
    scale) piece scale "${SCALE_TIMEOUT:-1200}" env PERMD_BIN="$TARGET_DIR/release/permd" "$EX/scale" "${SCALE_SIZES:-1m,tail2m,10m}" ;;
    casbin) piece casbin "${CASBIN_TIMEOUT:-900}" "$EX/casbin_sizes" "${CASBIN_SIZES:-1k,100k,1m}" ;;
    sync) piece sync "${SYNC_TIMEOUT:-600}" env PERMD_BIN="$TARGET_DIR/release/permd" "$EX/sync_bench" ;;
    *) log "unknown piece $p (http h2 scale casbin sync)"; exit 64 ;;
  esac
done

TREE="$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (modified)')"
echo
echo "=== bench/run.sh: $(date -u +%FT%TZ), tree $TREE"
echo "machine: $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1), $(awk '/^MemTotal:/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "build ${BUILD_S}s; $(for p in "${PIECES[@]}"; do printf '%s %ss (%s); ' "$p" "${TOOK[$p]}" "${STATUS[$p]}"; done)total $((SECONDS - started))s"
echo "full outputs: $OUT"
if [[ -s $RECORDED ]]; then
  echo "previous: $(sed -n '1s/^# *//p' "$RECORDED") ($RECORDED)"
else
  echo "previous: none ($RECORDED missing)"
fi
echo
# This run's table, in recorded.tsv's format.
{
  echo "# bench/run.sh $(date -u +%FT%TZ), tree $TREE, $(nproc) cores $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1), pieces ${PIECES[*]}"
  printf 'section\tfigure\tmeasured\tgoal\tmet?\n'
  for p in "${PIECES[@]}"; do
    grep -h '^TABLE|' "$OUT/$p.out" 2>/dev/null | cut -d'|' -f2- | tr '|' '\t' || true
    [[ ${STATUS[$p]} == ok ]] || printf '%s\t(piece did not finish)\t%s\t\t\n' "$p" "${STATUS[$p]}"
  done
} >"$OUT/table.tsv"
# The previous run's figure beside each of this run's, joined on section and figure with the
# numbers in the figure left out (a knob such as the rounds or the ops/s may differ); `—` when
# the previous run had no such row.
awk 'BEGIN { FS = OFS = "\t" }
  function key(sec, fig) { gsub(/[0-9][0-9.,]*/, "#", fig); return sec SUBSEP fig }
  FILENAME == ARGV[1] { if ($0 !~ /^#/ && $1 != "section") prev[key($1, $2)] = $3; next }
  /^#/ { next }
  $1 == "section" { print "section", "figure", "measured", "previous", "goal", "met?"; next }
  { k = key($1, $2); print $1, $2, $3, (k in prev) ? prev[k] : "—", $4, $5 }' \
  "$([[ -s $RECORDED ]] && echo "$RECORDED" || echo /dev/null)" "$OUT/table.tsv" |
  awk 'BEGIN { FS = OFS = "\t" } { for (i = 1; i <= NF; i++) if ($i == "") $i = "-"; print }' | column -t -s $'\t'
